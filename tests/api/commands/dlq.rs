//! `dlq list` and `dlq replay`: dead letters shown, sent back, or kept when they cannot be.

use std::time::Duration;

use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::json;

use testkit::*;

use super::{run, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_listed_replayed_and_then_completes() {
    let mut app = spawn_app().await;
    let dead = app.dead_queue();
    app.mock.script([Scripted::status(422)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-DLQ", "userId": "U", "botId": "B"}),
        )
        .await;
    assert_eq!(
        app.bus.expect(1, WAIT).await[0].routing_key,
        "ticket.failed"
    );
    wait_depth(&dead, 1, WAIT).await;

    let out = run(&app.settings, "dlq list").await;
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("1 dead letter(s) in {dead}")),
        "{}",
        out.stdout
    );
    let header = out.stdout.lines().nth(1).unwrap();
    for column in ["TICKET", "REASON", "ATTEMPTS", "AGE", "ERROR"] {
        assert!(header.contains(column), "{header}");
    }
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        ["T-DLQ", "ticket.opened", "rejected", "1"],
        "{row:?}"
    );
    assert!(row[4].ends_with('s'), "age: {row:?}");
    assert!(row[5..].join(" ").contains("422"), "the error: {row:?}");
    // Listing leaves the dead letter where it was.
    wait_depth(&dead, 1, WAIT).await;

    // A dry run and a replay of another ticket change nothing.
    let out = run(&app.settings, "dlq replay --all --dry-run").await;
    out.assert_code(0);
    assert!(out.stdout.contains("would replay T-DLQ"), "{}", out.stdout);
    assert!(out.stdout.contains("1 dead letter(s) would be replayed"));
    let out = run(&app.settings, "dlq replay --ticket T-OTHER").await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("0 dead letter(s) replayed"),
        "{}",
        out.stdout
    );
    wait_depth(&dead, 1, WAIT).await;
    app.bus.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(app.mock.calls_to(Endpoint::Start).len(), 1);

    // Jelou now accepts it: the replayed event completes and the dead-letter queue empties.
    let out = run(&app.settings, "dlq replay --ticket T-DLQ").await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("replayed T-DLQ ticket.opened"),
        "{}",
        out.stdout
    );
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "conversation.started");
    assert_eq!(seen.body["ticketId"], "T-DLQ");
    wait_depth(&dead, 0, WAIT).await;
    let out = run(&app.settings, "dlq list").await;
    out.assert_code(0);
    assert!(out.stdout.starts_with("0 dead letter(s)"), "{}", out.stdout);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_that_cannot_be_republished_is_kept() {
    let app = spawn_app().await;
    let dead = app.dead_queue();
    // A dead letter whose source queue no longer exists: the republish is not confirmed as
    // routed, so the dead letter must stay.
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-ticket-id", "T-ORPHAN"),
        ("x-jb-reason", "rejected"),
        ("x-jb-source-queue", "jbt-no-such-queue-anywhere"),
        ("x-original-routing-key", "ticket.opened"),
    ] {
        headers.insert(
            k.into(),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    app.bus
        .channel
        .basic_publish(
            "".into(),
            dead.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"ticketId":"T-ORPHAN","userId":"U","botId":"B"}"#,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    wait_depth(&dead, 1, WAIT).await;

    let out = run(&app.settings, "dlq replay --all").await;
    out.assert_code(1);
    assert!(out.stderr.contains("dead letter kept"), "{}", out.stderr);
    wait_depth(&dead, 1, WAIT).await;
    app.stop().await;
}
