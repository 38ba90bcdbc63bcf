//! Bytes off the bus → a [`TicketEvent`], or an [`InvalidMessage`] that names the field at
//! fault. Hand-written rather than derived so that every refusal says which field and why
//! (the reason travels in `ticket.failed`); `contract`'s unit test keeps it in agreement with
//! the published schemas.

use serde_json::{Map, Value};

use super::{
    Assignment, Attachment, EventKind, ReplyContent, TicketEvent, TicketOpened, TicketReply,
    TicketResolved, ATTACHMENT_TYPES,
};

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
        EventKind::Opened => {
            let user_id = fields.required_str("userId")?;
            let bot_id = fields.optional_str("botId")?;
            let initial_message = fields.optional_str("initialMessage")?;
            let queue = fields.optional_str("queue")?;
            let assignment = fields.assignment()?;
            let metadata = fields.optional_object("metadata")?.cloned();
            // Every field is read by now: the body itself goes with the event, not a copy.
            Ok(TicketEvent::Opened(TicketOpened {
                user_id,
                bot_id,
                initial_message,
                queue,
                assignment,
                metadata: metadata.unwrap_or_default(),
                ticket_id,
                body: value,
            }))
        }
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

    fn optional_object(&self, name: &str) -> Result<Option<&Map<String, Value>>, InvalidMessage> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
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
            obj,
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
            obj,
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
        Ok(Some(Value::Object(obj.clone())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::fixtures::{reply, MAX};
    use serde_json::json;

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
