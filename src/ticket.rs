//! The domain: helpdesk ticket events, checked field by field, and the Jelou requests they
//! become. Pure data and functions; no I/O.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{RoutingSettings, Settings};

/// The event types the bridge consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Opened,
    Resolved,
    /// A helpdesk agent's message to the customer.
    Reply,
}

impl EventKind {
    pub fn parse(name: &str) -> Option<EventKind> {
        match name {
            "ticket.opened" => Some(EventKind::Opened),
            "ticket.resolved" => Some(EventKind::Resolved),
            "ticket.reply" => Some(EventKind::Reply),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "ticket.opened",
            EventKind::Resolved => "ticket.resolved",
            EventKind::Reply => "ticket.reply",
        }
    }

    /// The Jelou action it leads to, as `ticket.failed` names it.
    pub fn action(self) -> &'static str {
        match self {
            EventKind::Opened => "start",
            EventKind::Resolved => "close",
            EventKind::Reply => "message",
        }
    }
}

/// A Jelou assignment: `queue`, `operator` or `team`, and its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TicketOpened {
    pub ticket_id: String,
    pub user_id: String,
    pub bot_id: Option<String>,
    pub initial_message: Option<String>,
    pub queue: Option<String>,
    pub assignment: Option<Assignment>,
    pub metadata: Map<String, Value>,
    /// The whole body, for routing rules that look at any field.
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TicketResolved {
    pub ticket_id: String,
    pub user_id: Option<String>,
    pub bot_id: Option<String>,
    pub closing_message: Option<String>,
    pub redirect_payload: Option<Value>,
}

/// `ticket.reply`: an agent's message, sent to the customer once per `messageId`.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketReply {
    pub ticket_id: String,
    /// The helpdesk's own id of the message: the send-once key, and Jelou's `value.id`.
    pub message_id: String,
    pub content: ReplyContent,
}

/// What an agent's message carries: text, or one attachment.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyContent {
    Text(String),
    Attachment(Attachment),
}

/// A media attachment of a reply; `url` is https.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// `image`, `video`, `audio` or `document`.
    pub kind: String,
    pub url: String,
    pub mime_type: String,
    pub caption: Option<String>,
    pub filename: Option<String>,
}

/// The attachment types Jelou's send-message endpoint takes.
pub const ATTACHMENT_TYPES: &[&str] = &["image", "video", "audio", "document"];

#[derive(Debug, Clone, PartialEq)]
pub enum TicketEvent {
    Opened(TicketOpened),
    Resolved(TicketResolved),
    Reply(TicketReply),
}

impl TicketEvent {
    pub fn ticket_id(&self) -> &str {
        match self {
            TicketEvent::Opened(t) => &t.ticket_id,
            TicketEvent::Resolved(t) => &t.ticket_id,
            TicketEvent::Reply(t) => &t.ticket_id,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            TicketEvent::Opened(_) => EventKind::Opened,
            TicketEvent::Resolved(_) => EventKind::Resolved,
            TicketEvent::Reply(_) => EventKind::Reply,
        }
    }
}

/// Why a message cannot be handled; becomes `ticket.failed` with `invalid_message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidMessage {
    /// The ticket id, when the body was readable enough to have one.
    pub ticket_id: Option<String>,
    /// The event type, when known.
    pub kind: Option<EventKind>,
    pub detail: String,
}

