//! RabbitMQ stopped and started again under load (`rabbitmqctl stop_app` / `start_app`).

use std::time::Duration;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_under_load_reconnects_and_every_ticket_gets_one_result() {
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::from_millis(100),
        &[("AMQP__PREFETCH", "8")],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let bridge = scenario.start_bridge().await;
    burst_under_way(&scenario, &observer, TICKETS, 20).await;

    let _lock = broker_lock().await;
    let stopped = BrokerStopped::stop();
    bridge.wait_readyz(503, Duration::from_secs(15)).await;
    let done_while_down = observer.tally().count(TICKETS, |r| !r.started.is_empty());
    assert!(
        done_while_down < TICKETS,
        "the broker went down under load ({done_while_down} of {TICKETS} done)"
    );
    stopped.start();
    bridge.wait_ready(Duration::from_secs(60)).await;

    observer.wait_all_started(TICKETS).await;
    assert_one_start_call_each(&scenario.mock, TICKETS);

    let log = bridge.log();
    assert!(
        log.contains("broker unavailable; retrying"),
        "the bridge retried with backoff while the broker was down"
    );
    assert!(
        log.matches("\"consuming\"").count() >= 2,
        "the bridge consumed again on a fresh session after the restart"
    );
    assert_eq!(depth(&scenario.queue).await, 0, "nothing left in the queue");
    assert_nothing_dead_lettered(&scenario).await;
}
