//! Jelou's webhooks in the store, and a store reopened.

use std::time::Duration;

use jelou_bridge::store::{CloseClaim, TicketState};

use super::{claimed, started, Backend, LEASE};

pub(super) async fn jelou_webhooks_update_tickets(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    claimed(&a, "T-1").await;
    b.note_conversation_started("T-1", "conv-hook", Some("room-hook"))
        .await
        .unwrap();
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.conversation_id.as_deref(), Some("conv-hook"));
    assert_eq!(row.room_id.as_deref(), Some("room-hook"));
    a.finish_start("T-1", "conv-hook").await.unwrap();
    started(&a, "T-2", "conv-2").await;

    b.note_conversation_closed("conv-hook", Some("closed_by_operator"))
        .await
        .unwrap();
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(row.ended_reason.as_deref(), Some("closed_by_operator"));
    assert!(
        matches!(
            a.claim_close("T-1").await.unwrap(),
            CloseClaim::AlreadyClosed(_)
        ),
        "a later ticket.resolved makes no close call"
    );
    assert_eq!(
        a.get("T-2").await.unwrap().unwrap().state,
        TicketState::Active,
        "other tickets untouched"
    );
}

pub(super) async fn webhook_deliveries_are_remembered_once(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    use jelou_bridge::store::WebhookClaim::*;
    let stale = Duration::from_millis(300);
    assert_eq!(a.claim_webhook("evt-1", stale).await.unwrap(), Claimed);
    assert_eq!(
        b.claim_webhook("evt-1", stale).await.unwrap(),
        InFlight,
        "claimed, not yet published"
    );
    a.mark_webhook_published("evt-1").await.unwrap();
    assert_eq!(
        b.claim_webhook("evt-1", stale).await.unwrap(),
        Published,
        "seen before"
    );
    assert_eq!(b.claim_webhook("evt-2", stale).await.unwrap(), Claimed);
    a.forget_webhook("evt-2").await.unwrap();
    assert_eq!(
        b.claim_webhook("evt-2", stale).await.unwrap(),
        Claimed,
        "forgotten"
    );
    // The claimer died before publishing: once its claim is stale, a repeat takes it.
    assert_eq!(a.claim_webhook("evt-3", stale).await.unwrap(), Claimed);
    tokio::time::sleep(stale + Duration::from_millis(50)).await;
    assert_eq!(
        b.claim_webhook("evt-3", stale).await.unwrap(),
        Claimed,
        "stale claim taken over"
    );
    assert_eq!(a.claim_webhook("evt-3", stale).await.unwrap(), InFlight);
}

pub(super) async fn reopening_keeps_what_was_stored(backend: Backend) {
    let a = backend.open("a", LEASE).await;
    started(&a, "T-1", "conv-1").await;
    a.ping().await.unwrap();
    a.close().await;
    let again = backend.open("a2", LEASE).await; // migrations run again, harmlessly
    assert_eq!(
        again
            .get("T-1")
            .await
            .unwrap()
            .unwrap()
            .conversation_id
            .as_deref(),
        Some("conv-1")
    );
}
