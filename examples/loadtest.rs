//! End-to-end benchmark of jelou-bridge, held against the broker's own limit.
//!
//! ```text
//! cargo run --release --example loadtest -- --tickets 20000 --jelou-latency-ms 0
//! cargo run --release --example loadtest -- --matrix --json target/loadtest.json
//! ```
//!
//! One case: a stand-in for Jelou (in this process, with the given latency) → unique
//! exchange and queue names on the broker → N `ticket.opened` pre-loaded (persistent,
//! confirmed) → the release binary started as a separate process (`jelou-bridge run`, its own
//! SQLite file or a fresh PostgreSQL database) → every outcome watched on the events
//! exchange. Measured: throughput over the backlog (first outcome to last), the bridge's CPU
//! (`/proc/<pid>/stat`) and memory (`VmRSS` per tenth of the backlog, `VmHWM`), then a paced
//! phase at half that throughput for publish-to-outcome latency. The broker's own limit is a
//! minimal consumer on the same queue type and prefetch that, per delivery, publishes one
//! persistent message with confirms and acks.

#[path = "loadtest/bench.rs"]
mod bench;
#[path = "loadtest/bridge_process.rs"]
mod bridge_process;
#[path = "loadtest/bus.rs"]
mod bus;
#[path = "loadtest/limit.rs"]
mod limit;
#[path = "loadtest/proc_stats.rs"]
mod proc_stats;
#[path = "loadtest/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use testkit::{unique, StoreKind};

use bench::run_case;
use limit::Limit;
use report::CaseReport;

#[derive(Debug, Clone, Parser)]
#[command(about = "End-to-end benchmark of jelou-bridge against the broker's own limit")]
struct Args {
    /// Ticket events pre-loaded before the bridge starts.
    #[arg(long, default_value_t = 20_000)]
    tickets: usize,
    /// Latency of the Jelou stand-in, per call.
    #[arg(long, default_value_t = 0)]
    jelou_latency_ms: u64,
    /// amqp.prefetch of the bridge (and of the broker-limit consumer).
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// The bridge's store: sqlite or postgres.
    #[arg(long, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Run every case of the benchmark matrix (latency, prefetch, backlog, store).
    #[arg(long)]
    matrix: bool,
    /// Matrix only: multiply every case's backlog by this (0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Messages for the broker-limit run (measured once per prefetch, and once per prefetch
    /// and latency for cases with a Jelou latency).
    #[arg(long, default_value_t = 20_000)]
    limit_tickets: usize,
    /// Skip the broker-limit run.
    #[arg(long)]
    no_limit: bool,
    /// Length of the paced phase measuring latency (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    paced_secs: f64,
    /// Rate of the paced phase; default half the throughput just measured.
    #[arg(long)]
    paced_rate: Option<f64>,
    /// Give up when no outcome arrives for this long.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// Write every figure as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// PostgreSQL server (a fresh database is created on it for each case, then dropped).
    #[arg(
        long,
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    /// The bridge binary; default target/<profile>/jelou-bridge, built first with cargo.
    #[arg(long, value_name = "PATH")]
    bridge_bin: Option<PathBuf>,
    /// Don't run `cargo build --bin jelou-bridge` first.
    #[arg(long)]
    no_build: bool,
    /// Extra environment variable for the bridge process, e.g.
    /// `--bridge-env JELOU_BRIDGE__STORE__MAX_CONNECTIONS=1`; repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    bridge_env: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, Clone, Copy)]
struct Case {
    store: StoreKind,
    latency_ms: u64,
    prefetch: u16,
    tickets: usize,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}/{}ms/p{}/n{}",
            self.store.as_str(),
            self.latency_ms,
            self.prefetch,
            self.tickets
        )
    }

    /// prefetch ÷ latency: the rate the concurrency bound allows when Jelou is slow.
    fn ideal(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| f64::from(self.prefetch) * 1000.0 / self.latency_ms as f64)
    }
}

