//! The bridge on a private 3-node RabbitMQ cluster (`scripts/cluster.sh`, started here when it
//! is not running: a machine where it cannot start fails these tests, it does not skip them),
//! with `amqp.failover_urls` naming the other nodes, losing nodes under load. Quorum queues
//! are replicated on all three nodes, so the queue outlives any one of them; what these tests
//! check is that the bridge follows it to another node, and loses and repeats nothing on the
//! way. Only the cluster's nodes are stopped, never the main broker on 5672, and every stop
//! holds [`broker_lock`].

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jelou_bridge::jelou::Endpoint;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

/// Runs `scripts/cluster.sh` with `args`; its stdout, or why it failed.
fn cluster(args: &[&str]) -> Result<String, String> {
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
fn cluster_urls() -> Vec<String> {
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
struct NodeStopped(usize);

impl NodeStopped {
    fn stop(node: usize) -> NodeStopped {
        if let Err(e) = cluster(&["ctl", &node.to_string(), "stop_app"]) {
            panic!("could not stop node {node}: {e}");
        }
        NodeStopped(node)
    }

    fn start(self) {
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
async fn connected_node(bridge: &BridgeProcess, urls: &[String]) -> Option<usize> {
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
async fn ready_on_another_node(bridge: &BridgeProcess, urls: &[String], lost: usize) -> usize {
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
struct ReadyzWatch {
    changes: Arc<Mutex<Vec<Option<u16>>>>,
    /// Stops the poller when the watch is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl ReadyzWatch {
    fn start(bridge: &BridgeProcess) -> ReadyzWatch {
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

    fn changes(&self) -> Vec<Option<u16>> {
        self.changes.lock().unwrap().clone()
    }
}

/// How many of the tickets `T-0 … T-<n-1>` have a `conversation.started`, sampled every 50 ms
/// in the background: the instants at which that number grew.
struct Progress {
    rises: Arc<Mutex<Vec<Instant>>>,
    /// Stops the sampler when the progress is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl Progress {
    fn start(observer: Arc<Observer>, n: usize) -> Progress {
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
    fn longest_stall_since(&self, from: Instant) -> Duration {
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
fn reconnection_time(log: &str) -> Option<Duration> {
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
fn repeated_started(tally: &Tally) -> usize {
    tally
        .tickets
        .values()
        .filter(|r| r.started.len() > 1)
        .count()
}

const LOSS_TICKETS: usize = 1000;
const LOSS_PREFETCH: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_the_bridge_is_on_moves_it_to_another_node_and_loses_no_ticket() {
    let urls = cluster_urls();
    let scenario = Scenario::on_broker(
        urls.clone(),
        StoreKind::Sqlite,
        Duration::from_millis(200),
        &[("AMQP__PREFETCH", &LOSS_PREFETCH.to_string())],
    )
    .await;
    let observer = Arc::new(Observer::start(&scenario).await);
    let bridge = scenario.start_bridge().await;
    let first = connected_node(&bridge, &urls)
        .await
        .expect("/metrics names the node the bridge is on");
    burst_under_way(&scenario, &observer, LOSS_TICKETS, 100).await;

    let readyz = ReadyzWatch::start(&bridge);
    let progress = Progress::start(observer.clone(), LOSS_TICKETS);
    let _lock = broker_lock().await;
    let lost_at = Instant::now();
    let stopped = NodeStopped::stop(first);
    let done_at_loss = observer
        .tally()
        .count(LOSS_TICKETS, |r| !r.started.is_empty());
    assert!(
        done_at_loss < LOSS_TICKETS,
        "the node went down under load ({done_at_loss} of {LOSS_TICKETS} done)"
    );
    let second = ready_on_another_node(&bridge, &urls, first).await;
    let tally = observer.wait_all_started(LOSS_TICKETS).await;
    let stall = progress.longest_stall_since(lost_at);
    eprintln!(
        "node loss: the bridge moved from node {first} to node {second} with {done_at_loss} of \
         {LOSS_TICKETS} tickets done; longest time without a ticket getting its result: {:.1}s",
        stall.as_secs_f64()
    );
    stopped.start();
    // The failure was two minutes without progress; the bridge must do better than
    // its own slowest reconnection step (reconnect_max_delay is 1 s in the scenarios) plus a
    // quorum queue's leader election.
    assert!(
        stall < Duration::from_secs(15),
        "a node loss stalled the bridge for {stall:?}"
    );

    let changes = readyz.changes();
    let down = changes
        .iter()
        .position(|s| *s == Some(503))
        .unwrap_or_else(|| panic!("/readyz never said 503: {changes:?}"));
    assert!(
        changes[down..].contains(&Some(200)),
        "/readyz came back to 200 after the 503: {changes:?}"
    );
    assert!(
        !changes.contains(&None),
        "/readyz always answered (the bridge never went away): {changes:?}"
    );

    let repeats = repeated_started(&tally);
    let log = bridge.log();
    let reconnection = reconnection_time(&log).expect("the log shows the loss and the return");
    eprintln!(
        "node loss: consuming on node {second} {:.2}s after losing node {first}",
        reconnection.as_secs_f64()
    );
    eprintln!(
        "node loss: {repeats} tickets had conversation.started published again; {} outcomes \
         could not be published (confirm unknown) and went back to the queue; {} acks lost",
        log.matches("could not publish the outcome").count(),
        log.matches("could not ack").count()
    );
    let starts = scenario.mock.calls_to(Endpoint::Start).len();
    assert!(
        starts <= LOSS_TICKETS + LOSS_PREFETCH,
        "{starts} start calls for {LOSS_TICKETS} tickets (prefetch {LOSS_PREFETCH})"
    );
    assert_one_start_call_each(&scenario.mock, LOSS_TICKETS);
    assert!(
        log.contains("lost the broker node"),
        "the bridge said it lost its node"
    );
    assert!(
        !log.contains("guest:guest"),
        "no broker password in the log"
    );
    assert_eq!(scenario.depth(&scenario.queue).await, 0, "nothing left");
    assert_nothing_dead_lettered(&scenario).await;
}

const ROLLING_TICKETS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing_and_starts_nothing_twice() {
    let urls = cluster_urls();
    // Prefetch 6 at 200 ms a call: about 30 tickets a second, so the burst outlasts the
    // three restarts (about 15 s here) with room for a slower machine.
    let scenario = Scenario::on_broker(
        urls.clone(),
        StoreKind::Sqlite,
        Duration::from_millis(200),
        &[("AMQP__PREFETCH", "6")],
    )
    .await;
    let observer = Arc::new(Observer::start(&scenario).await);
    let bridge = scenario.start_bridge().await;
    burst_under_way(&scenario, &observer, ROLLING_TICKETS, 50).await;

    let progress = Progress::start(observer.clone(), ROLLING_TICKETS);
    let _lock = broker_lock().await;
    let restart_at = Instant::now();
    let mut done_before_last = 0;
    for node in 1..=3 {
        // As an operator would: never stop a node the quorum queues cannot do without.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = cluster(&[
            "diag",
            &node.to_string(),
            "check_if_node_is_quorum_critical",
        ]) {
            assert!(Instant::now() < deadline, "node {node} stays critical: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        done_before_last = observer
            .tally()
            .count(ROLLING_TICKETS, |r| !r.started.is_empty());
        let stopped = NodeStopped::stop(node);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            bridge.exited().is_none(),
            "the bridge kept running while node {node} was down; log:\n{}",
            bridge.log_tail(30)
        );
        stopped.start();
    }
    assert!(
        done_before_last < ROLLING_TICKETS,
        "the load lasted until the last restart ({done_before_last} of {ROLLING_TICKETS} done)"
    );

    let tally = observer.wait_all_started(ROLLING_TICKETS).await;
    let stall = progress.longest_stall_since(restart_at);
    eprintln!(
        "rolling restart: {done_before_last} of {ROLLING_TICKETS} tickets done before the last \
         node stopped; longest time without a ticket getting its result: {:.1}s; {} tickets \
         had conversation.started published again; the bridge lost its node {} times",
        stall.as_secs_f64(),
        repeated_started(&tally),
        bridge.log().matches("lost the broker node").count()
    );
    assert!(
        stall < Duration::from_secs(15),
        "a node's restart stalled the bridge for {stall:?}"
    );
    assert_one_start_call_each(&scenario.mock, ROLLING_TICKETS);
    assert!(bridge.exited().is_none(), "the bridge never exited");
    bridge.wait_ready(Duration::from_secs(30)).await;
    assert!(
        bridge.log().contains("lost the broker node"),
        "the bridge's own node went down during the rolling restart"
    );
    assert_eq!(scenario.depth(&scenario.queue).await, 0, "nothing left");
    assert_nothing_dead_lettered(&scenario).await;
}

const SHARD_TICKETS: usize = 600;
/// How far a ticket's `ticket.resolved` trails its `ticket.opened` in the publish sequence:
/// both events of one ticket are queued at once, in the same shard.
const LAG: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sharded_topology_on_the_cluster_keeps_each_tickets_order_through_a_node_loss() {
    let urls = cluster_urls();
    let mut scenario = Scenario::on_broker(
        urls.clone(),
        StoreKind::Postgres,
        Duration::from_millis(200),
        &[("AMQP__PREFETCH", "8")],
    )
    .await;
    scenario.shard(4, 2);
    let observer = Arc::new(Observer::start(&scenario).await);
    let mut replicas = [
        scenario.start_replica(0).await,
        scenario.start_replica(1).await,
    ];
    let helpdesk = Helpdesk::connect(&scenario).await;
    let events = (0..SHARD_TICKETS + LAG).flat_map(|i| {
        let open = (i < SHARD_TICKETS).then(|| opened(i));
        let resolve = i.checked_sub(LAG).map(resolved);
        open.into_iter().chain(resolve)
    });
    helpdesk.publish_all(events).await;
    helpdesk.close().await;
    observer
        .wait_for("the burst under way", Duration::from_secs(60), |t| {
            t.count(SHARD_TICKETS, |r| !r.closed.is_empty()) >= 50
        })
        .await;

    let lost = connected_node(&replicas[0], &urls)
        .await
        .expect("/metrics names the node replica 0 is on");
    let _lock = broker_lock().await;
    let stopped = NodeStopped::stop(lost);
    let done_at_loss = observer
        .tally()
        .count(SHARD_TICKETS, |r| !r.closed.is_empty());
    assert!(
        done_at_loss < SHARD_TICKETS,
        "the node went down under load ({done_at_loss} of {SHARD_TICKETS} closed)"
    );
    let tally = observer
        .wait_for("every ticket closed", Duration::from_secs(120), |t| {
            t.all_closed(SHARD_TICKETS)
        })
        .await;
    stopped.start();

    tally.assert_one_conversation_each(SHARD_TICKETS);
    // Per-ticket order on the bus: a ticket's conversation is announced started before it is
    // announced closed (a repeated `conversation.started` may follow, never precede, that).
    let seen = observer.seen();
    for i in 0..SHARD_TICKETS {
        let t = format!("T-{i}");
        let first = |key: &str| {
            seen.iter()
                .position(|s| s.ticket() == t && s.routing_key == key)
                .unwrap_or_else(|| panic!("{t}: no {key}"))
        };
        assert!(
            first("conversation.started") < first("conversation.closed"),
            "{t}: closed before it was started on the bus"
        );
    }
    assert_one_start_call_each(&scenario.mock, SHARD_TICKETS);
    assert_one_close_call_each_after_its_start(&scenario.mock, SHARD_TICKETS);
    for (i, replica) in replicas.iter_mut().enumerate() {
        assert!(replica.exited().is_none(), "replica {i} kept running");
    }
    assert!(
        replicas[0].log().contains("lost the broker node"),
        "replica 0 lost its node"
    );
    for shard in &scenario.shards {
        assert_eq!(scenario.depth(shard).await, 0, "{shard} drained");
    }
    assert_nothing_dead_lettered(&scenario).await;
}
