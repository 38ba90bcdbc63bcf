//! What a webhook event is: its kind, as the bridge names it on the bus, and the key that
//! identifies it across Jelou's repeated deliveries.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The events Jelou sends, as the bridge names them (`jelou.<name>` on the bus).
const EVENTS: &[&str] = &["conversation.start", "conversation.close", "message"];

/// What kind of event a webhook body is. Lifecycle events carry a top-level `event`; a
/// customer's message carries none and is told by `field`/`object`/`event_type`. None: a
/// kind the bridge does not know.
pub fn classify(payload: &Value) -> Option<&'static str> {
    if let Some(event) = payload.get("event").and_then(Value::as_str) {
        return EVENTS.iter().copied().find(|e| *e == event);
    }
    let text = |k: &str| payload.get(k).and_then(Value::as_str);
    match (text("field"), text("object"), text("event_type")) {
        (Some("messages" | "message"), Some("message_event"), Some("message")) => Some("message"),
        (Some("conversation"), Some("conversation_event"), Some("start")) => {
            Some("conversation.start")
        }
        (Some("conversation"), Some("conversation_event"), Some("close")) => {
            Some("conversation.close")
        }
        _ => None,
    }
}

/// How an unknown event names itself, for the log line and the metric.
pub(super) fn describe(payload: &Value) -> String {
    let text = |k: &str| payload.get(k).and_then(Value::as_str).unwrap_or("-");
    match payload.get("event").and_then(Value::as_str) {
        Some(e) => format!("event={e}"),
        None => format!(
            "field={} object={} event_type={}",
            text("field"),
            text("object"),
            text("event_type")
        ),
    }
}

/// The key that identifies one event across repeated deliveries, as Jelou's reference
/// says: a message's `value.id`; a lifecycle event's `event` + `conversation.id` (a
/// conversation starts once and closes once). An event lacking them: a hash of its body.
pub fn dedup_key(event: &str, payload: &Value, raw: &[u8]) -> String {
    let id = if event == "message" {
        payload.pointer("/value/id")
    } else {
        payload.pointer("/conversation/id")
    };
    match id.and_then(value_text).filter(|id| !id.is_empty()) {
        Some(id) if event == "message" => format!("message:{id}"),
        Some(id) => format!("{event}:{id}"),
        None => format!("{event}:sha256:{}", hex::encode(Sha256::digest(raw))),
    }
}

/// An id as text, whether Jelou sent it as a string or a number.
pub(super) fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_told_apart_by_event_or_by_field_object_and_event_type() {
        // A customer's message exactly as Jelou documents it: no `event` field.
        let message = json!({"timestamp": 1, "field": "messages", "object": "message_event",
            "event_type": "message", "project_id": "P", "room_id": "R", "contact": {"id": "U"},
            "conversation": {"id": "C"}, "bot": {"id": "B"},
            "value": {"id": "m-1", "type": "text", "content": {"body": "hola"}}});
        assert_eq!(classify(&message), Some("message"));
        assert_eq!(
            classify(&json!({"event": "conversation.close", "field": "conversation"})),
            Some("conversation.close")
        );
        assert_eq!(
            classify(
                &json!({"field": "conversation", "object": "conversation_event", "event_type": "start"})
            ),
            Some("conversation.start")
        );
        assert_eq!(classify(&json!({"event": "conversation.transfer"})), None);
        assert_eq!(
            classify(
                &json!({"field": "statuses", "object": "message_event", "event_type": "read"})
            ),
            None
        );
        assert_eq!(
            describe(&json!({"field": "statuses"})),
            "field=statuses object=- event_type=-"
        );
    }

    #[test]
    fn dedup_keys() {
        let m = json!({"event": "message", "value": {"id": "m-1"}, "timestamp": 5});
        assert_eq!(dedup_key("message", &m, b"x"), "message:m-1");
        let c = json!({"event": "conversation.close", "conversation": {"id": "c-1"}, "timestamp": 1777992928697u64});
        assert_eq!(
            dedup_key("conversation.close", &c, b"x"),
            "conversation.close:c-1",
            "a repeat with another timestamp is the same event"
        );
        let bare = json!({"event": "conversation.close"});
        let a = dedup_key("conversation.close", &bare, b"one body");
        assert!(a.starts_with("conversation.close:sha256:"), "{a}");
        assert_ne!(a, dedup_key("conversation.close", &bare, b"another"));
    }
}
