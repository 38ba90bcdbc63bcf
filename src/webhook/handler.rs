//! `POST /webhooks/jelou`: from the raw request to a verified event of a known kind, or the
//! refusal that says why; each answer counted by verdict.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tracing::{warn, Instrument};

use super::event::{classify, describe, value_text};
use super::forward::accept;
use super::verify::{outside_window, verify, SIGNATURE_HEADER};
use super::WebhookState;

/// The answer, counted in `jelou_bridge_webhook_requests_total` by event and verdict.
pub(super) fn reply(
    status: StatusCode,
    verdict: &'static str,
    event: &str,
    detail: &str,
) -> Response {
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
