//! The HTTP side against slow and greedy clients, and the admin port apart from the webhook.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use testkit::*;

/// Reads what the server sends until it closes (or `within` passes: None).
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

async fn get_status(url: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_heads_and_bodies_are_cut_within_the_timeout_while_healthz_answers() {
    const STALLED: usize = 150;
    let app = spawn_app_with(|s, _| {
        s.http.header_timeout = Duration::from_secs(1);
        s.http.body_timeout = Duration::from_secs(1);
        s.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
    })
    .await;
    let addr = app.http.trim_start_matches("http://").to_string();
    let mut heads = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..STALLED {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // Never ends its head.
        s.write_all(b"POST /webhooks/jelou HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        heads.push(s);
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // A whole head, then 10 of the 100 bytes it announced.
        s.write_all(b"POST /webhooks/jelou HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"event\":")
            .await
            .unwrap();
        bodies.push(s);
    }
    let opened = Instant::now();
    let t0 = Instant::now();
    assert_eq!(get_status(&format!("{}/healthz", app.http)).await, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/healthz took {:?} beside {} stalled connections",
        t0.elapsed(),
        2 * STALLED
    );
    // Cut within the timeout (1 s), with room for a busy machine; never left open.
    let within = Duration::from_secs(4);
    for s in &mut heads {
        let seen = until_closed(s, within).await;
        assert!(
            seen.is_some(),
            "a connection that never finished its head was still open after {:?}",
            opened.elapsed()
        );
    }
    for s in &mut bodies {
        let seen = until_closed(s, within)
            .await
            .unwrap_or_else(|| panic!("a stalled body still open after {:?}", opened.elapsed()));
        assert!(
            seen.starts_with("HTTP/1.1 408"),
            "a stalled body got: {seen:?}"
        );
    }
    assert!(opened.elapsed() < Duration::from_secs(6));
    assert!(
        scrape_metric(
            &app.http,
            "jelou_bridge_http_limited_total",
            &["limit=\"header_timeout\""]
        )
        .await
            >= STALLED as f64
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_caps_connections_and_requests_get_503() {
    let app = spawn_app_with(|s, _| {
        s.http.max_connections = 4;
        s.http.max_requests = 1;
        s.http.header_timeout = Duration::from_secs(30);
        s.http.body_timeout = Duration::from_secs(30);
        s.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
    })
    .await;
    let addr = app.http.trim_start_matches("http://").to_string();
    // One request in flight (its body never comes) holds the only request slot.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhooks/jelou HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_status(&format!("{}/healthz", app.http)).await, 503);
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_status(&format!("{}/healthz", app.http)).await, 200);

    // Four idle connections take every connection slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let seen = until_closed(&mut extra, Duration::from_secs(3))
        .await
        .expect("the connection over the cap is closed");
    assert!(seen.starts_with("HTTP/1.1 503"), "got {seen:?}");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_status(&format!("{}/healthz", app.http)).await != 200 {
        assert!(
            Instant::now() < deadline,
            "slots never came back after the idle connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        scrape_metric(
            &app.http,
            "jelou_bridge_http_limited_total",
            &["limit=\"max_connections\""]
        )
        .await
            >= 1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_admin_listen_the_public_port_serves_only_the_webhook() {
    let mut app = spawn_app_with(|s, _| {
        s.admin.listen = Some("127.0.0.1:0".into());
        s.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
    })
    .await;
    assert_ne!(app.admin, app.http);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get_status(&format!("{}{path}", app.http)).await,
            404,
            "{path} on the public port"
        );
        assert_eq!(
            get_status(&format!("{}{path}", app.admin)).await,
            200,
            "{path} on the admin port"
        );
    }
    let body =
        json!({"event": "conversation.close", "timestamp": 1, "conversation": {"id": "C-ADM"}})
            .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let post = |base: String| {
        let body = body.clone();
        let sig = sig.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{base}/webhooks/jelou"))
                .header("content-type", "application/json")
                .header("X-Jelou-Signature", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(app.admin.clone()).await,
        404,
        "no webhook on the admin port"
    );
    assert_eq!(post(app.http.clone()).await, 200);
    let seen = app.bus.expect(1, Duration::from_secs(10)).await;
    assert_eq!(seen[0].routing_key, "jelou.conversation.close");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s, _| s.http.header_timeout = Duration::from_secs(1)).await;
    let addr = app.http.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then silent: closed within the timeout (with room for a busy machine).
    let idle = Instant::now();
    assert!(
        until_closed(&mut s, Duration::from_secs(4)).await.is_some(),
        "an idle connection still open after {:?}",
        idle.elapsed()
    );
    assert!(idle.elapsed() >= Duration::from_millis(900));
    app.stop().await;
}
