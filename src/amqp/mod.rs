//! RabbitMQ: connecting ([`connection`]), the topology the bridge declares ([`topology`]),
//! confirmed publishing ([`publisher`]) and the supervised consumer ([`consumer`]); and the
//! delivery side of every ticket event: a delivery read ([`inbound`], with the [`headers`]
//! earlier passes wrote), and the decision carried out on the broker ([`settle`]).

pub mod connection;
pub mod consumer;
pub mod headers;
pub mod inbound;
pub mod publisher;
pub mod settle;
pub mod topology;

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};

pub use headers::{header_i64, header_str, set_i64, set_str};
pub use publisher::{BrokerLink, PublishError, Publisher};

/// A private queue on `channel` (server-named, exclusive, deleted with its consumer), bound to
/// `exchange` with `binding_key` when given, and consumed without acks: what `publish` waits
/// on for its `reply_to` answer, and how the tests and the benchmark watch the events exchange.
pub async fn private_consumer(
    channel: &Channel,
    bind: Option<(&str, &str)>,
    consumer_tag: &str,
) -> lapin::Result<(ShortString, Consumer)> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    if let Some((exchange, binding_key)) = bind {
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}
