//! The webhooks the stand-in sends, shaped as Jelou's: `conversation.start` and
//! `conversation.close` events, and customers' messages (no `event` field), each signed with
//! the target's secret.

use serde_json::{json, Value};

use super::{MockConversation, WebhookTarget};

/// `conversation.start` for `conv`, echoing the start call's assignment, first message and
/// metadata.
pub(super) fn start_event(conv: &MockConversation, body: &Value) -> Value {
    json!({
        "event": "conversation.start", "timestamp": crate::clock::now_ms(), "field": "conversation",
        "object": "conversation_event", "event_type": "start",
        "room_id": conv.room_id, "contact": {"id": conv.user_id, "name": conv.user_id},
        "conversation": {"id": conv.id, "assignment": body.get("assignment")},
        "bot": {"id": conv.bot_id, "name": conv.bot_id},
        "value": {"initial_message": body.get("initialMessage"), "metadata": body.get("metadata")},
    })
}

/// `conversation.close` for `conv`, with the close call's `redirectPayload` when there was one.
pub(super) fn close_event(conv: &MockConversation, redirect: Option<&Value>) -> Value {
    json!({
        "event": "conversation.close", "timestamp": crate::clock::now_ms(), "field": "conversation",
        "object": "conversation_event", "event_type": "close",
        "room_id": conv.room_id, "contact": {"id": conv.user_id, "name": conv.user_id},
        "conversation": {"id": conv.id}, "bot": {"id": conv.bot_id, "name": conv.bot_id},
        "value": {"reason": "closed_by_operator", "redirectPayload": redirect},
    })
}

/// A customer's message as Jelou sends it: no `event` field.
pub(super) fn message_event(conv: &MockConversation, value: Value) -> Value {
    json!({
        "timestamp": crate::clock::now_ms(), "field": "messages", "object": "message_event",
        "event_type": "message", "room_id": conv.room_id,
        "contact": {"id": conv.user_id, "name": conv.user_id},
        "conversation": {"id": conv.id}, "bot": {"id": conv.bot_id, "name": conv.bot_id},
        "value": value,
    })
}

/// Posts one signed event to the webhook target; its HTTP status, if it answered.
pub(super) async fn send_webhook(
    http: reqwest::Client,
    target: WebhookTarget,
    project_id: String,
    mut event: Value,
) -> Option<u16> {
    event["project_id"] = Value::String(project_id);
    let body = event.to_string();
    let signature = crate::webhook::sign(target.secret.as_bytes(), body.as_bytes());
    let result = http
        .post(&target.url)
        .header("content-type", "application/json")
        .header("x-jelou-signature", signature)
        .body(body)
        .send()
        .await;
    match result {
        Ok(resp) => Some(resp.status().as_u16()),
        Err(e) => {
            tracing::warn!(error = %e, "mock-jelou: webhook delivery failed");
            None
        }
    }
}
