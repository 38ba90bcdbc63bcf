//! The helpdesk's side of the bus for one test of a bridge: publishes ticket events and
//! watches every message the bridge publishes, each checked against the contract's schemas.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jelou_bridge::config::Settings;
use lapin::options::{BasicGetOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::Value;

use crate::broker::{connect, ready_messages, Seen};
use crate::contract::{check_contract, INBOUND};

/// A test's helpdesk: its connection, a channel, and a private observer queue bound to every
/// routing key of the events exchange.
pub struct Bus {
    /// Held so that the channel and the observer stay open.
    _conn: Connection,
    pub channel: Channel,
    exchange: String,
    consumer: lapin::Consumer,
}

impl Bus {
    /// Declares the test's exchanges (as the bridge will) and binds a private observer queue
    /// to every routing key of the events exchange.
    pub async fn new(settings: &Settings) -> Bus {
        let conn = connect().await;
        let channel = conn.create_channel().await.unwrap();
        let topic = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for ex in [&settings.amqp.exchange, &settings.amqp.events_exchange] {
            channel
                .exchange_declare(
                    ex.as_str().into(),
                    ExchangeKind::Topic,
                    topic,
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let (_, consumer) = jelou_bridge::amqp::private_consumer(
            &channel,
            Some((&settings.amqp.events_exchange, "#")),
            "observer",
        )
        .await
        .unwrap();
        Bus {
            _conn: conn,
            channel,
            exchange: settings.amqp.exchange.clone(),
            consumer,
        }
    }

    /// Publishes a ticket event (persistent, JSON) and waits for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                Default::default(),
                body,
                props
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes a well-formed ticket event: a body its schema in `schemas/` refuses fails
    /// the test here, so the tests speak only the contract (bad input on purpose goes through
    /// [`Bus::publish_json_unchecked`]).
    pub async fn publish_json(&self, routing_key: &str, body: &Value) {
        let name = match body.get("event") {
            Some(Value::String(event)) => event.as_str(),
            _ => routing_key,
        };
        if INBOUND.contains(&name) {
            if let Err(e) = check_contract(name, body) {
                panic!("the test publishes a {name} off the contract: {e}\n{body:#}");
            }
        }
        self.publish_json_unchecked(routing_key, body).await;
    }

    /// Publishes a JSON body as it is, for tests of what the bridge does with bad input.
    pub async fn publish_json_unchecked(&self, routing_key: &str, body: &Value) {
        let id = uuid::Uuid::new_v4().to_string();
        self.publish(
            routing_key,
            body.to_string().as_bytes(),
            BasicProperties::default().with_message_id(id.into()),
        )
        .await;
    }

    /// The next message the bridge publishes, or None after `timeout`. A body its routing
    /// key's schema in `schemas/` refuses fails the test.
    pub async fn next(&mut self, timeout: Duration) -> Option<Seen> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        let seen = Seen::of(&delivery);
        if let Err(e) = check_contract(&seen.routing_key, &seen.body) {
            panic!(
                "the bridge published a {} off the contract: {e}\n{:#}",
                seen.routing_key, seen.body
            );
        }
        Some(seen)
    }

    /// Waits for `n` messages, failing the test if they do not come in `timeout`.
    pub async fn expect(&mut self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(seen) => out.push(seen),
                None => panic!(
                    "expected {n} messages within {timeout:?}, got {}: {out:#?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Collects messages until `done` says so or `timeout` passes (the test then fails).
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(seen) => out.push(seen),
                None => panic!(
                    "condition not met within {timeout:?}; got {} messages",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts nothing more arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(extra) = self.next(quiet).await {
            panic!("unexpected message: {extra:#?}");
        }
    }

    /// Takes every message currently in `queue` (acking them).
    pub async fn drain_queue(&self, queue: &str) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(Seen::of(&msg.delivery));
        }
        out
    }

    /// Number of messages ready in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        ready_messages(&self.channel, queue)
            .await
            .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"))
    }
}
