//! What the helpdesk sends, as types that exist for their schemas: the bridge reads these
//! bodies with [`crate::ticket::decode`], and a unit test here keeps the decoder and the
//! schemas accepting the same bodies.

use schemars::{JsonSchema, Schema};
use serde::Deserialize;
use serde_json::{Map, Value};

/// `ticket.opened`: open a Jelou conversation for this ticket. Fields other than these are
/// allowed (routing rules may read them).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketOpenedMessage {
    /// The event type when it is not the routing key's.
    pub event: Option<String>,
    #[schemars(regex(pattern = r"\S"))]
    pub ticket_id: String,
    #[schemars(regex(pattern = r"\S"))]
    pub user_id: String,
    /// Required unless the bridge has a `jelou.bot_id`.
    #[schemars(regex(pattern = r"\S"))]
    pub bot_id: Option<String>,
    /// The customer's first message, shown in Jelou.
    #[schemars(regex(pattern = r"\S"))]
    pub initial_message: Option<String>,
    /// Jelou queue to assign, when `assignment` is not given.
    #[schemars(regex(pattern = r"\S"))]
    pub queue: Option<String>,
    /// Who takes the conversation; wins over `queue` and the routing rules.
    pub assignment: Option<AssignmentMessage>,
    /// Merged into the start call's metadata (`ticketId` is always the ticket's).
    pub metadata: Option<Map<String, Value>>,
}

/// A Jelou assignment in `ticket.opened`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct AssignmentMessage {
    #[serde(rename = "type")]
    pub kind: AssignmentKind,
    #[schemars(regex(pattern = r"\S"))]
    pub target: String,
}

/// What an assignment's target is.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentKind {
    Queue,
    Operator,
    Team,
}

/// `ticket.resolved`: close the ticket's Jelou conversation.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketResolvedMessage {
    /// The event type when it is not the routing key's.
    pub event: Option<String>,
    #[schemars(regex(pattern = r"\S"))]
    pub ticket_id: String,
    /// May be left out when the bridge started the ticket's conversation.
    #[schemars(regex(pattern = r"\S"))]
    pub user_id: Option<String>,
    /// May be left out when the bridge started the ticket's conversation.
    #[schemars(regex(pattern = r"\S"))]
    pub bot_id: Option<String>,
    /// The text the customer sees at the close; `redirectPayload` wins over it.
    #[schemars(regex(pattern = r"\S"))]
    pub closing_message: Option<String>,
    /// Jelou's close payload, as given.
    pub redirect_payload: Option<RedirectPayload>,
}

/// Jelou's `redirectPayload`: a text, or an edge of the bot's flow. Other fields pass through.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RedirectPayload {
    /// The text the customer sees.
    Text {
        #[schemars(regex(pattern = r"\S"))]
        text: String,
    },
    /// A flow edge of the bot.
    Edge { text: Option<String> },
}

/// `ticket.reply`: an agent's message to the customer, sent once per `messageId`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = exactly_one_content)]
pub struct TicketReplyMessage {
    /// The event type when it is not the routing key's.
    pub event: Option<String>,
    #[schemars(regex(pattern = r"\S"))]
    pub ticket_id: String,
    /// The helpdesk's own id of the message: the send-once key.
    #[schemars(regex(pattern = r"\S"))]
    pub message_id: String,
    #[serde(flatten)]
    pub content: ReplyContentMessage,
}

/// A reply carries `text` or `attachment`, not both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ReplyContentMessage {
    Text {
        #[schemars(regex(pattern = r"\S"))]
        text: String,
    },
    Attachment {
        attachment: AttachmentMessage,
    },
}

/// serde reads an untagged enum as "the first that fits", which schemars writes as `anyOf`;
/// the contract says one of the two, not both, which is `oneOf`.
fn exactly_one_content(schema: &mut Schema) {
    if let Some(branches) = schema.remove("anyOf") {
        schema.insert("oneOf".into(), branches);
    }
}

/// A media attachment of a reply.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentMessage {
    #[serde(rename = "type")]
    pub kind: AttachmentKind,
    /// An https URL Jelou can fetch.
    #[schemars(regex(pattern = r"^https://[^/?#\s]"))]
    pub url: String,
    #[schemars(regex(pattern = r"\S"))]
    pub mime_type: String,
    /// Shown with images and videos.
    #[schemars(regex(pattern = r"\S"))]
    pub caption: Option<String>,
    /// Shown with documents.
    #[schemars(regex(pattern = r"\S"))]
    pub filename: Option<String>,
}

/// The attachment types Jelou's send-message endpoint takes.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    Image,
    Video,
    Audio,
    Document,
}

#[cfg(test)]
mod tests {
    use crate::contract::schema::errors;
    use crate::ticket::{decode, EventKind};
    use serde_json::{json, Value};

