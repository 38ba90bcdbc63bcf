//! Promises whose breaking would otherwise go unnoticed, each with the fault that tests it:
//! the broker refusing an outcome while connected, the store going away and coming back, a
//! Jelou call longer than a lease, a `Retry-After` longer than every delay tier, and the
//! close-side failures.

use std::time::{Duration, Instant};

use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use secrecy::SecretString;
use serde_json::json;

use testkit::*;

const WAIT: Duration = Duration::from_secs(20);

fn opened(ticket: &str, user: &str) -> serde_json::Value {
    json!({"ticketId": ticket, "userId": user, "botId": "B"})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_the_broker_refuses_is_never_acked_and_gets_through_once_it_may() {
    let mut app = spawn_app().await;
    // A full queue with reject-publish on the events exchange: the broker nacks every
    // outcome while the connection stays up.
    let blocker = unique("jbt-blocker");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(b"reject-publish".to_vec())),
    );
    let ch = app.bus.channel.clone();
    ch.queue_declare(
        blocker.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        blocker.as_str().into(),
        app.settings.amqp.events_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    app.bus
        .publish_json("ticket.opened", &opened("T-NACK", "U-NACK"))
        .await;
    // Jelou was called and the store recorded it; the other queues got the outcome but the
    // broker nacked the publish, so the delivery is not acked: it comes back, and each pass
    // publishes the recorded conversation again (no new call).
    let seen = app.bus.collect_until(WAIT, |s| s.len() >= 2).await;
    ch.queue_delete(blocker.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut seen = seen;
    while let Some(more) = app.bus.next(Duration::from_millis(1500)).await {
        seen.push(more);
    }
    assert!(seen.iter().all(|m| m.routing_key == "conversation.started"
        && m.ticket() == "T-NACK"
        && m.body["conversationId"] == seen[0].body["conversationId"]));
    assert_eq!(
        app.mock.calls_to(Endpoint::Start).len(),
        1,
        "the redeliveries republished the recorded conversation"
    );
    // Once a publish was confirmed the delivery was acked: nothing is left.
    assert_eq!(app.bus.depth(&app.settings.amqp.queue).await, 0);
    app.bus.expect_silence(Duration::from_secs(1)).await;
    app.stop().await;
}

/// Makes the test's PostgreSQL database refuse connections (and drops the ones it has),
/// until [`StoreOutage::end`].
struct StoreOutage {
    name: String,
}

impl StoreOutage {
    async fn begin(pg: &PgDatabase) -> StoreOutage {
        let name = pg.name().to_string();
        admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
        admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
        StoreOutage { name }
    }

    async fn end(self) {
        admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

async fn admin(sql: &str) {
    pg_admin(&pg_url(), sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_store_down_the_bridge_is_not_ready_parks_and_refuses_webhooks_then_recovers() {
    let pg = PgDatabase::create().await;
    let url = pg.url.clone();
    let mut app = spawn_app_with(move |s, m| {
        s.store.url = SecretString::from(url);
        signed(s, m);
    })
    .await;
    let outage = StoreOutage::begin(&pg).await;

    let deadline = Instant::now() + WAIT;
    loop {
        let r = reqwest::get(format!("{}/readyz", app.http)).await.unwrap();
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["broker"], "ok");
            assert_ne!(body["store"], "ok", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never noticed the store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A webhook cannot be deduplicated without the store: 503, so Jelou comes again.
    let event = json!({"event": "conversation.close", "timestamp": 1, "conversation": {"id": "c-1"}, "value": {}});
    let body = event.to_string();
    let status = reqwest::Client::new()
        .post(format!("{}/webhooks/jelou", app.http))
        .header(
            "X-Jelou-Signature",
            jelou_bridge::webhook::sign(SIGNING_SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);

    // A ticket event waits in a delay queue rather than failing.
    app.bus
        .publish_json("ticket.opened", &opened("T-STORE", "U-STORE"))
        .await;
    let delay = jelou_bridge::amqp::topology::delay_queue(
        &app.settings.amqp.queue,
        app.settings.retry.delays[0],
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    while app.bus.depth(&delay).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the ticket event was never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.mock.calls_to(Endpoint::Start).is_empty());
    outage.end().await;

    let started = app
        .bus
        .collect_until(Duration::from_secs(60), |s| {
            s.iter().any(|m| m.routing_key == "conversation.started")
        })
        .await;
    assert!(started.iter().all(|m| m.routing_key != "ticket.failed"));
    assert_eq!(app.mock.calls_to(Endpoint::Start).len(), 1);
    app.wait_ready(WAIT).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jelou_call_longer_than_the_lease_keeps_its_ticket_from_another_process() {
    // Two bridges on one PostgreSQL store, each with its own queue and stand-in: the same
    // ticket reaches both, the second while the first is still waiting on Jelou, past its
    // 1 s lease. Only lease renewal keeps the second from starting it again.
    let pg = PgDatabase::create().await;
    let with_store = |url: String| {
        move |s: &mut jelou_bridge::config::Settings,
              m: &mut jelou_bridge::jelou::mock::MockOptions| {
            s.store.url = SecretString::from(url);
            s.store.lease = Duration::from_secs(1);
            m.latency = Duration::from_secs(3);
        }
    };
    let mut a = spawn_app_with(with_store(pg.url.clone())).await;
    let mut b = spawn_app_with(with_store(pg.url.clone())).await;
    a.bus
        .publish_json("ticket.opened", &opened("T-LEASE", "U-LEASE"))
        .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    b.bus
        .publish_json("ticket.opened", &opened("T-LEASE", "U-LEASE"))
        .await;
    let from_a = a.bus.expect(1, WAIT).await.remove(0);
    let from_b = b.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(from_a.routing_key, "conversation.started");
    assert_eq!(from_b.routing_key, "conversation.started");
    assert_eq!(
        from_b.body["conversationId"], from_a.body["conversationId"],
        "the second process reports the first one's conversation"
    );
    assert_eq!(a.mock.calls_to(Endpoint::Start).len(), 1);
    assert!(
        b.mock.calls_to(Endpoint::Start).is_empty(),
        "the second process never called Jelou"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_longer_than_every_delay_tier_is_waited_out_in_full() {
    // Tiers of 1 s and 2 s; Jelou asks for 4 s, more than the bridge waits in process.
    let mut app = spawn_app_with(|s, _| s.retry.max_retry_after = Duration::from_secs(1)).await;
    app.mock.script([Scripted::status(429).retry_after("4")]);
    app.bus
        .publish_json("ticket.opened", &opened("T-429", "U-429"))
        .await;
    let started = app.bus.expect(1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(started.routing_key, "conversation.started");
    let calls = app.mock.calls_to(Endpoint::Start);
    assert_eq!(
        calls.len(),
        2,
        "the 429, then the success: no call in between"
    );
    let waited = calls[1].at.duration_since(calls[0].at);
    assert!(
        waited >= Duration::from_millis(3900),
        "the second call came {waited:?} after the 429 asking for 4 s"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn close_side_failures_say_what_happened() {
    let mut app = spawn_app().await;
    // A close Jelou refuses (422): rejected, dead-lettered, the conversation stays active
    // (a later resolve may close it).
    app.bus
        .publish_json("ticket.opened", &opened("T-C422", "U-C422"))
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    app.mock.script([Scripted::status(422)]);
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-C422"}))
        .await;
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(failed.routing_key, "ticket.failed");
    assert_eq!(failed.body["action"], "close");
    assert_eq!(failed.body["reason"], "rejected");
    assert_eq!(failed.body["httpStatus"], 422);
    let conversation = started.body["conversationId"].as_str().unwrap();
    assert_eq!(app.mock.conversation(conversation).unwrap().state, "active");
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-C422"}))
        .await;
    let closed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.body["conversationId"], conversation);

    // A ticket whose start failed for good: its resolve is unknown_ticket, with no call.
    app.mock.script([Scripted::status(404)]);
    app.bus
        .publish_json("ticket.opened", &opened("T-NOSTART", "U-NOSTART"))
        .await;
    assert_eq!(
        app.bus.expect(1, WAIT).await.remove(0).body["reason"],
        "rejected"
    );
    let closes_before = app.mock.calls_to(Endpoint::Close).len();
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-NOSTART"}))
        .await;
    let failed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(failed.body["reason"], "unknown_ticket");
    assert!(failed.body["error"]
        .as_str()
        .unwrap()
        .contains("never started"));
    assert_eq!(app.mock.calls_to(Endpoint::Close).len(), closes_before);

    // A close that keeps failing (Jelou down) is parked, comes back and completes.
    app.bus
        .publish_json("ticket.opened", &opened("T-CPARK", "U-CPARK"))
        .await;
    app.bus.expect(1, WAIT).await;
    app.mock.set_down(Some(503));
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-CPARK"}))
        .await;
    let delay = jelou_bridge::amqp::topology::delay_queue(
        &app.settings.amqp.queue,
        app.settings.retry.delays[0],
    );
    let deadline = Instant::now() + WAIT;
    while app.bus.depth(&delay).await == 0 {
        assert!(Instant::now() < deadline, "the close was never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.mock.set_down(None);
    let closed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.ticket(), "T-CPARK");
    // The refused close, the refused start and its resolve; not the parked close.
    assert_eq!(app.bus.drain_queue(&app.dead_queue()).await.len(), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_write_that_fails_after_jelou_answered_is_recorded_later_without_a_second_start() {
    let pg = PgDatabase::create().await;
    let url = pg.url.clone();
    let mut app = spawn_app_with(move |s, _| s.store.url = SecretString::from(url)).await;
    // The store refuses to record one ticket's start while the switch is on (a trigger), as
    // a store that stumbles right after Jelou answered would.
    let store_sql = |sql: &'static str| {
        let url = pg.url.clone();
        async move {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            let _ = conn.close().await;
        }
    };
    store_sql(
        "CREATE TABLE fail_switch (on_ BOOLEAN);
         INSERT INTO fail_switch VALUES (true);
         CREATE FUNCTION refuse_finish() RETURNS trigger AS $$
         BEGIN
           IF NEW.ticket_id = 'T-FINISH' AND NEW.state = 'active' AND EXISTS (SELECT 1 FROM fail_switch) THEN
             RAISE EXCEPTION 'the store stumbles';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER refuse_finish BEFORE UPDATE ON tickets
           FOR EACH ROW EXECUTE FUNCTION refuse_finish();",
    )
    .await;
    app.bus
        .publish_json("ticket.opened", &opened("T-FINISH", "U-FINISH"))
        .await;
    // Jelou answers, the write fails (three tries): the message is parked with the answer.
    let deadline = Instant::now() + WAIT;
    while app.mock.calls_to(Endpoint::Start).is_empty() {
        assert!(Instant::now() < deadline, "the start was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.bus.next(Duration::from_secs(3)).await.is_none());
    store_sql("DELETE FROM fail_switch").await;

    let started = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(started.routing_key, "conversation.started");
    let active = app.mock.active_conversations();
    assert_eq!(active.len(), 1);
    assert_eq!(started.body["conversationId"], active[0].id.as_str());
    assert_eq!(
        app.mock.calls_to(Endpoint::Start).len(),
        1,
        "one start call"
    );
    let store = jelou_bridge::store::Store::connect(&app.settings.store, "probe".into())
        .await
        .unwrap();
    let row = store.get("T-FINISH").await.unwrap().unwrap();
    store.close().await;
    assert_eq!(row.state, jelou_bridge::store::TicketState::Active);
    assert_eq!(row.conversation_id.as_deref(), Some(active[0].id.as_str()));
    assert_eq!(row.owner, None, "the lease was released");
    app.stop().await;
}