/// Reads one inbound message. The event type is the body's `event` field when present, else
/// `routing_key`.
pub fn decode(
    routing_key: &str,
    body: &[u8],
    max_bytes: usize,
) -> Result<TicketEvent, InvalidMessage> {
    let invalid =
        |ticket_id: Option<String>, kind: Option<EventKind>, detail: String| InvalidMessage {
            ticket_id,
            kind,
            detail,
        };
    if body.len() > max_bytes {
        return Err(invalid(
            None,
            EventKind::parse(routing_key),
            format!(
                "body is {} bytes, over the {max_bytes}-byte limit",
                body.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            None,
            EventKind::parse(routing_key),
            format!("body is not JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(invalid(
            None,
            EventKind::parse(routing_key),
            format!("body must be a JSON object, got {}", type_name(&value)),
        ));
    };
    // Read the ticket id first, so that even a failure names its ticket.
    let ticket_id = obj
        .get("ticketId")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    let kind = match obj.get("event") {
        Some(Value::String(name)) => EventKind::parse(name).ok_or_else(|| {
            invalid(
                ticket_id.clone(),
                None,
                format!("unknown event type {name:?}"),
            )
        })?,
        Some(other) => {
            return Err(invalid(
                ticket_id,
                None,
                format!("field `event`: expected a string, got {}", type_name(other)),
            ))
        }
        None => EventKind::parse(routing_key).ok_or_else(|| {
            invalid(
                ticket_id.clone(),
                None,
                format!("no `event` field and routing key {routing_key:?} is not a ticket event"),
            )
        })?,
    };
    let fields = Fields {
        obj,
        ticket_id: ticket_id.clone(),
        kind,
    };
    let ticket_id = fields.required_str("ticketId")?;
    match kind {
        EventKind::Opened => Ok(TicketEvent::Opened(TicketOpened {
            user_id: fields.required_str("userId")?,
            bot_id: fields.optional_str("botId")?,
            initial_message: fields.optional_str("initialMessage")?,
            queue: fields.optional_str("queue")?,
            assignment: fields.assignment()?,
            metadata: fields.optional_object("metadata")?.unwrap_or_default(),
            ticket_id,
            body: value.clone(),
        })),
        EventKind::Resolved => Ok(TicketEvent::Resolved(TicketResolved {
            user_id: fields.optional_str("userId")?,
            bot_id: fields.optional_str("botId")?,
            closing_message: fields.optional_str("closingMessage")?,
            redirect_payload: fields.redirect_payload()?,
            ticket_id,
        })),
        EventKind::Reply => Ok(TicketEvent::Reply(TicketReply {
            message_id: fields.required_str("messageId")?,
            content: fields.reply_content()?,
            ticket_id,
        })),
    }
}

/// Field readers that name the field in every error.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    ticket_id: Option<String>,
    kind: EventKind,
}

impl Fields<'_> {
    fn error(&self, detail: String) -> InvalidMessage {
        InvalidMessage {
            ticket_id: self.ticket_id.clone(),
            kind: Some(self.kind),
            detail,
        }
    }

    fn required_str(&self, name: &str) -> Result<String, InvalidMessage> {
        self.optional_str(name)?
            .ok_or_else(|| self.error(format!("field `{name}` is required")))
    }

    /// A string field; `null` counts as absent, an empty string is refused.
    fn optional_str(&self, name: &str) -> Result<Option<String>, InvalidMessage> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.error(format!("field `{name}` must not be empty")))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(format!(
                "field `{name}`: expected a string, got {}",
                type_name(other)
            ))),
        }
    }

    fn optional_object(&self, name: &str) -> Result<Option<Map<String, Value>>, InvalidMessage> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(other) => Err(self.error(format!(
                "field `{name}`: expected an object, got {}",
                type_name(other)
            ))),
        }
    }

    fn assignment(&self) -> Result<Option<Assignment>, InvalidMessage> {
        let Some(obj) = self.optional_object("assignment")? else {
            return Ok(None);
        };
        let inner = Fields {
            obj: &obj,
            ticket_id: self.ticket_id.clone(),
            kind: self.kind,
        };
        let kind = inner
            .required_str("type")
            .map_err(|e| self.error(format!("assignment: {}", e.detail)))?;
        if !matches!(kind.as_str(), "queue" | "operator" | "team") {
            return Err(self.error(format!(
                "field `assignment.type` must be queue, operator or team, got {kind:?}"
            )));
        }
        let target = inner
            .required_str("target")
            .map_err(|e| self.error(format!("assignment: {}", e.detail)))?;
        Ok(Some(Assignment { kind, target }))
    }

    /// `text`, or an `attachment` with an https `url` (one of the two, not both).
    fn reply_content(&self) -> Result<ReplyContent, InvalidMessage> {
        let text = self.optional_str("text")?;
        let attachment = self.optional_object("attachment")?;
        let obj = match (text, attachment) {
            (Some(_), Some(_)) => {
                return Err(self
                    .error("fields `text` and `attachment`: give one of the two, not both".into()))
            }
            (Some(text), None) => return Ok(ReplyContent::Text(text)),
            (None, None) => {
                return Err(self.error("field `text` or `attachment` is required".into()))
            }
            (None, Some(obj)) => obj,
        };
        let inner = Fields {
            obj: &obj,
            ticket_id: self.ticket_id.clone(),
            kind: self.kind,
        };
        let nested = |e: InvalidMessage| self.error(format!("attachment: {}", e.detail));
        let kind = inner.required_str("type").map_err(nested)?;
        if !ATTACHMENT_TYPES.contains(&kind.as_str()) {
            return Err(self.error(format!(
                "field `attachment.type` must be one of {}, got {kind:?}",
                ATTACHMENT_TYPES.join(", ")
            )));
        }
        let url = inner.required_str("url").map_err(nested)?;
        if !url::Url::parse(&url).is_ok_and(|u| u.scheme() == "https" && u.has_host()) {
            return Err(self.error(format!(
                "field `attachment.url` must be an https URL, got {url:?}"
            )));
        }
        Ok(ReplyContent::Attachment(Attachment {
            kind,
            url,
            mime_type: inner.required_str("mimeType").map_err(nested)?,
            caption: inner.optional_str("caption").map_err(nested)?,
            filename: inner.optional_str("filename").map_err(nested)?,
        }))
    }

    fn redirect_payload(&self) -> Result<Option<Value>, InvalidMessage> {
        let Some(obj) = self.optional_object("redirectPayload")? else {
            return Ok(None);
        };
        let kind = obj.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("text") | Some("edge")) {
            return Err(
                self.error("field `redirectPayload.type` must be \"text\" or \"edge\"".to_string())
            );
        }
        match obj.get("text") {
            Some(Value::String(t)) if !t.trim().is_empty() => {}
            // A text redirect is its text: Jelou refuses one without (422).
            None | Some(Value::Null) | Some(Value::String(_)) if kind == Some("text") => {
                return Err(self.error(
                    "field `redirectPayload.text` is required when its type is \"text\"".into(),
                ))
            }
            None | Some(Value::Null) => {}
            Some(text) if !text.is_string() => {
                return Err(self.error(format!(
                    "field `redirectPayload.text`: expected a string, got {}",
                    type_name(text)
                )));
            }
            Some(_) => {}
        }
        Ok(Some(Value::Object(obj)))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Body of Jelou's start call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    pub bot_id: String,
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_message: Option<String>,
    pub metadata: Map<String, Value>,
    pub assignment: Assignment,
}

