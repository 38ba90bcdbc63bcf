//! The happy paths: ticket events become Jelou calls, outcomes come back on the bus.

use std::time::Duration;

use jelou_bridge::config::{JelouAuth, OneOrMany, RoutingRule};
use jelou_bridge::jelou::Endpoint;
use lapin::BasicProperties;
use secrecy::SecretString;
use serde_json::json;

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn opened_makes_one_start_call_and_publishes_conversation_started() {
    let mut app = spawn_app().await;
    let body = json!({ "ticketId": "T-12345", "userId": "USER_ID", "botId": "BOT_ID",
        "initialMessage": "Hola, necesito ayuda", "queue": "SOPORTE", "metadata": {"priority": "high"} });
    app.bus
        .publish(
            "ticket.opened",
            body.to_string().as_bytes(),
            BasicProperties::default()
                .with_message_id("m-1".into())
                .with_correlation_id("corr-42".into()),
        )
        .await;

    let seen = app.bus.expect(1, WAIT).await.remove(0);
    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(calls.len(), 1, "exactly one start call");
    let call = &calls[0];
    assert_eq!(call.project_id, PROJECT);
    assert_eq!(call.headers.get("x-api-key").unwrap(), API_KEY);
    assert!(call
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        call.body,
        json!({"botId": "BOT_ID", "userId": "USER_ID", "initialMessage": "Hola, necesito ayuda",
        "metadata": {"priority": "high", "ticketId": "T-12345"}, "assignment": {"type": "queue", "target": "SOPORTE"}})
    );

    assert_eq!(seen.routing_key, "conversation.started");
    assert_eq!(seen.body["event"], "conversation.started");
    assert_eq!(seen.body["ticketId"], "T-12345");
    assert_eq!(
        seen.body["conversationId"], "conv-T-12345-1",
        "the id the stand-in returned"
    );
    assert_eq!(seen.body["botId"], "BOT_ID");
    assert_eq!(seen.body["userId"], "USER_ID");
    assert_eq!(seen.body["status"], "active");
    assert!(humantime::parse_rfc3339(seen.body["occurredAt"].as_str().unwrap()).is_ok());
    assert_eq!(
        seen.properties.correlation_id().as_ref().unwrap().as_str(),
        "corr-42"
    );
    assert_eq!(seen.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        seen.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(seen.header("x-ticket-id").as_deref(), Some("T-12345"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn correlation_falls_back_to_message_id_and_reply_to_gets_the_outcome() {
    let mut app = spawn_app().await;
    let reply = app
        .bus
        .channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let body = json!({"ticketId": "T-R1", "userId": "U", "botId": "B"});
    app.bus
        .publish(
            "ticket.opened",
            body.to_string().as_bytes(),
            BasicProperties::default()
                .with_message_id("msg-77".into())
                .with_reply_to(reply.name().clone()),
        )
        .await;
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(
        seen.properties.correlation_id().as_ref().unwrap().as_str(),
        "msg-77"
    );
    // The reply goes out beside the main publish: poll for it.
    let mut replies = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while replies.is_empty() && std::time::Instant::now() < deadline {
        replies = app.bus.drain_queue(reply.name().as_str()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replies.len(), 1);
    assert_eq!(
        replies[0].body["conversationId"],
        seen.body["conversationId"]
    );
    assert_eq!(
        replies[0]
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "msg-77"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resolved_closes_with_the_right_redirect_payload() {
    let mut app = spawn_app_with(|s, _| {
        s.close.default_text = "Ticket {ticketId} resuelto".into();
    })
    .await;
    for t in ["T-A", "T-B", "T-C"] {
        app.bus
            .publish_json(
                "ticket.opened",
                &json!({"ticketId": t, "userId": format!("U-{t}"), "botId": "B"}),
            )
            .await;
    }
    let started = app.bus.expect(3, WAIT).await;
    // redirectPayload wins over closingMessage; closingMessage means text; neither: default.
    app.bus
        .publish_json(
            "ticket.resolved",
            &json!({"ticketId": "T-A", "closingMessage": "ignored",
        "redirectPayload": {"type": "edge", "text": "to-survey"}}),
        )
        .await;
    app.bus
        .publish_json(
            "ticket.resolved",
            &json!({"ticketId": "T-B", "closingMessage": "Gracias"}),
        )
        .await;
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-C"}))
        .await;
    let closed = app.bus.expect(3, WAIT).await;
    for seen in &closed {
        assert_eq!(seen.routing_key, "conversation.closed");
        assert_eq!(seen.body["status"], "closed");
        assert_eq!(seen.body["endedReason"], "closed_by_operator");
        let start = started
            .iter()
            .find(|s| s.ticket() == seen.ticket())
            .unwrap();
        assert_eq!(seen.body["conversationId"], start.body["conversationId"]);
    }
    let calls = app.mock.calls_to(Endpoint::Close);
    assert_eq!(calls.len(), 3);
    let by_user = |u: &str| {
        calls
            .iter()
            .find(|c| c.body["userId"] == u)
            .unwrap()
            .body
            .clone()
    };
    // userId/botId come from the store: the resolve messages did not carry them.
    assert_eq!(
        by_user("U-T-A"),
        json!({"botId": "B", "userId": "U-T-A", "redirectPayload": {"type": "edge", "text": "to-survey"}})
    );
    assert_eq!(
        by_user("U-T-B")["redirectPayload"],
        json!({"type": "text", "text": "Gracias"})
    );
    assert_eq!(
        by_user("U-T-C")["redirectPayload"],
        json!({"type": "text", "text": "Ticket T-C resuelto"})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn assignment_precedence_and_routing_rules() {
    let mut app = spawn_app_with(|s, _| {
        s.routing.default_queue = "GENERAL".into();
        s.routing.rules = vec![
            RoutingRule {
                field: "metadata.category".into(),
                equals: OneOrMany::One("billing".into()),
                queue: "FACTURACION".into(),
            },
            RoutingRule {
                field: "metadata.category".into(),
                equals: OneOrMany::Many(vec!["billing".into(), "sales".into()]),
                queue: "VENTAS".into(),
            },
        ];
    })
    .await;
    let cases = [
        (
            json!({"ticketId": "P-1", "userId": "U1", "botId": "B", "queue": "VIP", "metadata": {"category": "billing"},
            "assignment": {"type": "operator", "target": "agent-7"}}),
            json!({"type": "operator", "target": "agent-7"}),
        ),
        (
            json!({"ticketId": "P-2", "userId": "U2", "botId": "B", "queue": "VIP", "metadata": {"category": "billing"}}),
            json!({"type": "queue", "target": "VIP"}),
        ),
        (
            json!({"ticketId": "P-3", "userId": "U3", "botId": "B", "metadata": {"category": "billing"}}),
            json!({"type": "queue", "target": "FACTURACION"}),
        ),
        (
            json!({"ticketId": "P-4", "userId": "U4", "botId": "B", "metadata": {"category": "sales"}}),
            json!({"type": "queue", "target": "VENTAS"}),
        ),
        (
            json!({"ticketId": "P-5", "userId": "U5", "botId": "B"}),
            json!({"type": "queue", "target": "GENERAL"}),
        ),
    ];
    for (body, _) in &cases {
        app.bus.publish_json("ticket.opened", body).await;
    }
    app.bus.expect(cases.len(), WAIT).await;
    let calls = app.mock.calls_to(Endpoint::Start);
    for (body, expected) in &cases {
        let call = calls
            .iter()
            .find(|c| c.body["metadata"]["ticketId"] == body["ticketId"])
            .unwrap();
        assert_eq!(&call.body["assignment"], expected, "{}", body["ticketId"]);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_mode_sends_client_credentials() {
    let mut app = spawn_app_with(|s, m| {
        s.jelou.auth = JelouAuth::Basic;
        s.jelou.api_key = None;
        s.jelou.client_id = Some("client-1".into());
        s.jelou.client_secret = Some(SecretString::from("s3cr3t".to_string()));
        m.api_key = None;
        m.basic = Some(("client-1".into(), "s3cr3t".into()));
    })
    .await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-BA", "userId": "U", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "conversation.started");
    let call = &app.mock.calls_to(Endpoint::Start)[0];
    assert_eq!(
        call.headers.get("authorization").unwrap(),
        "Basic Y2xpZW50LTE6czNjcjN0"
    );
    assert!(call.headers.get("x-api-key").is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_one_ticket_apply_in_publish_order_when_jelou_is_slow() {
    let mut app = spawn_app_with(|_, m| m.latency = Duration::from_millis(300)).await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-ORD", "userId": "U", "botId": "B"}),
        )
        .await;
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-ORD"}))
        .await;
    // Another ticket in between must not wait for the slow one.
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-OTHER", "userId": "U2", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(3, WAIT).await;
    let order: Vec<_> = seen
        .iter()
        .filter(|s| s.ticket() == "T-ORD")
        .map(|s| s.routing_key.as_str())
        .collect();
    assert_eq!(order, ["conversation.started", "conversation.closed"]);
    let calls = app.mock.calls();
    let start = calls
        .iter()
        .find(|c| c.endpoint == Endpoint::Start && c.body["metadata"]["ticketId"] == "T-ORD")
        .unwrap();
    let close = calls
        .iter()
        .find(|c| c.endpoint == Endpoint::Close)
        .unwrap();
    assert!(
        close.at >= start.at + Duration::from_millis(250),
        "close began only after the start was answered"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_opened_makes_no_second_start_call() {
    let mut app = spawn_app().await;
    let body = json!({"ticketId": "T-DUP", "userId": "U", "botId": "B"});
    // Same message id, then a different one: both are duplicates of the same ticket event.
    for id in ["dup-1", "dup-1", "dup-2"] {
        app.bus
            .publish(
                "ticket.opened",
                body.to_string().as_bytes(),
                BasicProperties::default().with_message_id(id.into()),
            )
            .await;
    }
    let seen = app.bus.expect(3, WAIT).await;
    assert!(seen.iter().all(|s| s.routing_key == "conversation.started"));
    assert!(
        seen.iter()
            .all(|s| s.body["conversationId"] == seen[0].body["conversationId"]),
        "{seen:#?}"
    );
    assert_eq!(app.mock.calls_to(Endpoint::Start).len(), 1);
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-DUP"}))
        .await;
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-DUP"}))
        .await;
    let closed = app.bus.expect(2, WAIT).await;
    assert!(closed.iter().all(|s| s.routing_key == "conversation.closed"
        && s.body["conversationId"] == seen[0].body["conversationId"]));
    assert_eq!(app.mock.calls_to(Endpoint::Close).len(), 1);
    app.stop().await;
}
