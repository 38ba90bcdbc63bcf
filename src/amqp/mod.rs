//! RabbitMQ: connecting ([`connection`]), the topology the bridge declares ([`topology`]),
//! confirmed publishing ([`publisher`]) and the supervised consumer ([`consumer`]).

pub mod connection;
pub mod consumer;
pub mod publisher;
pub mod topology;

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Consumer};

pub use publisher::{BrokerLink, PublishError, Publisher};

/// Headers the bridge adds to messages it parks or dead-letters.
pub mod headers {
    /// The routing key the message first had (parking and dead-lettering change it).
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    /// How many times the message was parked in a delay queue.
    pub const PARKED: &str = "x-jb-parked";
    /// When the bridge first saw the message (ms since the epoch): the total budget's start.
    pub const FIRST_SEEN: &str = "x-jb-first-seen";
    /// Jelou calls made for the message so far.
    pub const ATTEMPTS: &str = "x-jb-attempts";
    pub const LAST_ERROR: &str = "x-jb-last-error";
    /// Dead letters: why, and from which queue.
    pub const REASON: &str = "x-jb-reason";
    pub const ERROR: &str = "x-jb-error";
    pub const HTTP_STATUS: &str = "x-jb-http-status";
    pub const SOURCE_QUEUE: &str = "x-jb-source-queue";
    pub const DEAD_AT: &str = "x-jb-dead-at";
    /// Parked: not to be tried before this time (ms since the epoch); a `Retry-After` longer
    /// than every delay tier.
    pub const NOT_BEFORE: &str = "x-jb-not-before";
    /// Parked: the conversation a start opened that the store could not record.
    pub const CONVERSATION_ID: &str = "x-jb-conversation-id";
    pub const TICKET_ID: &str = "x-ticket-id";
}

pub fn header_str(table: Option<&FieldTable>, key: &str) -> Option<String> {
    match table?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

pub fn header_i64(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    match table?.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

pub fn set_str(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
}

pub fn set_i64(table: &mut FieldTable, key: &str, value: i64) {
    table.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

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
