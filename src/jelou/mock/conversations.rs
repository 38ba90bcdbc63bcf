//! Jelou's conversation model as the stand-in keeps it: one active conversation per bot +
//! user (a start replaces it, a close is addressed by bot + user), and what start, close,
//! read and send-message do to it.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::handlers::{error, Answer};
use super::webhooks::{close_event, message_event, start_event};
use super::{MockOptions, MockState};

/// One conversation as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct MockConversation {
    pub id: String,
    pub room_id: String,
    pub bot_id: String,
    pub user_id: String,
    /// `active` or `closed`.
    pub state: String,
    pub ended_reason: Option<String>,
    pub start_at: i64,
    pub end_at: Option<i64>,
}

/// Every conversation the stand-in started, and which is active for each bot + user.
#[derive(Default)]
pub(super) struct Conversations {
    /// Every conversation by id.
    pub(super) all: HashMap<String, MockConversation>,
    /// The active conversation of each (botId, userId), as Jelou addresses a close.
    pub(super) active: HashMap<(String, String), String>,
}

/// One active conversation per bot + user: a start replaces the active one (or, with
/// `reuse_active`, answers it).
pub(super) fn start_conversation(
    state: &MockState,
    options: &MockOptions,
    body: &Value,
    bot: &str,
    user: &str,
    n: u64,
) -> Answer {
    let key = (bot.to_string(), user.to_string());
    let mut c = state.conversations.lock().unwrap();
    let current = c.active.get(&key).cloned();
    let conv = match current {
        Some(id) if options.reuse_active => c.all[&id].clone(),
        current => {
            if let Some(old) = current {
                end(&mut c, &old, "replaced");
            }
            let ticket = body.pointer("/metadata/ticketId").and_then(Value::as_str);
            let id = match ticket {
                Some(t) => format!("conv-{t}-{n}"),
                None => format!("conv-{n}"),
            };
            let conv = MockConversation {
                id: id.clone(),
                room_id: format!("room-{n}"),
                bot_id: bot.to_string(),
                user_id: user.to_string(),
                state: "active".into(),
                ended_reason: None,
                start_at: crate::clock::now_ms(),
                end_at: None,
            };
            c.all.insert(id.clone(), conv.clone());
            c.active.insert(key, id);
            conv
        }
    };
    drop(c);
    let webhook = start_event(&conv, body);
    let resp = json!({
        "message": ["Conversation started successfully"], "statusMessage": "success", "status": 1,
        "data": {"conversationId": conv.id, "botId": bot, "userId": user, "status": "active"},
    });
    (StatusCode::OK, Json(resp).into_response(), vec![webhook])
}

/// Closes the active conversation of bot + user; 404 when there is none.
pub(super) fn close_conversation(state: &MockState, body: &Value, bot: &str, user: &str) -> Answer {
    let mut c = state.conversations.lock().unwrap();
    let Some(id) = c.active.remove(&(bot.to_string(), user.to_string())) else {
        return error(404, None, "No active conversation for this bot and user");
    };
    end(&mut c, &id, "closed_by_operator");
    let conv = c.all[&id].clone();
    drop(c);
    let webhook = close_event(&conv, body.get("redirectPayload"));
    let resp = json!({
        "message": ["Conversation closed successfully"], "statusMessage": "success", "status": 1,
        "data": {"conversationId": id, "status": "closed", "endedReason": "closed_by_operator"},
    });
    (StatusCode::OK, Json(resp).into_response(), vec![webhook])
}

/// `GET …/conversations/{id}` as Jelou answers it: `_id`, `roomId`, `state`, `User`, `Bot`.
pub(super) fn read(state: &MockState, body: &Value) -> Answer {
    let id = body["conversationId"].as_str().unwrap_or_default();
    let Some(conv) = state.conversations.lock().unwrap().all.get(id).cloned() else {
        return error(404, None, "Conversation not found");
    };
    let mut data = json!({
        "_id": conv.id, "roomId": conv.room_id, "state": conv.state, "startAt": conv.start_at,
        "User": {"id": conv.user_id, "names": conv.user_id, "referenceId": conv.user_id},
        "Bot": {"id": conv.bot_id, "name": conv.bot_id},
    });
    if let Some(end_at) = conv.end_at {
        data["endAt"] = json!(end_at);
        data["endedReason"] = json!(conv.ended_reason);
    }
    let resp = json!({"message": ["Conversation found"], "statusMessage": "success", "status": 1, "data": data});
    (StatusCode::OK, Json(resp).into_response(), Vec::new())
}

/// Send-message: the documented snake_case body into an active conversation's room.
pub(super) fn message(state: &MockState, options: &MockOptions, body: &Value) -> Answer {
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    let fixed = text("field") == "messages"
        && text("object") == "message_event"
        && text("event_type") == "incoming_message";
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    let well_formed = fixed
        && ["project_id", "room_id", "bot_id", "user_id"]
            .iter()
            .all(|k| !text(k).is_empty())
        && value.get("id").and_then(Value::as_str).is_some()
        && value.get("type").and_then(Value::as_str).is_some()
        && value.get("content").is_some_and(Value::is_object);
    if !well_formed {
        return error(422, None, "Invalid message body");
    }
    let conv = {
        let c = state.conversations.lock().unwrap();
        c.all
            .values()
            .find(|conv| conv.room_id == text("room_id"))
            .cloned()
    };
    let Some(conv) = conv.filter(|c| c.state == "active") else {
        return error(404, None, "No active conversation in this room");
    };
    if conv.bot_id != text("bot_id") || conv.user_id != text("user_id") {
        return error(422, None, "bot_id and user_id do not match the room");
    }
    let mut webhooks = Vec::new();
    if options.echo_messages {
        let said = value.pointer("/content/body").and_then(Value::as_str);
        let answer = match said {
            Some(t) => format!("(customer) Gracias, recibí: {t}"),
            None => "(customer) Gracias, recibí el archivo".to_string(),
        };
        webhooks.push(message_event(
            &conv,
            json!({"id": format!("wamid-{}", uuid::Uuid::new_v4().simple()), "type": "text",
                   "content": {"body": answer}}),
        ));
    }
    let resp = json!({"message": ["Message processed"], "statusMessage": "success", "status": 1});
    (StatusCode::OK, Json(resp).into_response(), webhooks)
}

/// Marks a conversation closed, with why and when.
pub(super) fn end(c: &mut Conversations, id: &str, reason: &str) {
    if let Some(conv) = c.all.get_mut(id) {
        conv.state = "closed".into();
        conv.ended_reason = Some(reason.into());
        conv.end_at = Some(crate::clock::now_ms());
    }
}
