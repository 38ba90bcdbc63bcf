//! The supervised consumer: connect (with backoff), declare the topology, consume with manual
//! acks and `amqp.prefetch` deliveries in flight per queue, and start over when the broker
//! goes away. Reconnection is supervised here rather than by lapin's auto-recovery, so that a
//! broker restart always ends in a fresh connection, fresh channels and a redeclared topology.
//!
//! With `amqp.failover_urls`, a lost connection is retried on the same node first and then on
//! the other nodes in turn ([`connection::Nodes`]). Work of the lost session needs nothing
//! special: its publishes fail (their confirms are unknown), so its deliveries are never
//! acked; the broker gives them to the new session, where the store makes the redelivery
//! publish the same outcome again without a second Jelou call, and only then acks it.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::stream::{SelectAll, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use super::inbound::Inbound;
use super::publisher::{BrokerLink, Publisher};
use super::settle::Settler;
use super::{connection, topology};
use crate::bridge::Bridge;
use crate::lanes::TicketLanes;
use crate::ticket;

/// Longest wait for a connection, its channels and the topology declared.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the broker to acknowledge closing a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `shutdown` is cancelled, then stops consuming, lets in-flight deliveries finish
/// for up to `shutdown.grace`, and closes the connection (returning what is left unacked).
pub async fn run(bridge: Arc<Bridge>, link: Arc<BrokerLink>, shutdown: CancellationToken) {
    let settings = bridge.settings.clone();
    let tracker = TaskTracker::new();
    let work = Work {
        settler: Arc::new(Settler::new(settings.clone(), shutdown.clone())),
        bridge: bridge.clone(),
        lanes: Arc::default(),
        tracker: tracker.clone(),
    };
    let mut backoff = reconnect_backoff(&settings.amqp);
    let mut nodes = connection::Nodes::new(&settings.amqp);
    nodes.record(false);
    let name = format!("jelou-bridge {}", bridge.store.instance());
    while !shutdown.is_cancelled() {
        let session = tokio::select! {
            // A broker that accepts the TCP connection but never completes the handshake (an
            // overloaded or wedged node) must not hold the supervisor for good.
            s = tokio::time::timeout(SESSION_SETUP_TIMEOUT, open_session(&bridge, nodes.current(), &name)) => {
                s.unwrap_or_else(|_| Err(anyhow::anyhow!(
                    "the broker did not complete the connection and topology within {SESSION_SETUP_TIMEOUT:?}"
                )))
            }
            _ = shutdown.cancelled() => break,
        };
        let Session {
            conn,
            publisher,
            mut consumers,
            consuming,
        } = match session {
            Ok(s) => s,
            Err(e) => {
                link.set(None);
                let failed = nodes.name().to_string();
                nodes.advance();
                let delay = backoff.next().unwrap_or(settings.amqp.reconnect_max_delay);
                warn!(broker = %failed, next = %nodes.name(), error = %e, retry_in_ms = delay.as_millis() as u64, "broker unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        backoff = reconnect_backoff(&settings.amqp);
        link.set(Some(publisher.clone()));
        nodes.record(true);
        metrics::gauge!("jelou_bridge_subscribed_queues").set(consuming.len() as f64);
        info!(broker = %nodes.name(), queues = ?settings.amqp.own_queues(), prefetch = settings.amqp.prefetch, "consuming");
        // The publishing channel can die on its own (say an exchange was deleted under it);
        // without it no delivery can be settled, so that ends the session too.
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let lost = loop {
            let next = tokio::select! {
                next = consumers.next() => next,
                _ = watch.tick() => {
                    if publisher.channel().status().connected() {
                        continue;
                    }
                    warn!("the publishing channel closed; reconnecting");
                    break true;
                }
                _ = shutdown.cancelled() => break false,
            };
            match next {
                Some((queue, Ok(delivery))) => work.dispatch(&publisher, &queue, delivery),
                Some((queue, Err(e))) => {
                    error!(queue = %queue, error = %e, "consumer failed; reconnecting");
                    break true;
                }
                None => {
                    warn!("the broker cancelled the consumers; reconnecting");
                    break true;
                }
            }
        };
        link.set(None);
        nodes.record(false);
        metrics::gauge!("jelou_bridge_subscribed_queues").set(0.0);
        if lost {
            warn!(broker = %nodes.name(), nodes = nodes.len(), "lost the broker node; trying it again, then the other nodes");
            // Deliveries of the lost session cannot be acked any more: the broker gives them
            // to the next session, where the lanes queue them behind any work still running.
            // Bounded, as lapin has been seen to leave futures on a dead connection pending.
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, conn.close(320, "reconnecting".into())).await;
            continue;
        }
        stop_consuming(&consuming).await;
        crate::shutdown::drain(&tracker, settings.shutdown.grace).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "shutting down".into())).await;
        return;
    }
    link.set(None);
    crate::shutdown::drain(&tracker, settings.shutdown.grace).await;
}