/// Body of Jelou's close call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseRequest {
    pub bot_id: String,
    pub user_id: String,
    pub redirect_payload: Value,
}

/// A request that cannot be built: the message lacks what only it could supply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct MissingField(pub String);

/// `ticket.opened` → start call: `metadata.ticketId` always set; the assignment is the
/// message's, else its `queue`, else the first matching rule, else the default queue.
pub fn start_request(t: &TicketOpened, settings: &Settings) -> Result<StartRequest, MissingField> {
    let bot_id = t
        .bot_id
        .clone()
        .or_else(|| settings.jelou.bot_id.clone().filter(|b| !b.is_empty()))
        .ok_or_else(|| {
            MissingField("field `botId` is required (no jelou.bot_id is configured)".into())
        })?;
    let mut metadata = t.metadata.clone();
    metadata.insert("ticketId".into(), Value::String(t.ticket_id.clone()));
    let assignment = t.assignment.clone().unwrap_or_else(|| Assignment {
        kind: "queue".into(),
        target: choose_queue(t, &settings.routing),
    });
    Ok(StartRequest {
        bot_id,
        user_id: t.user_id.clone(),
        initial_message: t.initial_message.clone(),
        metadata,
        assignment,
    })
}

/// The message's `queue`, else the first rule whose field matches, else the default.
pub fn choose_queue(t: &TicketOpened, routing: &RoutingSettings) -> String {
    if let Some(q) = &t.queue {
        return q.clone();
    }
    routing
        .rules
        .iter()
        .find(|rule| {
            lookup(&t.body, &rule.field)
                .and_then(scalar_text)
                .is_some_and(|v| rule.equals.contains(&v))
        })
        .map(|rule| rule.queue.clone())
        .unwrap_or_else(|| routing.default_queue.clone())
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `ticket.resolved` → close call. `bot_id`/`user_id` come from the message or, failing
/// that, from what the store remembers of the ticket.
pub fn close_request(
    t: &TicketResolved,
    known_bot: Option<&str>,
    known_user: Option<&str>,
    settings: &Settings,
) -> Result<CloseRequest, MissingField> {
    let bot_id = t
        .bot_id
        .as_deref()
        .or(known_bot)
        .or(settings.jelou.bot_id.as_deref().filter(|b| !b.is_empty()))
        .ok_or_else(|| MissingField("botId unknown for this ticket".into()))?;
    let user_id = t
        .user_id
        .as_deref()
        .or(known_user)
        .ok_or_else(|| MissingField("userId unknown for this ticket".into()))?;
    let redirect_payload = match (&t.redirect_payload, &t.closing_message) {
        (Some(p), _) => p.clone(),
        (None, Some(text)) => serde_json::json!({"type": "text", "text": text}),
        (None, None) => serde_json::json!({
            "type": "text",
            "text": settings.close.default_text.replace("{ticketId}", &t.ticket_id),
        }),
    };
    Ok(CloseRequest {
        bot_id: bot_id.to_string(),
        user_id: user_id.to_string(),
        redirect_payload,
    })
}

/// Body of Jelou's send-message call (snake_case, as Jelou documents it): the agent's reply
/// into the conversation's room.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRequest {
    pub field: &'static str,
    pub object: &'static str,
    pub event_type: &'static str,
    pub project_id: String,
    pub room_id: String,
    pub bot_id: String,
    pub user_id: String,
    pub value: MessageValue,
}

