//! Two processes on one PostgreSQL store, one of them with a clock 30 s ahead (libfaketime):
//! leases are kept on the database's clock, so the fast one never takes over a live lease.

use std::time::Duration;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

const TICKETS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_30s_ahead_takes_over_no_live_lease() {
    // 300 ms a call, 2 s leases: every ticket is mid-call in one process when its duplicate
    // reaches the other, whose clock would call that lease long expired.
    let scenario = Scenario::new(StoreKind::Postgres, Duration::from_millis(300), &[]).await;
    let observer = Observer::start(&scenario).await;
    let _normal = scenario.start_bridge().await;
    let _fast = scenario
        .start_bridge_under(&["faketime", "-f", "+30s"])
        .await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    let mut events = Vec::new();
    for i in 0..TICKETS {
        let (key, body, id) = opened(i);
        events.push((key, body.clone(), id.clone()));
        events.push((key, body, format!("{id}-again")));
    }
    helpdesk.publish_all(events).await;
    helpdesk.close().await;
    let tally = observer
        .wait_for("both copies answered", Duration::from_secs(90), |t| {
            t.count(TICKETS, |r| r.started.len() == 2) == TICKETS || !t.failures().is_empty()
        })
        .await;
    tally.assert_one_conversation_each(TICKETS);
    assert_one_start_call_each(&scenario.mock, TICKETS);
    assert_nothing_dead_lettered(&scenario).await;
}
