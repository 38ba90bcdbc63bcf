//! `tickets show`/`tickets list` and `reconcile`: what the store knows, brought in line with Jelou.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;
use serde_json::{json, Value};

use testkit::*;

use super::{command, run, run_cmd, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn tickets_show_and_list_what_the_store_knows() {
    let mut app = spawn_app().await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-SHOW", "userId": "U-S", "botId": "B-S"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    let conversation = started.body["conversationId"].as_str().unwrap();

    let out = run(&app.settings, "tickets show T-SHOW").await;
    out.assert_code(0);
    let record: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["ticketId"], "T-SHOW");
    assert_eq!(record["state"], "active");
    assert_eq!(record["conversationId"], conversation);
    assert_eq!(record["userId"], "U-S");
    assert_eq!(record["botId"], "B-S");

    let out = run(&app.settings, "tickets list --state active").await;
    out.assert_code(0);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("T-SHOW "))
        .unwrap_or_else(|| panic!("T-SHOW listed: {}", out.stdout));
    assert!(
        row.contains("active") && row.contains(conversation),
        "{row}"
    );
    let out = run(&app.settings, "tickets list --state closed").await;
    out.assert_code(0);
    assert!(!out.stdout.contains("T-SHOW"), "{}", out.stdout);

    let out = run(&app.settings, "tickets show T-NEVER").await;
    out.assert_code(1);
    assert!(out.stderr.contains("T-NEVER"), "{}", out.stderr);
    let out = run(&app.settings, "tickets list --state sleeping").await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("active"),
        "names the valid states: {}",
        out.stderr
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_closes_what_an_operator_closed_in_jelou_once_and_a_dry_run_changes_nothing() {
    let mut app = spawn_app().await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-REC", "userId": "U-REC", "botId": "B"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    let conversation = started.body["conversationId"].as_str().unwrap().to_string();
    // An operator closes it in Jelou, and the webhook never reaches the bridge.
    assert!(app.mock.close_by_operator(&conversation).await);

    let reconcile = |line: &'static str| {
        let mut cmd = command(&app.settings);
        cmd.env("JELOU_BRIDGE__JELOU__BASE_URL", app.mock.base_url())
            .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
            .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY);
        run_cmd(cmd, line)
    };
    let dry = reconcile("reconcile --dry-run --older-than 0s").await;
    dry.assert_code(0);
    assert!(
        dry.stdout.contains("T-REC") && dry.stdout.contains("would close"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("1 checked, 1 to change"),
        "{}",
        dry.stdout
    );
    app.bus.expect_silence(Duration::from_millis(500)).await;

    let real = reconcile("reconcile --older-than 0s").await;
    real.assert_code(0);
    assert!(real.stdout.contains("active -> closed"), "{}", real.stdout);
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "jelou.conversation.close");
    assert_eq!(seen.ticket(), "T-REC");
    assert_eq!(seen.body["conversationId"], conversation.as_str());
    assert_eq!(
        seen.body["payload"]["value"]["reason"],
        "closed_by_operator"
    );

    // Idempotent: nothing is open any more, nothing is published again.
    let again = reconcile("reconcile --older-than 0s").await;
    again.assert_code(0);
    assert!(
        again.stdout.contains("0 checked, 0 changed"),
        "{}",
        again.stdout
    );
    app.bus.expect_silence(Duration::from_millis(500)).await;

    // The helpdesk resolves it later: no close call, the operator's close is reported.
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-REC"}))
        .await;
    let closed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.body["endedReason"], "closed_by_operator");
    assert!(app.mock.calls_to(Endpoint::Close).is_empty());
    app.stop().await;
}
