//! SIGTERM under load: stop consuming, finish or return in-flight work, exit 0; the next
//! start carries on with nothing lost and nothing done twice.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;

use crate::harness::*;

const TICKETS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_the_next_start_finishes_the_rest_without_repeats() {
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::from_millis(100),
        &[("AMQP__PREFETCH", "8"), ("SHUTDOWN__GRACE", "10s")],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let mut first = scenario.start_bridge().await;
    burst_under_way(&scenario, &observer, TICKETS, 40).await;

    first.sigterm();
    let status = first.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", first.log_tail(30));
    assert!(first.log().contains("jelou-bridge stopped"));
    let calls_by_first = scenario.mock.calls_to(Endpoint::Start).len();
    eprintln!("SIGTERM: the first process started {calls_by_first} of {TICKETS} tickets");
    assert!(
        calls_by_first < TICKETS,
        "it stopped consuming: {calls_by_first} of {TICKETS} started"
    );
    wait_depth(
        &scenario.queue,
        (TICKETS - calls_by_first) as u32,
        Duration::from_secs(10),
    )
    .await;
    observer
        .wait_for(
            "every start it made published before it exited",
            Duration::from_secs(10),
            |t| t.count(TICKETS, |r| !r.started.is_empty()) == calls_by_first,
        )
        .await;

    let _second = scenario.start_bridge().await;
    observer.wait_all_started(TICKETS).await;
    assert_one_start_call_each(&scenario.mock, TICKETS);
    assert_nothing_dead_lettered(&scenario).await;
}
