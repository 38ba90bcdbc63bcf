//! Jelou's signed webhooks onto the bus, through real HTTP requests to the running bridge.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;
use secrecy::SecretString;
use serde_json::{json, Value};

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(700);
const SECRET: &str = SIGNING_SECRET;

async fn spawn_signed_app() -> TestApp {
    spawn_app_with(|s, _| s.webhook.signing_secret = Some(SecretString::from(SECRET))).await
}

/// Posts `event` signed with the test's secret, as Jelou does.
async fn post_signed(http: &str, event: &Value) -> (u16, Value) {
    post_webhook(http, SECRET, event).await
}

/// A lifecycle event shaped like Jelou's.
fn lifecycle(event: &str, conversation_id: &str, timestamp: u64, value: Value) -> Value {
    json!({
        "event": event, "timestamp": timestamp, "field": "conversation",
        "object": "conversation_event", "event_type": event.trim_start_matches("conversation."),
        "project_id": PROJECT, "room_id": "room-1",
        "contact": {"id": "U-1", "name": "Ana"}, "conversation": {"id": conversation_id},
        "bot": {"id": "B-1", "name": "Bot"}, "value": value,
    })
}

/// A customer's message as Jelou documents it: no `event` field.
fn user_message(conversation_id: &str, message_id: &str, text: &str) -> Value {
    json!({
        "timestamp": 1777992928697u64, "field": "messages", "room_id": "room-1",
        "object": "message_event", "event_type": "message", "project_id": PROJECT,
        "contact": {"id": "U-1", "name": "Ana"}, "conversation": {"id": conversation_id},
        "bot": {"id": "B-1", "name": "Bot"},
        "value": {"id": message_id, "type": "text", "content": {"body": text}},
    })
}

/// Starts `ticket` through the bus; the conversation id the bridge published.
async fn start_ticket(app: &mut TestApp, ticket: &str) -> String {
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": ticket, "userId": "U-1", "botId": "B-1"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(started.routing_key, "conversation.started");
    started.body["conversationId"].as_str().unwrap().to_string()
}

