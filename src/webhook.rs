//! Jelou's webhooks onto the bus: `POST /webhooks/jelou`, signed with
//! `X-Jelou-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
//!
//! A verified event is published as `jelou.<event>` and answered 200 only after the broker
//! confirmed it; a repeated delivery of the same event publishes once. The store learns from
//! lifecycle events too, so a conversation an operator closed in Jelou is known as closed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn, Instrument};

use crate::amqp::{headers, set_str, BrokerLink};
use crate::events::Outcome;
use crate::store::{Store, WebhookClaim};
use crate::trace_context;

type HmacSha256 = Hmac<Sha256>;

/// The header Jelou signs with.
pub const SIGNATURE_HEADER: &str = "x-jelou-signature";

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
fn describe(payload: &Value) -> String {
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

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// What the webhook handler needs.
pub struct WebhookState {
    pub secret: Option<SecretString>,
    pub store: Store,
    pub link: Arc<BrokerLink>,
    pub events_exchange: String,
    /// How long a claimed but unpublished delivery blocks repeats of it: past this, its
    /// process is taken to have died, and a repeat forwards the event.
    pub claim_stale_after: std::time::Duration,
    /// `http.body_timeout`.
    pub body_timeout: std::time::Duration,
    /// `webhook.max_age`: the replay window.
    pub max_age: std::time::Duration,
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

/// An event's `timestamp` in ms since the epoch (Jelou sends ms; seconds are taken too).
fn event_time_ms(payload: &Value) -> Option<i64> {
    let ts = match payload.get("timestamp")? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // Before 1973 in ms is after 5000 AD in seconds: a value this small is seconds.
    Some(if ts.abs() < 1e11 { ts * 1000.0 } else { ts } as i64)
}

/// How far outside the replay window an event's timestamp is; None when it is inside (or
/// the event carries none: Jelou's always do, and its signature still had to match).
pub fn outside_window(payload: &Value, max_age: std::time::Duration, now_ms: i64) -> Option<i64> {
    let at = event_time_ms(payload)?;
    let max = max_age.as_millis().min(i64::MAX as u128) as i64;
    let off = now_ms.saturating_sub(at);
    (off.saturating_abs() > max).then_some(off)
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn reply(status: StatusCode, verdict: &'static str, event: &str, detail: &str) -> Response {
    metrics::counter!("jelou_bridge_webhook_requests_total", "event" => event.to_string(), "verdict" => verdict).increment(1);
    let body = if status.is_success() {
        json!({"status": verdict})
    } else {
        json!({"error": verdict, "detail": detail})
    };
    (status, Json(body)).into_response()
}

/// `POST /webhooks/jelou`. The body arrives already capped at `http.max_body_bytes` (the
/// router's limit); a larger one is refused here with 413 before anything is read from it.
///
/// The body must arrive whole within `http.body_timeout` of the head (else 408): a client
/// that trickles it cannot hold the request open, and no work is done before it is in.
pub async fn handle(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let headers_in = request.headers().clone();
    let body =
        match tokio::time::timeout(state.body_timeout, Bytes::from_request(request, &())).await {
            Ok(body) => body,
            Err(_) => {
                crate::http::limit_hit("http", "body_timeout");
                warn!(
                    timeout_ms = state.body_timeout.as_millis() as u64,
                    "webhook refused: the body did not arrive in time"
                );
                return reply(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "unknown",
                    "the body did not arrive within http.body_timeout",
                );
            }
        };
    let body: Result<Bytes, BytesRejection> = body;
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            warn!("webhook refused: body over the size limit");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "unknown",
                "the body is larger than http.max_body_bytes",
            );
        }
        Err(rejection) => {
            return reply(
                rejection.status(),
                "invalid",
                "unknown",
                &rejection.body_text(),
            )
        }
    };
    let Some(secret) = state
        .secret
        .as_ref()
        .filter(|s| !s.expose_secret().is_empty())
    else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "unknown",
            "webhook.signing_secret is not configured; unsigned events are never accepted",
        );
    };
    let signature = headers_in
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if !verify(secret.expose_secret().as_bytes(), &body, signature) {
        let detail = if signature.is_none() {
            "missing X-Jelou-Signature"
        } else {
            "X-Jelou-Signature does not match the body"
        };
        warn!(detail, "webhook refused");
        return reply(StatusCode::UNAUTHORIZED, "bad_signature", "unknown", detail);
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "invalid",
                "unknown",
                "body must be a JSON object",
            )
        }
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "invalid",
                "unknown",
                &format!("body is not JSON: {e}"),
            )
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if let Some(off) = outside_window(&payload, state.max_age, now) {
        let (age, detail) = if off > 0 {
            (off, "the event is older than webhook.max_age")
        } else {
            (
                -off,
                "the event's timestamp is further in the future than webhook.max_age",
            )
        };
        warn!(
            kind = %describe(&payload),
            off_ms = age,
            max_age_ms = state.max_age.as_millis() as u64,
            "webhook refused: {detail}"
        );
        return reply(StatusCode::BAD_REQUEST, "stale", "unknown", detail);
    }
    let Some(event) = classify(&payload) else {
        // Never 400: Jelou documents no retry, and a refused event would only be lost. The
        // contract names no routing key for it, so it is not published.
        let what = describe(&payload);
        warn!(kind = %what, "webhook: an event of a kind the bridge does not know; ignored");
        return reply(StatusCode::OK, "ignored", "unknown", "");
    };
    let conversation_id = payload.pointer("/conversation/id").and_then(value_text);
    // Lines about this event carry the ticket and the correlation id (the conversation), as
    // the consumer's lines about a delivery do.
    let span = tracing::info_span!(
        "webhook",
        event = %event,
        ticket_id = tracing::field::Empty,
        correlation_id = conversation_id.as_deref().unwrap_or(""),
    );
    accept(&state, event, conversation_id.as_deref(), &payload, &body)
        .instrument(span)
        .await
}