type Consumers = SelectAll<
    futures_util::stream::BoxStream<'static, (Arc<str>, lapin::Result<lapin::message::Delivery>)>,
>;

/// One connection's worth of broker state.
struct Session {
    conn: Connection,
    publisher: Publisher,
    consumers: Consumers,
    /// The consuming channels and their consumer tags, to cancel at shutdown.
    consuming: Vec<(Channel, String)>,
}

async fn open_session(
    bridge: &Bridge,
    node: &secrecy::SecretString,
    name: &str,
) -> anyhow::Result<Session> {
    let amqp = &bridge.settings.amqp;
    let conn = connection::connect_to(amqp, node, name).await?;
    let publisher = Publisher::open(&conn, amqp.confirm_timeout).await?;
    topology::declare(publisher.channel(), amqp, &bridge.settings.retry)
        .await
        .map_err(|e| anyhow::anyhow!("cannot declare the topology: {e}"))?;
    let mut consumers = SelectAll::new();
    let mut consuming = Vec::new();
    // With several replicas, only this one's share of the queues (`AmqpSettings::own_queues`).
    for queue in amqp.own_queues() {
        // One channel per queue, so the prefetch bound holds per queue.
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(amqp.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("{name} {queue}");
        let consumer: Consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let queue: Arc<str> = Arc::from(queue.as_str());
        consumers.push(consumer.map(move |d| (queue.clone(), d)).boxed());
        consuming.push((channel, tag));
    }
    Ok(Session {
        conn,
        publisher,
        consumers,
        consuming,
    })
}

/// What every delivery of a run goes through: decided by the bridge, settled on the broker,
/// in its ticket's lane, tracked until done so that shutdown can wait for it.
struct Work {
    bridge: Arc<Bridge>,
    settler: Arc<Settler>,
    /// Per-ticket order among concurrent deliveries; owned by the run, shared by its sessions.
    lanes: Arc<TicketLanes>,
    /// Every delivery's task, so that shutdown drains them.
    tracker: TaskTracker,
}

impl Work {
    /// Decodes in delivery order (so the ticket lanes keep publish order), then spawns the
    /// work: consume → decode → decide → settle, the decision taken exactly once.
    fn dispatch(&self, publisher: &Publisher, queue: &str, delivery: lapin::message::Delivery) {
        let mut delivery = delivery;
        let msg = Inbound::from_delivery(&mut delivery, queue);
        let event = ticket::decode(
            &msg.routing_key,
            &msg.body,
            self.bridge.settings.amqp.max_message_bytes,
        );
        let ticket_id = match &event {
            Ok(e) => Some(e.ticket_id().to_string()),
            Err(invalid) => invalid.ticket_id.clone(),
        };
        let mut place = event.as_ref().ok().map(|e| self.lanes.enter(e.ticket_id()));
        let span = tracing::info_span!("delivery",
            ticket_id = ticket_id.as_deref().unwrap_or(""),
            correlation_id = msg.correlation_id().as_deref().unwrap_or(""),
            event = %msg.routing_key,
            parked = msg.parked,
            trace_id = tracing::field::Empty,
        );
        // Before the span is first entered: afterwards its parent is fixed.
        crate::trace_context::continue_trace(
            &span,
            crate::trace_context::from_amqp(msg.properties.headers().as_ref()),
        );
        // In the delivery's log lines too, so the logs of a ticket are found by its trace.
        if let Some(id) = crate::trace_context::trace_id_of(&span) {
            span.record("trace_id", id.as_str());
        }
        let bridge = self.bridge.clone();
        let settler = self.settler.clone();
        let publisher = publisher.clone();
        metrics::gauge!("jelou_bridge_inflight_deliveries").increment(1.0);
        self.tracker.spawn(
            async move {
                if let Some(place) = place.as_mut() {
                    place.wait_turn().await;
                }
                let decision = bridge.decide(&event, &msg.history).await;
                settler.settle(&delivery, &msg, decision, &publisher).await;
                drop(place);
                metrics::gauge!("jelou_bridge_inflight_deliveries").decrement(1.0);
            }
            .instrument(span),
        );
    }
}

/// Stops new deliveries; deliveries already received stay unacked on their channels, which
/// stay open so in-flight work can still ack them.
async fn stop_consuming(consuming: &[(Channel, String)]) {
    for (channel, tag) in consuming {
        if let Err(e) = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel a consumer");
        }
    }
}

fn reconnect_backoff(amqp: &crate::config::AmqpSettings) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(amqp.reconnect_min_delay)
        .with_max_delay(amqp.reconnect_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}
