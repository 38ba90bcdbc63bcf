//! The Jelou calls a ticket event becomes: `ticket.opened` → start, `ticket.resolved` →
//! close, `ticket.reply` → send-message. Each body is built exactly as Jelou documents it;
//! what the message leaves out comes from the settings or from what the store remembers.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{routing, Assignment, ReplyContent, TicketOpened, TicketReply, TicketResolved};
use crate::config::Settings;

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
    let assignment = routing::assignment(t, &settings.routing);
    Ok(StartRequest {
        bot_id,
        user_id: t.user_id.clone(),
        initial_message: t.initial_message.clone(),
        metadata,
        assignment,
    })
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
    use crate::ticket::fixtures::{opened, reply, MAX};
    use crate::ticket::{decode, TicketEvent};
    use serde_json::json;

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
    fn bot_id_falls_back_to_config() {
        let t = opened(json!({"ticketId": "T-1", "userId": "U"}));
        let mut s = Settings::defaults();
        assert!(start_request(&t, &s).is_err());
        s.jelou.bot_id = Some("CFG_BOT".into());
        assert_eq!(start_request(&t, &s).unwrap().bot_id, "CFG_BOT");
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
}