/// The contract's body for a forwarded webhook, and nothing else.
fn assert_forwarded(
    seen: &Seen,
    event: &str,
    ticket: Option<&str>,
    conversation: &str,
    sent: &Value,
) {
    assert_eq!(seen.routing_key, format!("jelou.{event}"));
    let body = seen.body.as_object().unwrap();
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["conversationId", "event", "payload", "ticketId"],
        "{body:?}"
    );
    assert_eq!(seen.body["event"], format!("jelou.{event}"));
    assert_eq!(seen.body["ticketId"], json!(ticket));
    assert_eq!(seen.body["conversationId"], conversation);
    assert_eq!(&seen.body["payload"], sent, "Jelou's event as received");
    assert_eq!(
        seen.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*seen.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(seen.header("x-ticket-id").as_deref(), ticket);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_close_in_jelou_reaches_the_bus_once_and_settles_the_ticket() {
    let mut app = spawn_signed_app().await;
    let conversation = start_ticket(&mut app, "T-WH1").await;

    let close = lifecycle(
        "conversation.close",
        &conversation,
        1777992928697,
        json!({"reason": "closed_by_operator_in_jelou", "redirectPayload": null}),
    );
    let (status, answer) = post_signed(&app.http, &close).await;
    assert_eq!(status, 200, "{answer}");
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_forwarded(
        &seen,
        "conversation.close",
        Some("T-WH1"),
        &conversation,
        &close,
    );

    // Jelou delivers the same event again: answered 200, published once.
    let (status, answer) = post_signed(&app.http, &close).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "duplicate");
    app.bus.expect_silence(QUIET).await;

    // The helpdesk resolves the ticket afterwards: Jelou is not called, the bus hears how
    // the conversation really ended.
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-WH1"}))
        .await;
    let closed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.body["ticketId"], "T-WH1");
    assert_eq!(closed.body["conversationId"], conversation.as_str());
    assert_eq!(closed.body["endedReason"], "closed_by_operator_in_jelou");
    assert!(
        app.mock.calls_to(Endpoint::Close).is_empty(),
        "no close call for a conversation Jelou already closed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_and_message_events_find_their_ticket() {
    let mut app = spawn_signed_app().await;
    let conversation = start_ticket(&mut app, "T-WH2").await;

    // conversation.start: the ticket comes from value.metadata.ticketId, here one the bridge
    // never started (say the conversation was opened from another system).
    let start = lifecycle(
        "conversation.start",
        "conv-elsewhere-9",
        1777992900000,
        json!({"initial_message": "Hola", "metadata": {"ticketId": "T-EXT-9", "priority": "high"}}),
    );
    let (status, answer) = post_signed(&app.http, &start).await;
    assert_eq!(status, 200, "{answer}");
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_forwarded(
        &seen,
        "conversation.start",
        Some("T-EXT-9"),
        "conv-elsewhere-9",
        &start,
    );

    // A user's message in the bridge's conversation: the ticket comes from the store.
    let message = user_message(&conversation, "msg-1", "¿Hay novedades?");
    let (status, answer) = post_signed(&app.http, &message).await;
    assert_eq!(status, 200, "{answer}");
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_forwarded(&seen, "message", Some("T-WH2"), &conversation, &message);

    // A message in a conversation nobody knows is still forwarded, with ticketId null.
    let stray = user_message("conv-unknown", "msg-2", "hola");
    let (status, _) = post_signed(&app.http, &stray).await;
    assert_eq!(status, 200);
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_forwarded(&seen, "message", None, "conv-unknown", &stray);

    // Messages are deduplicated by their id: a redelivery with another timestamp is the
    // same message.
    let mut again = message.clone();
    again["timestamp"] = json!(1777992999999u64);
    let (status, answer) = post_signed(&app.http, &again).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_or_badly_signed_requests_get_401_and_publish_nothing() {
    let mut app = spawn_signed_app().await;
    let close = lifecycle("conversation.close", "conv-x", 1, json!({"reason": "r"}));
    let body = close.to_string();
    let other_body =
        lifecycle("conversation.close", "conv-y", 1, json!({"reason": "r"})).to_string();

    let cases: [(&str, Option<String>); 5] = [
        ("missing signature", None),
        (
            "wrong key",
            Some(signature("not-the-secret", body.as_bytes())),
        ),
        (
            "over a different body",
            Some(signature(SECRET, other_body.as_bytes())),
        ),
        (
            "no sha256= prefix",
            Some(
                signature(SECRET, body.as_bytes())
                    .trim_start_matches("sha256=")
                    .to_string(),
            ),
        ),
        ("not hex", Some("sha256=zzzz".into())),
    ];
    for (case, sig) in &cases {
        let (status, answer) = post_raw(&app.http, body.as_bytes(), sig.as_deref()).await;
        assert_eq!(status, 401, "{case}: {answer}");
        assert_eq!(answer["error"], "bad_signature", "{case}: {answer}");
    }
    app.bus.expect_silence(QUIET).await;

    // The same body, correctly signed, is accepted: the refusals were about the signature,
    // and none of them was remembered as a delivery.
    let (status, answer) = post_raw(
        &app.http,
        body.as_bytes(),
        Some(&signature(SECRET, body.as_bytes())),
    )
    .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("published"))
    );
    assert_eq!(
        app.bus.expect(1, WAIT).await[0].routing_key,
        "jelou.conversation.close"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_bodies_get_400_and_unknown_kinds_200_without_a_publish() {
    let mut app = spawn_signed_app().await;
    let signed = |body: &str| (body.to_string(), signature(SECRET, body.as_bytes()));

    for (body, detail_mentions) in [("{not json", "not JSON"), ("[1, 2]", "JSON object")] {
        let (body, sig) = signed(body);
        let (status, answer) = post_raw(&app.http, body.as_bytes(), Some(&sig)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid", "{body}: {answer}");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(detail_mentions), "{body}: {answer}");
    }
    // Kinds the bridge does not know are accepted (Jelou documents no retry: a 400 would
    // only lose them), logged and counted, and not published: the contract names no key.
    let ignored_before = scrape_metric(
        &app.http,
        "jelou_bridge_webhook_requests_total",
        &["verdict=\"ignored\""],
    )
    .await;
    for body in [
        r#"{"timestamp": 1}"#,
        r#"{"event": "conversation.transfer", "conversation": {"id": "c"}}"#,
        r#"{"field": "statuses", "object": "message_event", "event_type": "read"}"#,
    ] {
        let (body, sig) = signed(body);
        let (status, answer) = post_raw(&app.http, body.as_bytes(), Some(&sig)).await;
        assert_eq!(status, 200, "{body}: {answer}");
        assert_eq!(answer["status"], "ignored", "{body}: {answer}");
    }
    let ignored_after = scrape_metric(
        &app.http,
        "jelou_bridge_webhook_requests_total",
        &["verdict=\"ignored\""],
    )
    .await;
    assert!(
        ignored_after - ignored_before >= 3.0,
        "{ignored_before} -> {ignored_after}"
    );
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_256_kib_gets_413() {
    let mut app = spawn_signed_app().await;
    let mut event = user_message("conv-big", "msg-big", "");
    event["value"]["content"]["body"] = json!("x".repeat(300 * 1024));
    let (status, answer) = post_signed(&app.http, &event).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "too_large", "{answer}");

    // Just under the limit is fine.
    event["value"]["content"]["body"] = json!("x".repeat(250 * 1024));
    let (status, answer) = post_signed(&app.http, &event).await;
    assert_eq!(status, 200, "{answer}");
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "jelou.message");
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_signing_secret_nothing_is_accepted() {
    let mut app = spawn_app().await;
    assert!(app.settings.webhook.signing_secret.is_none());
    let event = user_message("conv-1", "msg-1", "hola");
    let body = event.to_string();
    for sig in [
        None,
        Some(signature("", body.as_bytes())),
        Some(signature(SECRET, body.as_bytes())),
    ] {
        let (status, answer) = post_raw(&app.http, body.as_bytes(), sig.as_deref()).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"], "not_configured", "{answer}");
        assert!(
            answer["detail"]
                .as_str()
                .unwrap()
                .contains("webhook.signing_secret"),
            "{answer}"
        );
    }
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_log_lines_name_the_ticket_and_the_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&unique("jbt-whlog"), "http://127.0.0.1:1", dir.path());
    let _topology = TopologyGuard(settings.clone());
    let mut cmd = bridge_command(&settings);
    cmd.args(["run", "--sandbox"])
        .env("JELOU_BRIDGE__WEBHOOK__SIGNING_SECRET", SECRET)
        // The fixture's timestamp is fixed, and older than the default replay window.
        .env("JELOU_BRIDGE__WEBHOOK__MAX_AGE", "876000h")
        .env("JELOU_BRIDGE__LOG__FORMAT", "json")
        .env("JELOU_BRIDGE__LOG__LEVEL", "info");
    let child = BridgeProcess::start(cmd, dir.path()).await.unwrap();
    child.wait_ready(WAIT).await;
    let http = child.http.clone();
    let start = lifecycle(
        "conversation.start",
        "conv-whlog-1",
        1777992900001,
        json!({"metadata": {"ticketId": "T-WHLOG"}}),
    );
    assert_eq!(post_signed(&http, &start).await.0, 200);

    let status = child.stop(WAIT).await.expect("stops on SIGTERM");
    assert!(status.success());
    let logs = child.log();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "webhook published")
        .unwrap_or_else(|| panic!("no `webhook published` line in:\n{logs}"));
    assert_eq!(line["span"]["ticket_id"], "T-WHLOG", "{line}");
    assert_eq!(line["span"]["correlation_id"], "conv-whlog-1", "{line}");
    assert_eq!(line["span"]["event"], "conversation.start", "{line}");
}
