//! Liveness, readiness and metrics, over real HTTP. The broker "goes away" through a TCP
//! proxy the test cuts and restores, so the shared broker itself is never restarted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jelou_bridge::app::Application;
use jelou_bridge::jelou::mock::Scripted;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "whsec-health-77";

/// A TCP proxy in front of the local broker that can be cut (every connection dropped, new
/// ones closed at once) and restored.
struct BrokerProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Cancelled to drop the connections open now; replaced on restore.
    connections: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl BrokerProxy {
    async fn start() -> BrokerProxy {
        let upstream = url::Url::parse(&amqp_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            upstream.host_str().unwrap(),
            upstream.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (cut2, conns2, stop2) = (cut.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = stop2.cancelled() => return,
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let token = conns2.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        BrokerProxy {
            port,
            cut,
            connections,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().unwrap().cancel();
    }

    fn restore(&self) {
        *self.connections.lock().unwrap() = CancellationToken::new();
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.connections.lock().unwrap().cancel();
    }
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Polls `/readyz` until it answers `status`; the last body.
async fn readyz_becomes(http: &str, status: u16, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = get(&format!("{http}/readyz")).await;
        if got == status {
            return serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} after {timeout:?}, expected {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_signed(http: &str, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let resp = reqwest::Client::new()
        .post(format!("{http}/webhooks/jelou"))
        .header(
            "x-jelou-signature",
            jelou_bridge::webhook::sign(SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_while_the_process_runs() {
    let app = spawn_app().await;
    let (status, body) = get(&format!("{}/healthz", app.http)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&format!("{}/readyz", app.http)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ready"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_broker_connection_and_webhooks_wait_for_it() {
    let proxy = BrokerProxy::start().await;
    let mut app = spawn_app_with(|s, _| {
        s.amqp.url = SecretString::from(proxy.url());
        s.amqp.reconnect_min_delay = Duration::from_millis(50);
        s.amqp.reconnect_max_delay = Duration::from_millis(300);
        s.webhook.signing_secret = Some(SecretString::from(SECRET));
    })
    .await;
    let message = json!({"event": "message", "timestamp": 1, "conversation": {"id": "conv-r1"},
        "value": {"id": "msg-r1", "type": "text", "content": {"body": "hola"}}});

    proxy.cut();
    let reason = readyz_becomes(&app.http, 503, WAIT).await;
    assert_eq!(reason["status"], "not_ready", "{reason}");
    assert_eq!(reason["broker"], "disconnected", "{reason}");
    assert_eq!(reason["store"], "ok", "{reason}");
    let (status, _) = get(&format!("{}/healthz", app.http)).await;
    assert_eq!(status, 200, "alive though not ready");

    // A webhook cannot be published now: 503, so that Jelou retries it.
    let (status, answer) = post_signed(&app.http, &message).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "broker_unavailable", "{answer}");

    proxy.restore();
    readyz_becomes(&app.http, 200, WAIT).await;
    // The refused delivery was not remembered: its retry is published, not taken for a duplicate.
    let (status, answer) = post_signed(&app.http, &message).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("published")),
        "{answer}"
    );
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "jelou.message");

    // And the consumer is back too: a ticket goes through.
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-READY", "userId": "U", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "conversation.started");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_whose_broker_cannot_be_reached_is_never_ready() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&unique("jbt-nobroker"), "http://127.0.0.1:1", dir.path());
    settings.amqp.url = SecretString::from(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    settings.amqp.reconnect_min_delay = Duration::from_millis(50);
    settings.amqp.reconnect_max_delay = Duration::from_millis(200);
    let app = Application::build(settings, false).await.unwrap();
    let http = format!("http://{}", app.http_addr());
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));

    // Several reconnection attempts come and go; readiness never turns.
    for _ in 0..10 {
        let (status, body) = get(&format!("{http}/readyz")).await;
        assert_eq!(status, 503, "{body}");
        let reason: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reason["broker"], "disconnected", "{reason}");
        let (status, _) = get(&format!("{http}/healthz")).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.cancel();
    tokio::time::timeout(WAIT, running)
        .await
        .expect("stops promptly while reconnecting")
        .unwrap()
        .unwrap();
}

/// The samples of one metric in Prometheus text, by their labels.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((labels, value.parse().unwrap()));
    }
    out
}

/// The sum of `name` over the series that have all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(http: &str) -> String {
    let resp = reqwest::get(format!("{http}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_real_traffic() {
    let mut app = spawn_app_with(|s, _| {
        s.retry.max_attempts = 2;
        s.webhook.signing_secret = Some(SecretString::from(SECRET));
    })
    .await;
    // The recorder is shared by every test in this process: compare before and after, and
    // expect at least this test's own traffic.
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
        assert!(
            delta >= by,
            "{name}{labels:?} grew by {delta}, expected at least {by}:\n{after}"
        );
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
    assert!(
        over_1s(&after) - over_1s(&before) >= 1.0,
        "no call slower than 1s recorded:\n{after}"
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
