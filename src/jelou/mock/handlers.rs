//! The stand-in's HTTP endpoints: each call is answered in Jelou's order (outage, script,
//! credentials, validation, random failure, then the normal answer), recorded, and followed
//! by the webhooks Jelou would send.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::conversations::{close_conversation, message, read, start_conversation};
use super::faults::injected;
use super::webhooks::send_webhook;
use super::{MockOptions, MockState};
use crate::jelou::client::Endpoint;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub endpoint: Endpoint,
    pub project_id: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body's bytes as received.
    pub raw: Vec<u8>,
    /// When it took effect (after any latency).
    pub at: Instant,
    /// When its answer was handed to the caller; None if the caller gave up before (a
    /// stalled answer past the caller's timeout).
    pub answered: Option<Instant>,
    /// The status it was answered with.
    pub status: u16,
}

/// `POST …/conversations/start`.
pub(super) async fn start(
    State(state): State<Arc<MockState>>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    handle(state, Endpoint::Start, project_id, headers, body).await
}

/// `POST …/conversations/close`.
pub(super) async fn close(
    State(state): State<Arc<MockState>>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    handle(state, Endpoint::Close, project_id, headers, body).await
}

/// `GET …/conversations/{id}`: the id travels on as a body would.
pub(super) async fn read_conversation(
    State(state): State<Arc<MockState>>,
    Path((project_id, conversation_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let body = json!({ "conversationId": conversation_id });
    handle_value(
        state,
        Endpoint::Conversation,
        project_id,
        headers,
        b"",
        body,
    )
    .await
}

/// `POST` send-message: its project is in the body, not the path.
pub(super) async fn send_message(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let project_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("project_id")?.as_str().map(str::to_string))
        .unwrap_or_default();
    handle(state, Endpoint::Message, project_id, headers, body).await
}

async fn handle(
    state: Arc<MockState>,
    endpoint: Endpoint,
    project_id: String,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    handle_value(state, endpoint, project_id, headers, &raw, body).await
}

async fn handle_value(
    state: Arc<MockState>,
    endpoint: Endpoint,
    project_id: String,
    headers: HeaderMap,
    raw: &[u8],
    body: Value,
) -> Response {
    let n = state.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let options = state.options.lock().unwrap().clone();
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    let (status, response, webhooks) = answer(&state, &options, endpoint, &headers, raw, &body, n);
    if let Some(target) = options.webhook.clone() {
        let http = state.http.clone();
        let project_id = project_id.clone();
        tokio::spawn(async move {
            // In order: a customer's answer comes after the event it answers.
            for event in webhooks {
                send_webhook(http.clone(), target.clone(), project_id.clone(), event).await;
            }
        });
    }
    // Acted (and told the webhook), but the answer is late: what a lost answer looks like
    // to the caller (a timeout, or a process killed while it waits).
    let stall = {
        let mut stalls = state.stalls.lock().unwrap();
        let next = stalls.iter().position(|(e, _)| *e == endpoint);
        next.map(|i| stalls.remove(i).1)
    };
    // Recorded when it acted; `answered` is set only if the answer is delivered.
    let recorded = options.record_calls.then(|| {
        let mut calls = state.calls.lock().unwrap();
        calls.push(RecordedCall {
            endpoint,
            project_id: project_id.clone(),
            headers,
            body,
            raw: raw.to_vec(),
            at: Instant::now(),
            answered: None,
            status: status.as_u16(),
        });
        calls.len() - 1
    });
    if let Some(stall) = stall {
        // A caller that gives up first drops this future here: never answered.
        tokio::time::sleep(stall).await;
    }
    if let Some(i) = recorded {
        state.calls.lock().unwrap()[i].answered = Some(Instant::now());
    }
    response
}

/// What the stand-in answers, and the webhooks that follow.
pub(super) type Answer = (StatusCode, Response, Vec<Value>);

/// Decides the answer: outage, script, auth, validation, random failure, then success.
fn answer(
    state: &MockState,
    options: &MockOptions,
    endpoint: Endpoint,
    headers: &HeaderMap,
    raw: &[u8],
    body: &Value,
    n: u64,
) -> Answer {
    if let Some(injected) = injected(state) {
        return injected;
    }
    if endpoint == Endpoint::Message {
        // Send-message takes no API key: the body's signature is its credential.
        let secret = options
            .signing_secret
            .clone()
            .or_else(|| options.webhook.as_ref().map(|w| w.secret.clone()));
        let signature = headers
            .get(crate::webhook::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Some(secret) = secret {
            if !crate::webhook::verify(secret.as_bytes(), raw, signature) {
                return error(401, None, "Invalid signature");
            }
        }
    } else if !authorized(options, headers) {
        return error(401, None, "Invalid or missing credentials");
    }
    match endpoint {
        Endpoint::Conversation => read(state, body),
        Endpoint::Message => message(state, options, body),
        Endpoint::Start | Endpoint::Close => {
            let field = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            let (Some(bot), Some(user)) = (field("botId"), field("userId")) else {
                return error(422, None, "botId and userId are required");
            };
            if options.fail_rate > 0.0 && fastrand::f64() < options.fail_rate {
                return error(options.fail_status, None, "Injected failure");
            }
            if endpoint == Endpoint::Start {
                start_conversation(state, options, body, bot, user, n)
            } else {
                close_conversation(state, body, bot, user)
            }
        }
    }
}

fn authorized(options: &MockOptions, headers: &HeaderMap) -> bool {
    if let Some(key) = &options.api_key {
        if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(key.as_str()) {
            return false;
        }
    }
    if let Some((id, secret)) = &options.basic {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        );
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return false;
        }
    }
    true
}

/// An error answer in Jelou's shape, with no webhooks.
pub(super) fn error(status: u16, retry_after: Option<&str>, message: &str) -> Answer {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, Json(error_body(status, message))).into_response();
    if let Some(ra) = retry_after.and_then(|v| v.parse().ok()) {
        resp.headers_mut().insert(reqwest::header::RETRY_AFTER, ra);
    }
    (code, resp, Vec::new())
}

/// Jelou's documented error shape.
pub(super) fn error_body(status: u16, message: &str) -> Value {
    json!({
        "message": [message], "statusMessage": "error", "status": 0,
        "error": {"code": status.to_string(), "key": format!("E{status}"), "description": message,
                  "developerMessages": {}, "clientMessages": {}},
        "validationError": {},
    })
}
