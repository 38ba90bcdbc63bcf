//! Messages both ways: customers' messages from Jelou's webhook onto the bus, and agents'
//! replies (`ticket.reply`) out through Jelou's send-message endpoint, against the real
//! broker and the stand-in (which checks the send-message signature, as Jelou does).

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;
use serde_json::{json, Value};

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(700);

async fn spawn_signed() -> TestApp {
    let app = spawn_app_with(signed).await;
    app.connect_webhooks();
    app
}

/// The next message published under `key`, skipping others (the stand-in's lifecycle
/// webhooks come back onto the bus as `jelou.*` at their own pace).
async fn next_with_key(app: &mut TestApp, key: &str) -> Seen {
    let seen = app
        .bus
        .collect_until(WAIT, |s| s.last().is_some_and(|m| m.routing_key == key))
        .await;
    seen.last().unwrap().clone()
}

/// Messages published under any of `keys` in the next `quiet`, others skipped.
async fn none_with_keys(app: &mut TestApp, keys: &[&str], quiet: Duration) {
    let deadline = std::time::Instant::now() + quiet;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match app.bus.next(left).await {
            None => return,
            Some(m) if keys.contains(&m.routing_key.as_str()) => {
                panic!("unexpected message: {m:#?}")
            }
            Some(_) => {}
        }
    }
}

