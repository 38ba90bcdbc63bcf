//! The private 3-node cluster the cluster fault tests run on (`scripts/cluster.sh`): its
//! nodes stopped and started, where the bridge is connected, and what the tests watch while
//! a node is away (readiness, progress, reconnection time).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::observer::*;
use testkit::*;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

/// Runs `scripts/cluster.sh` with `args`; its stdout, or why it failed.
pub fn cluster(args: &[&str]) -> Result<String, String> {
    let out = Command::new(SCRIPT)
        .args(args)
        .output()
        .map_err(|e| format!("{SCRIPT} does not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "scripts/cluster.sh {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The cluster's AMQP URLs, node 1 first, once the cluster runs (idempotent: a running
/// cluster is left alone).
pub fn cluster_urls() -> Vec<String> {
    if let Err(e) = cluster(&["start"]) {
        panic!("the private 3-node RabbitMQ cluster did not start: {e}");
    }
    let urls: Vec<String> = cluster(&["urls"])
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(urls.len(), 3, "three nodes: {urls:?}");
    urls
}

/// A cluster node whose RabbitMQ application is stopped (`rabbitmqctl stop_app`: its
/// connections close and its port refuses new ones, as when a node dies); started again when
/// dropped, also when the test fails.
pub struct NodeStopped(usize);

impl NodeStopped {
    pub fn stop(node: usize) -> NodeStopped {
        if let Err(e) = cluster(&["ctl", &node.to_string(), "stop_app"]) {
            panic!("could not stop node {node}: {e}");
        }
        NodeStopped(node)
    }

    pub fn start(self) {
        let node = self.0.to_string();
        std::mem::forget(self);
        cluster(&["ctl", &node, "start_app"]).unwrap();
        cluster(&["ctl", &node, "await_startup"]).unwrap();
    }
}

impl Drop for NodeStopped {
    fn drop(&mut self) {
        let node = self.0.to_string();
        let _ = cluster(&["ctl", &node, "start_app"]);
        let _ = cluster(&["ctl", &node, "await_startup"]);
    }
}

/// The node (1-3) the bridge says in `/metrics` (`jelou_bridge_broker_node`) it is connected
/// to, found by its port; None while it has no connection.
pub async fn connected_node(bridge: &BridgeProcess, urls: &[String]) -> Option<usize> {
    let text = reqwest::get(format!("{}/metrics", bridge.http))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("jelou_bridge_broker_node{") && l.ends_with(" 1"))?;
    assert!(
        !line.contains("guest:guest"),
        "/metrics shows a password: {line}"
    );
    urls.iter()
        .position(|u| {
            let port = u.rsplit(':').next().unwrap().split('/').next().unwrap();
            line.contains(&format!(":{port}/"))
        })
        .map(|i| i + 1)
}

/// Waits until the bridge is ready on a node other than `lost`; that node.
pub async fn ready_on_another_node(bridge: &BridgeProcess, urls: &[String], lost: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if bridge.readyz().await == Some(200) {
            if let Some(node) = connected_node(bridge, urls).await.filter(|n| *n != lost) {
                return node;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not ready on another node than {lost} within 60s; log:\n{}",
            bridge.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` polled every 10 ms in the background: the statuses in the order they changed
/// (None: no answer). A reconnection takes longer than the reconnection backoff's first step
/// (100 ms in the scenarios), so a 503 in between cannot slip through unseen.
pub struct ReadyzWatch {
    changes: Arc<Mutex<Vec<Option<u16>>>>,
    /// Stops the poller when the watch is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl ReadyzWatch {
    pub fn start(bridge: &BridgeProcess) -> ReadyzWatch {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (url, seen, token) = (
            format!("{}/readyz", bridge.http),
            changes.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !token.is_cancelled() {
                let status = client
                    .get(&url)
                    // Generous: on a busy 2-core machine a slow answer is not "no answer".
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        ReadyzWatch {
            changes,
            _stop: stop.drop_guard(),
        }
    }

    pub fn changes(&self) -> Vec<Option<u16>> {
        self.changes.lock().unwrap().clone()
    }
}

/// How many of the tickets `T-0 … T-<n-1>` have a `conversation.started`, sampled every 50 ms
/// in the background: the instants at which that number grew.
pub struct Progress {
    rises: Arc<Mutex<Vec<Instant>>>,
    /// Stops the sampler when the progress is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl Progress {
    pub fn start(observer: Arc<Observer>, n: usize) -> Progress {
        let rises = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (seen, token) = (rises.clone(), stop.clone());
        tokio::spawn(async move {
            let mut done = observer.tally().count(n, |r| !r.started.is_empty());
            while !token.is_cancelled() && done < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = observer.tally().count(n, |r| !r.started.is_empty());
                if now > done {
                    seen.lock().unwrap().push(Instant::now());
                    done = now;
                }
            }
        });
        Progress {
            rises,
            _stop: stop.drop_guard(),
        }
    }

    /// The longest time after `from` in which no ticket got its first `conversation.started`
    /// (what a node loss costs, with `from` the loss).
    pub fn longest_stall_since(&self, from: Instant) -> Duration {
        let rises = self.rises.lock().unwrap();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for &rise in rises.iter().filter(|r| **r > from) {
            longest = longest.max(rise - previous);
            previous = rise;
        }
        longest
    }
}

/// From the bridge's JSON log: the time between its first "lost the broker node" and the
/// next "consuming" (on the new node): how long the reconnection itself took.
pub fn reconnection_time(log: &str) -> Option<Duration> {
    let at = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        humantime::parse_rfc3339_weak(v["timestamp"].as_str()?.trim_end_matches('Z')).ok()
    };
    let mut lines = log.lines();
    let lost = lines.find(|l| l.contains("\"lost the broker node"))?;
    let back = lines.find(|l| l.contains("\"message\":\"consuming\""))?;
    at(back)?.duration_since(at(lost)?).ok()
}

/// Tickets whose `conversation.started` came more than once (always with the one
/// conversation id: [`Tally::assert_one_conversation_each`] checks that).
pub fn repeated_started(tally: &Tally) -> usize {
    tally
        .tickets
        .values()
        .filter(|r| r.started.len() > 1)
        .count()
}
