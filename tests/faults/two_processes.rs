//! Two bridge processes consuming one queue and sharing one PostgreSQL store.

use std::time::Duration;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 1000;
/// A ticket's resolve is published this many opens after its own open.
const LAG: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_store_start_each_ticket_once_and_never_close_first() {
    let scenario = Scenario::new(
        StoreKind::Postgres,
        Duration::ZERO,
        &[("AMQP__PREFETCH", "32")],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let a = scenario.start_bridge().await;
    let b = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    // open 0, open 1, open 2, open 3, resolve 0, open 4, resolve 1, …: each ticket's two
    // events close together, so the two processes often get one each.
    helpdesk
        .publish_all(opened_then_resolved(TICKETS, LAG))
        .await;
    helpdesk.close().await;

    let tally = observer
        .wait_for("every ticket closed", Duration::from_secs(120), |t| {
            t.all_closed(TICKETS) || !t.failures().is_empty()
        })
        .await;
    tally.assert_one_conversation_each(TICKETS);
    assert!(tally.all_closed(TICKETS));

    assert_one_start_call_each(&scenario.mock, TICKETS);
    assert_one_close_call_each_after_its_start(&scenario.mock, TICKETS);
    for bridge in [&a, &b] {
        let handled = bridge.metric("jelou_bridge_ticket_events_total", &[]).await;
        eprintln!("{} handled {handled} ticket events", bridge.http);
        assert!(handled > 0.0, "both processes did part of the work");
    }
    assert_nothing_dead_lettered(&scenario).await;
}
