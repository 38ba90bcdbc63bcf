//! A decision carried out on the broker: the outcome published with confirms, the message
//! parked in a delay queue or dead-lettered, and only then the delivery acked. When the broker
//! refuses, the delivery goes back to its queue and, being idempotent, is done again.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::headers::{self, set_i64, set_str};
use super::inbound::Inbound;
use super::publisher::{PublishError, Publisher};
use super::topology::delay_queue;
use crate::bridge::{Decision, Parking};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::events::{Failure, Outcome};
use crate::ticket;
use crate::trace_context;

/// How long a delivery whose outcome the broker refused waits before it goes back.
const REQUEUE_PAUSE: Duration = Duration::from_millis(500);

/// Carries decisions out on the broker.
pub struct Settler {
    settings: Arc<Settings>,
    /// Cancelled when the process begins to shut down: a requeue pause ends early.
    shutdown: CancellationToken,
}

impl Settler {
    pub fn new(settings: Arc<Settings>, shutdown: CancellationToken) -> Settler {
        Settler { settings, shutdown }
    }

    /// Carries a decision out on the broker and acks, nacks or requeues the delivery.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        msg: &Inbound,
        decision: Decision,
        publisher: &Publisher,
    ) {
        let event = EventLabel::of(msg);
        let result = match decision {
            Decision::Done(outcome) => {
                let label = match outcome.routing_key.as_str() {
                    crate::events::CONVERSATION_STARTED => "started",
                    crate::events::MESSAGE_SENT => "sent",
                    _ => "closed",
                };
                self.publish_outcome(publisher, &outcome, msg)
                    .await
                    .map(|_| label)
            }
            Decision::Failed(failure) => {
                self.fail(publisher, &failure, msg).await.map(|_| "failed")
            }
            Decision::Park(parking) => self.park(publisher, msg, &parking).await.map(|_| "parked"),
            Decision::Requeue => {
                metrics::counter!("jelou_bridge_ticket_events_total", "event" => event.0, "outcome" => "requeued").increment(1);
                if let Err(e) = acknowledge(delivery, Acknowledgement::Requeue).await {
                    debug!(error = %e, "could not return the delivery (the broker will redeliver it)");
                }
                return;
            }
        };
        match result {
            Ok(outcome) => {
                metrics::counter!("jelou_bridge_ticket_events_total", "event" => event.0, "outcome" => outcome).increment(1);
                if let Err(e) = acknowledge(delivery, Acknowledgement::Ack).await {
                    warn!(error = %e, "could not ack (the broker will redeliver; the store absorbs it)");
                }
            }
            Err(e) => {
                warn!(error = %e, "could not publish the outcome; returning the delivery to the queue");
                metrics::counter!("jelou_bridge_ticket_events_total", "event" => event.0, "outcome" => "requeued").increment(1);
                // A broker that keeps refusing (a full queue with reject-publish) would
                // otherwise see the same delivery again at once, in a tight loop; the quorum
                // queue's delivery limit still ends a message that never gets through.
                if !matches!(e, PublishError::Unavailable) {
                    tokio::select! {
                        _ = tokio::time::sleep(REQUEUE_PAUSE) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                let _ = acknowledge(delivery, Acknowledgement::Requeue).await;
            }
        }
    }

    /// Publishes on the events exchange and, when asked for, to `reply_to`.
    async fn publish_outcome(
        &self,
        publisher: &Publisher,
        outcome: &Outcome,
        msg: &Inbound,
    ) -> Result<(), PublishError> {
        let body = outcome.body.as_bytes();
        let props = outcome_properties(outcome, msg.correlation_id());
        let main = publisher.publish(
            &self.settings.amqp.events_exchange,
            &outcome.routing_key,
            body,
            props.clone(),
            false,
        );
        match msg.reply_to() {
            None => main.await,
            Some(reply_to) => {
                let reply = publisher.publish("", &reply_to, body, props, true);
                let (main, reply) = tokio::join!(main, reply);
                if let Err(e) = reply {
                    // A vanished reply queue must not hold the ticket back: the outcome is on
                    // the events exchange either way.
                    warn!(reply_to = %reply_to, error = %e, "could not deliver the outcome to reply_to");
                }
                main
            }
        }
    }

    /// The message into the dead-letter queue with the reason on it, then `ticket.failed`:
    /// whoever sees the failure finds the dead letter already there.
    async fn fail(
        &self,
        publisher: &Publisher,
        failure: &Failure,
        msg: &Inbound,
    ) -> Result<(), PublishError> {
        warn!(reason = failure.reason.as_str(), http_status = failure.http_status, error = %failure.error, "ticket event failed");
        let mut table = msg.properties.headers().clone().unwrap_or_default();
        set_str(&mut table, headers::REASON, failure.reason.as_str());
        set_str(&mut table, headers::ERROR, &failure.error);
        if let Some(status) = failure.http_status {
            set_i64(&mut table, headers::HTTP_STATUS, i64::from(status));
        }
        set_str(&mut table, headers::SOURCE_QUEUE, &msg.source_queue);
        set_str(&mut table, headers::ORIGINAL_ROUTING_KEY, &msg.routing_key);
        set_i64(&mut table, headers::DEAD_AT, now_ms());
        set_i64(&mut table, headers::FIRST_SEEN, msg.history.first_seen);
        set_i64(&mut table, headers::ATTEMPTS, i64::from(failure.attempts));
        if let Some(t) = &failure.ticket_id {
            set_str(&mut table, headers::TICKET_ID, t);
        }
        let props = republished(msg, table);
        publisher
            .publish(
                &self.settings.amqp.dead_letter_exchange(),
                &msg.routing_key,
                &msg.body,
                props,
                true,
            )
            .await?;
        metrics::counter!("jelou_bridge_dead_letters_total", "reason" => failure.reason.as_str())
            .increment(1);
        self.publish_outcome(publisher, &Outcome::failed(failure), msg)
            .await
    }

    /// Into the delay queue of the tier this park reaches; it dead-letters back by itself.
    /// A `Retry-After` longer than every tier parks in the longest one and marks the message
    /// not to be tried before then (it is parked again, without a call, until it may).
    async fn park(
        &self,
        publisher: &Publisher,
        msg: &Inbound,
        parking: &Parking,
    ) -> Result<(), PublishError> {
        let wait = parking
            .retry_after
            .or_else(|| msg.history.not_before_in().filter(|w| !w.is_zero()));
        let tier = &park_tier(&self.settings.retry.delays, msg.parked, wait);
        let queue = delay_queue(&msg.source_queue, *tier);
        let mut table = msg.properties.headers().clone().unwrap_or_default();
        set_i64(&mut table, headers::PARKED, msg.parked.saturating_add(1));
        set_i64(&mut table, headers::FIRST_SEEN, msg.history.first_seen);
        set_i64(&mut table, headers::ATTEMPTS, i64::from(parking.attempts));
        set_str(&mut table, headers::LAST_ERROR, &parking.error);
        set_str(&mut table, headers::ORIGINAL_ROUTING_KEY, &msg.routing_key);
        if let Some(status) = parking.http_status {
            set_i64(&mut table, headers::HTTP_STATUS, i64::from(status));
        }
        if let Some(ra) = parking.retry_after.filter(|ra| ra > tier) {
            let until = now_ms().saturating_add(ra.as_millis().min(i64::MAX as u128) as i64);
            set_i64(&mut table, headers::NOT_BEFORE, until);
        }
        if let Some(c) = &parking.conversation_id {
            set_str(&mut table, headers::CONVERSATION_ID, c);
        }
        let props = republished(msg, table);
        publisher
            .publish("", &queue, &msg.body, props, true)
            .await?;
        let (action, error) = (parking.action, &parking.error);
        info!(action, delay = %humantime::format_duration(*tier), parked = msg.parked.saturating_add(1), error, "parked in the delay queue");
        metrics::counter!("jelou_bridge_parked_total", "action" => action.to_string()).increment(1);
        Ok(())
    }
}

/// The delivery's own properties with `table` as its headers, persistent, carrying this
/// span's trace: a parked message's next pass, or a dead letter, continues the delivery's trace.
fn republished(msg: &Inbound, mut table: FieldTable) -> BasicProperties {
    trace_context::inject_amqp(&tracing::Span::current(), &mut table);
    msg.properties
        .clone()
        .with_headers(table)
        .with_delivery_mode(2)
}

/// Longest wait for an ack or nack to be handed to the connection. lapin can leave that
/// future pending for ever when the connection dies at that very moment, which would hold the
/// ticket's lane, and with it the redelivered copy, for good. Giving up is safe: the broker
/// returns a delivery that was not settled when its connection goes, and the store absorbs
/// the redelivery.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

enum Acknowledgement {
    Ack,
    /// Back to the queue, for another try.
    Requeue,
}

async fn acknowledge(delivery: &Delivery, how: Acknowledgement) -> Result<(), String> {
    let sent = async {
        match how {
            Acknowledgement::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Acknowledgement::Requeue => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        }
    };
    match tokio::time::timeout(ACK_TIMEOUT, sent).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer from the connection within {ACK_TIMEOUT:?}"
        )),
    }
}

