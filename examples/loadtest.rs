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
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use jelou_bridge::config::Settings;
use jelou_bridge::jelou::mock::{MockJelou, MockOptions};
use tokio::sync::mpsc::UnboundedReceiver;

use limit::Limit;
use report::{percentile, CaseReport};
use testkit::{unique, BridgeProcess, StoreKind, TestStore, API_KEY};

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
/// 100,000, and PostgreSQL at both latencies.
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

/// One case: its own names, stand-in, store and bridge process, all removed afterwards.
async fn run_case(
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
