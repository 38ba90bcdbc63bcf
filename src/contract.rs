//! The bus contract as Rust types: one type per message body the bridge reads or writes, and
//! the JSON Schemas (draft 2020-12) derived from them.
//!
//! Outbound bodies are built from these types ([`crate::events::Outcome`] serializes them), so
//! what the bridge sends and what its schema says cannot drift apart. Inbound bodies are still
//! read by the hand-written [`crate::ticket::decode`] (its error messages name each field);
//! the inbound types here exist for their schemas, and a unit test keeps the two in agreement.
//! `jelou-bridge schemas --out schemas/` writes the files that `docs/asyncapi.yaml` refers to.

use std::path::{Path, PathBuf};

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Which way a message goes on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Helpdesk → bridge, on `amqp.exchange`.
    Inbound,
    /// Bridge → bus, on `amqp.events_exchange`.
    Outbound,
}

/// One message of the bus contract: its name (the routing key and `event`), its direction
/// and the schema of its body.
pub struct Message {
    pub name: &'static str,
    pub direction: Direction,
    pub schema: Schema,
}

/// Every message of the contract, in the order the contract lists them.
pub fn messages() -> Vec<Message> {
    use crate::events::{CONVERSATION_CLOSED, CONVERSATION_STARTED, MESSAGE_SENT, TICKET_FAILED};
    use Direction::{Inbound, Outbound};
    vec![
        message::<TicketOpenedMessage>("ticket.opened", Inbound),
        message::<TicketResolvedMessage>("ticket.resolved", Inbound),
        message::<TicketReplyMessage>("ticket.reply", Inbound),
        message::<ConversationStarted>(CONVERSATION_STARTED, Outbound),
        message::<ConversationClosed>(CONVERSATION_CLOSED, Outbound),
        message::<MessageSent>(MESSAGE_SENT, Outbound),
        message::<TicketFailed>(TICKET_FAILED, Outbound),
        message::<JelouEvent>("jelou.conversation.start", Outbound),
        message::<JelouEvent>("jelou.conversation.close", Outbound),
        message::<JelouEvent>("jelou.message", Outbound),
    ]
}

/// The schema of `T` as `name`'s body: inbound ones as serde would read them (optional
/// fields may be left out), outbound ones as the bridge writes them (every field present
/// unless skipped when empty). `event`, when given, must be the message's name.
fn message<T: JsonSchema>(name: &'static str, direction: Direction) -> Message {
    let settings = SchemaSettings::draft2020_12();
    let settings = match direction {
        Direction::Inbound => settings.for_deserialize(),
        Direction::Outbound => settings.for_serialize(),
    };
    let mut schema = settings.into_generator().into_root_schema_for::<T>();
    schema.insert("title".into(), Value::String(name.into()));
    if let Some(event) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("event"))
        .and_then(Value::as_object_mut)
    {
        event.insert("const".into(), Value::String(name.into()));
    }
    Message {
        name,
        direction,
        schema,
    }
}

/// A schema file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The file name of `message`'s schema.
pub fn file_name(message: &str) -> String {
    format!("{message}.schema.json")
}

/// A schema as its file holds it: pretty JSON, keys in a stable order, a final newline.
pub fn render(schema: &Schema) -> String {
    // Through `Value` so that keys come out sorted however serde_json's maps are configured.
    let sorted = sort_keys(schema.as_value().clone());
    let mut text = serde_json::to_string_pretty(&sorted).unwrap_or_default();
    text.push('\n');
    text
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Writes `DIR/<message>.schema.json` for every message; the paths written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    messages()
        .iter()
        .map(|m| {
            let path = dir.join(file_name(m.name));
            std::fs::write(&path, render(&m.schema)).map_err(|source| WriteError {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Failure, Outcome};
    use crate::ticket::{decode, EventKind};
    use serde_json::json;

    fn validator(name: &str) -> jsonschema::Validator {
        let message = messages()
            .into_iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no schema for {name}"));
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(message.schema.as_value())
            .unwrap()
    }

    fn errors(name: &str, body: &Value) -> Vec<String> {
        validator(name)
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    #[test]
    fn committed_schemas_are_what_the_code_produces() {
        let fresh = tempfile::tempdir().unwrap();
        write_all(fresh.path()).unwrap();
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let list = |dir: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".schema.json"))
                .collect();
            names.sort();
            names
        };
        let hint = "run `cargo run -- schemas --out schemas` and commit the result";
        assert_eq!(
            list(&committed),
            list(fresh.path()),
            "schemas/ does not hold one file per bus message: {hint}"
        );
        for name in list(fresh.path()) {
            let want = std::fs::read(fresh.path().join(&name)).unwrap();
            let have = std::fs::read(committed.join(&name)).unwrap();
            assert!(
                have == want,
                "schemas/{name} differs from what the code produces: {hint}"
            );
        }
    }

    #[test]
    fn every_contract_message_has_a_schema() {
        let names: Vec<_> = messages().iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "ticket.opened",
                "ticket.resolved",
                "ticket.reply",
                "conversation.started",
                "conversation.closed",
                "message.sent",
                "ticket.failed",
                "jelou.conversation.start",
                "jelou.conversation.close",
                "jelou.message",
            ]
        );
        for m in messages() {
            assert_eq!(
                m.schema.get("$schema"),
                Some(&json!("https://json-schema.org/draft/2020-12/schema")),
                "{}",
                m.name
            );
        }
    }

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
                errors(&o.routing_key, &o.body),
                Vec::<String>::new(),
                "{o:?}"
            );
        }
        // And the schemas can say no: a body off the contract fails.
        let mut off = Outcome::started("T-1", "C-1", "B", "U").body;
        off["status"] = json!("closed");
        assert!(!errors("conversation.started", &off).is_empty());
        let mut off = failure(None, None, None, None).body;
        off["action"] = json!("transfer");
        assert!(!errors("ticket.failed", &off).is_empty());
        let mut off = failure(None, None, None, None).body;
        off["occurredAt"] = json!("yesterday");
        assert!(!errors("ticket.failed", &off).is_empty());
        let w = Outcome::from_webhook("message", None, None, json!({}));
        assert!(!errors("jelou.conversation.start", &w.body).is_empty());
    }

    #[test]
    fn every_action_a_failure_names_is_in_the_schema() {
        let actions: Vec<_> = FailedAction::ALL.iter().map(|a| a.as_str()).collect();
        for kind in [EventKind::Opened, EventKind::Resolved, EventKind::Reply] {
            assert!(actions.contains(&kind.action()), "{}", kind.action());
        }
    }

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
