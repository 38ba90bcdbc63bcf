//! Scaling out: the sharded topology of `deploy/rabbitmq` (a consistent-hash exchange keyed
//! on the `x-ticket-id` header, one single-active-consumer queue per shard) consumed by three
//! bridge processes that share one PostgreSQL store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jelou_bridge::jelou::mock::MockJelou;
use jelou_bridge::jelou::Endpoint;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use secrecy::ExposeSecret;
use serde_json::json;

use testkit::*;

const SHARDS: usize = 6;
const REPLICAS: usize = 3;
const TICKETS: usize = 1000;
/// How far a ticket's `ticket.resolved` trails its `ticket.opened` in the publish sequence,
/// so that events of different tickets interleave and both events of one ticket are in
/// flight at once.
const LAG: usize = 7;

/// Starts replica `index` of the sharded topology as a `jelou-bridge run` child process.
async fn replica(vars: &[(String, String)], index: usize, dir: &std::path::Path) -> BridgeProcess {
    let mut cmd = clean_bridge_command();
    cmd.arg("run")
        .envs(vars.iter().cloned())
        .env("JELOU_BRIDGE__AMQP__REPLICA_INDEX", index.to_string())
        .env("JELOU_BRIDGE__LOG__LEVEL", "warn");
    let replica = BridgeProcess::start(cmd, dir).await.unwrap();
    replica.wait_ready(Duration::from_secs(60)).await;
    replica
}

/// Ticket events `replica` settled with a result.
async fn events_done(replica: &BridgeProcess) -> u64 {
    replica
        .metric(
            "jelou_bridge_ticket_events_total",
            &["outcome=\"started\"", "outcome=\"closed\""],
        )
        .await as u64
}

/// A ticket event as the helpdesk sends it in the sharded topology: the ticket id also in
/// the `x-ticket-id` header, which the consistent-hash exchange hashes.
async fn publish(bus: &Bus, routing_key: &str, ticket: &str) {
    let body = match routing_key {
        "ticket.opened" => {
            json!({"ticketId": ticket, "userId": format!("U-{ticket}"), "botId": "B"})
        }
        _ => json!({"ticketId": ticket}),
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "x-ticket-id".into(),
        AMQPValue::LongString(ticket.as_bytes().to_vec().into()),
    );
    bus.publish(
        routing_key,
        body.to_string().as_bytes(),
        BasicProperties::default()
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_headers(headers),
    )
    .await;
}

/// Publishes `ticket.opened` for each ticket, with its `ticket.resolved` `LAG` places later.
async fn publish_interleaved(bus: &Bus, tickets: &[String]) {
    for i in 0..tickets.len() + LAG {
        if let Some(t) = tickets.get(i) {
            publish(bus, "ticket.opened", t).await;
        }
        if let Some(t) = i.checked_sub(LAG).and_then(|j| tickets.get(j)) {
            publish(bus, "ticket.resolved", t).await;
        }
    }
}

/// Waits until every ticket has its two outcomes on the bus, and checks their order there.
async fn expect_started_then_closed(bus: &mut Bus, tickets: &[String]) {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while done < tickets.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = bus.next(left).await else {
            panic!(
                "{done} of {} tickets finished in time; unfinished: {:?}",
                tickets.len(),
                tickets
                    .iter()
                    .filter(|t| seen.get(*t).is_none_or(|v| v.len() < 2))
                    .take(10)
                    .collect::<Vec<_>>()
            );
        };
        let events = seen.entry(msg.ticket().to_string()).or_default();
        events.push(msg.routing_key.clone());
        if events.len() == 2 {
            done += 1;
        }
    }
    for t in tickets {
        assert_eq!(
            seen[t],
            ["conversation.started", "conversation.closed"],
            "ticket {t}: outcomes in publish order, nothing else"
        );
    }
}

