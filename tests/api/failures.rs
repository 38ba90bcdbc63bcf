//! Failure paths: retries, Retry-After, rejections, bad input, unknown tickets.

use std::time::Duration;

use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use lapin::BasicProperties;
use serde_json::json;

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_are_retried_until_success() {
    let mut app = spawn_app().await;
    app.mock
        .script([Scripted::status(503), Scripted::status(503)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-503", "userId": "U", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(1, WAIT).await;
    assert_eq!(seen[0].routing_key, "conversation.started");
    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    app.bus.expect_silence(Duration::from_millis(500)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let mut app = spawn_app().await;
    app.mock.script([Scripted::status(429).retry_after("2")]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-429", "userId": "U", "botId": "B"}),
        )
        .await;
    app.bus.expect(1, WAIT).await;
    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "second call came after {gap:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_fail_at_once_and_dead_letter() {
    let mut app = spawn_app().await;
    app.mock.script([Scripted::status(422)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-422", "userId": "U1", "botId": "B"}),
        )
        .await;
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    app.mock.script([Scripted::status(404)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-404", "userId": "U2", "botId": "B"}),
        )
        .await;
    let failed2 = app.bus.expect(1, WAIT).await.remove(0);
    for (seen, ticket, status) in [(&failed, "T-422", 422), (&failed2, "T-404", 404)] {
        assert_eq!(seen.routing_key, "ticket.failed");
        assert_eq!(seen.body["ticketId"], ticket);
        assert_eq!(seen.body["action"], "start");
        assert_eq!(seen.body["reason"], "rejected");
        assert_eq!(seen.body["httpStatus"], status);
        assert_eq!(seen.body["attempts"], 1);
        assert!(seen.body["error"]
            .as_str()
            .unwrap()
            .contains(&status.to_string()));
    }
    assert_eq!(
        app.mock.calls_to(Endpoint::Start).len(),
        2,
        "one call each, no retry"
    );
    let dead = app.bus.drain_queue(&app.dead_queue()).await;
    let mut tickets: Vec<_> = dead.iter().map(|d| d.ticket().to_string()).collect();
    tickets.sort();
    assert_eq!(tickets, ["T-404", "T-422"]);
    assert_eq!(dead[0].header("x-jb-reason").as_deref(), Some("rejected"));
    assert_eq!(
        app.bus.depth(&app.settings.amqp.queue).await,
        0,
        "nothing went back to the queue"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_failed_and_dead_lettered_and_the_bridge_keeps_serving() {
    let mut app = spawn_app().await;
    let big = format!(
        "{{\"ticketId\":\"T-BIG\",\"userId\":\"U\",\"pad\":\"{}\"}}",
        "x".repeat(5 * 1024 * 1024)
    );
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("ticket.opened", b"{not json".to_vec(), "not JSON"),
        (
            "ticket.opened",
            br#"{"userId":"U","botId":"B"}"#.to_vec(),
            "`ticketId` is required",
        ),
        (
            "ticket.opened",
            br#"{"ticketId":"T-TYPE","userId":42,"botId":"B"}"#.to_vec(),
            "`userId`: expected a string",
        ),
        ("ticket.opened", big.into_bytes(), "over the"),
    ];
    for (key, body, _) in &bad {
        app.bus.publish(key, body, BasicProperties::default()).await;
    }
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-GOOD", "userId": "U", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(bad.len() + 1, Duration::from_secs(30)).await;
    let failed: Vec<_> = seen
        .iter()
        .filter(|s| s.routing_key == "ticket.failed")
        .collect();
    assert_eq!(failed.len(), bad.len());
    for (_, _, expected) in &bad {
        let f = failed
            .iter()
            .find(|f| f.body["error"].as_str().unwrap().contains(expected))
            .unwrap_or_else(|| panic!("no ticket.failed mentioning {expected:?}: {failed:#?}"));
        assert_eq!(f.body["reason"], "invalid_message");
        assert!(f.body["httpStatus"].is_null());
    }
    let typed = failed
        .iter()
        .find(|f| f.body["ticketId"] == "T-TYPE")
        .expect("the ticket id is named when readable");
    assert_eq!(typed.body["action"], "start");
    assert!(
        failed.iter().any(|f| f.body["ticketId"].is_null()),
        "unreadable bodies have ticketId null"
    );
    assert!(seen
        .iter()
        .any(|s| s.routing_key == "conversation.started" && s.ticket() == "T-GOOD"));
    let dead = app.bus.drain_queue(&app.dead_queue()).await;
    assert_eq!(dead.len(), bad.len());
    // Taken in and published again whole, in frames of at most 16 KiB (DEFAULT_FRAME_MAX).
    let whole = dead
        .iter()
        .find(|d| d.body["ticketId"] == "T-BIG")
        .expect("the oversized message is in the dead-letter queue");
    assert_eq!(
        whole.body["pad"].as_str().map(str::len),
        Some(5 * 1024 * 1024)
    );
    assert_eq!(
        app.bus.depth(&app.settings.amqp.queue).await,
        0,
        "no requeue loop"
    );
    assert!(app.mock.calls_to(Endpoint::Start).len() == 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resolved_for_an_unknown_ticket_fails_with_unknown_ticket() {
    let mut app = spawn_app().await;
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-NOPE"}))
        .await;
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "ticket.failed");
    assert_eq!(seen.body["reason"], "unknown_ticket");
    assert_eq!(seen.body["action"], "close");
    assert!(app.mock.calls().is_empty());
    assert_eq!(app.bus.drain_queue(&app.dead_queue()).await.len(), 1);
    // A ticket the bridge never started, whose user's conversation belongs to another
    // ticket of the bridge: closing by bot + user would end that ticket's conversation, so
    // nothing is closed.
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-ELSE", "userId": "U9", "botId": "B"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    app.bus
        .publish_json(
            "ticket.resolved",
            &json!({"ticketId": "T-OTHER-SYSTEM", "userId": "U9", "botId": "B"}),
        )
        .await;
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(failed.routing_key, "ticket.failed");
    assert_eq!(failed.body["reason"], "unknown_ticket");
    assert!(failed.body["error"].as_str().unwrap().contains("T-ELSE"));
    assert!(app.mock.calls_to(Endpoint::Close).is_empty());
    let conversation = started.body["conversationId"].as_str().unwrap();
    assert_eq!(app.mock.conversation(conversation).unwrap().state, "active");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_started_outside_the_bridge_is_closed_by_bot_and_user() {
    let mut app = spawn_app().await;
    // Opened in Jelou before the bridge was installed (straight to the stand-in's API).
    let legacy = jelou_outside_the_bridge(&app.mock, Endpoint::Start, "B", "U-LEGACY").await
        ["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    app.bus
        .publish_json(
            "ticket.resolved",
            &json!({"ticketId": "T-LEGACY", "userId": "U-LEGACY", "botId": "B"}),
        )
        .await;
    let closed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.body["conversationId"], legacy.as_str());
    assert_eq!(app.mock.conversation(&legacy).unwrap().state, "closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_exhausted_in_process_park_and_come_back() {
    let mut app = spawn_app_with(|s, _| {
        s.retry.max_attempts = 2;
    })
    .await;
    // Two failures use up the in-process budget; the message is parked for 1s, comes back
    // and succeeds.
    app.mock
        .script([Scripted::status(500), Scripted::status(502)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-PARK", "userId": "U", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "conversation.started");
    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(calls.len(), 3);
    assert!(
        calls[2].at.duration_since(calls[1].at) >= Duration::from_millis(900),
        "came back from the 1s delay queue"
    );
    assert!(app.bus.drain_queue(&app.dead_queue()).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn total_budget_ends_in_retries_exhausted() {
    let mut app = spawn_app_with(|s, _| {
        s.retry.max_attempts = 1;
        s.retry.total_budget = Duration::from_millis(2500);
    })
    .await;
    app.mock.set_down(Some(503));
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-EXH", "userId": "U", "botId": "B"}),
        )
        .await;
    let seen = app.bus.expect(1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(seen.routing_key, "ticket.failed");
    assert_eq!(seen.body["reason"], "retries_exhausted");
    assert_eq!(seen.body["httpStatus"], 503);
    let attempts = seen.body["attempts"].as_u64().unwrap();
    assert!(attempts >= 2, "attempts counted across parks: {attempts}");
    assert_eq!(attempts as usize, app.mock.calls_to(Endpoint::Start).len());
    let dead = app.bus.drain_queue(&app.dead_queue()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("x-jb-reason").as_deref(),
        Some("retries_exhausted")
    );
    app.stop().await;
}
