//! The metrics of a bridge, read from its own `/metrics` with exact counts: this binary holds
//! this one test, so the process-wide recorder sees its traffic alone.

use std::time::{Duration, Instant};

use jelou_bridge::jelou::mock::Scripted;
use secrecy::SecretString;
use serde_json::{json, Value};

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "whsec-metrics-21";

async fn post_signed(http: &str, event: &Value) -> (u16, Value) {
    post_webhook(http, SECRET, event).await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_real_traffic() {
    let mut app = spawn_app_with(|s, _| {
        s.retry.max_attempts = 2;
        s.webhook.signing_secret = Some(SecretString::from(SECRET));
    })
    .await;
    // The only test of this process: the recorder holds this test's traffic alone, so the
    // counts are exact.
    let before = scrape(&app.http).await;

    // Two 503s use up the in-process attempts: parked, then started on its way back.
    app.mock
        .script([Scripted::status(503), Scripted::status(503)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-M1", "userId": "U1", "botId": "B"}),
        )
        .await;
    assert_eq!(
        app.bus.expect(1, WAIT).await[0].routing_key,
        "conversation.started"
    );
    // A rejection: failed and dead-lettered.
    app.mock.script([Scripted::status(422)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-M2", "userId": "U2", "botId": "B"}),
        )
        .await;
    assert_eq!(
        app.bus.expect(1, WAIT).await[0].routing_key,
        "ticket.failed"
    );
    // A slow Jelou: the delivery is seen in flight.
    app.mock.set_latency(Duration::from_millis(1500));
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-M3", "userId": "U3", "botId": "B"}),
        )
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = scrape(&app.http).await;
        if value(&now, "jelou_bridge_inflight_deliveries", &[]) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery seen in flight:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.bus.expect(1, WAIT).await[0].routing_key,
        "conversation.started"
    );
    app.mock.set_latency(Duration::ZERO);
    // Webhooks: one published, one refused.
    let message = json!({"event": "message", "timestamp": 1, "conversation": {"id": "conv-m"},
        "value": {"id": unique("msg"), "type": "text", "content": {"body": "hola"}}});
    assert_eq!(post_signed(&app.http, &message).await.0, 200);
    let refused = reqwest::Client::new()
        .post(format!("{}/webhooks/jelou", app.http))
        .body(message.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let after = scrape(&app.http).await;
    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let delta = value(&after, name, labels) - value(&before, name, labels);
        assert_eq!(delta, by, "{name}{labels:?}:\n{after}");
    };
    let opened = ("event", "ticket.opened");
    grew(
        "jelou_bridge_ticket_events_total",
        &[opened, ("outcome", "started")],
        2.0,
    );
    grew(
        "jelou_bridge_ticket_events_total",
        &[opened, ("outcome", "parked")],
        1.0,
    );
    grew(
        "jelou_bridge_ticket_events_total",
        &[opened, ("outcome", "failed")],
        1.0,
    );
    let start = ("endpoint", "start");
    grew(
        "jelou_bridge_jelou_requests_total",
        &[start, ("status_class", "2xx")],
        2.0,
    );
    grew(
        "jelou_bridge_jelou_requests_total",
        &[start, ("status_class", "5xx")],
        2.0,
    );
    grew(
        "jelou_bridge_jelou_requests_total",
        &[start, ("status_class", "4xx")],
        1.0,
    );
    grew(
        "jelou_bridge_jelou_request_duration_seconds_count",
        &[start],
        5.0,
    );
    // The histogram has its buckets, and the slow call landed above the one-second bucket.
    let bucket = "jelou_bridge_jelou_request_duration_seconds_bucket";
    assert!(
        samples(&after, bucket)
            .iter()
            .any(|(l, _)| l.get("le").map(String::as_str) == Some("1")),
        "no le=\"1\" bucket:\n{after}"
    );
    let over_1s = |text: &str| {
        value(text, bucket, &[start, ("le", "+Inf")]) - value(text, bucket, &[start, ("le", "1")])
    };
    assert_eq!(
        over_1s(&after) - over_1s(&before),
        1.0,
        "one call slower than 1s:\n{after}"
    );
    grew("jelou_bridge_jelou_retries_total", &[start], 1.0);
    grew("jelou_bridge_parked_total", &[("action", "start")], 1.0);
    grew(
        "jelou_bridge_dead_letters_total",
        &[("reason", "rejected")],
        1.0,
    );
    grew(
        "jelou_bridge_webhook_requests_total",
        &[("event", "message"), ("verdict", "published")],
        1.0,
    );
    grew(
        "jelou_bridge_webhook_requests_total",
        &[("verdict", "bad_signature")],
        1.0,
    );
    for name in [
        "jelou_bridge_ticket_events_total",
        "jelou_bridge_jelou_requests_total",
        "jelou_bridge_webhook_requests_total",
    ] {
        assert!(
            after.contains(&format!("# TYPE {name} counter")),
            "{name}:\n{after}"
        );
    }
    assert!(after.contains("# TYPE jelou_bridge_jelou_request_duration_seconds histogram"));
    assert!(after.contains("# TYPE jelou_bridge_inflight_deliveries gauge"));
    app.stop().await;
}
