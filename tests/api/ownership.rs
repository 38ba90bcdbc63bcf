//! Jelou's model against a stand-in that behaves like it: one active conversation per bot +
//! user, a close addressed by bot + user. Several tickets of one user, resolves before
//! their opens, closes whose answer was lost, and a store that drifted from Jelou.

use std::time::Duration;

use jelou_bridge::jelou::Endpoint;
use jelou_bridge::store::{Store, TicketState};
use serde_json::json;

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(700);

async fn resolve(app: &mut TestApp, ticket: &str) -> Seen {
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": ticket}))
        .await;
    app.bus.expect(1, WAIT).await.remove(0)
}

async fn store_row(app: &TestApp, ticket: &str) -> jelou_bridge::store::TicketRecord {
    let store = Store::connect(&app.settings.store, "probe".into())
        .await
        .unwrap();
    let row = store.get(ticket).await.unwrap().unwrap();
    store.close().await;
    row
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_ticket_of_the_same_user_replaces_the_first_ones_conversation() {
    let mut app = spawn_app().await;
    let a = open_ticket(&mut app, "T-A", "U-1").await;
    let b = open_ticket(&mut app, "T-B", "U-1").await;
    assert_ne!(a, b);
    // Jelou replaced T-A's conversation with T-B's.
    assert_eq!(app.mock.conversation(&a).unwrap().state, "closed");

    // T-A's resolve makes no call (it would end T-B's conversation) and reports T-A's own.
    let closed = resolve(&mut app, "T-A").await;
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.ticket(), "T-A");
    assert_eq!(closed.body["conversationId"], a.as_str());
    assert_eq!(closed.body["endedReason"], "superseded");
    assert!(app.mock.calls_to(Endpoint::Close).is_empty());
    assert_eq!(app.mock.conversation(&b).unwrap().state, "active");

    // T-B's resolve closes T-B's conversation.
    let closed = resolve(&mut app, "T-B").await;
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.body["conversationId"], b.as_str());
    assert_eq!(app.mock.calls_to(Endpoint::Close).len(), 1);
    assert!(app.mock.active_conversations().is_empty());
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tickets_sharing_one_conversation_close_it_with_the_last_one() {
    let mut app = spawn_app_with(|_, m| m.reuse_active = true).await;
    let a = open_ticket(&mut app, "T-S1", "U-2").await;
    let b = open_ticket(&mut app, "T-S2", "U-2").await;
    assert_eq!(a, b, "Jelou answered the active conversation");

    let first = resolve(&mut app, "T-S1").await;
    assert_eq!(first.routing_key, "conversation.closed");
    assert_eq!(first.body["conversationId"], a.as_str());
    assert_eq!(first.body["endedReason"], "shared_conversation_still_open");
    assert!(app.mock.calls_to(Endpoint::Close).is_empty());
    assert_eq!(app.mock.conversation(&a).unwrap().state, "active");

    let last = resolve(&mut app, "T-S2").await;
    assert_eq!(last.routing_key, "conversation.closed");
    assert_eq!(last.body["conversationId"], a.as_str());
    assert_eq!(app.mock.calls_to(Endpoint::Close).len(), 1);
    assert_eq!(app.mock.conversation(&a).unwrap().state, "closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resolve_before_its_open_closes_nothing_of_another_ticket_and_the_open_starts_nothing() {
    let mut app = spawn_app().await;
    // The user has another ticket whose conversation is open.
    let other = open_ticket(&mut app, "T-OTHER", "U-3").await;
    for (ticket, resolved) in [
        // With the user's ids: the (bot, user) conversation belongs to T-OTHER.
        (
            "T-EARLY-1",
            json!({"ticketId": "T-EARLY-1", "userId": "U-3", "botId": "B-1"}),
        ),
        // Without them.
        ("T-EARLY-2", json!({"ticketId": "T-EARLY-2"})),
    ] {
        app.bus.publish_json("ticket.resolved", &resolved).await;
        let failed = app.bus.expect(1, WAIT).await.remove(0);
        assert_eq!(failed.routing_key, "ticket.failed");
        assert_eq!(failed.body["reason"], "unknown_ticket", "{failed:#?}");
        assert_eq!(failed.body["action"], "close");

        // The open arrives afterwards: no start call, no conversation for nobody to close.
        app.bus
            .publish_json(
                "ticket.opened",
                &json!({"ticketId": ticket, "userId": "U-3", "botId": "B-1"}),
            )
            .await;
        let failed = app.bus.expect(1, WAIT).await.remove(0);
        assert_eq!(failed.routing_key, "ticket.failed");
        assert_eq!(failed.ticket(), ticket);
        assert_eq!(failed.body["reason"], "already_resolved", "{failed:#?}");
        assert_eq!(failed.body["action"], "start");
        assert_eq!(store_row(&app, ticket).await.state, TicketState::Closed);
    }
    assert_eq!(
        app.mock.calls_to(Endpoint::Start).len(),
        1,
        "T-OTHER's only"
    );
    assert!(app.mock.calls_to(Endpoint::Close).is_empty());
    assert_eq!(app.mock.conversation(&other).unwrap().state, "active");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resolve_before_its_open_of_a_user_with_no_conversation_records_it_resolved() {
    let mut app = spawn_app().await;
    app.bus
        .publish_json(
            "ticket.resolved",
            &json!({"ticketId": "T-EARLY-3", "userId": "U-4", "botId": "B-1"}),
        )
        .await;
    // Closed by bot + user, as for a conversation from before the bridge: Jelou has none.
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(failed.routing_key, "ticket.failed");
    assert_eq!(failed.body["reason"], "unknown_ticket");
    assert!(failed.body["error"]
        .as_str()
        .unwrap()
        .contains("no active conversation"));
    assert_eq!(app.mock.calls_to(Endpoint::Close).len(), 1);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-EARLY-3", "userId": "U-4", "botId": "B-1"}),
        )
        .await;
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(failed.body["reason"], "already_resolved");
    assert!(app.mock.calls_to(Endpoint::Start).is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_that_already_happened_is_settled_by_reading_the_conversation() {
    let mut app = spawn_app().await;
    let conversation = open_ticket(&mut app, "T-GONE", "U-5").await;
    // The close reached Jelou but its answer never came back (the same state a kill -9
    // between the call and the store write leaves): the conversation is closed in Jelou.
    jelou_outside_the_bridge(&app.mock, Endpoint::Close, "B-1", "U-5").await;

    let closed = resolve(&mut app, "T-GONE").await;
    assert_eq!(closed.routing_key, "conversation.closed", "{closed:#?}");
    assert_eq!(closed.body["conversationId"], conversation.as_str());
    assert_eq!(closed.body["endedReason"], "closed_by_operator");
    let statuses: Vec<(Endpoint, u16)> = app
        .mock
        .calls()
        .iter()
        .filter(|c| c.endpoint != Endpoint::Start)
        .map(|c| (c.endpoint, c.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (Endpoint::Close, 200),
            (Endpoint::Close, 404),
            (Endpoint::Conversation, 200)
        ]
    );
    assert_eq!(app.bus.drain_queue(&app.dead_queue()).await.len(), 0);
    assert_eq!(store_row(&app, "T-GONE").await.state, TicketState::Closed);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_close_of_a_conversation_jelou_does_not_know_is_still_rejected() {
    let mut app = spawn_app().await;
    open_ticket(&mut app, "T-404", "U-6").await;
    app.mock.script([
        jelou_bridge::jelou::mock::Scripted::status(404),
        jelou_bridge::jelou::mock::Scripted::status(404),
    ]);
    let failed = resolve(&mut app, "T-404").await;
    assert_eq!(failed.routing_key, "ticket.failed");
    assert_eq!(failed.body["reason"], "rejected");
    assert_eq!(failed.body["httpStatus"], 404);
    assert_eq!(app.mock.calls_to(Endpoint::Conversation).len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_that_ends_another_conversation_is_never_published_as_the_tickets() {
    let mut app = spawn_app().await;
    let own = open_ticket(&mut app, "T-DRIFT", "U-7").await;
    // Outside the bridge, the user got a new conversation with the bot: the store still
    // believes T-DRIFT's is the active one.
    let foreign = jelou_outside_the_bridge(&app.mock, Endpoint::Start, "B-1", "U-7").await
        ["conversationId"]
        .as_str()
        .unwrap()
        .to_string();

    let failed = resolve(&mut app, "T-DRIFT").await;
    assert_eq!(failed.routing_key, "ticket.failed", "{failed:#?}");
    assert_eq!(failed.body["action"], "close");
    let error = failed.body["error"].as_str().unwrap();
    assert!(error.contains(&foreign) && error.contains(&own), "{error}");
    let row = store_row(&app, "T-DRIFT").await;
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(row.conversation_id.as_deref(), Some(own.as_str()));
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_whose_answer_is_lost_is_found_through_the_webhook_not_sent_again() {
    let mut app = spawn_app_with(|s, m| {
        signed(s, m);
        s.jelou.timeout = Duration::from_secs(1);
    })
    .await;
    app.connect_webhooks();
    // Jelou opens the conversation and sends its webhook, then answers after the timeout.
    app.mock.stall_next(Endpoint::Start, Duration::from_secs(3));
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-LOST", "userId": "U-8", "botId": "B-1"}),
        )
        .await;
    let started = app
        .bus
        .collect_until(WAIT, |s| {
            s.iter().any(|m| m.routing_key == "conversation.started")
        })
        .await
        .into_iter()
        .find(|m| m.routing_key == "conversation.started")
        .unwrap();
    // Give a second call time to show up, were there one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let starts = app.mock.calls_to(Endpoint::Start);
    assert_eq!(starts.len(), 1, "one start call");
    let active = app.mock.active_conversations();
    assert_eq!(active.len(), 1);
    assert_eq!(started.body["conversationId"], active[0].id.as_str());
    assert_eq!(
        store_row(&app, "T-LOST").await.conversation_id.as_deref(),
        Some(active[0].id.as_str())
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_webhook_a_start_whose_answer_is_lost_is_sent_again_and_replaces_the_first() {
    let mut app = spawn_app_with(|s, _| s.jelou.timeout = Duration::from_secs(1)).await;
    app.mock.stall_next(Endpoint::Start, Duration::from_secs(3));
    let conversation = open_ticket(&mut app, "T-LOST-2", "U-9").await;
    let starts = app.mock.calls_to(Endpoint::Start);
    // The documented outcome: nothing could tell the bridge the first start worked, so it
    // is sent again; Jelou (one conversation per bot + user) replaced the first conversation,
    // and the bus only ever sees the second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.mock.calls_to(Endpoint::Start).len(), 2, "{starts:?}");
    let active = app.mock.active_conversations();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, conversation);
    app.bus.expect_silence(QUIET).await;
    app.stop().await;
}
