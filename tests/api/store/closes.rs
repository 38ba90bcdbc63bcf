//! Closes: claimed once, served from ids alone, failed, or of a ticket never seen.

use jelou_bridge::store::{CloseClaim, StartClaim, TicketState};

use super::{claimed, started, Backend, LEASE};

pub(super) async fn close_is_claimed_once_and_recorded(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    assert_eq!(a.claim_close("T-1").await.unwrap(), CloseClaim::Unknown);
    claimed(&a, "T-1").await;
    assert!(
        matches!(b.claim_close("T-1").await.unwrap(), CloseClaim::Pending(r) if r.state == TicketState::Starting),
        "no close before the start is recorded"
    );
    a.finish_start("T-1", "conv-1").await.unwrap();

    let CloseClaim::Claimed(row) = b.claim_close("T-1").await.unwrap() else {
        panic!("an active ticket can be closed");
    };
    assert_eq!(row.state, TicketState::Closing);
    assert_eq!(row.owner.as_deref(), Some("b"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv-1"));
    assert_eq!(
        (row.bot_id.as_deref(), row.user_id.as_deref()),
        (Some("BOT"), Some("U-T-1"))
    );
    assert!(matches!(
        a.claim_close("T-1").await.unwrap(),
        CloseClaim::Pending(r) if r.state == TicketState::Closing
    ));

    let row = b.finish_close("T-1", None, Some("resolved")).await.unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(
        row.conversation_id.as_deref(),
        Some("conv-1"),
        "kept when Jelou names none"
    );
    assert_eq!(row.ended_reason.as_deref(), Some("resolved"));
    assert_eq!((row.owner, row.lease_until), (None, None));
    for store in [&a, &b] {
        assert!(matches!(
            store.claim_close("T-1").await.unwrap(),
            CloseClaim::AlreadyClosed(r) if r.conversation_id.as_deref() == Some("conv-1")
        ));
        assert!(matches!(
            store.claim_start("T-1", "BOT", "USER").await.unwrap(),
            StartClaim::AlreadyStarted(_)
        ));
    }
    let closed = a.list(Some(TicketState::Closed), 10).await.unwrap();
    assert_eq!(closed.len(), 1);
    assert!(a
        .list(Some(TicketState::Active), 10)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn a_close_with_ids_serves_a_ticket_never_started(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    let CloseClaim::Claimed(row) = a.claim_close_unknown("T-1", "BOT", "USER").await.unwrap()
    else {
        panic!("an unknown ticket with ids can be closed");
    };
    assert_eq!(row.state, TicketState::Closing);
    assert_eq!(row.conversation_id, None);
    assert!(matches!(
        b.claim_close_unknown("T-1", "BOT", "USER").await.unwrap(),
        CloseClaim::Pending(_)
    ));
    a.fail_close("T-1", "404 no conversation").await.unwrap();
    assert_eq!(
        a.get("T-1").await.unwrap().unwrap().state,
        TicketState::Failed,
        "nothing to go back to"
    );
}

pub(super) async fn a_failed_close_leaves_the_conversation_active(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    started(&a, "T-1", "conv-1").await;
    assert!(matches!(
        a.claim_close("T-1").await.unwrap(),
        CloseClaim::Claimed(_)
    ));
    a.fail_close("T-1", "422").await.unwrap();
    let row = b.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Active);
    assert_eq!(row.last_error.as_deref(), Some("422"));
    assert!(matches!(
        b.claim_close("T-1").await.unwrap(),
        CloseClaim::Claimed(_)
    ));
}

pub(super) async fn a_resolve_of_an_unknown_ticket_without_ids_is_recorded(backend: Backend) {
    let (a, _) = backend.pair(LEASE).await;
    assert_eq!(
        a.resolve_unstarted("T-1").await.unwrap(),
        CloseClaim::Unknown
    );
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(row.ended_reason.as_deref(), Some("never_started"));
    // An open afterwards starts nothing.
    assert!(matches!(
        a.claim_start("T-1", "BOT", "U").await.unwrap(),
        StartClaim::AlreadyStarted(r) if r.state == TicketState::Closed
    ));
}