/// Why a verified event was not published.
enum NotForwarded {
    Store(String),
    Broker(String),
}

/// A verified event: resolve its ticket, drop a repeated delivery, update the store, publish.
async fn accept(
    state: &WebhookState,
    event: &str,
    conversation_id: Option<&str>,
    payload: &Value,
    raw: &[u8],
) -> Response {
    let store_down = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "webhook: store unavailable");
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            event,
            "the ticket store is unavailable; retry later",
        )
    };
    let ticket_id = match resolve_ticket(state, conversation_id, payload).await {
        Ok(t) => t,
        Err(e) => return store_down(&e),
    };
    if let Some(t) = &ticket_id {
        tracing::Span::current().record("ticket_id", t.as_str());
    }
    let key = dedup_key(event, payload, raw);
    match state
        .store
        .claim_webhook(&key, state.claim_stale_after)
        .await
    {
        Ok(WebhookClaim::Claimed) => {}
        Ok(WebhookClaim::Published) => {
            info!(
                conversation_id,
                "duplicate webhook delivery: already published"
            );
            return reply(StatusCode::OK, "duplicate", event, "");
        }
        Ok(WebhookClaim::InFlight) => {
            // Not 200: should the other request fail, this delivery must come again.
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "in_progress",
                event,
                "the same event is being forwarded by another request; retry later",
            );
        }
        Err(e) => return store_down(&e),
    }
    let forwarded = forward(
        state,
        event,
        ticket_id.as_deref(),
        conversation_id,
        payload,
        &key,
    )
    .await;
    let Err(not_forwarded) = forwarded else {
        if let Err(e) = state.store.mark_webhook_published(&key).await {
            // Published all the same; a redelivery after the claim grows stale publishes again.
            warn!(error = %e, "could not mark the webhook delivery as published");
        }
        info!(conversation_id, "webhook published");
        return reply(StatusCode::OK, "published", event, "");
    };
    // Not published: forget the delivery so Jelou's retry is not taken for a duplicate.
    let _ = state.store.forget_webhook(&key).await;
    match not_forwarded {
        NotForwarded::Store(e) => store_down(&e),
        NotForwarded::Broker(detail) => {
            warn!(detail = %detail, "webhook not published: broker unavailable");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                event,
                &detail,
            )
        }
    }
}

