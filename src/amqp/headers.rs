//! The headers the bridge reads and writes on messages: what a park or a dead letter records
//! for the next pass and for operators, and typed access to AMQP header tables.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

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

/// A string header, whichever string type it came as.
pub fn header_str(table: Option<&FieldTable>, key: &str) -> Option<String> {
    match table?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// An integer header, whichever integer type (or numeric string) it came as.
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

/// Sets a string header (as a long string).
pub fn set_str(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
}

/// Sets an integer header (as a 64-bit integer).
pub fn set_i64(table: &mut FieldTable, key: &str, value: i64) {
    table.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}
