//! One delivery as the bridge reads it: its parts, and what earlier passes wrote in its
//! headers read back (clamped: headers from the bus are input too).

use lapin::message::Delivery;
use lapin::BasicProperties;

use super::headers::{self, header_i64, header_str};
use crate::bridge::History;
use crate::clock::now_ms;

/// One inbound delivery, with what earlier passes through the bridge wrote on it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The routing key it was first published with.
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    /// The queue it was consumed from (parking returns it there).
    pub source_queue: String,
    /// Times parked so far.
    pub parked: i64,
    /// What earlier passes left on it: all the decision reads of it besides its event.
    pub history: History,
}

impl Inbound {
    /// Takes the body out of the delivery (only its acker is needed afterwards).
    pub fn from_delivery(delivery: &mut Delivery, source_queue: &str) -> Inbound {
        Inbound::new(
            delivery.routing_key.as_str(),
            std::mem::take(&mut delivery.data),
            delivery.properties.clone(),
            source_queue,
        )
    }

    /// A delivery's parts, with what earlier passes wrote in its headers read back.
    pub fn new(
        routing_key: &str,
        body: Vec<u8>,
        properties: BasicProperties,
        source_queue: &str,
    ) -> Inbound {
        let h = properties.headers().as_ref();
        let now = now_ms();
        Inbound {
            routing_key: header_str(h, headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_string()),
            source_queue: source_queue.to_string(),
            // Headers from the bus are input too: counts are clamped, and a first sighting
            // in the future (a skewed clock, a hand-made header) is taken as now, so the
            // total budget cannot be switched off.
            parked: header_i64(h, headers::PARKED)
                .unwrap_or(0)
                .clamp(0, 1 << 30),
            history: History {
                first_seen: header_i64(h, headers::FIRST_SEEN)
                    .filter(|t| *t > 0)
                    .map_or(now, |t| t.min(now)),
                prior_attempts: header_i64(h, headers::ATTEMPTS)
                    .unwrap_or(0)
                    .clamp(0, i64::from(u32::MAX / 2)) as u32,
                not_before: header_i64(h, headers::NOT_BEFORE).filter(|t| *t > now),
                conversation_id: header_str(h, headers::CONVERSATION_ID).filter(|c| !c.is_empty()),
            },
            body,
            properties,
        }
    }

    /// The inbound `correlation_id`, else its `message_id`.
    pub fn correlation_id(&self) -> Option<String> {
        self.properties
            .correlation_id()
            .as_ref()
            .or(self.properties.message_id().as_ref())
            .map(|s| s.as_str().to_string())
    }

    /// Where the helpdesk asked for the outcome, besides the events exchange.
    pub fn reply_to(&self) -> Option<String> {
        self.properties
            .reply_to()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// Bus input is untrusted: arbitrary bodies and headers end as an event or a clear error,
/// never a panic, and headers cannot switch a budget off or overflow a count. A fixed number
/// of cases keeps CI's time bounded.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::ticket;
    use lapin::types::FieldTable;
    use lapin::types::{AMQPValue, LongString, ShortString};
    use proptest::prelude::*;

    fn header_value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            ".{0,24}".prop_map(|s| AMQPValue::LongString(LongString::from(s.into_bytes()))),
            any::<bool>().prop_map(AMQPValue::Boolean),
        ]
    }

    fn headers_table() -> impl Strategy<Value = FieldTable> {
        let keys = prop::sample::select(vec![
            headers::PARKED,
            headers::FIRST_SEEN,
            headers::ATTEMPTS,
            headers::NOT_BEFORE,
            headers::CONVERSATION_ID,
            headers::ORIGINAL_ROUTING_KEY,
            "x-other",
        ]);
        prop::collection::vec((keys, header_value()), 0..8).prop_map(|pairs| {
            let mut table = FieldTable::default();
            for (k, v) in pairs {
                table.insert(ShortString::from(k), v);
            }
            table
        })
    }

    /// JSON-ish bodies: objects with the contract's field names holding any kind of value,
    /// and raw bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let field = prop::sample::select(vec![
            "event",
            "ticketId",
            "userId",
            "botId",
            "messageId",
            "text",
            "attachment",
            "redirectPayload",
            "assignment",
            "metadata",
            "queue",
        ]);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                "ticket.opened",
                "ticket.resolved",
                "ticket.reply",
                "text",
                "image",
                "https://a.example/x"
            ])
            .prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(2, 16, 4, |inner| {
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        });
        prop_oneof![
            prop::collection::btree_map(field, value, 0..8)
                .prop_map(|m| { serde_json::to_vec(&m).expect("a map serialises") }),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_body_decodes_to_an_event_or_a_named_error(
            key in prop::sample::select(vec!["ticket.opened", "ticket.resolved", "ticket.reply", "other", ""]),
            body in body(),
        ) {
            match ticket::decode(key, &body, 1 << 20) {
                Ok(event) => prop_assert!(!event.ticket_id().trim().is_empty()),
                Err(invalid) => prop_assert!(!invalid.detail.is_empty()),
            }
        }

        #[test]
        fn headers_from_the_bus_are_clamped(table in headers_table()) {
            let before = now_ms();
            let props = BasicProperties::default().with_headers(table);
            let msg = Inbound::new("ticket.opened", Vec::new(), props, "q");
            let after = now_ms();
            prop_assert!(msg.parked >= 0 && msg.parked <= 1 << 30);
            prop_assert!(msg.history.prior_attempts <= u32::MAX / 2);
            // A first sighting in the future cannot switch the total budget off.
            prop_assert!(msg.history.first_seen > 0 && msg.history.first_seen <= after);
            if let Some(t) = msg.history.not_before {
                prop_assert!(t > before);
            }
            // Adding this pass's attempts cannot overflow.
            prop_assert!(msg.history.prior_attempts.checked_add(1 << 20).is_some());
        }
    }
}
