//! What the bridge published in a fault scenario: an [`Observer`] of the events exchange that
//! survives broker restarts and node losses, and per-ticket tallies of it ([`Tally`]) for
//! tickets `T-0 … T-<n-1>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use serde_json::Value;
use testkit::{connect_any, Seen};
use tokio_util::sync::CancellationToken;

use crate::harness::Scenario;

/// Everything the bridge publishes on the scenario's events exchange, read from a durable
/// queue of the observer's own, with manual acks and reconnection: what was published before
/// a broker restart is still read after it.
pub struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Stops the reader when the observer is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl Observer {
    /// Binds its queue before returning, so nothing the bridge publishes later is missed.
    pub async fn start(scenario: &Scenario) -> Observer {
        let target = Observed {
            urls: scenario.urls.clone(),
            exchange: scenario.events_exchange.clone(),
            queue: format!("{}.observed", scenario.name),
            quorum: scenario.clustered(),
        };
        let first = observe(&target).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        tokio::spawn(read_forever(first, target, seen.clone(), stop.clone()));
        Observer {
            seen,
            _stop: stop.drop_guard(),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn tally(&self) -> Tally {
        Tally::of(&self.seen())
    }

    /// Waits until every ticket `T-0 … T-<n-1>` has a `conversation.started`, then checks
    /// that each one's results name one conversation and that nothing failed.
    pub async fn wait_all_started(&self, n: usize) -> Tally {
        let tally = self
            .wait_for("every ticket started", Duration::from_secs(90), |t| {
                t.all_started(n)
            })
            .await;
        tally.assert_one_conversation_each(n);
        tally
    }

    /// Waits until `done` holds for the tally; fails the test after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Tally) -> bool,
    ) -> Tally {
        let deadline = Instant::now() + timeout;
        loop {
            let tally = self.tally();
            if done(&tally) {
                return tally;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} ({} tickets with a result, {} failures: {:?}; \
                 first tickets below the highest one seen without a result: {:?})",
                tally.tickets.len(),
                tally.failures().len(),
                tally.failures().first(),
                (0..tally.highest())
                    .map(|i| format!("T-{i}"))
                    .filter(|t| !tally.tickets.contains_key(t))
                    .take(10)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

type Reader = (Connection, lapin::Consumer);

/// Where an [`Observer`] reads from.
struct Observed {
    urls: Vec<String>,
    exchange: String,
    queue: String,
    /// On a cluster: a quorum queue, replicated, so it outlives any one node.
    quorum: bool,
}

async fn observe(target: &Observed) -> anyhow::Result<Reader> {
    let (exchange, queue) = (target.exchange.as_str(), target.queue.as_str());
    let conn = connect_any(&target.urls).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    if target.quorum {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "observer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

async fn read_forever(
    first: Reader,
    target: Observed,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
) {
    let mut reader = Some(first);
    while !stop.is_cancelled() {
        let (conn, mut consumer) = match reader.take() {
            Some(r) => r,
            None => match observe(&target).await {
                Ok(r) => r,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let mut alive = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = tokio::select! {
                n = consumer.next() => n,
                _ = alive.tick() => {
                    if conn.status().connected() { continue; }
                    break;
                }
                _ = stop.cancelled() => break,
            };
            let Some(Ok(delivery)) = next else { break };
            let message = Seen::of(&delivery);
            {
                let mut seen = seen.lock().unwrap();
                // The observer's own ack lost with a node comes back as a redelivery of what
                // it already read: not something the bridge published twice.
                let again = delivery.redelivered
                    && seen
                        .iter()
                        .any(|s| s.routing_key == message.routing_key && s.body == message.body);
                if !again {
                    seen.push(message);
                }
            }
            // lapin can leave an ack pending for ever when the connection dies under it (the
            // bridge bounds its acks for the same reason): bound the observer's too.
            let ack = delivery.acker.ack(BasicAckOptions::default());
            if tokio::time::timeout(Duration::from_secs(5), ack)
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            conn.close(200, "observer done".into()),
        )
        .await;
    }
}

/// What came out per ticket.
#[derive(Debug, Default, Clone)]
pub struct TicketResults {
    /// `conversationId` of every `conversation.started` (repeats included).
    pub started: Vec<String>,
    /// `conversationId` of every `conversation.closed`.
    pub closed: Vec<String>,
    pub failed: Vec<Value>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub tickets: HashMap<String, TicketResults>,
}

impl Tally {
    pub fn of(seen: &[Seen]) -> Tally {
        let mut tally = Tally::default();
        for s in seen {
            let r = tally.tickets.entry(s.ticket().to_string()).or_default();
            let conversation = s.body["conversationId"].as_str().unwrap_or_default();
            match s.routing_key.as_str() {
                "conversation.started" => r.started.push(conversation.to_string()),
                "conversation.closed" => r.closed.push(conversation.to_string()),
                "ticket.failed" => r.failed.push(s.body.clone()),
                _ => {}
            }
        }
        tally
    }

    /// The highest `<i>` of a `T-<i>` with a result.
    pub fn highest(&self) -> usize {
        self.tickets
            .keys()
            .filter_map(|t| t.strip_prefix("T-")?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Tickets `T-0 … T-<n-1>` all started.
    pub fn all_started(&self, n: usize) -> bool {
        self.count(n, |r| !r.started.is_empty()) == n
    }

    /// Tickets `T-0 … T-<n-1>` all closed.
    pub fn all_closed(&self, n: usize) -> bool {
        self.count(n, |r| !r.closed.is_empty()) == n
    }

    pub fn count(&self, n: usize, pred: impl Fn(&TicketResults) -> bool) -> usize {
        (0..n)
            .filter(|i| self.tickets.get(&format!("T-{i}")).is_some_and(&pred))
            .count()
    }

    pub fn failures(&self) -> Vec<Value> {
        self.tickets
            .values()
            .flat_map(|r| r.failed.iter().cloned())
            .collect()
    }

    /// Every ticket `T-0 … T-<n-1>` has results that all name one conversation, and nothing
    /// failed.
    pub fn assert_one_conversation_each(&self, n: usize) {
        assert!(
            self.failures().is_empty(),
            "failures: {:#?}",
            self.failures()
        );
        for i in 0..n {
            let t = format!("T-{i}");
            let r = self
                .tickets
                .get(&t)
                .unwrap_or_else(|| panic!("{t} has no result"));
            assert!(!r.started.is_empty(), "{t} has no conversation.started");
            let mut ids: Vec<&String> = r.started.iter().chain(&r.closed).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(
                ids.len(),
                1,
                "{t}: results name several conversations: {r:?}"
            );
            assert!(!ids[0].is_empty(), "{t}: no conversation id: {r:?}");
        }
    }
}