/// `value` of a send-message call: the sender's message id, its type and content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageValue {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Value,
}

/// Where a reply goes: the conversation's room, bot and user.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub project_id: &'a str,
    pub room_id: &'a str,
    pub bot_id: &'a str,
    pub user_id: &'a str,
}

/// `ticket.reply` → send-message call. Text is `{body}`; media is `{url, mime_type}` with
/// `caption` (image, video) or `filename` (document) inside `content` where given.
pub fn message_request(reply: &TicketReply, to: Recipient<'_>) -> MessageRequest {
    let (kind, content) = match &reply.content {
        ReplyContent::Text(text) => ("text".to_string(), serde_json::json!({ "body": text })),
        ReplyContent::Attachment(a) => {
            let mut content = serde_json::json!({ "url": a.url, "mime_type": a.mime_type });
            if let (Some(caption), "image" | "video") = (&a.caption, a.kind.as_str()) {
                content["caption"] = Value::String(caption.clone());
            }
            if let (Some(filename), "document") = (&a.filename, a.kind.as_str()) {
                content["filename"] = Value::String(filename.clone());
            }
            (a.kind.clone(), content)
        }
    };
    MessageRequest {
        field: "messages",
        object: "message_event",
        event_type: "incoming_message",
        project_id: to.project_id.to_string(),
        room_id: to.room_id.to_string(),
        bot_id: to.bot_id.to_string(),
        user_id: to.user_id.to_string(),
        value: MessageValue {
            id: reply.message_id.clone(),
            kind,
            content,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OneOrMany, RoutingRule};
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn opened(body: Value) -> TicketOpened {
        match decode("ticket.opened", body.to_string().as_bytes(), MAX).unwrap() {
            TicketEvent::Opened(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn settings_with_rules() -> Settings {
        let mut s = Settings::defaults();
        s.routing.rules = vec![
            RoutingRule {
                field: "metadata.category".into(),
                equals: OneOrMany::One("billing".into()),
                queue: "FACTURACION".into(),
            },
            RoutingRule {
                field: "metadata.priority".into(),
                equals: OneOrMany::Many(vec!["high".into(), "urgent".into()]),
                queue: "PRIORIDAD".into(),
            },
        ];
        s
    }

    #[test]
    fn contract_example_becomes_the_documented_start_call() {
        let t = opened(json!({ "ticketId": "T-12345", "userId": "USER_ID",
            "botId": "BOT_ID", "initialMessage": "Hola, necesito ayuda", "queue": "SOPORTE",
            "metadata": {"priority": "high"} }));
        let req = start_request(&t, &Settings::defaults()).unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"botId": "BOT_ID", "userId": "USER_ID", "initialMessage": "Hola, necesito ayuda",
                   "metadata": {"priority": "high", "ticketId": "T-12345"},
                   "assignment": {"type": "queue", "target": "SOPORTE"}})
        );
    }

    #[test]
    fn ticket_id_in_metadata_always_wins() {
        let t = opened(json!({"ticketId": "T-1", "userId": "U", "botId": "B",
            "metadata": {"ticketId": "forged"}}));
        let req = start_request(&t, &Settings::defaults()).unwrap();
        assert_eq!(req.metadata["ticketId"], "T-1");
    }

    #[test]
    fn assignment_precedence() {
        let s = settings_with_rules();
        let base = json!({"ticketId": "T-1", "userId": "U", "botId": "B",
            "metadata": {"category": "billing", "priority": "high"}});
        // 1. the message's assignment
        let mut b = base.clone();
        b["assignment"] = json!({"type": "operator", "target": "agent-7"});
        b["queue"] = json!("VENTAS");
        assert_eq!(
            start_request(&opened(b), &s).unwrap().assignment,
            Assignment {
                kind: "operator".into(),
                target: "agent-7".into()
            }
        );
        // 2. the message's queue
        let mut b = base.clone();
        b["queue"] = json!("VENTAS");
        assert_eq!(
            start_request(&opened(b), &s).unwrap().assignment.target,
            "VENTAS"
        );
        // 3. the first matching rule (billing comes before priority)
        assert_eq!(
            start_request(&opened(base), &s).unwrap().assignment.target,
            "FACTURACION"
        );
        let b = json!({"ticketId": "T-1", "userId": "U", "botId": "B", "metadata": {"priority": "urgent"}});
        assert_eq!(
            start_request(&opened(b), &s).unwrap().assignment.target,
            "PRIORIDAD"
        );
        // 4. the default queue
        let b = json!({"ticketId": "T-1", "userId": "U", "botId": "B"});
        let a = start_request(&opened(b), &s).unwrap().assignment;
        assert_eq!(
            a,
            Assignment {
                kind: "queue".into(),
                target: "SOPORTE".into()
            }
        );
    }

    #[test]
    fn bot_id_falls_back_to_config() {
        let t = opened(json!({"ticketId": "T-1", "userId": "U"}));
        let mut s = Settings::defaults();
        assert!(start_request(&t, &s).is_err());
        s.jelou.bot_id = Some("CFG_BOT".into());
        assert_eq!(start_request(&t, &s).unwrap().bot_id, "CFG_BOT");
    }

    #[test]
    fn event_field_wins_over_routing_key() {
        let body = json!({"event": "ticket.resolved", "ticketId": "T-1"}).to_string();
        assert_eq!(
            decode("ticket.opened", body.as_bytes(), MAX)
                .unwrap()
                .kind(),
            EventKind::Resolved
        );
        let body = json!({"ticketId": "T-1", "userId": "U"}).to_string();
        assert_eq!(
            decode("ticket.opened", body.as_bytes(), MAX)
                .unwrap()
                .kind(),
            EventKind::Opened
        );
    }

    #[test]
    fn bad_input_is_named_precisely() {
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (b"{not json", "not JSON", None),
            (b"[1,2]", "JSON object", None),
            (br#"{"userId":"U"}"#, "`ticketId` is required", None),
            (
                br#"{"ticketId":"T-9","userId":5}"#,
                "`userId`: expected a string, got a number",
                Some("T-9"),
            ),
            (
                br#"{"ticketId":"T-9","userId":"U","metadata":"x"}"#,
                "`metadata`: expected an object",
                Some("T-9"),
            ),
            (
                br#"{"ticketId":"T-9","userId":"U","assignment":{"type":"robot","target":"x"}}"#,
                "assignment.type",
                Some("T-9"),
            ),
            (
                br#"{"ticketId":"T-9","event":"ticket.exploded"}"#,
                "unknown event type",
                Some("T-9"),
            ),
            (br#"{"ticketId":""}"#, "`ticketId` must not be empty", None),
        ];
        for (body, expected, ticket) in cases {
            let err = decode("ticket.opened", body, MAX).unwrap_err();
            assert!(
                err.detail.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                err.detail
            );
            assert_eq!(err.ticket_id.as_deref(), *ticket);
        }
        let big = vec![b' '; MAX + 1];
        assert!(decode("ticket.opened", &big, MAX)
            .unwrap_err()
            .detail
            .contains("over the"));
        let err = decode("other.key", br#"{"ticketId":"T"}"#, MAX).unwrap_err();
        assert!(err.detail.contains("not a ticket event"));
    }

    #[test]
    fn close_payload_precedence_and_default_text() {
        let s = Settings::defaults();
        let resolved = |body: Value| match decode(
            "ticket.resolved",
            body.to_string().as_bytes(),
            MAX,
        )
        .unwrap()
        {
            TicketEvent::Resolved(t) => t,
            other => panic!("{other:?}"),
        };
        let t = resolved(json!({"ticketId": "T-1", "userId": "U", "botId": "B",
            "closingMessage": "bye", "redirectPayload": {"type": "edge", "text": "x"}}));
        assert_eq!(
            close_request(&t, None, None, &s).unwrap().redirect_payload,
            json!({"type": "edge", "text": "x"})
        );
        let t = resolved(
            json!({"ticketId": "T-1", "userId": "U", "botId": "B", "closingMessage": "bye"}),
        );
        assert_eq!(
            close_request(&t, None, None, &s).unwrap().redirect_payload,
            json!({"type": "text", "text": "bye"})
        );
        let t = resolved(json!({"ticketId": "T-77"}));
        let req = close_request(&t, Some("B0"), Some("U0"), &s).unwrap();
        assert_eq!((req.bot_id.as_str(), req.user_id.as_str()), ("B0", "U0"));
        let text = req.redirect_payload["text"].as_str().unwrap();
        assert!(
            text.contains("T-77") && !text.contains("{ticketId}"),
            "{text}"
        );
        assert!(close_request(&t, None, None, &s).is_err());
        assert!(decode(
            "ticket.resolved",
            br#"{"ticketId":"T","redirectPayload":{"type":"video"}}"#,
            MAX
        )
        .is_err());
    }

    fn reply(body: Value) -> Result<TicketReply, InvalidMessage> {
        match decode("ticket.reply", body.to_string().as_bytes(), MAX)? {
            TicketEvent::Reply(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    const TO: Recipient<'static> = Recipient {
        project_id: "P",
        room_id: "R-1",
        bot_id: "B",
        user_id: "U",
    };

    #[test]
    fn text_reply_becomes_jelous_documented_send_message_body() {
        let r = reply(json!({"ticketId": "T-1", "messageId": "M-1", "text": "Hola"})).unwrap();
        assert_eq!(
            serde_json::to_value(message_request(&r, TO)).unwrap(),
            json!({"field": "messages", "object": "message_event", "event_type": "incoming_message",
                   "project_id": "P", "room_id": "R-1", "bot_id": "B", "user_id": "U",
                   "value": {"id": "M-1", "type": "text", "content": {"body": "Hola"}}})
        );
    }

    #[test]
    fn attachments_carry_url_mime_type_and_their_own_extras() {
        let media = |kind: &str| {
            let r = reply(
                json!({"ticketId": "T-1", "messageId": "M-2", "attachment": {
                "type": kind, "url": "https://cdn.example/a", "mimeType": "x/y",
                "caption": "look", "filename": "a.pdf"}}),
            )
            .unwrap();
            serde_json::to_value(message_request(&r, TO)).unwrap()["value"].clone()
        };
        assert_eq!(
            media("image"),
            json!({"id": "M-2", "type": "image", "content": {"url": "https://cdn.example/a", "mime_type": "x/y", "caption": "look"}})
        );
        assert_eq!(media("video")["content"]["caption"], "look");
        assert_eq!(
            media("audio")["content"],
            json!({"url": "https://cdn.example/a", "mime_type": "x/y"})
        );
        assert_eq!(
            media("document")["content"],
            json!({"url": "https://cdn.example/a", "mime_type": "x/y", "filename": "a.pdf"})
        );
    }

    #[test]
    fn bad_replies_are_named_precisely() {
        let err = |body: Value| reply(body).unwrap_err().detail;
        assert_eq!(
            err(json!({"ticketId": "T", "text": "x"})),
            "field `messageId` is required"
        );
        assert_eq!(
            err(json!({"ticketId": "T", "messageId": "M"})),
            "field `text` or `attachment` is required"
        );
        assert!(err(json!({"ticketId": "T", "messageId": "M", "text": "x",
            "attachment": {"type": "image"}}))
        .contains("not both"));
        assert!(err(json!({"ticketId": "T", "messageId": "M",
            "attachment": {"type": "sticker", "url": "https://a/b", "mimeType": "x"}}))
        .contains("attachment.type"));
        assert!(err(json!({"ticketId": "T", "messageId": "M",
            "attachment": {"type": "image", "url": "http://a/b", "mimeType": "x"}}))
        .contains("https"));
        assert_eq!(
            err(json!({"ticketId": "T", "messageId": "M",
                "attachment": {"type": "image", "url": "https://a/b"}})),
            "attachment: field `mimeType` is required"
        );
        let invalid = reply(json!({"ticketId": "T-9", "text": "x"})).unwrap_err();
        assert_eq!(invalid.ticket_id.as_deref(), Some("T-9"));
        assert_eq!(invalid.kind.map(EventKind::action), Some("message"));
    }

    #[test]
    fn a_text_redirect_needs_its_text() {
        let resolved = |payload: Value| {
            decode(
                "ticket.resolved",
                json!({"ticketId": "T", "redirectPayload": payload})
                    .to_string()
                    .as_bytes(),
                MAX,
            )
        };
        for bad in [
            json!({"type": "text"}),
            json!({"type": "text", "text": " "}),
        ] {
            assert!(resolved(bad).unwrap_err().detail.contains("is required"));
        }
        assert!(resolved(json!({"type": "edge"})).is_ok());
        assert!(resolved(json!({"type": "text", "text": "bye"})).is_ok());
    }
}
