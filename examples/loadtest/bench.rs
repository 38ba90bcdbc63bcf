//! One case of the benchmark: its own names, stand-in, store and bridge process; the backlog
//! phase (throughput, CPU, memory) and the paced phase (publish-to-outcome latency).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use jelou_bridge::config::Settings;
use jelou_bridge::jelou::mock::{MockJelou, MockOptions};
use testkit::{unique, BridgeProcess, TestStore, API_KEY};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::limit::{self, Limit};
use crate::report::{percentile, CaseReport};
use crate::{bridge_process, bus, proc_stats, Args, Case};

/// One case: its own names, stand-in, store and bridge process, all removed afterwards.
pub async fn run_case(
    args: &Args,
    bin: &Path,
    case: &Case,
    limit: Option<Limit>,
) -> anyhow::Result<CaseReport> {
    let prefix = unique("lt");
    let mut settings = Settings::defaults();
    settings.amqp.url = args.amqp_url.clone().into();
    settings.amqp.exchange = format!("{prefix}.helpdesk");
    settings.amqp.queue = format!("{prefix}.tickets");
    settings.amqp.events_exchange = format!("{prefix}.events");
    settings.amqp.prefetch = case.prefetch;
    let mock = MockJelou::start(
        "127.0.0.1:0".parse()?,
        MockOptions {
            latency: Duration::from_millis(case.latency_ms),
            api_key: Some(API_KEY.into()),
            record_calls: false,
            ..MockOptions::default()
        },
    )
    .await?;
    let admin = bus::connect(&args.amqp_url, "loadtest").await?;
    let dir = tempfile::tempdir()?;
    let result = async {
        let channel = bus::confirm_channel(&admin).await?;
        bus::declare(&channel, &settings).await?;
        let store = TestStore::create(case.store, dir.path(), &args.pg_url).await?;
        settings.store.url = store.url.clone().into();
        let bench = Bench {
            args,
            case,
            prefix: &prefix,
            settings: &settings,
            admin: &admin,
            channel: &channel,
        };
        bench.run(bin, dir.path(), &mock).await
    }
    .await;
    bus::remove(&args.amqp_url, &settings).await;
    let _ = admin.close(200, "done".into()).await;
    let mut report = result?;
    report.limit_per_s = limit.map(|l| l.per_second);
    report.ratio_to_limit = limit
        .filter(|l| l.per_second > 0.0)
        .map(|l| report.throughput_per_s / l.per_second);
    Ok(report)
}

struct Bench<'a> {
    args: &'a Args,
    case: &'a Case,
    prefix: &'a str,
    settings: &'a Settings,
    admin: &'a lapin::Connection,
    channel: &'a lapin::Channel,
}

/// What the backlog phase measured.
struct Backlog {
    throughput: f64,
    cpu_seconds: f64,
    context_switches: u64,
    rss_by_decile: Vec<f64>,
    failed: usize,
}

/// What the paced phase measured.
struct Paced {
    rate: f64,
    tickets: usize,
    latencies_ms: Vec<f64>,
    failed: usize,
}

