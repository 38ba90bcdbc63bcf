//! The decisions, taken without a broker: a real embedded store in a temporary directory and
//! the Jelou stand-in (a real HTTP server, one active conversation per bot + user), the
//! history of earlier passes given by hand.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::events::{CONVERSATION_CLOSED, CONVERSATION_STARTED};
use crate::jelou::mock::{MockJelou, MockOptions, Scripted};
use crate::jelou::Endpoint;

struct Kit {
    bridge: Bridge,
    jelou: MockJelou,
    _dir: tempfile::TempDir,
}

async fn kit(customize: impl FnOnce(&mut Settings)) -> Kit {
    let jelou = MockJelou::start("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .expect("the stand-in starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut settings = Settings::defaults();
    settings.jelou.base_url = jelou.base_url();
    settings.jelou.project_id = Some("proj-unit".into());
    settings.jelou.api_key = Some(secrecy::SecretString::from("unit-key".to_string()));
    settings.retry.min_delay = Duration::from_millis(10);
    settings.retry.max_delay = Duration::from_millis(50);
    settings.store.url = secrecy::SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("store.db").display()
    ));
    customize(&mut settings);
    let store = Store::connect(&settings.store, "unit".into())
        .await
        .expect("the store opens");
    let client = JelouClient::new(&settings.jelou, None).expect("a client");
    let bridge = Bridge::new(Arc::new(settings), client, store, CancellationToken::new());
    Kit {
        bridge,
        jelou,
        _dir: dir,
    }
}

fn event(routing_key: &str, body: Value) -> Result<TicketEvent, InvalidMessage> {
    ticket::decode(routing_key, body.to_string().as_bytes(), 1 << 20)
}

fn opened(ticket: &str, user: &str) -> Result<TicketEvent, InvalidMessage> {
    event(
        "ticket.opened",
        json!({"ticketId": ticket, "userId": user, "botId": "BOT", "initialMessage": "Hola"}),
    )
}

fn resolved(ticket: &str) -> Result<TicketEvent, InvalidMessage> {
    event(
        "ticket.resolved",
        json!({"ticketId": ticket, "closingMessage": "Resuelto"}),
    )
}

/// A first pass: seen just now, no call made before.
fn fresh() -> History {
    History {
        first_seen: now_ms(),
        ..History::default()
    }
}

fn outcome(decision: &Decision) -> (&str, Value) {
    match decision {
        Decision::Done(o) => (o.routing_key.as_str(), o.json()),
        other => panic!("expected an outcome, got {other:?}"),
    }
}

#[tokio::test]
async fn a_redelivered_open_publishes_the_same_conversation_without_a_second_start() {
    let k = kit(|_| {}).await;
    let first = k.bridge.decide(&opened("T-1", "U-1"), &fresh()).await;
    let again = k.bridge.decide(&opened("T-1", "U-1"), &fresh()).await;
    let (key, body) = outcome(&first);
    assert_eq!(key, CONVERSATION_STARTED);
    let (again_key, again_body) = outcome(&again);
    assert_eq!(again_key, key);
    assert_eq!(again_body["conversationId"], body["conversationId"]);
    assert_eq!(again_body["ticketId"], "T-1");
    assert_eq!(k.jelou.calls_to(Endpoint::Start).len(), 1);
}

#[tokio::test]
async fn a_close_closes_its_own_tickets_conversation_once() {
    let k = kit(|_| {}).await;
    let started = k.bridge.decide(&opened("T-1", "U-1"), &fresh()).await;
    let conversation = outcome(&started).1["conversationId"].clone();
    let closed = k.bridge.decide(&resolved("T-1"), &fresh()).await;
    let again = k.bridge.decide(&resolved("T-1"), &fresh()).await;
    let (key, body) = outcome(&closed);
    assert_eq!(key, CONVERSATION_CLOSED);
    assert_eq!(body["conversationId"], conversation);
    let (again_key, again_body) = outcome(&again);
    assert_eq!(again_key, key);
    assert_eq!(again_body["conversationId"], conversation);
    assert_eq!(k.jelou.calls_to(Endpoint::Close).len(), 1);
}

#[tokio::test]
async fn a_resolve_before_its_open_waits_for_the_open_without_calling_jelou() {
    let k = kit(|s| s.store.unknown_ticket_wait = Duration::from_secs(60)).await;
    let decision = k.bridge.decide(&resolved("T-early"), &fresh()).await;
    let Decision::Park(parking) = decision else {
        panic!("expected a park, got {decision:?}");
    };
    assert_eq!(parking.action, "close");
    // Parked for what is left of the wait, not a fixed tier.
    let left = parking.retry_after.expect("a wait");
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert!(k.jelou.calls().is_empty());
}

#[tokio::test]
async fn jelou_unavailable_parks_and_past_the_budget_gives_up() {
    let k = kit(|s| {
        s.retry.max_attempts = 1;
        s.retry.total_budget = Duration::from_secs(3600);
    })
    .await;
    k.jelou
        .script([Scripted::status(503), Scripted::status(503)]);
    let parked = k.bridge.decide(&opened("T-1", "U-1"), &fresh()).await;
    assert!(
        matches!(&parked, Decision::Park(p) if p.http_status == Some(503) && p.attempts == 1),
        "{parked:?}"
    );
    let long_ago = History {
        first_seen: now_ms() - 10 * 3600 * 1000,
        prior_attempts: 1,
        ..History::default()
    };
    let gave_up = k.bridge.decide(&opened("T-1", "U-1"), &long_ago).await;
    let Decision::Failed(failure) = gave_up else {
        panic!("expected a failure, got {gave_up:?}");
    };
    assert_eq!(
        failure.reason,
        crate::events::FailureReason::RetriesExhausted
    );
    assert_eq!(failure.attempts, 2);
}

#[tokio::test]
async fn a_conversation_an_earlier_pass_could_not_record_is_recorded_not_started_again() {
    let k = kit(|_| {}).await;
    let past = History {
        conversation_id: Some("conv-from-earlier".into()),
        prior_attempts: 1,
        ..fresh()
    };
    let decision = k.bridge.decide(&opened("T-1", "U-1"), &past).await;
    assert_eq!(outcome(&decision).1["conversationId"], "conv-from-earlier");
    assert!(k.jelou.calls_to(Endpoint::Start).is_empty());
}

#[tokio::test]
async fn bad_input_fails_at_once_without_a_call() {
    let k = kit(|_| {}).await;
    let bad = event("ticket.opened", json!({"ticketId": "T-1"}));
    let decision = k.bridge.decide(&bad, &fresh()).await;
    let Decision::Failed(failure) = decision else {
        panic!("expected a failure, got {decision:?}");
    };
    assert_eq!(failure.reason, crate::events::FailureReason::InvalidMessage);
    assert!(k.jelou.calls().is_empty());
}
