//! Duplicate publishes of the same ticket events (same and different `message_id`), spread
//! over two processes sharing a PostgreSQL store: one conversation per ticket.

use std::time::Duration;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_ticket_events_over_two_processes_make_one_conversation() {
    let scenario = Scenario::new(StoreKind::Postgres, Duration::from_millis(20), &[]).await;
    let observer = Observer::start(&scenario).await;
    // Both run to the end of the test.
    let _a = scenario.start_bridge().await;
    let _b = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    let mut events = Vec::new();
    for i in 0..TICKETS {
        let (key, body, id) = opened(i);
        events.push((key, body.clone(), id.clone()));
        events.push((key, body.clone(), id.clone())); // same message_id
        events.push((key, body, format!("{id}-again"))); // a new message_id
        let (key, body, id) = resolved(i);
        events.push((key, body.clone(), id.clone()));
        events.push((key, body, format!("{id}-again")));
    }
    helpdesk.publish_all(events).await;
    helpdesk.close().await;

    let tally = observer
        .wait_for("every copy answered", Duration::from_secs(60), |t| {
            t.count(TICKETS, |r| r.started.len() == 3 && r.closed.len() == 2) == TICKETS
                || !t.failures().is_empty()
        })
        .await;
    tally.assert_one_conversation_each(TICKETS);
    assert_one_start_call_each(&scenario.mock, TICKETS);
    assert_one_close_call_each_after_its_start(&scenario.mock, TICKETS);
    assert_nothing_dead_lettered(&scenario).await;
}
