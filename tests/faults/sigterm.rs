//! SIGTERM under load: stop consuming, finish or return in-flight work, exit 0; the next
//! start carries on with nothing lost and nothing done twice.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

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
    let first = scenario.start_bridge().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_grace_runs_out_the_work_goes_back_and_a_second_signal_exits_at_once() {
    // Jelou takes 20 s an answer; the grace is 1 s.
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::from_secs(20),
        &[("AMQP__PREFETCH", "4"), ("SHUTDOWN__GRACE", "1s")],
    )
    .await;
    let first = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk.publish_all((0..4).map(opened)).await;
    wait_depth(&scenario.queue, 0, Duration::from_secs(10)).await;
    let started = std::time::Instant::now();
    first.sigterm();
    let status = first.wait_exit(Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", first.log_tail(30));
    assert!(
        took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        first
            .log()
            .contains("in-flight work did not finish in time"),
        "log:\n{}",
        first.log_tail(30)
    );
    // Nothing was acked: every ticket is back in the queue for the next process.
    wait_depth(&scenario.queue, 4, Duration::from_secs(10)).await;

    // A second signal during the grace exits at once, with 130 (the grace, 1 s here, would
    // end it anyway: the second signal comes 300 ms in).
    // (The first process's leases on the four tickets expire first, so the second one
    // calls Jelou for them rather than waiting on the store.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = scenario.start_bridge().await;
    wait_depth(&scenario.queue, 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    second.sigterm();
    let status = second.wait_exit(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the second signal did not exit at once"
    );
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?}; log:\n{}",
        second.log_tail(30)
    );
    wait_depth(&scenario.queue, 4, Duration::from_secs(10)).await;
    helpdesk.close().await;
}