/// Every ticket was started once, then closed once, at the stand-in, in that order.
fn assert_jelou_saw_each_ticket_in_order(mock: &MockJelou, tickets: &[String]) {
    let mut started_at = HashMap::new();
    let mut closed_at = HashMap::new();
    for (i, call) in mock.calls().iter().enumerate() {
        assert_eq!(call.status, 200, "every call succeeded: {call:?}");
        let user = call.body["userId"].as_str().unwrap_or_default();
        let ticket = user.strip_prefix("U-").unwrap_or(user).to_string();
        let seen = match call.endpoint {
            Endpoint::Start => &mut started_at,
            Endpoint::Close => &mut closed_at,
            other => panic!("no {other:?} call expected"),
        };
        assert!(
            seen.insert(ticket.clone(), i).is_none(),
            "ticket {ticket}: a second {:?} call",
            call.endpoint
        );
    }
    for t in tickets {
        let (Some(start), Some(close)) = (started_at.get(t), closed_at.get(t)) else {
            panic!("ticket {t}: no start or no close call at the stand-in");
        };
        assert!(start < close, "ticket {t}: closed before it was started");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_on_the_sharded_topology_keep_each_tickets_order() {
    let db = PgDatabase::create().await;
    let mock = start_stand_in(stand_in_options()).await;
    let dir = tempfile::tempdir().unwrap();
    let name = unique("jbt-shard");
    let mut settings = test_settings(&name, &mock.base_url(), dir.path());
    settings.amqp.consume_queues = (0..SHARDS).map(|i| format!("{name}.shard.{i}")).collect();
    settings.amqp.shard_exchange = format!("{name}.shards");
    let _topology = TopologyGuard(settings.clone());
    let mut bus = Bus::new(&settings).await;

    let a = &settings.amqp;
    let vars: Vec<(String, String)> = [
        ("AMQP__URL", a.url.expose_secret().to_string()),
        ("AMQP__EXCHANGE", a.exchange.clone()),
        ("AMQP__QUEUE", a.queue.clone()),
        ("AMQP__EVENTS_EXCHANGE", a.events_exchange.clone()),
        ("AMQP__CONSUME_QUEUES", a.consume_queues.join(",")),
        ("AMQP__SHARD_EXCHANGE", a.shard_exchange.clone()),
        ("AMQP__REPLICA_COUNT", REPLICAS.to_string()),
        ("JELOU__BASE_URL", mock.base_url()),
        ("JELOU__PROJECT_ID", PROJECT.into()),
        ("JELOU__API_KEY", API_KEY.into()),
        ("STORE__URL", db.url.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("JELOU_BRIDGE__{k}"), v))
    .collect();
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(replica(&vars, i, dir.path()).await);
    }
    // A fourth process with replica 0's share: it waits as the standby of replica 0's queues.
    let standby = replica(&vars, REPLICAS, dir.path()).await;
    assert_eq!(
        standby.metric("jelou_bridge_subscribed_queues", &[]).await as u64,
        (SHARDS / REPLICAS) as u64,
        "the standby is subscribed to replica 0's queues"
    );

    let tickets: Vec<String> = (0..TICKETS).map(|i| format!("T-{i:04}")).collect();
    publish_interleaved(&bus, &tickets).await;
    expect_started_then_closed(&mut bus, &tickets).await;
    assert_jelou_saw_each_ticket_in_order(&mock, &tickets);

    // Each replica took its share (two of the six shards); the standby took none.
    let mut done = Vec::new();
    for r in &replicas {
        done.push(events_done(r).await);
    }
    eprintln!("events per replica: {done:?}");
    assert_eq!(done.iter().sum::<u64>(), 2 * TICKETS as u64, "{done:?}");
    for (i, n) in done.iter().enumerate() {
        assert!(
            *n >= (2 * TICKETS / 10) as u64,
            "replica {i} did {n} of {} events: {done:?}",
            2 * TICKETS
        );
    }
    assert_eq!(
        events_done(&standby).await,
        0,
        "one active consumer per queue"
    );

    // Replica 0 killed outright: its standby takes its queues over, order still kept.
    replicas.remove(0).kill9();
    let more: Vec<String> = (TICKETS..TICKETS + 100)
        .map(|i| format!("T-{i:04}"))
        .collect();
    publish_interleaved(&bus, &more).await;
    expect_started_then_closed(&mut bus, &more).await;
    let all: Vec<String> = tickets.iter().chain(&more).cloned().collect();
    assert_jelou_saw_each_ticket_in_order(&mock, &all);
    assert!(events_done(&standby).await > 0, "the standby took over");

    for r in replicas.into_iter().chain([standby]) {
        let status = r.stop(Duration::from_secs(30)).await.unwrap();
        assert_eq!(status.code(), Some(0), "graceful exit: {}", r.log());
    }
}
