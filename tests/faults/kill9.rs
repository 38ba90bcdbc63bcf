//! `kill -9` in the middle of a burst, then a restart on the same store.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 500;
const PREFETCH: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_then_restart_loses_nothing_and_starts_each_ticket_once() {
    // A 2 s lease: the killed process's hold on the tickets it was starting expires quickly,
    // and the restarted one takes them over (claim_start: `lease_until < now`).
    // 100 ms a call: 32 in flight make ~320 tickets/s, so the burst is well under way, and
    // not over, when the kill comes.
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::from_millis(100),
        &[
            ("AMQP__PREFETCH", &PREFETCH.to_string()),
            ("STORE__LEASE", "2s"),
        ],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let first = scenario.start_bridge().await;
    burst_under_way(&scenario, &observer, TICKETS, TICKETS / 5).await;
    first.kill9();
    let calls_at_kill = scenario.mock.calls_to(Endpoint::Start).len();
    // What the store had recorded when the process died.
    let store = scenario.store().await;
    let mut recorded_at_kill = Vec::new();
    for i in 0..TICKETS {
        let ticket = format!("T-{i}");
        if let Some(r) = store.get(&ticket).await.unwrap() {
            if r.state == jelou_bridge::store::TicketState::Active {
                recorded_at_kill.push(ticket);
            }
        }
    }
    store.close().await;
    let done_at_kill = observer.tally().count(TICKETS, |r| !r.started.is_empty());
    assert!(
        calls_at_kill < TICKETS,
        "the kill came mid-burst ({calls_at_kill} start calls already)"
    );

    let _second = scenario.start_bridge().await;
    observer.wait_all_started(TICKETS).await;

    let starts = calls_per_ticket(&scenario.mock, Endpoint::Start);
    let total: usize = starts.values().map(Vec::len).sum();
    let twice: Vec<_> = starts.iter().filter(|(_, c)| c.len() > 1).collect();
    eprintln!(
        "kill -9 after {done_at_kill} results and {calls_at_kill} start calls; {total} start \
         calls in all, {} tickets started twice",
        twice.len()
    );
    assert!(
        total <= TICKETS + PREFETCH,
        "{total} start calls for {TICKETS} tickets: more than the in-flight window ({PREFETCH}) again"
    );
    assert!(
        twice.iter().all(|(_, c)| c.len() == 2),
        "no ticket started more than twice"
    );
    // A crash after the record repeats only the publish: every ticket the store had
    // recorded at the kill was started once, whatever was redelivered.
    assert!(
        !recorded_at_kill.is_empty(),
        "the kill came after some records"
    );
    for t in &recorded_at_kill {
        assert_eq!(
            starts.get(t).map(Vec::len),
            Some(1),
            "{t} was recorded before the kill, yet started again"
        );
    }
    // Only tickets in flight at the kill (claimed, not recorded) may have been repeated.
    assert!(
        twice.len() <= PREFETCH,
        "{} tickets started twice: more than were in flight",
        twice.len()
    );
    assert!(
        scenario.mock.calls_to(Endpoint::Start).len() > calls_at_kill,
        "the restarted bridge did the rest ({done_at_kill} done at the kill)"
    );
    assert_eq!(depth(&scenario.queue).await, 0, "nothing left in the queue");
    assert_nothing_dead_lettered(&scenario).await;
}
