//! The helpdesk's side of the bus for the benchmark: the topology, ticket events pre-loaded
//! or published at a steady rate (persistent, each confirmed by the broker), and an observer
//! that sees every outcome published on an events exchange.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use jelou_bridge::amqp::topology;
use jelou_bridge::config::Settings;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use serde_json::json;
use tokio::sync::mpsc;

/// Unconfirmed publishes allowed at once while loading.
const CONFIRM_WINDOW: usize = 2_000;

/// A named connection to the broker at `url` (bounded: a broker that never answers fails the
/// run instead of hanging it).
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    testkit::connect_to(url, name, Duration::from_secs(20))
        .await
        .with_context(|| {
            format!("cannot connect to RabbitMQ at {url} (scripts/ensure-services.sh starts it)")
        })
}

/// A confirm-mode channel.
pub async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Declares what the bridge would (the queue must exist, with the bridge's arguments, before
/// the backlog is loaded into it).
pub async fn declare(channel: &Channel, settings: &Settings) -> anyhow::Result<()> {
    topology::declare(channel, &settings.amqp, &settings.retry)
        .await
        .context("declaring the topology")
}

/// Deletes what [`declare`] made, so the shared broker is left as it was. On a connection of
/// its own: the run's may have been closed by the error that ends it.
pub async fn remove(url: &str, settings: &Settings) {
    testkit::Declared::by_bridge(settings)
        .delete(&[url.to_string()])
        .await;
}

/// A `ticket.opened` body; `phase` and `i` come back through [`ticket_key`].
pub fn ticket_body(prefix: &str, phase: char, i: usize) -> Vec<u8> {
    json!({
        "ticketId": format!("{prefix}-{phase}{i}"),
        "userId": format!("user-{i}"),
        "botId": "bot-loadtest",
        "initialMessage": "Hola, necesito ayuda con mi pedido",
        "queue": "SOPORTE",
        "metadata": {"priority": "high", "source": "loadtest"},
    })
    .to_string()
    .into_bytes()
}

/// The phase and number of a ticket id made by [`ticket_body`].
pub fn ticket_key(prefix: &str, ticket_id: &str) -> Option<(char, usize)> {
    let rest = ticket_id.strip_prefix(prefix)?.strip_prefix('-')?;
    let phase = rest.chars().next()?;
    Some((phase, rest[phase.len_utf8()..].parse().ok()?))
}

pub fn ticket_properties(i: usize) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(format!("lt-{i}").into())
}

/// How long one publish or its confirm may take before the run fails.
const BROKER_CALL: Duration = Duration::from_secs(60);

/// Awaits publisher confirms in the background, in order; its channel's capacity bounds the
/// publishes in flight.
pub struct Confirms {
    tx: mpsc::Sender<PublisherConfirm>,
    task: tokio::task::JoinHandle<usize>,
}

impl Confirms {
    pub fn new() -> Confirms {
        let (tx, mut rx) = mpsc::channel::<PublisherConfirm>(CONFIRM_WINDOW);
        let task = tokio::spawn(async move {
            let mut refused = 0;
            // Set once a confirm is lost: the channel is gone, and its other confirms would be
            // lost too. Waiting `BROKER_CALL` for each of them in turn (the window holds
            // hundreds, and `publish` waits on the window) hung a matrix run for minutes.
            let mut lost = false;
            while let Some(confirm) = rx.recv().await {
                if lost {
                    refused += 1;
                    continue;
                }
                // Bounded: lapin can lose a confirm on a dying connection, and a benchmark
                // that hangs says less than one that fails.
                let answer = tokio::time::timeout(BROKER_CALL, confirm).await;
                lost = answer.is_err();
                if !matches!(answer, Ok(Ok(c)) if c.is_ack()) {
                    refused += 1;
                }
            }
            refused
        });
        Confirms { tx, task }
    }

    pub async fn publish(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let confirm = tokio::time::timeout(
            BROKER_CALL,
            channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("a publish got no answer within {BROKER_CALL:?}"))??;
        self.tx
            .send(confirm)
            .await
            .map_err(|_| anyhow::anyhow!("the confirm checker stopped"))
    }

    /// Waits for every confirm; fails if the broker refused any publish.
    pub async fn finish(self) -> anyhow::Result<()> {
        drop(self.tx);
        let refused = self.task.await?;
        anyhow::ensure!(
            refused == 0,
            "the broker refused {refused} publishes, or confirmed none of them within {BROKER_CALL:?}"
        );
        Ok(())
    }
}

/// Publishes `n` ticket events (phase `B`) and waits until the broker confirmed them all.
pub async fn preload(
    channel: &Channel,
    exchange: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let confirms = Confirms::new();
    for i in 0..n {
        let body = ticket_body(prefix, 'B', i);
        confirms
            .publish(
                channel,
                exchange,
                "ticket.opened",
                &body,
                ticket_properties(i),
            )
            .await?;
    }
    confirms.finish().await?;
    Ok(started.elapsed())
}

/// Publishes `n` ticket events (phase `P`) at `rate` a second; returns when each was sent.
pub async fn publish_paced(
    channel: Channel,
    exchange: String,
    prefix: String,
    n: usize,
    rate: f64,
) -> anyhow::Result<Vec<Instant>> {
    let mut sent = Vec::with_capacity(n);
    let confirms = Confirms::new();
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| ticket_body(&prefix, 'P', i)).collect();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent.len() < n {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        while sent.len() < due {
            let i = sent.len();
            sent.push(Instant::now());
            confirms
                .publish(
                    &channel,
                    &exchange,
                    "ticket.opened",
                    &bodies[i],
                    ticket_properties(i),
                )
                .await?;
        }
    }
    confirms.finish().await?;
    Ok(sent)
}

/// One message seen on an events exchange.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Instant,
    /// From the body's `ticketId`, when it is one of this run's tickets.
    pub key: Option<(char, usize)>,
    /// `conversation.started` (anything else is a failure for this benchmark).
    pub started: bool,
}

#[derive(serde::Deserialize)]
struct OutcomeBody {
    event: String,
    #[serde(rename = "ticketId")]
    ticket_id: Option<String>,
}

/// Binds a private queue to every routing key of `exchange` and reports each message.
pub async fn observe(
    conn: &Connection,
    exchange: &str,
    prefix: String,
) -> anyhow::Result<mpsc::UnboundedReceiver<Seen>> {
    let channel = conn.create_channel().await?;
    let (_, mut consumer) =
        jelou_bridge::amqp::private_consumer(&channel, Some((exchange, "#")), "loadtest-observer")
            .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            let body: Option<OutcomeBody> = serde_json::from_slice(&delivery.data).ok();
            let seen = Seen {
                at,
                key: body
                    .as_ref()
                    .and_then(|b| b.ticket_id.as_deref())
                    .and_then(|t| ticket_key(&prefix, t)),
                started: body.is_some_and(|b| b.event == "conversation.started"),
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_ids_map_back_to_their_number() {
        let body: serde_json::Value =
            serde_json::from_slice(&ticket_body("lt-ab", 'P', 42)).unwrap();
        let id = body["ticketId"].as_str().unwrap();
        assert_eq!(ticket_key("lt-ab", id), Some(('P', 42)));
        assert_eq!(ticket_key("lt-xy", id), None);
    }
}
