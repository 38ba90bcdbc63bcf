//! Chaos on the real thing: two bridge processes on one PostgreSQL store, a stand-in that
//! fails 10 % of calls and keeps one active conversation per bot + user, one process killed
//! (`kill -9`) twice, and the broker restarted, while 2,000 tickets are opened and resolved.

use std::time::Duration;

use jelou_bridge::jelou::mock::MockOptions;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 2000;
/// A ticket's resolve is published this many opens after its own open.
const LAG: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_jelou_failing_kills_and_a_broker_restart_end_every_ticket_closed_once() {
    let scenario = Scenario::with_mock(
        StoreKind::Postgres,
        MockOptions {
            fail_rate: 0.10,
            fail_status: 503,
            ..MockOptions::default()
        },
        &[
            ("AMQP__PREFETCH", "32"),
            ("STORE__UNKNOWN_TICKET_WAIT", "10s"),
        ],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let mut a = scenario.start_bridge().await;
    let _b = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk
        .publish_all(opened_then_resolved(TICKETS, LAG))
        .await;
    helpdesk.close().await;

    let closed = |n: usize| move |t: &Tally| t.count(TICKETS, |r| !r.closed.is_empty()) >= n;
    observer
        .wait_for(
            "a quarter closed",
            Duration::from_secs(120),
            closed(TICKETS / 4),
        )
        .await;
    a.kill9();
    a = scenario.start_bridge().await;
    observer
        .wait_for("half closed", Duration::from_secs(120), closed(TICKETS / 2))
        .await;
    {
        let _lock = broker_lock().await;
        let stopped = BrokerStopped::stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stopped.start();
    }
    observer
        .wait_for(
            "three quarters closed",
            Duration::from_secs(180),
            closed(TICKETS * 3 / 4),
        )
        .await;
    a.kill9();
    let _a = scenario.start_bridge().await;

    let tally = observer
        .wait_for("every ticket closed", Duration::from_secs(240), |t| {
            t.all_closed(TICKETS)
        })
        .await;
    tally.assert_one_conversation_each(TICKETS);
    assert!(
        scenario.mock.active_conversations().is_empty(),
        "conversations left open in Jelou: {:?}",
        scenario.mock.active_conversations().len()
    );
    let store = scenario.store().await;
    let open = store
        .list(Some(jelou_bridge::store::TicketState::Active), 10)
        .await
        .unwrap();
    assert!(open.is_empty(), "tickets the store believes open: {open:?}");
    store.close().await;
    assert_nothing_dead_lettered(&scenario).await;
    eprintln!(
        "chaos: {TICKETS} tickets closed once each; {} calls to the stand-in",
        scenario.mock.call_count()
    );
}
