//! The figures of one case, as one summary line and as JSON.

use std::fmt::Write;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseReport {
    pub case: String,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    pub jelou_latency_ms: u64,
    pub prefetch: u16,
    /// The backlog pre-loaded before the bridge started.
    pub tickets: usize,
    /// Backlog outcomes a second, from the first outcome on the bus to the last.
    pub throughput_per_s: f64,
    /// The broker-only consumer on the same queue type and prefetch (see `limit`).
    pub limit_per_s: Option<f64>,
    pub ratio_to_limit: Option<f64>,
    /// The same broker-only consumer waiting the Jelou latency (a timer) before it
    /// publishes: what this broker allows at that latency and prefetch.
    pub limit_at_latency_per_s: Option<f64>,
    pub ratio_to_limit_at_latency: Option<f64>,
    /// prefetch ÷ Jelou latency: what the concurrency bound allows when Jelou is slow.
    pub ideal_per_s: Option<f64>,
    pub ratio_to_ideal: Option<f64>,
    /// Paced phase: publish-to-outcome latency of tickets sent at a steady rate after the
    /// backlog drained (the backlog's own latency is mostly queueing).
    pub paced_rate_per_s: Option<f64>,
    pub paced_tickets: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Bridge CPU (user + system) while it worked through the backlog.
    pub cpu_s_per_1000: f64,
    pub cpu_us_per_ticket: f64,
    /// Context switches of the bridge's threads per ticket over the backlog.
    pub context_switches_per_ticket: f64,
    /// VmHWM of the bridge process at the end of the case.
    pub peak_rss_mib: f64,
    /// VmRSS when 10 %, 20 %, … 100 % of the backlog was done: flat means no growth.
    pub rss_mib_by_decile: Vec<f64>,
    /// Outcomes other than `conversation.started` (should be 0).
    pub failed: usize,
    /// Warning or error lines the bridge logged.
    pub bridge_log_lines: usize,
    pub preload_s: f64,
}

impl CaseReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "case={} throughput={:.0}/s",
            self.case, self.throughput_per_s
        );
        match (self.limit_per_s, self.ratio_to_limit) {
            (Some(l), Some(r)) => {
                let _ = write!(s, " limit={l:.0}/s ratio={:.0}%", r * 100.0);
            }
            _ => s.push_str(" limit=n/a"),
        }
        if let (Some(i), Some(r)) = (self.ideal_per_s, self.ratio_to_ideal) {
            let _ = write!(s, " ideal={i:.0}/s of_ideal={:.0}%", r * 100.0);
        }
        if let (Some(l), Some(r)) = (self.limit_at_latency_per_s, self.ratio_to_limit_at_latency) {
            let _ = write!(
                s,
                " limit@latency={l:.0}/s of_limit@latency={:.0}%",
                r * 100.0
            );
        }
        match (
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.paced_rate_per_s,
        ) {
            (Some(p50), Some(p99), Some(rate)) => {
                let _ = write!(s, " p50={p50:.1}ms p99={p99:.1}ms (paced {rate:.0}/s)");
            }
            _ => s.push_str(" p50=n/a p99=n/a"),
        }
        let _ = write!(
            s,
            " cpu={:.3}s/1k ({:.0}us/ticket, {:.1} ctx switches/ticket) peak_rss={:.1}MiB",
            self.cpu_s_per_1000,
            self.cpu_us_per_ticket,
            self.context_switches_per_ticket,
            self.peak_rss_mib
        );
        if let (Some(first), Some(last)) = (
            self.rss_mib_by_decile.first(),
            self.rss_mib_by_decile.last(),
        ) {
            let _ = write!(s, " rss@10%={first:.1}MiB rss@100%={last:.1}MiB");
        }
        if self.failed > 0 {
            let _ = write!(s, " FAILED={}", self.failed);
        }
        s
    }

    /// One row of the results table in docs/performance.md.
    pub fn table_row(&self) -> String {
        let pct = |r: Option<f64>| r.map_or("–".into(), |r| format!("{:.0} %", r * 100.0));
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        format!(
            "| {} | {} ms | {} | {} | {:.0} | {} | {} | {} | {} | {} / {} | {:.0} | {:.1} |",
            self.store,
            self.jelou_latency_ms,
            self.prefetch,
            self.tickets,
            self.throughput_per_s,
            self.limit_per_s.map_or("–".into(), |l| format!("{l:.0}")),
            pct(self.ratio_to_limit),
            pct(self.ratio_to_ideal),
            pct(self.ratio_to_limit_at_latency),
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms),
            self.cpu_us_per_ticket,
            self.peak_rss_mib,
        )
    }
}

pub const TABLE_HEADER: &str = "| store | Jelou latency | prefetch | backlog | tickets/s | broker limit/s | of limit | of ideal | of limit at that latency | p50 / p99 ms (paced) | CPU µs/ticket | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
