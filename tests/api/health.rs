//! Liveness, readiness and metrics, over real HTTP. The broker "goes away" through a TCP
//! proxy the test cuts and restores, so the shared broker itself is never restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jelou_bridge::app::Application;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use testkit::*;

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
    post_webhook(http, SECRET, event).await
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
    let port = unused_port();
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
