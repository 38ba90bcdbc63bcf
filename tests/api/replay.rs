//! The webhook's replay window: old (or far-future) signed events refused, fresh ones
//! accepted, repeats recognised by Jelou's own ids, and the dedupe table pruned.

use std::time::{Duration, Instant};

use jelou_bridge::config::Settings;
use jelou_bridge::store::{now_ms, Store};
use secrecy::SecretString;
use serde_json::{json, Value};

use testkit::*;

async fn post(app: &TestApp, body: &Value) -> (u16, Value) {
    post_webhook(&app.http, SIGNING_SECRET, body).await
}

fn close_event(conversation: &str, timestamp: i64) -> Value {
    json!({"event": "conversation.close", "timestamp": timestamp, "field": "conversation",
        "object": "conversation_event", "event_type": "close",
        "conversation": {"id": conversation}, "value": {"reason": "closed_by_operator"}})
}

/// The test's store, opened beside the bridge's own pool (SQLite in WAL mode).
async fn store_of(settings: &Settings) -> Store {
    Store::connect(&settings.store, "jbt-observer".into())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_or_far_future_event_is_refused_and_a_fresh_one_accepted() {
    let mut app = spawn_app_with(|s, _| {
        s.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
        s.webhook.max_age = Duration::from_secs(3600);
    })
    .await;
    let hour = 3_600_000;
    for (ts, what) in [
        (now_ms() - hour - 60_000, "an hour and a minute old"),
        (now_ms() + hour + 60_000, "an hour and a minute ahead"),
    ] {
        let (status, answer) = post(&app, &close_event("C-OLD", ts)).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"], "stale", "{what}: {answer}");
    }
    app.bus.expect_silence(Duration::from_millis(500)).await;
    let (status, answer) = post(&app, &close_event("C-FRESH", now_ms() - 60_000)).await;
    assert_eq!(status, 200, "{answer}");
    let seen = app.bus.expect(1, Duration::from_secs(10)).await;
    assert_eq!(seen[0].body["conversationId"], "C-FRESH");
    // A repeat with another timestamp is the same event (event + conversation.id).
    let (status, answer) = post(&app, &close_event("C-FRESH", now_ms())).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    app.bus.expect_silence(Duration::from_millis(500)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dedupe_table_is_pruned_past_the_window() {
    const EVENTS: usize = 30;
    let mut app = spawn_app_with(|s, _| {
        s.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
        s.webhook.max_age = Duration::from_secs(2);
    })
    .await;
    for i in 0..EVENTS {
        let (status, _) = post(&app, &close_event(&format!("C-PR-{i}"), now_ms())).await;
        assert_eq!(status, 200);
    }
    // An event without the ids the reference names is kept by the hash of its body.
    let bare = json!({"event": "conversation.start", "timestamp": now_ms()});
    assert_eq!(post(&app, &bare).await.0, 200);
    assert_eq!(post(&app, &bare).await.1["status"], "duplicate");
    app.bus.expect(EVENTS + 1, Duration::from_secs(10)).await;
    let store = store_of(&app.settings).await;
    let held = store.webhook_events().await.unwrap();
    assert_eq!(held, EVENTS as i64 + 1);
    // Kept twice max_age (4 s), pruned on a 1 s tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = store.webhook_events().await.unwrap();
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} dedupe entries still held 10 s after a 2 s window"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_prune_deletes_a_bounded_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&unique("jbt"), "http://127.0.0.1:1", dir.path());
    prune_a_bounded_batch(&settings).await;
    let pg = PgDatabase::create().await;
    settings.store.url = SecretString::from(pg.url.clone());
    prune_a_bounded_batch(&settings).await;
}

/// On the store of `settings` (SQLite, then PostgreSQL).
async fn prune_a_bounded_batch(settings: &Settings) {
    let store = store_of(settings).await;
    for i in 0..25 {
        store
            .claim_webhook(&format!("k-{i}"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store
            .prune_webhooks(Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0,
        "nothing is older than an hour"
    );
    assert_eq!(store.prune_webhooks(Duration::ZERO, 10).await.unwrap(), 10);
    assert_eq!(store.webhook_events().await.unwrap(), 15);
    store.close().await;
}
