//! The bridge on a private 3-node RabbitMQ cluster (`scripts/cluster.sh`, started here when it
//! is not running: a machine where it cannot start fails these tests, it does not skip them),
//! with `amqp.failover_urls` naming the other nodes, losing nodes under load. Quorum queues
//! are replicated on all three nodes, so the queue outlives any one of them; what these tests
//! check is that the bridge follows it to another node, and loses and repeats nothing on the
//! way. Only the cluster's nodes are stopped, never the main broker on 5672, and every stop
//! holds [`broker_lock`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use jelou_bridge::jelou::Endpoint;

use crate::cluster_kit::*;
use crate::harness::*;
use crate::observer::*;
use testkit::*;

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
