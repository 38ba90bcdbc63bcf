//! `kill -9` after Jelou closed a conversation and before the bridge recorded it: the
//! redelivered resolve must end as `conversation.closed`, not as a dead letter.

use std::time::{Duration, Instant};

use jelou_bridge::jelou::Endpoint;
use jelou_bridge::store::TicketState;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_jelous_close_and_the_store_write_still_ends_closed() {
    let scenario = Scenario::new(StoreKind::Sqlite, Duration::ZERO, &[]).await;
    let observer = Observer::start(&scenario).await;
    let first = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk.publish_all([opened(0), opened(1)]).await;
    let started = observer.wait_all_started(2).await;
    let conversation = started.tickets["T-0"].started[0].clone();

    // The next close takes effect in Jelou at once but its answer never comes in time.
    scenario
        .mock
        .stall_next(Endpoint::Close, Duration::from_secs(120));
    helpdesk.publish_all([resolved(0)]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while scenario.mock.conversation(&conversation).unwrap().state != "closed" {
        assert!(Instant::now() < deadline, "Jelou never got the close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = scenario.store().await;
    let row = store.get("T-0").await.unwrap().unwrap();
    assert_eq!(
        row.state,
        TicketState::Closing,
        "killed before the store knew"
    );
    first.kill9();

    let _second = scenario.start_bridge().await;
    let tally = observer
        .wait_for("T-0 closed", Duration::from_secs(60), |t| {
            t.tickets
                .get("T-0")
                .is_some_and(|r| !r.closed.is_empty() || !r.failed.is_empty())
        })
        .await;
    let t0 = &tally.tickets["T-0"];
    assert!(t0.failed.is_empty(), "no ticket.failed: {:?}", t0.failed);
    assert_eq!(t0.closed, std::slice::from_ref(&conversation));
    let row = store.get("T-0").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(row.ended_reason.as_deref(), Some("closed_by_operator"));
    // T-1, the other ticket, is untouched.
    let t1 = &tally.tickets["T-1"].started[0];
    assert_eq!(scenario.mock.conversation(t1).unwrap().state, "active");
    assert_nothing_dead_lettered(&scenario).await;
    assert_eq!(depth(&scenario.queue).await, 0);
    store.close().await;
    helpdesk.close().await;
}
