//! What the bridge publishes, as the types its bodies are serialized from: the outcome of
//! each ticket event, and Jelou's webhook events forwarded.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::events::FailureReason;

/// `conversation.started`: Jelou started the ticket's conversation (or had already).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationStarted<'a> {
    /// Always `conversation.started`.
    pub event: &'a str,
    /// The helpdesk's ticket id.
    pub ticket_id: &'a str,
    /// Jelou's conversation id; the same one again when the event is repeated.
    pub conversation_id: &'a str,
    pub bot_id: &'a str,
    pub user_id: &'a str,
    pub status: ActiveStatus,
    /// When the bridge published this, RFC 3339 UTC.
    #[schemars(extend("format" = "date-time"))]
    pub occurred_at: String,
}

/// The `status` of `conversation.started`.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActiveStatus {
    Active,
}

/// The `status` of `conversation.closed`.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClosedStatus {
    Closed,
}

/// `conversation.closed`: the ticket's conversation is closed (by this bridge, or found
/// closed or replaced).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationClosed<'a> {
    /// Always `conversation.closed`.
    pub event: &'a str,
    pub ticket_id: &'a str,
    /// Null when the ticket never had a conversation the bridge knew of.
    pub conversation_id: Option<&'a str>,
    pub status: ClosedStatus,
    /// Why it ended, when it did not end by this close (e.g. replaced by a later ticket).
    pub ended_reason: Option<&'a str>,
    #[schemars(extend("format" = "date-time"))]
    pub occurred_at: String,
}

/// `message.sent`: an agent's reply (`ticket.reply`) reached the customer's conversation.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageSent<'a> {
    /// Always `message.sent`.
    pub event: &'a str,
    pub ticket_id: &'a str,
    pub conversation_id: &'a str,
    /// The helpdesk's `messageId` of the reply.
    pub message_id: &'a str,
    #[schemars(extend("format" = "date-time"))]
    pub occurred_at: String,
}

/// The Jelou action a `ticket.failed` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailedAction {
    Start,
    Close,
    Message,
}

impl FailedAction {
    /// Every action, as `ticket.failed` names it.
    pub const ALL: [FailedAction; 3] = [
        FailedAction::Start,
        FailedAction::Close,
        FailedAction::Message,
    ];

    /// Its name in `ticket.failed`'s `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailedAction::Start => "start",
            FailedAction::Close => "close",
            FailedAction::Message => "message",
        }
    }
}

/// `ticket.failed`: a ticket event that ended without its effect.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketFailed<'a> {
    /// Always `ticket.failed`.
    pub event: &'a str,
    /// Null when the message was too broken to name its ticket.
    pub ticket_id: Option<&'a str>,
    /// Null when the message was too broken to tell what it asked for.
    // The bridge carries the action as `EventKind::action()`'s string; the schema is the
    // enum's, and a unit test checks every such string is one of its values.
    #[schemars(with = "Option<FailedAction>")]
    pub action: Option<&'a str>,
    pub reason: FailureReason,
    /// Jelou's HTTP status, when Jelou answered.
    pub http_status: Option<u16>,
    /// What went wrong, for people.
    pub error: &'a str,
    /// Jelou's raw answer, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    /// Calls made to Jelou for this event.
    pub attempts: u32,
    #[schemars(extend("format" = "date-time"))]
    pub occurred_at: String,
}

/// `jelou.conversation.start`, `jelou.conversation.close`, `jelou.message`: one of Jelou's
/// webhook events, forwarded as received.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JelouEvent<'a> {
    /// The routing key: `jelou.` and the event's name.
    pub event: &'a str,
    /// The ticket of the conversation, when the bridge knows it.
    pub ticket_id: Option<&'a str>,
    /// Jelou's conversation id, when the event names one.
    pub conversation_id: Option<&'a str>,
    /// Jelou's event body exactly as received.
    pub payload: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::schema::errors;
    use crate::events::{Failure, Outcome};
    use crate::ticket::EventKind;
    use serde_json::json;

    #[test]
    fn what_the_bridge_publishes_validates_against_its_schema() {
        let failure = |ticket_id: Option<&str>, action, http_status, response: Option<&str>| {
            Outcome::failed(&Failure {
                ticket_id: ticket_id.map(str::to_string),
                action,
                reason: crate::events::FailureReason::Rejected,
                http_status,
                error: "Jelou said 422".into(),
                response: response.map(str::to_string),
                attempts: 1,
            })
        };
        let mut outcomes = vec![
            Outcome::started("T-1", "C-1", "B", "U"),
            Outcome::closed("T-1", Some("C-1"), None),
            Outcome::closed("T-1", None, Some("replaced_by_ticket T-2")),
            Outcome::message_sent("T-1", "C-1", "M-1"),
            failure(None, None, None, None),
            failure(
                Some("T-1"),
                Some("close"),
                Some(422),
                Some("{\"error\":\"x\"}"),
            ),
        ];
        for event in ["conversation.start", "conversation.close", "message"] {
            outcomes.push(Outcome::from_webhook(
                event,
                None,
                Some("C-1"),
                json!({"any": ["thing"]}),
            ));
        }
        for o in &outcomes {
            assert_eq!(
                errors(&o.routing_key, &o.json()),
                Vec::<String>::new(),
                "{o:?}"
            );
        }
        // And the schemas can say no: a body off the contract fails.
        let mut off = Outcome::started("T-1", "C-1", "B", "U").json();
        off["status"] = json!("closed");
        assert!(!errors("conversation.started", &off).is_empty());
        let mut off = failure(None, None, None, None).json();
        off["action"] = json!("transfer");
        assert!(!errors("ticket.failed", &off).is_empty());
        let mut off = failure(None, None, None, None).json();
        off["occurredAt"] = json!("yesterday");
        assert!(!errors("ticket.failed", &off).is_empty());
        let w = Outcome::from_webhook("message", None, None, json!({}));
        assert!(!errors("jelou.conversation.start", &w.json()).is_empty());
    }

    #[test]
    fn every_action_a_failure_names_is_in_the_schema() {
        let actions: Vec<_> = FailedAction::ALL.iter().map(|a| a.as_str()).collect();
        for kind in [EventKind::Opened, EventKind::Resolved, EventKind::Reply] {
            assert!(actions.contains(&kind.action()), "{}", kind.action());
        }
    }
}
