//! Jelou down for longer than the in-process retry budget: messages wait in the delay queues
//! and all complete once it is back, in order per ticket.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 40;
const MAX_ATTEMPTS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jelou_down_parks_messages_in_the_delay_queues_and_all_complete_when_it_is_back() {
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::ZERO,
        &[
            ("RETRY__MAX_ATTEMPTS", &MAX_ATTEMPTS.to_string()),
            ("RETRY__MIN_DELAY", "20ms"),
            ("RETRY__MAX_DELAY", "50ms"),
            ("RETRY__DELAYS", "1s,2s"),
            ("STORE__UNKNOWN_TICKET_WAIT", "500ms"),
            // The in-process attempts and the delay queues are what this test is about; the
            // circuit breaker (tests/api/pressure.rs) would spare most of those calls.
            ("JELOU__BREAKER_FAILURES", "0"),
        ],
    )
    .await;
    scenario.mock.set_down(Some(503));
    let observer = Observer::start(&scenario).await;
    let bridge = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    // Each ticket opened then resolved: the resolve must wait for a start that is parked.
    helpdesk
        .publish_all((0..TICKETS).flat_map(|i| [opened(i), resolved(i)]))
        .await;

    // Down until every ticket's start has used up its in-process attempts, been parked, come
    // back from the delay queue and failed again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The most messages seen waiting in the delay queues at once: parked means there.
    let mut most_parked = 0;
    loop {
        let parked_now =
            depth(&scenario.delay_queue("1s")).await + depth(&scenario.delay_queue("2s")).await;
        most_parked = most_parked.max(parked_now);
        let starts = calls_per_ticket(&scenario.mock, Endpoint::Start);
        let came_back = (0..TICKETS)
            .filter(|i| {
                starts
                    .get(&format!("T-{i}"))
                    .is_some_and(|c| c.len() > MAX_ATTEMPTS)
            })
            .count();
        if came_back == TICKETS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {came_back} of {TICKETS} tickets came back from the delay queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bridge.metric("jelou_bridge_parked_total", &[]).await >= TICKETS as f64);
    assert!(
        observer.tally().tickets.is_empty(),
        "nothing decided while Jelou is down"
    );
    assert!(
        scenario.mock.calls_to(Endpoint::Close).is_empty(),
        "no close while its start is parked"
    );
    // The delay tiers are queues of their own, named after their delay, and the parked
    // messages waited there (not in the bridge's prefetch window).
    assert!(
        most_parked >= (TICKETS / 2) as u32,
        "at most {most_parked} messages were seen in the delay queues"
    );

    scenario.mock.set_down(None);
    let tally = observer
        .wait_for(
            "every ticket started and closed",
            Duration::from_secs(60),
            |t| t.all_closed(TICKETS),
        )
        .await;
    tally.assert_one_conversation_each(TICKETS);

    assert_one_close_call_each_after_its_start(&scenario.mock, TICKETS);
    assert_nothing_dead_lettered(&scenario).await;
    for q in [
        scenario.queue.clone(),
        scenario.delay_queue("1s"),
        scenario.delay_queue("2s"),
    ] {
        assert_eq!(depth(&q).await, 0, "{q} empty");
    }
    helpdesk.close().await;
}