    /// The decoder and the inbound schemas agree: what one accepts the other accepts. The
    /// schema of a body is its `event`'s when it names one, else the routing key's, as the
    /// decoder reads it.
    #[test]
    fn the_decoder_and_the_inbound_schemas_agree() {
        let cases: &[(&str, Value)] = &[
            // Accepted by both (the bodies of the decoder's own tests among them).
            (
                "ticket.opened",
                json!({"ticketId": "T-12345", "userId": "USER_ID",
                "botId": "BOT_ID", "initialMessage": "Hola, necesito ayuda", "queue": "SOPORTE",
                "assignment": {"type": "operator", "target": "agent-7"},
                "metadata": {"priority": "high"}}),
            ),
            ("ticket.opened", json!({"ticketId": "T-1", "userId": "U"})),
            (
                "ticket.opened",
                json!({"ticketId": "T-1", "userId": "U", "botId": null,
                "metadata": {"ticketId": "forged"}, "anything": ["else"]}),
            ),
            (
                "ticket.opened",
                json!({"event": "ticket.resolved", "ticketId": "T-1"}),
            ),
            ("ticket.resolved", json!({"ticketId": "T-77"})),
            (
                "ticket.resolved",
                json!({"ticketId": "T-1", "userId": "U", "botId": "B",
                "closingMessage": "bye", "redirectPayload": {"type": "edge", "text": "x"}}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T", "redirectPayload": {"type": "edge"}}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T",
                "redirectPayload": {"type": "text", "text": "bye"}}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T-1", "messageId": "M-1", "text": "Hola"}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T-1", "messageId": "M-1", "text": "Hola",
                "attachment": null}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T-1", "messageId": "M-2", "attachment": {
                "type": "document", "url": "https://cdn.example/a", "mimeType": "x/y",
                "caption": "look", "filename": "a.pdf"}}),
            ),
            // Refused by both.
            ("ticket.opened", json!([1, 2])),
            ("ticket.opened", json!({"userId": "U"})),
            ("ticket.opened", json!({"ticketId": ""})),
            ("ticket.opened", json!({"ticketId": "  ", "userId": "U"})),
            ("ticket.opened", json!({"ticketId": "T-9", "userId": 5})),
            (
                "ticket.opened",
                json!({"ticketId": "T-9", "userId": "U", "metadata": "x"}),
            ),
            (
                "ticket.opened",
                json!({"ticketId": "T-9", "userId": "U",
                "assignment": {"type": "robot", "target": "x"}}),
            ),
            (
                "ticket.opened",
                json!({"ticketId": "T-9", "userId": "U",
                "assignment": {"type": "queue"}}),
            ),
            (
                "ticket.opened",
                json!({"ticketId": "T-9", "event": "ticket.exploded"}),
            ),
            (
                "ticket.opened",
                json!({"ticketId": "T-9", "userId": "U", "event": null}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T", "redirectPayload": {"type": "video"}}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T", "redirectPayload": {"text": "x"}}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T", "redirectPayload": {"type": "text"}}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T",
                "redirectPayload": {"type": "text", "text": " "}}),
            ),
            (
                "ticket.resolved",
                json!({"ticketId": "T",
                "redirectPayload": {"type": "edge", "text": 3}}),
            ),
            ("ticket.reply", json!({"ticketId": "T", "text": "x"})),
            ("ticket.reply", json!({"ticketId": "T", "messageId": "M"})),
            (
                "ticket.reply",
                json!({"ticketId": "T", "messageId": "M", "text": "x",
                "attachment": {"type": "image", "url": "https://a/b", "mimeType": "x"}}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T", "messageId": "M",
                "attachment": {"type": "sticker", "url": "https://a/b", "mimeType": "x"}}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T", "messageId": "M",
                "attachment": {"type": "image", "url": "http://a/b", "mimeType": "x"}}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T", "messageId": "M",
                "attachment": {"type": "image", "url": "https://a/b"}}),
            ),
            (
                "ticket.reply",
                json!({"ticketId": "T", "messageId": "M",
                "attachment": {"type": "image", "url": "https://a/b", "mimeType": "x",
                "caption": ""}}),
            ),
        ];
        let (mut accepted, mut refused) = (0, 0);
        for (routing_key, body) in cases {
            let decoded = decode(routing_key, body.to_string().as_bytes(), 1 << 20);
            let name = match body.get("event") {
                Some(Value::String(e)) if EventKind::parse(e).is_some() => e.as_str(),
                _ => routing_key,
            };
            let schema_errors = errors(name, body);
            assert_eq!(
                decoded.is_ok(),
                schema_errors.is_empty(),
                "{routing_key} {body}: decoder {decoded:?}, schema {schema_errors:?}"
            );
            if decoded.is_ok() {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(accepted >= 10 && refused >= 20, "{accepted} / {refused}");
    }
}
