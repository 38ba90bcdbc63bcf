//! W3C trace context end to end, as an operator following one ticket would check it: the
//! helpdesk's `traceparent` reaches the Jelou call and the published outcome (also through a
//! park and back, a dead letter and Jelou's webhooks), `tickets show` names the trace, and
//! with `telemetry.otlp_endpoint` the spans reach a collector chained from the helpdesk's span
//! to the Jelou call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const HELPDESK_SPAN: &str = "00f067aa0ba902b7";

/// A `traceparent` split into (trace id, parent span id, flags); panics on a malformed one.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {traceparent:?}");
    assert_eq!(p[0], "00", "version of {traceparent:?}");
    assert!(
        p[1].len() == 32 && p[2].len() == 16 && p[1] != "0".repeat(32),
        "traceparent {traceparent:?}"
    );
    (p[1].into(), p[2].into(), p[3].into())
}

/// Properties of a helpdesk message that carries a trace.
fn traced(tracestate: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    jelou_bridge::amqp::set_str(
        &mut headers,
        "traceparent",
        &format!("00-{TRACE}-{HELPDESK_SPAN}-01"),
    );
    if let Some(state) = tracestate {
        jelou_bridge::amqp::set_str(&mut headers, "tracestate", state);
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers)
}

fn header<'a>(call: &'a jelou_bridge::jelou::mock::RecordedCall, name: &str) -> Option<&'a str> {
    call.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helpdesk_traceparent_reaches_the_jelou_call_and_the_outcome() {
    let mut app = spawn_app().await;
    let body = json!({"ticketId": "T-TRACE1", "userId": "U-TR1", "botId": "B"});
    app.bus
        .publish(
            "ticket.opened",
            body.to_string().as_bytes(),
            traced(Some("vendor=abc")),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(started.routing_key, "conversation.started");
    let out = started
        .header("traceparent")
        .expect("the outcome carries a traceparent");
    let (trace, delivery_span, flags) = parts(&out);
    assert_eq!(trace, TRACE, "the outcome continues the helpdesk's trace");
    assert_ne!(
        delivery_span, HELPDESK_SPAN,
        "the delivery is a span of its own"
    );
    assert_eq!(flags, "01", "sampled, as the helpdesk said");
    assert_eq!(started.header("tracestate").as_deref(), Some("vendor=abc"));

    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(calls.len(), 1);
    let sent = header(&calls[0], "traceparent").expect("the Jelou call carries a traceparent");
    let (call_trace, call_span, _) = parts(sent);
    assert_eq!(
        call_trace, TRACE,
        "the Jelou call is in the helpdesk's trace"
    );
    assert!(
        call_span != HELPDESK_SPAN && call_span != delivery_span,
        "the call is a span of its own: {sent}"
    );
    assert_eq!(header(&calls[0], "tracestate"), Some("vendor=abc"));

    // A message without a trace starts one: outcome and call share it.
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-TRACE2", "userId": "U-TR2", "botId": "B"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    let (fresh, _, _) = parts(&started.header("traceparent").expect("a trace is started"));
    assert_ne!(fresh, TRACE);
    assert!(
        started.header("tracestate").is_none(),
        "no empty tracestate"
    );
    let call = app.mock.calls_to(Endpoint::Start).remove(1);
    assert_eq!(parts(header(&call, "traceparent").unwrap()).0, fresh);

    // A trace the helpdesk chose not to sample stays unsampled downstream.
    let mut headers = FieldTable::default();
    jelou_bridge::amqp::set_str(
        &mut headers,
        "traceparent",
        &format!("00-{TRACE}-{HELPDESK_SPAN}-00"),
    );
    let body = json!({"ticketId": "T-TRACE3", "userId": "U-TR3", "botId": "B"});
    app.bus
        .publish(
            "ticket.opened",
            body.to_string().as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    let (trace, _, flags) = parts(&started.header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    let call = app.mock.calls_to(Endpoint::Start).remove(2);
    assert_eq!(parts(header(&call, "traceparent").unwrap()).2, "00");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_ticket_continues_its_trace_when_it_comes_back() {
    let mut app = spawn_app_with(|s, _| {
        s.retry.max_attempts = 2;
    })
    .await;
    // Two failures use up the in-process budget: parked for 1 s, back, then started.
    app.mock
        .script([Scripted::status(500), Scripted::status(502)]);
    let body = json!({"ticketId": "T-TRPARK", "userId": "U", "botId": "B"});
    app.bus
        .publish("ticket.opened", body.to_string().as_bytes(), traced(None))
        .await;
    // Look at the parked message while it waits its 1 s (and put it back).
    let delay =
        jelou_bridge::amqp::topology::delay_queue(&app.settings.amqp.queue, Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let got = app
            .bus
            .channel
            .basic_get(
                delay.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        if let Some(msg) = got {
            let headers = msg.delivery.properties.headers().clone();
            msg.delivery
                .acker
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            break headers;
        }
        assert!(std::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let parked_tp = jelou_bridge::amqp::header_str(parked.as_ref(), "traceparent")
        .expect("the parked message carries a traceparent");
    let (parked_trace, parked_span, _) = parts(&parked_tp);
    assert_eq!(parked_trace, TRACE);
    assert_ne!(
        parked_span, HELPDESK_SPAN,
        "the parked message names the delivery that parked it, not the helpdesk's span"
    );
    let started = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(started.routing_key, "conversation.started");
    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(calls.len(), 3, "two failures, parked, then the third call");
    let spans: Vec<(String, String, String)> = calls
        .iter()
        .map(|c| parts(header(c, "traceparent").expect("every call carries it")))
        .collect();
    for (trace, _, _) in &spans {
        assert_eq!(
            trace, TRACE,
            "every call, before and after the park, is in the trace"
        );
    }
    let (trace, after_park, _) = parts(&started.header("traceparent").unwrap());
    assert_eq!(trace, TRACE, "the outcome after the park is in the trace");
    assert_ne!(after_park, HELPDESK_SPAN);
    assert!(app.bus.drain_queue(&app.dead_queue()).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_and_its_ticket_failed_carry_the_trace() {
    let mut app = spawn_app().await;
    app.mock.script([Scripted::status(422)]);
    let body = json!({"ticketId": "T-TRDEAD", "userId": "U", "botId": "B"});
    app.bus
        .publish(
            "ticket.opened",
            body.to_string().as_bytes(),
            traced(Some("vendor=dead")),
        )
        .await;
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(failed.routing_key, "ticket.failed");
    let (trace, span, _) = parts(&failed.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    let dead = app.bus.drain_queue(&app.dead_queue()).await;
    assert_eq!(dead.len(), 1);
    let (dead_trace, dead_span, _) = parts(&dead[0].header("traceparent").unwrap());
    assert_eq!(dead_trace, TRACE);
    assert_eq!(
        dead_span, span,
        "the dead letter names the delivery that caused it"
    );
    assert_ne!(
        dead_span, HELPDESK_SPAN,
        "not the helpdesk's header copied over"
    );
    assert_eq!(dead[0].header("tracestate").as_deref(), Some("vendor=dead"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jelou_webhooks_and_tickets_show_carry_the_tickets_trace() {
    let mut app = spawn_app_with(signed).await;
    app.connect_webhooks();
    let body = json!({"ticketId": "T-TRHOOK", "userId": "U-H", "botId": "B"});
    app.bus
        .publish("ticket.opened", body.to_string().as_bytes(), traced(None))
        .await;
    let seen = app
        .bus
        .collect_until(WAIT, |s| {
            s.iter().any(|m| m.routing_key == "conversation.started")
        })
        .await;
    let started = seen
        .iter()
        .find(|m| m.routing_key == "conversation.started")
        .unwrap();
    let conversation = started.body["conversationId"].as_str().unwrap().to_string();

    // An operator closes the conversation in Jelou: its webhook joins the ticket's trace.
    assert!(app.mock.close_by_operator(&conversation).await);
    let seen = app
        .bus
        .collect_until(WAIT, |s| {
            s.iter()
                .any(|m| m.routing_key == "jelou.conversation.close")
        })
        .await;
    let close = seen
        .iter()
        .find(|m| m.routing_key == "jelou.conversation.close")
        .unwrap();
    assert_eq!(close.ticket(), "T-TRHOOK");
    let tp = close
        .header("traceparent")
        .expect("the webhook event carries the ticket's trace");
    assert_eq!(parts(&tp).0, TRACE);

    // The operator asks where the ticket is: RFC 3339 times and the trace id.
    let tickets = |args: &[&str]| {
        let mut cmd = bridge_command(&app.settings);
        cmd.args(args).current_dir(std::env::temp_dir());
        cmd
    };
    let out = run_to_end(tickets(&["tickets", "show", "T-TRHOOK"]), "tickets show").await;
    out.assert_code(0);
    let record: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["traceId"], TRACE);
    for key in ["createdAt", "updatedAt"] {
        let at = record[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {record}"));
        assert!(
            humantime::parse_rfc3339(at).is_ok() && at.ends_with('Z'),
            "{key} is RFC 3339 UTC: {at}"
        );
    }
    let stdout = run_to_end(tickets(&["tickets", "list"]), "tickets list")
        .await
        .stdout;
    let row = stdout
        .lines()
        .find(|l| l.starts_with("T-TRHOOK "))
        .unwrap_or_else(|| panic!("listed: {stdout}"));
    let updated = row.split_whitespace().nth(3).unwrap();
    assert!(
        humantime::parse_rfc3339(updated).is_ok(),
        "tickets list prints RFC 3339: {row}"
    );
    app.stop().await;
}

/// What the in-test collector received: every span of every export.
type Received = Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>;

/// A small OTLP/HTTP receiver: POST /v1/traces with a protobuf body, as collectors take it.
async fn otlp_receiver() -> (String, Received, tokio::task::JoinHandle<()>) {
    use axum::body::Bytes;
    use axum::routing::post;
    use prost::Message;
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let request =
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
                        .expect("an OTLP protobuf body");
                let mut spans = store.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.clone())
                        .and_then(|v| v.value);
                    assert!(
                        matches!(&service, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) if s == "jb-test-bridge"),
                        "service.name set: {service:?}"
                    );
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_chained_from_the_helpdesk_to_the_jelou_call() {
    let (collector, received, receiver) = otlp_receiver().await;
    let mock = start_stand_in(stand_in_options()).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&unique("jbt-otlp"), &mock.base_url(), dir.path());
    let _topology = TopologyGuard(settings.clone());
    let mut bus = Bus::new(&settings).await;
    let mut cmd = bridge_command(&settings);
    cmd.arg("run")
        .env("JELOU_BRIDGE__JELOU__BASE_URL", mock.base_url())
        .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
        .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY)
        .env("JELOU_BRIDGE__LOG__LEVEL", "warn")
        .env("JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT", &collector)
        .env("JELOU_BRIDGE__TELEMETRY__SERVICE_NAME", "jb-test-bridge")
        // Export within a fraction of a second rather than the 5 s default.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let child = BridgeProcess::start(cmd, dir.path()).await.unwrap();
    child.wait_ready(Duration::from_secs(20)).await;
    let body = json!({"ticketId": "T-OTLP", "userId": "U-O", "botId": "B"});
    bus.publish("ticket.opened", body.to_string().as_bytes(), traced(None))
        .await;
    assert_eq!(
        bus.expect(1, WAIT).await[0].routing_key,
        "conversation.started"
    );

    // The spans arrive (the batch goes out every 200 ms); wait for the Jelou call's.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (delivery, call) = loop {
        {
            let spans = received.lock().unwrap();
            let delivery = spans.iter().find(|s| s.name == "delivery").cloned();
            let call = spans.iter().find(|s| s.name == "jelou start").cloned();
            if let (Some(d), Some(c)) = (delivery, call) {
                break (d, c);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans not exported: {:?}",
            received
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        hex(&delivery.trace_id),
        TRACE,
        "the delivery continues the helpdesk's trace"
    );
    assert_eq!(
        hex(&delivery.parent_span_id),
        HELPDESK_SPAN,
        "the delivery's parent is the helpdesk's span"
    );
    assert_eq!(hex(&call.trace_id), TRACE);
    assert_eq!(
        call.parent_span_id, delivery.span_id,
        "the Jelou call is the delivery's child"
    );
    // And the id Jelou saw is the exported call span's.
    let sent = mock.calls_to(Endpoint::Start).remove(0);
    let (_, sent_span, _) = parts(header(&sent, "traceparent").unwrap());
    assert_eq!(sent_span, hex(&call.span_id));

    let _ = child.stop(Duration::from_secs(20)).await;
    receiver.abort();
}