/// The ticket an event is about: `value.metadata.ticketId` (Jelou echoes the metadata the
/// bridge sent with the start call), else the ticket whose conversation it is.
async fn resolve_ticket(
    state: &WebhookState,
    conversation_id: Option<&str>,
    payload: &Value,
) -> Result<Option<String>, crate::store::StoreError> {
    if let Some(t) = payload
        .pointer("/value/metadata/ticketId")
        .and_then(Value::as_str)
    {
        return Ok(Some(t.to_string()));
    }
    match conversation_id {
        Some(c) => Ok(state
            .store
            .find_by_conversation(c)
            .await?
            .map(|r| r.ticket_id)),
        None => Ok(None),
    }
}

/// Longest wait for the ticket's trace before publishing a webhook event without it.
const TRACE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tells the store what Jelou said about the conversation, then publishes with confirm.
async fn forward(
    state: &WebhookState,
    event: &str,
    ticket_id: Option<&str>,
    conversation_id: Option<&str>,
    payload: &Value,
    key: &str,
) -> Result<(), NotForwarded> {
    let noted = match (event, ticket_id, conversation_id) {
        ("conversation.start", Some(t), Some(c)) => {
            let room = payload.get("room_id").and_then(Value::as_str);
            state.store.note_conversation_started(t, c, room).await
        }
        ("conversation.close", _, Some(c)) => {
            let reason = payload.pointer("/value/reason").and_then(Value::as_str);
            state.store.note_conversation_closed(c, reason).await
        }
        _ => Ok(()),
    };
    noted.map_err(|e| NotForwarded::Store(e.to_string()))?;
    let outcome = Outcome::from_webhook(event, ticket_id, conversation_id, payload.clone());
    let publisher = state
        .link
        .publisher()
        .ok_or_else(|| NotForwarded::Broker("the broker is not connected".into()))?;
    let mut table = lapin::types::FieldTable::default();
    if let Some(t) = ticket_id {
        set_str(&mut table, headers::TICKET_ID, t);
    }
    // The event joins its ticket's trace when the store knows one; a store that cannot say
    // costs the trace, not the event.
    let span = tracing::info_span!("webhook.publish", event, ticket_id);
    if let Some(t) = ticket_id {
        match tokio::time::timeout(TRACE_LOOKUP_TIMEOUT, state.store.get(t)).await {
            Ok(Ok(Some(record))) => {
                if let Some(tp) = record.traceparent.as_deref() {
                    trace_context::continue_trace(&span, trace_context::from_traceparent(tp));
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => debug!(error = %e, "webhook: could not read the ticket's trace"),
            Err(_) => debug!("webhook: the ticket's trace was not read in time"),
        }
    }
    trace_context::inject_amqp(&span, &mut table);
    let mut props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(key.into())
        .with_app_id("jelou-bridge".into())
        .with_headers(table);
    if let Some(c) = conversation_id {
        props = props.with_correlation_id(c.into());
    }
    let body =
        serde_json::to_vec(&outcome.body).map_err(|e| NotForwarded::Broker(e.to_string()))?;
    publisher
        .publish(
            &state.events_exchange,
            &outcome.routing_key,
            &body,
            props,
            false,
        )
        .instrument(span)
        .await
        .map_err(|e| NotForwarded::Broker(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_key_and_body() {
        let sig = sign(b"secret", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify(b"secret", b"{\"a\":1}", Some(&sig)));
        assert!(!verify(b"secret", b"{\"a\":2}", Some(&sig)));
        assert!(!verify(b"other", b"{\"a\":1}", Some(&sig)));
        assert!(!verify(b"secret", b"{\"a\":1}", None));
        assert!(!verify(b"secret", b"{\"a\":1}", Some("sha256=zz")));
        assert!(!verify(
            b"secret",
            b"{\"a\":1}",
            Some(sig.trim_start_matches("sha256="))
        ));
    }

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

    #[test]
    fn the_replay_window_goes_both_ways() {
        let day = std::time::Duration::from_secs(86_400);
        let now = 1_800_000_000_000i64;
        let at = |ts: Value| outside_window(&json!({ "timestamp": ts }), day, now);
        assert_eq!(at(json!(now - 1000)), None);
        assert_eq!(at(json!(now - 86_400_001)), Some(86_400_001));
        assert_eq!(at(json!(now + 86_400_001)), Some(-86_400_001));
        assert_eq!(
            at(json!((now - 1000) / 1000)),
            None,
            "seconds are taken too"
        );
        assert_eq!(at(json!("1799999999000")), None);
        assert_eq!(outside_window(&json!({}), day, now), None);
    }
}