impl Bench<'_> {
    async fn run(&self, bin: &Path, dir: &Path, mock: &MockJelou) -> anyhow::Result<CaseReport> {
        let name = self.case.name();
        let amqp = &self.settings.amqp;
        let mut seen = bus::observe(self.admin, &amqp.events_exchange, self.prefix.into()).await?;
        eprintln!("[{name}] pre-loading {} ticket.opened…", self.case.tickets);
        let preload =
            bus::preload(self.channel, &amqp.exchange, self.prefix, self.case.tickets).await?;
        let mut bridge = bridge_process::start(
            bin,
            dir,
            self.settings,
            &mock.base_url(),
            &self.args.bridge_env,
        )
        .await?;
        eprintln!(
            "[{name}] pre-loaded in {:.1}s; bridge pid {} working…",
            preload.as_secs_f64(),
            bridge.pid()
        );
        let measured = async {
            let backlog = self.backlog(&mut bridge, &mut seen).await?;
            let paced = if self.args.paced_secs > 0.0 {
                Some(
                    self.paced(&mut bridge, &mut seen, backlog.throughput)
                        .await?,
                )
            } else {
                None
            };
            let peak = proc_stats::memory(bridge.pid()).map_or(0.0, |m| m.peak_mib);
            Ok::<_, anyhow::Error>((backlog, paced, peak))
        }
        .await;
        let log_lines = bridge_process::warnings_logged(&bridge);
        let stopped = bridge.stop(Duration::from_secs(30)).await;
        let (backlog, paced, peak_rss_mib) = measured?;
        let status = stopped.context("stopping the bridge")?;
        anyhow::ensure!(
            status.success(),
            "the bridge exited with {status}:\n{}",
            bridge.log_tail(20)
        );

        let n = self.case.tickets;
        let cpu_per_ticket = backlog.cpu_seconds / (n.saturating_sub(1).max(1)) as f64;
        let ideal = self.case.ideal();
        let mut latencies = paced
            .as_ref()
            .map(|p| p.latencies_ms.clone())
            .unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        Ok(CaseReport {
            case: name,
            store: self.case.store.as_str(),
            jelou_latency_ms: self.case.latency_ms,
            prefetch: self.case.prefetch,
            tickets: n,
            throughput_per_s: backlog.throughput,
            limit_per_s: None,
            ratio_to_limit: None,
            limit_at_latency_per_s: None,
            ratio_to_limit_at_latency: None,
            ideal_per_s: ideal,
            ratio_to_ideal: ideal.map(|i| backlog.throughput / i),
            paced_rate_per_s: paced.as_ref().map(|p| p.rate),
            paced_tickets: paced.as_ref().map_or(0, |p| p.tickets),
            latency_p50_ms: percentile(&latencies, 50.0),
            latency_p99_ms: percentile(&latencies, 99.0),
            latency_max_ms: latencies.last().copied(),
            cpu_s_per_1000: cpu_per_ticket * 1000.0,
            cpu_us_per_ticket: cpu_per_ticket * 1e6,
            context_switches_per_ticket: backlog.context_switches as f64
                / (n.saturating_sub(1).max(1)) as f64,
            peak_rss_mib,
            rss_mib_by_decile: backlog.rss_by_decile,
            failed: backlog.failed + paced.map_or(0, |p| p.failed),
            bridge_log_lines: log_lines,
            preload_s: preload.as_secs_f64(),
        })
    }

    /// Until every backlog outcome is on the bus.
    async fn backlog(
        &self,
        bridge: &mut BridgeProcess,
        seen: &mut UnboundedReceiver<bus::Seen>,
    ) -> anyhow::Result<Backlog> {
        let n = self.case.tickets;
        let pid = bridge.pid();
        let cpu = || {
            (
                proc_stats::cpu_seconds(pid).unwrap_or(0.0),
                proc_stats::context_switches(pid).unwrap_or(0),
            )
        };
        let mut first: Option<(Instant, (f64, u64))> = None;
        let mut last = (Instant::now(), (0.0, 0));
        let mut rss_by_decile = Vec::new();
        let mut done = 0;
        let mut failed = 0;
        self.watch(bridge, seen, 'B', n, |s| {
            done += 1;
            if !s.started {
                failed += 1;
            }
            if first.is_none() {
                first = Some((s.at, cpu()));
            }
            if done == n {
                last = (s.at, cpu());
            }
            if done * 10 >= n * (rss_by_decile.len() + 1) {
                rss_by_decile.push(proc_stats::memory(pid).map_or(0.0, |m| m.rss_mib));
            }
        })
        .await?;
        let (t0, (cpu0, switches0)) = first.unwrap_or(last);
        Ok(Backlog {
            throughput: limit::rate(n, t0, last.0),
            cpu_seconds: last.1 .0 - cpu0,
            context_switches: last.1 .1.saturating_sub(switches0),
            rss_by_decile,
            failed,
        })
    }

    /// Tickets published at a steady rate; publish-to-outcome latency of each.
    async fn paced(
        &self,
        bridge: &mut BridgeProcess,
        seen: &mut UnboundedReceiver<bus::Seen>,
        throughput: f64,
    ) -> anyhow::Result<Paced> {
        let rate = self.args.paced_rate.unwrap_or(throughput / 2.0).max(1.0);
        let m = ((rate * self.args.paced_secs).round() as usize).max(20);
        eprintln!(
            "[{}] paced phase: {m} tickets at {rate:.0}/s…",
            self.case.name()
        );
        let channel = bus::confirm_channel(self.admin).await?;
        let publisher = tokio::spawn(bus::publish_paced(
            channel,
            self.settings.amqp.exchange.clone(),
            self.prefix.to_string(),
            m,
            rate,
        ));
        let mut arrived: Vec<Option<Instant>> = vec![None; m];
        let mut failed = 0;
        self.watch(bridge, seen, 'P', m, |s| {
            if let Some((_, i)) = s.key {
                if let Some(slot) = arrived.get_mut(i) {
                    slot.get_or_insert(s.at);
                }
            }
            if !s.started {
                failed += 1;
            }
        })
        .await?;
        let sent = publisher.await??;
        let latencies_ms = sent
            .iter()
            .zip(&arrived)
            .filter_map(|(sent, got)| Some(got.as_ref()?.duration_since(*sent).as_secs_f64() * 1e3))
            .collect();
        Ok(Paced {
            rate,
            tickets: m,
            latencies_ms,
            failed,
        })
    }

    /// Feeds `on_seen` the first `n` outcomes of tickets of `phase`; fails when the bridge
    /// exits or nothing arrives for `--stall-secs`.
    async fn watch(
        &self,
        bridge: &mut BridgeProcess,
        seen: &mut UnboundedReceiver<bus::Seen>,
        phase: char,
        n: usize,
        mut on_seen: impl FnMut(&bus::Seen),
    ) -> anyhow::Result<()> {
        let stall = Duration::from_secs(self.args.stall_secs);
        let mut last_progress = Instant::now();
        let mut done = 0;
        while done < n {
            match tokio::time::timeout(Duration::from_secs(1), seen.recv()).await {
                Ok(Some(s)) => {
                    if s.key.map(|(p, _)| p) == Some(phase) {
                        done += 1;
                        last_progress = Instant::now();
                        on_seen(&s);
                    }
                }
                Ok(None) => anyhow::bail!("the observer stopped"),
                Err(_) => {
                    if let Some(status) = bridge.exited() {
                        anyhow::bail!(
                            "the bridge exited after {done} of {n} outcomes: {status}; log:\n{}",
                            bridge.log_tail(20)
                        );
                    }
                    anyhow::ensure!(
                        last_progress.elapsed() < stall,
                        "no outcome for {stall:?} after {done} of {n}; bridge log:\n{}",
                        bridge.log_tail(20)
                    );
                }
            }
        }
        Ok(())
    }
}
