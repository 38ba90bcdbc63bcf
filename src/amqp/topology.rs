//! The exchanges, queues and bindings the bridge declares at start, idempotently:
//! `amqp.exchange` (topic) → `amqp.queue` (quorum by default, bound to the ticket keys,
//! dead-lettering to `<queue>.dlx` → `<queue>.dead`), one delay queue per retry tier that
//! dead-letters back into the queue it serves, and `amqp.events_exchange` (topic).
//!
//! Sharded (`amqp.consume_queues` set): the shard queues instead of `amqp.queue`, each with
//! single active consumer; with `amqp.shard_exchange` also a consistent-hash exchange hashing
//! on the `amqp.shard_header` header, bound to `amqp.exchange` with the ticket keys, and every
//! shard queue bound to it with weight 1.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpSettings, QueueType, RetrySettings};

/// Name of the delay queue of `queue` for one tier, e.g. `jelou-bridge.tickets.delay.30s`.
pub fn delay_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.delay.{}", humantime::format_duration(delay)).replace(' ', "")
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn put(args: &mut FieldTable, key: &str, value: AMQPValue) {
    args.insert(ShortString::from(key), value);
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Arguments shared by every queue holding ticket events: the queue type and, for quorum
/// queues, at-least-once dead-lettering (which needs reject-publish overflow).
fn base_args(amqp: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    match amqp.queue_type {
        QueueType::Quorum => {
            put(&mut args, "x-queue-type", text("quorum"));
            put(&mut args, "x-dead-letter-strategy", text("at-least-once"));
            put(&mut args, "x-overflow", text("reject-publish"));
        }
        QueueType::Classic => put(&mut args, "x-queue-type", text("classic")),
    }
    args
}

/// Arguments of a queue the bridge consumes.
pub fn work_queue_args(amqp: &AmqpSettings, single_active_consumer: bool) -> FieldTable {
    let mut args = base_args(amqp);
    put(
        &mut args,
        "x-dead-letter-exchange",
        text(&amqp.dead_letter_exchange()),
    );
    if amqp.queue_type == QueueType::Quorum {
        put(
            &mut args,
            "x-delivery-limit",
            AMQPValue::LongInt(amqp.delivery_limit as i32),
        );
    }
    if single_active_consumer {
        put(
            &mut args,
            "x-single-active-consumer",
            AMQPValue::Boolean(true),
        );
    }
    args
}

/// Declares everything. With `amqp.declare_topology = false` the queues are only checked
/// (passively), for operators who own the topology.
pub async fn declare(
    channel: &Channel,
    amqp: &AmqpSettings,
    retry: &RetrySettings,
) -> lapin::Result<()> {
    let queues = amqp.consumed_queues();
    if !amqp.declare_topology {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for q in &queues {
            channel
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await?;
            for d in &retry.delays {
                channel
                    .queue_declare(
                        delay_queue(q, *d).as_str().into(),
                        passive,
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        return Ok(());
    }
    let topic = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            amqp.exchange.as_str().into(),
            ExchangeKind::Topic,
            topic,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            amqp.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            topic,
            FieldTable::default(),
        )
        .await?;
    // Dead letters: a fanout exchange, so the original routing key is kept and still routes.
    let dlx = amqp.dead_letter_exchange();
    let dead = amqp.dead_letter_queue();
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            topic,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            dead.as_str().into(),
            durable(),
            base_args_without_overflow(amqp),
        )
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let sharded = !amqp.consume_queues.is_empty();
    for q in &queues {
        channel
            .queue_declare(q.as_str().into(), durable(), work_queue_args(amqp, sharded))
            .await?;
        for d in &retry.delays {
            let mut args = base_args(amqp);
            put(
                &mut args,
                "x-message-ttl",
                AMQPValue::LongLongInt(d.as_millis() as i64),
            );
            put(&mut args, "x-dead-letter-exchange", text(""));
            put(&mut args, "x-dead-letter-routing-key", text(q));
            channel
                .queue_declare(delay_queue(q, *d).as_str().into(), durable(), args)
                .await?;
        }
    }
    if sharded {
        if !amqp.shard_exchange.is_empty() {
            declare_shard_exchange(channel, amqp).await?;
        }
    } else {
        for key in &amqp.binding_keys {
            channel
                .queue_bind(
                    amqp.queue.as_str().into(),
                    amqp.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// The consistent-hash exchange and its bindings. Declaring an existing binding again is a
/// no-op for the broker, so each queue keeps its one weight and the ring does not change.
/// The ring follows binding order: list the shard queues in the same order everywhere.
async fn declare_shard_exchange(channel: &Channel, amqp: &AmqpSettings) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    put(&mut args, "hash-header", text(&amqp.shard_header));
    channel
        .exchange_declare(
            amqp.shard_exchange.as_str().into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            args,
        )
        .await?;
    for key in &amqp.binding_keys {
        channel
            .exchange_bind(
                amqp.shard_exchange.as_str().into(),
                amqp.exchange.as_str().into(),
                key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for q in &amqp.consume_queues {
        channel
            .queue_bind(
                q.as_str().into(),
                amqp.shard_exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The dead-letter queue is a sink: nothing dead-letters out of it.
fn base_args_without_overflow(amqp: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    let kind = match amqp.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    put(&mut args, "x-queue-type", text(kind));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queue_names_read_as_durations() {
        assert_eq!(delay_queue("q", Duration::from_secs(5)), "q.delay.5s");
        assert_eq!(delay_queue("q", Duration::from_secs(120)), "q.delay.2m");
        assert_eq!(
            delay_queue("q", Duration::from_millis(1500)),
            "q.delay.1s500ms"
        );
    }
}