/// The event label of a delivery for metrics, from its routing key.
struct EventLabel(&'static str);

impl EventLabel {
    fn of(msg: &Inbound) -> Self {
        EventLabel(match ticket::EventKind::parse(&msg.routing_key) {
            Some(k) => k.as_str(),
            None => "unknown",
        })
    }
}

fn outcome_properties(outcome: &Outcome, correlation_id: Option<String>) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(t) = &outcome.ticket_id {
        set_str(&mut table, headers::TICKET_ID, t);
    }
    trace_context::inject_amqp(&tracing::Span::current(), &mut table);
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_timestamp((now_ms() / 1000) as u64)
        .with_app_id("jelou-bridge".into())
        .with_headers(table);
    if let Some(c) = correlation_id {
        props = props.with_correlation_id(c.into());
    }
    props
}

/// The delay tier a park goes to: the shortest one that covers `wait` (else the longest),
/// or, with nothing to wait for, the tier of the park's rank (the last one repeating).
pub fn park_tier(delays: &[Duration], parked: i64, wait: Option<Duration>) -> Duration {
    let longest = delays.iter().max().copied().unwrap_or_default();
    match wait {
        Some(wait) => delays
            .iter()
            .filter(|d| **d >= wait)
            .min()
            .copied()
            .unwrap_or(longest),
        None => delays
            .get((parked.max(0) as usize).min(delays.len().saturating_sub(1)))
            .copied()
            .unwrap_or(longest),
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn a_park_always_lands_in_a_tier_that_covers_the_wait_when_one_does(
            delays in prop::collection::vec(1u64..100_000, 1..6),
            parked in any::<i64>(),
            wait in prop::option::of(0u64..200_000),
        ) {
            let delays: Vec<Duration> = delays.into_iter().map(Duration::from_millis).collect();
            let wait = wait.map(Duration::from_millis);
            let tier = park_tier(&delays, parked, wait);
            prop_assert!(delays.contains(&tier));
            if let Some(wait) = wait {
                let longest = *delays.iter().max().unwrap();
                prop_assert!(tier >= wait || tier == longest);
            }
        }
    }
}