/// The cases of `--matrix`: both latencies and prefetches on SQLite, the backlog at 1,000 and
/// 100,000, a 100,000 backlog at 200 ms with prefetch 1,024, and PostgreSQL at both latencies.
fn matrix(scale: f64) -> Vec<Case> {
    use StoreKind::{Postgres, Sqlite};
    let n = |t: usize| ((t as f64 * scale).round() as usize).max(10);
    [
        (Sqlite, 0, 32, 20_000),
        (Sqlite, 0, 128, 20_000),
        (Sqlite, 50, 32, 5_000),
        (Sqlite, 50, 128, 20_000),
        (Sqlite, 0, 32, 1_000),
        (Sqlite, 0, 32, 100_000),
        // A helpdesk's backlog after an outage, drained at the rate a real Jelou allows: the
        // throughput against prefetch ÷ latency, and the memory of 1,024 deliveries in flight.
        (Sqlite, 200, 1024, 100_000),
        (Postgres, 0, 32, 20_000),
        (Postgres, 50, 128, 20_000),
    ]
    .into_iter()
    .map(|(store, latency_ms, prefetch, tickets)| Case {
        store,
        latency_ms,
        prefetch,
        tickets: n(tickets),
    })
    .collect()
}

#[derive(serde::Serialize)]
struct Output<'a> {
    command: String,
    git_commit: String,
    machine: proc_stats::Machine,
    limits: Vec<Limit>,
    cases: &'a [CaseReport],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let bin = bridge_process::binary(args.bridge_bin.clone(), !args.no_build)?;
    let cases = if args.matrix {
        matrix(args.scale)
    } else {
        vec![Case {
            store: args.store,
            latency_ms: args.jelou_latency_ms,
            prefetch: args.prefetch,
            tickets: args.tickets,
        }]
    };
    let mut limits: BTreeMap<(u16, u64), Limit> = BTreeMap::new();
    let mut reports = Vec::new();
    for case in &cases {
        let (limit, limit_at_latency) = if args.no_limit {
            (None, None)
        } else {
            let at_latency = if case.latency_ms > 0 {
                // Long enough to be steady, short enough at prefetch ÷ latency a second.
                let n = args.limit_tickets.min(case.tickets.max(1_000));
                Some(broker_limit(&args, &mut limits, case.prefetch, case.latency_ms, n).await?)
            } else {
                None
            };
            let l = broker_limit(&args, &mut limits, case.prefetch, 0, args.limit_tickets).await?;
            (Some(l), at_latency)
        };
        let mut report = run_case(&args, &bin, case, limit)
            .await
            .with_context(|| format!("case {}", case.name()))?;
        if let Some(l) = limit_at_latency.filter(|l| l.per_second > 0.0) {
            report.limit_at_latency_per_s = Some(l.per_second);
            report.ratio_to_limit_at_latency = Some(report.throughput_per_s / l.per_second);
        }
        println!("{}", report.summary());
        reports.push(report);
        if let Some(path) = &args.json {
            write_json(path, &reports, &limits)?;
        }
    }
    if cases.len() > 1 {
        println!("\n{}", report::TABLE_HEADER);
        for r in &reports {
            println!("{}", r.table_row());
        }
    }
    Ok(())
}

/// The broker-only consumer's rate at this prefetch and latency, measured once per run.
async fn broker_limit(
    args: &Args,
    limits: &mut BTreeMap<(u16, u64), Limit>,
    prefetch: u16,
    latency_ms: u64,
    n: usize,
) -> anyhow::Result<Limit> {
    if let Some(l) = limits.get(&(prefetch, latency_ms)) {
        return Ok(*l);
    }
    let label = format!("[limit p{prefetch} {latency_ms}ms]");
    eprintln!("{label} broker-only consumer over {n} messages…");
    let l = limit::measure(
        &args.amqp_url,
        &unique("lt-limit"),
        prefetch,
        Duration::from_millis(latency_ms),
        n,
        Duration::from_secs(args.stall_secs),
    )
    .await
    .context("broker-limit run")?;
    eprintln!(
        "{label} {:.0} msg/s ({:.0} µs CPU/msg in the consumer's process)",
        l.per_second, l.cpu_us_per_message
    );
    limits.insert((prefetch, latency_ms), l);
    Ok(l)
}

fn write_json(
    path: &Path,
    reports: &[CaseReport],
    limits: &BTreeMap<(u16, u64), Limit>,
) -> anyhow::Result<()> {
    let git_commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let out = Output {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_commit,
        machine: proc_stats::machine(),
        limits: limits.values().copied().collect(),
        cases: reports,
    };
    std::fs::write(path, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("writing {}", path.display()))
}
