//! What the bridge publishes on `amqp.events_exchange`: bodies and routing keys, exactly as
//! the contract names them.

use serde::Serialize;
use serde_json::Value;

use crate::contract;

/// Routing keys (and `event` values) of what the bridge publishes.
pub const CONVERSATION_STARTED: &str = "conversation.started";
pub const CONVERSATION_CLOSED: &str = "conversation.closed";
pub const MESSAGE_SENT: &str = "message.sent";
pub const TICKET_FAILED: &str = "ticket.failed";

/// Why a ticket event failed; the `reason` field of `ticket.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The message could not be read or lacks what its event needs.
    InvalidMessage,
    /// Jelou answered with a 4xx that retrying cannot fix.
    Rejected,
    /// A `ticket.resolved` or `ticket.reply` for a ticket the bridge knows no conversation of.
    UnknownTicket,
    /// Jelou stayed unreachable or failing for the whole retry budget.
    RetriesExhausted,
    /// A `ticket.opened` (or a reply) for a ticket that was already resolved.
    AlreadyResolved,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidMessage => "invalid_message",
            FailureReason::Rejected => "rejected",
            FailureReason::UnknownTicket => "unknown_ticket",
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::AlreadyResolved => "already_resolved",
        }
    }

    pub fn parse(s: &str) -> Option<FailureReason> {
        [
            FailureReason::InvalidMessage,
            FailureReason::Rejected,
            FailureReason::UnknownTicket,
            FailureReason::RetriesExhausted,
            FailureReason::AlreadyResolved,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One thing to publish: the routing key, the ticket it concerns, the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub routing_key: String,
    pub ticket_id: Option<String>,
    /// Serialized once, from the contract's type, in its fields' order.
    pub body: String,
}

impl Outcome {
    /// The body read back as JSON (schema checks and tests).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn started(ticket_id: &str, conversation_id: &str, bot_id: &str, user_id: &str) -> Self {
        Self::new(
            CONVERSATION_STARTED,
            Some(ticket_id),
            to_body(contract::ConversationStarted {
                event: CONVERSATION_STARTED,
                ticket_id,
                conversation_id,
                bot_id,
                user_id,
                status: contract::ActiveStatus::Active,
                occurred_at: now_rfc3339(),
            }),
        )
    }

    pub fn closed(
        ticket_id: &str,
        conversation_id: Option<&str>,
        ended_reason: Option<&str>,
    ) -> Self {
        Self::new(
            CONVERSATION_CLOSED,
            Some(ticket_id),
            to_body(contract::ConversationClosed {
                event: CONVERSATION_CLOSED,
                ticket_id,
                conversation_id,
                status: contract::ClosedStatus::Closed,
                ended_reason,
                occurred_at: now_rfc3339(),
            }),
        )
    }

    /// An agent's reply went out to the customer.
    pub fn message_sent(ticket_id: &str, conversation_id: &str, message_id: &str) -> Self {
        Self::new(
            MESSAGE_SENT,
            Some(ticket_id),
            to_body(contract::MessageSent {
                event: MESSAGE_SENT,
                ticket_id,
                conversation_id,
                message_id,
                occurred_at: now_rfc3339(),
            }),
        )
    }

    pub fn failed(failure: &Failure) -> Self {
        let body = to_body(contract::TicketFailed {
            event: TICKET_FAILED,
            ticket_id: failure.ticket_id.as_deref(),
            action: failure.action,
            reason: failure.reason,
            http_status: failure.http_status,
            error: &failure.error,
            response: failure.response.as_deref(),
            attempts: failure.attempts,
            occurred_at: now_rfc3339(),
        });
        Self::new(TICKET_FAILED, failure.ticket_id.as_deref(), body)
    }

    /// A Jelou webhook event, forwarded as `jelou.<event>`.
    pub fn from_webhook(
        event: &str,
        ticket_id: Option<&str>,
        conversation_id: Option<&str>,
        payload: Value,
    ) -> Self {
        let routing_key = format!("jelou.{event}");
        let body = to_body(contract::JelouEvent {
            event: &routing_key,
            ticket_id,
            conversation_id,
            payload,
        });
        Self::new(&routing_key, ticket_id, body)
    }

    fn new(routing_key: &str, ticket_id: Option<&str>, body: String) -> Self {
        Self {
            routing_key: routing_key.to_string(),
            ticket_id: ticket_id.map(str::to_string),
            body,
        }
    }
}

/// Everything `ticket.failed` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub ticket_id: Option<String>,
    pub action: Option<&'static str>,
    pub reason: FailureReason,
    pub http_status: Option<u16>,
    pub error: String,
    /// Jelou's raw answer, when there was one.
    pub response: Option<String>,
    pub attempts: u32,
}

/// A contract body as JSON. The contract types are strings, numbers and JSON values only, so
/// serializing them cannot fail; were that to change, the body would be null and the schema
/// checks in the tests would say so.
fn to_body(body: impl Serialize) -> String {
    serde_json::to_string(&body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an outbound body could not be serialized");
        "null".into()
    })
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_exactly_the_contract_fields() {
        let keys = |o: &Outcome| {
            let mut k: Vec<_> = o.json().as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let s = Outcome::started("T-1", "C-1", "B", "U");
        assert_eq!(s.routing_key, "conversation.started");
        assert_eq!(
            keys(&s),
            [
                "botId",
                "conversationId",
                "event",
                "occurredAt",
                "status",
                "ticketId",
                "userId"
            ]
        );
        assert_eq!(s.json()["status"], "active");
        let c = Outcome::closed("T-1", Some("C-1"), Some("closed_by_operator"));
        assert_eq!(
            keys(&c),
            [
                "conversationId",
                "endedReason",
                "event",
                "occurredAt",
                "status",
                "ticketId"
            ]
        );
        let f = Outcome::failed(&Failure {
            ticket_id: None,
            action: None,
            reason: FailureReason::InvalidMessage,
            http_status: None,
            error: "body is not JSON".into(),
            response: None,
            attempts: 0,
        });
        assert_eq!(
            keys(&f),
            [
                "action",
                "attempts",
                "error",
                "event",
                "httpStatus",
                "occurredAt",
                "reason",
                "ticketId"
            ]
        );
        assert_eq!(f.json()["reason"], "invalid_message");
        assert!(f.json()["ticketId"].is_null());
        let body = s.json();
        let occurred = body["occurredAt"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(occurred).is_ok() && occurred.ends_with('Z'),
            "{occurred}"
        );
        let w = Outcome::from_webhook(
            "conversation.close",
            Some("T-1"),
            Some("C-1"),
            serde_json::json!({"x": 1}),
        );
        assert_eq!(w.routing_key, "jelou.conversation.close");
        assert_eq!(keys(&w), ["conversationId", "event", "payload", "ticketId"]);
        let m = Outcome::message_sent("T-1", "C-1", "M-1");
        assert_eq!(m.routing_key, "message.sent");
        assert_eq!(
            keys(&m),
            [
                "conversationId",
                "event",
                "messageId",
                "occurredAt",
                "ticketId"
            ]
        );
    }
}