/// Waits until the store knows the room of `ticket` (the conversation.start webhook).
async fn wait_room(app: &TestApp, ticket: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let store = jelou_bridge::store::Store::connect(&app.settings.store, "probe".into())
            .await
            .unwrap();
        let room = store.get(ticket).await.unwrap().and_then(|r| r.room_id);
        store.close().await;
        if let Some(room) = room {
            return room;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room of {ticket} never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The send-message calls the stand-in answered, in order.
fn sends(app: &TestApp) -> Vec<jelou_bridge::jelou::mock::RecordedCall> {
    app.mock.calls_to(Endpoint::Message)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_customer_message_as_jelou_sends_it_reaches_the_bus_once() {
    let mut app = spawn_signed().await;
    let conversation = open_ticket(&mut app, "T-IN1", "U-IN1").await;
    let conv = app.mock.conversation(&conversation).unwrap();
    let contents = [
        ("text", json!({"body": "¿Hay novedades?"})),
        (
            "image",
            json!({"url": "https://cdn.example/p.jpg", "mime_type": "image/jpeg", "caption": "foto"}),
        ),
        (
            "video",
            json!({"url": "https://cdn.example/v.mp4", "mime_type": "video/mp4", "caption": "video"}),
        ),
        (
            "audio",
            json!({"url": "https://cdn.example/a.ogg", "mime_type": "audio/ogg"}),
        ),
        (
            "document",
            json!({"url": "https://cdn.example/d.pdf", "mime_type": "application/pdf", "filename": "d.pdf"}),
        ),
    ];
    for (i, (kind, content)) in contents.iter().enumerate() {
        // Exactly the documented shape: no `event`; told by field/object/event_type.
        let event = json!({
            "timestamp": 1777992928697u64 + i as u64, "field": "messages",
            "object": "message_event", "event_type": "message", "project_id": PROJECT,
            "room_id": conv.room_id, "contact": {"id": "U-IN1", "name": "Ana"},
            "conversation": {"id": conversation}, "bot": {"id": "B-1", "name": "Bot"},
            "value": {"id": format!("wamid-{i}"), "type": kind, "content": content},
        });
        let body = event.to_string();
        for _ in 0..2 {
            // Jelou may deliver it twice: published once.
            let status = reqwest::Client::new()
                .post(format!("{}/webhooks/jelou", app.http))
                .header("content-type", "application/json")
                .header(
                    "X-Jelou-Signature",
                    signature(SIGNING_SECRET, body.as_bytes()),
                )
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "{kind}");
        }
        let seen = next_with_key(&mut app, "jelou.message").await;
        assert_eq!(seen.body["event"], "jelou.message");
        assert_eq!(seen.body["ticketId"], "T-IN1", "found through the store");
        assert_eq!(seen.body["conversationId"], conversation.as_str());
        assert_eq!(seen.body["payload"], event, "Jelou's event as received");
        assert_eq!(seen.header("x-ticket-id").as_deref(), Some("T-IN1"));
    }
    none_with_keys(&mut app, &["jelou.message"], QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_goes_out_signed_into_the_conversations_room_once_per_message_id() {
    let mut app = spawn_signed().await;
    let conversation = open_ticket(&mut app, "T-OUT1", "U-OUT1").await;
    let room = wait_room(&app, "T-OUT1").await;
    let reply =
        json!({"ticketId": "T-OUT1", "messageId": "M-1", "text": "Hola, ya lo estamos revisando"});
    app.bus.publish_json("ticket.reply", &reply).await;
    let sent = next_with_key(&mut app, "message.sent").await;
    assert_eq!(sent.ticket(), "T-OUT1");
    assert_eq!(sent.body["conversationId"], conversation.as_str());
    assert_eq!(sent.body["messageId"], "M-1");
    assert_eq!(sent.header("x-ticket-id").as_deref(), Some("T-OUT1"));

    let calls = sends(&app);
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.status, 200);
    assert_eq!(
        call.body,
        json!({"field": "messages", "object": "message_event", "event_type": "incoming_message",
               "project_id": PROJECT, "room_id": room, "bot_id": "B-1", "user_id": "U-OUT1",
               "value": {"id": "M-1", "type": "text", "content": {"body": "Hola, ya lo estamos revisando"}}})
    );
    // Signed over the exact bytes sent, with no API key.
    let raw = &call.raw;
    assert_eq!(
        call.headers
            .get("x-jelou-signature")
            .and_then(|v| v.to_str().ok()),
        Some(signature(SIGNING_SECRET, raw).as_str())
    );
    assert!(call.headers.get("x-api-key").is_none());
    assert!(
        app.mock.calls_to(Endpoint::Conversation).is_empty(),
        "the room came from the webhook"
    );

    // The helpdesk publishes the same reply again: message.sent again, no second send.
    app.bus.publish_json("ticket.reply", &reply).await;
    let again = next_with_key(&mut app, "message.sent").await;
    assert_eq!(again.body["messageId"], "M-1");
    assert_eq!(again.body["conversationId"], conversation.as_str());
    assert_eq!(sends(&app).len(), 1, "sent once per messageId");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_attachment_type_goes_out_with_its_url_and_mime_type() {
    let mut app = spawn_signed().await;
    open_ticket(&mut app, "T-OUT2", "U-OUT2").await;
    wait_room(&app, "T-OUT2").await;
    let attachments = [
        json!({"type": "image", "url": "https://cdn.example/a.jpg", "mimeType": "image/jpeg", "caption": "mira"}),
        json!({"type": "video", "url": "https://cdn.example/a.mp4", "mimeType": "video/mp4"}),
        json!({"type": "audio", "url": "https://cdn.example/a.ogg", "mimeType": "audio/ogg"}),
        json!({"type": "document", "url": "https://cdn.example/a.pdf", "mimeType": "application/pdf", "filename": "factura.pdf"}),
    ];
    for (i, a) in attachments.iter().enumerate() {
        app.bus
            .publish_json(
                "ticket.reply",
                &json!({"ticketId": "T-OUT2", "messageId": format!("M-A{i}"), "attachment": a}),
            )
            .await;
        next_with_key(&mut app, "message.sent").await;
    }
    let values: Vec<Value> = sends(&app)
        .iter()
        .map(|c| c.body["value"].clone())
        .collect();
    assert_eq!(
        values,
        [
            json!({"id": "M-A0", "type": "image", "content": {"url": "https://cdn.example/a.jpg", "mime_type": "image/jpeg", "caption": "mira"}}),
            json!({"id": "M-A1", "type": "video", "content": {"url": "https://cdn.example/a.mp4", "mime_type": "video/mp4"}}),
            json!({"id": "M-A2", "type": "audio", "content": {"url": "https://cdn.example/a.ogg", "mime_type": "audio/ogg"}}),
            json!({"id": "M-A3", "type": "document", "content": {"url": "https://cdn.example/a.pdf", "mime_type": "application/pdf", "filename": "factura.pdf"}}),
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_start_webhook_the_room_is_read_from_jelou() {
    // No webhooks at all: the bridge learns the room with GET …/conversations/{id}.
    let mut app = spawn_app_with(signed).await;
    let conversation = open_ticket(&mut app, "T-OUT3", "U-OUT3").await;
    let room = app.mock.conversation(&conversation).unwrap().room_id;
    app.bus
        .publish_json(
            "ticket.reply",
            &json!({"ticketId": "T-OUT3", "messageId": "M-3", "text": "hola"}),
        )
        .await;
    next_with_key(&mut app, "message.sent").await;
    let reads = app.mock.calls_to(Endpoint::Conversation);
    assert_eq!(reads.len(), 1);
    assert_eq!(sends(&app)[0].body["room_id"], room.as_str());
    // Learned once: the next reply reads nothing.
    app.bus
        .publish_json(
            "ticket.reply",
            &json!({"ticketId": "T-OUT3", "messageId": "M-4", "text": "¿sigues ahí?"}),
        )
        .await;
    next_with_key(&mut app, "message.sent").await;
    assert_eq!(app.mock.calls_to(Endpoint::Conversation).len(), 1);
    assert_eq!(sends(&app).len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_after_the_close_or_for_an_unknown_ticket_fails_clearly_without_a_send() {
    let mut app = spawn_signed().await;
    open_ticket(&mut app, "T-OUT4", "U-OUT4").await;
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-OUT4"}))
        .await;
    next_with_key(&mut app, "conversation.closed").await;
    for (ticket, reason) in [
        ("T-OUT4", "already_resolved"),
        ("T-NEVER-SEEN", "unknown_ticket"),
    ] {
        app.bus
            .publish_json(
                "ticket.reply",
                &json!({"ticketId": ticket, "messageId": "M-5", "text": "hola"}),
            )
            .await;
        let failed = next_with_key(&mut app, "ticket.failed").await;
        assert_eq!(failed.ticket(), ticket);
        assert_eq!(failed.body["action"], "message");
        assert_eq!(failed.body["reason"], reason, "{failed:#?}");
    }
    assert!(sends(&app).is_empty());
    assert_eq!(app.bus.drain_queue(&app.dead_queue()).await.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_jelou_refuses_for_its_signature_fails_once_not_in_a_loop() {
    let mut app = spawn_app_with(|s, m| {
        signed(s, m);
        m.signing_secret = Some("the-integration-was-re-created".into());
    })
    .await;
    open_ticket(&mut app, "T-OUT5", "U-OUT5").await;
    app.bus
        .publish_json(
            "ticket.reply",
            &json!({"ticketId": "T-OUT5", "messageId": "M-6", "text": "hola"}),
        )
        .await;
    let failed = next_with_key(&mut app, "ticket.failed").await;
    assert_eq!(failed.body["action"], "message");
    assert_eq!(failed.body["reason"], "rejected");
    assert_eq!(failed.body["httpStatus"], 401);
    assert!(failed.body["error"]
        .as_str()
        .unwrap()
        .contains("Invalid signature"));
    none_with_keys(&mut app, &["ticket.failed", "message.sent"], QUIET).await;
    assert_eq!(sends(&app).len(), 1, "refused once, not retried");
    let dead = app.bus.drain_queue(&app.dead_queue()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].routing_key, "ticket.reply");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_send_is_retried_then_sent_once() {
    let mut app = spawn_signed().await;
    open_ticket(&mut app, "T-OUT6", "U-OUT6").await;
    wait_room(&app, "T-OUT6").await;
    app.mock.script([
        jelou_bridge::jelou::mock::Scripted::status(503),
        jelou_bridge::jelou::mock::Scripted::status(503),
    ]);
    app.bus
        .publish_json(
            "ticket.reply",
            &json!({"ticketId": "T-OUT6", "messageId": "M-7", "text": "hola"}),
        )
        .await;
    let sent = next_with_key(&mut app, "message.sent").await;
    assert_eq!(sent.body["messageId"], "M-7");
    let statuses: Vec<u16> = sends(&app).iter().map(|c| c.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn opened_reply_and_resolved_are_applied_in_the_order_published() {
    let mut app = spawn_signed().await;
    // Jelou slow: the reply and the resolve wait behind the start.
    app.mock.set_latency(Duration::from_millis(300));
    for (key, body) in [
        (
            "ticket.opened",
            json!({"ticketId": "T-ORD", "userId": "U-ORD", "botId": "B-1"}),
        ),
        (
            "ticket.reply",
            json!({"ticketId": "T-ORD", "messageId": "M-8", "text": "primero"}),
        ),
        (
            "ticket.reply",
            json!({"ticketId": "T-ORD", "messageId": "M-9", "text": "segundo"}),
        ),
        ("ticket.resolved", json!({"ticketId": "T-ORD"})),
    ] {
        app.bus.publish_json(key, &body).await;
    }
    let outcomes = app
        .bus
        .collect_until(Duration::from_secs(30), |s| {
            s.iter().any(|m| m.routing_key == "conversation.closed")
        })
        .await;
    let keys: Vec<&str> = outcomes
        .iter()
        .map(|m| m.routing_key.as_str())
        .filter(|k| !k.starts_with("jelou."))
        .collect();
    assert_eq!(
        keys,
        [
            "conversation.started",
            "message.sent",
            "message.sent",
            "conversation.closed"
        ]
    );
    let calls: Vec<(Endpoint, String)> = app
        .mock
        .calls()
        .into_iter()
        // A reply may read the room before the start webhook lands; reads change nothing.
        .filter(|c| c.endpoint != Endpoint::Conversation)
        .map(|c| {
            let text = c
                .body
                .pointer("/value/content/body")
                .and_then(Value::as_str);
            (c.endpoint, text.unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(
        calls,
        [
            (Endpoint::Start, String::new()),
            (Endpoint::Message, "primero".into()),
            (Endpoint::Message, "segundo".into()),
            (Endpoint::Close, String::new()),
        ]
    );
    app.stop().await;
}
