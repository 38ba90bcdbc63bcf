//! A local stand-in for Jelou's two external-support endpoints: `jelou-bridge mock-jelou`,
//! `run --sandbox`, the tests and the benchmark all talk to this real HTTP server.
//!
//! It answers like Jelou (same paths, bodies and error shapes), checks credentials when given
//! some, and has switches for latency, random failures, scripted answers and outages. With a
//! webhook target it also sends the signed `conversation.start`/`conversation.close` events
//! Jelou would send.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::client::Endpoint;

/// Where the stand-in sends Jelou-style webhooks, and the key it signs them with.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

#[derive(Debug, Clone)]
pub struct MockOptions {
    pub start_path: String,
    pub close_path: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Share of calls (0.0–1.0) answered with `fail_status`.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// When set, calls must carry this `x-api-key`.
    pub api_key: Option<String>,
    /// When set, calls must carry this HTTP Basic `clientId:clientSecret`.
    pub basic: Option<(String, String)>,
    pub webhook: Option<WebhookTarget>,
    /// Keep every call for [`MockJelou::calls`] (tests); off for long runs.
    pub record_calls: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            start_path: "/platform/v1/external-support/{projectId}/conversations/start".into(),
            close_path: "/jelouapi/v1/external-support/{projectId}/conversations/close".into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_status: 503,
            api_key: None,
            basic: None,
            webhook: None,
            record_calls: true,
        }
    }
}

/// One answer given in place of the normal one.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Option<Value>,
}

impl Scripted {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: None,
        }
    }

    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_string());
        self
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub endpoint: Endpoint,
    pub project_id: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

struct MockState {
    options: Mutex<MockOptions>,
    script: Mutex<VecDeque<Scripted>>,
    /// Every call answered with this status while set (an outage).
    down: Mutex<Option<u16>>,
    calls: Mutex<Vec<RecordedCall>>,
    /// Active conversations by (botId, userId), as Jelou addresses a close.
    active: Mutex<HashMap<(String, String), String>>,
    counter: AtomicU64,
    http: reqwest::Client,
}

/// A running stand-in; dropping it stops the server.
pub struct MockJelou {
    addr: SocketAddr,
    state: Arc<MockState>,
    stop: CancellationToken,
}

impl MockJelou {
    /// Binds `listen` (port 0 picks one) and serves until dropped or [`MockJelou::stop`].
    pub async fn start(listen: SocketAddr, options: MockOptions) -> std::io::Result<MockJelou> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState {
            options: Mutex::new(options.clone()),
            script: Mutex::new(VecDeque::new()),
            down: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
            active: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
        });
        let router = Router::new()
            .route(
                &options.start_path.replace("{projectId}", "{project_id}"),
                post(start),
            )
            .route(
                &options.close_path.replace("{projectId}", "{project_id}"),
                post(close),
            )
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(MockJelou { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `jelou.base_url` should be to reach this stand-in.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next calls get these answers, in order, before normal service resumes.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// Every call gets `status` until called again with `None`.
    pub fn set_down(&self, status: Option<u16>) {
        *self.state.down.lock().unwrap() = status;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state.options.lock().unwrap().latency = latency;
    }

    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn calls_to(&self, endpoint: Endpoint) -> Vec<RecordedCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.endpoint == endpoint)
            .collect()
    }

    /// Calls answered so far, recorded or not.
    pub fn call_count(&self) -> u64 {
        self.state.counter.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for MockJelou {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(
    State(state): State<Arc<MockState>>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    handle(state, Endpoint::Start, project_id, headers, body).await
}

async fn close(
    State(state): State<Arc<MockState>>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    handle(state, Endpoint::Close, project_id, headers, body).await
}

async fn handle(
    state: Arc<MockState>,
    endpoint: Endpoint,
    project_id: String,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let n = state.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let options = state.options.lock().unwrap().clone();
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let (status, response, webhook) = answer(&state, &options, endpoint, &headers, &body, n);
    if options.record_calls {
        state.calls.lock().unwrap().push(RecordedCall {
            endpoint,
            project_id: project_id.clone(),
            headers,
            body,
            at: Instant::now(),
            status: status.as_u16(),
        });
    }
    if let (Some(target), Some(event)) = (options.webhook, webhook) {
        let http = state.http.clone();
        tokio::spawn(send_webhook(http, target, project_id, event));
    }
    response
}

/// Decides the answer: outage, script, auth, validation, random failure, then success.
fn answer(
    state: &MockState,
    options: &MockOptions,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &Value,
    n: u64,
) -> (StatusCode, Response, Option<Value>) {
    if let Some(status) = *state.down.lock().unwrap() {
        return error(status, None, "Service unavailable");
    }
    if let Some(s) = state.script.lock().unwrap().pop_front() {
        if (200..300).contains(&s.status) && s.body.is_none() {
            // A scripted success falls through to the normal answer.
        } else {
            let status =
                StatusCode::from_u16(s.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let payload = s
                .body
                .unwrap_or_else(|| error_body(s.status, "Scripted failure"));
            let mut resp = (status, Json(payload)).into_response();
            if let Some(ra) = s.retry_after.and_then(|v| v.parse().ok()) {
                resp.headers_mut().insert(reqwest::header::RETRY_AFTER, ra);
            }
            return (status, resp, None);
        }
    }
    if !authorized(options, headers) {
        return error(401, None, "Invalid or missing credentials");
    }
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
    let key = (bot.to_string(), user.to_string());
    match endpoint {
        Endpoint::Start => {
            let ticket = body.pointer("/metadata/ticketId").and_then(Value::as_str);
            let id = match ticket {
                Some(t) => format!("conv-{t}-{n}"),
                None => format!("conv-{n}"),
            };
            state.active.lock().unwrap().insert(key, id.clone());
            let webhook = json!({
                "event": "conversation.start", "timestamp": now_ms(), "field": "conversation",
                "object": "conversation_event", "event_type": "start",
                "room_id": format!("room-{n}"), "contact": {"id": user, "name": user},
                "conversation": {"id": id, "assignment": body.get("assignment")},
                "bot": {"id": bot, "name": bot},
                "value": {"initial_message": body.get("initialMessage"), "metadata": body.get("metadata")},
            });
            let resp = json!({
                "message": ["Conversation started successfully"], "statusMessage": "success", "status": 1,
                "data": {"conversationId": id, "botId": bot, "userId": user, "status": "active"},
            });
            (StatusCode::OK, Json(resp).into_response(), Some(webhook))
        }
        Endpoint::Close => {
            let Some(id) = state.active.lock().unwrap().remove(&key) else {
                return error(404, None, "No active conversation for this bot and user");
            };
            let webhook = json!({
                "event": "conversation.close", "timestamp": now_ms(), "field": "conversation",
                "object": "conversation_event", "event_type": "close",
                "room_id": format!("room-{n}"), "contact": {"id": user, "name": user},
                "conversation": {"id": id}, "bot": {"id": bot, "name": bot},
                "value": {"reason": "closed_by_operator", "redirectPayload": body.get("redirectPayload")},
            });
            let resp = json!({
                "message": ["Conversation closed successfully"], "statusMessage": "success", "status": 1,
                "data": {"conversationId": id, "status": "closed", "endedReason": "closed_by_operator"},
            });
            (StatusCode::OK, Json(resp).into_response(), Some(webhook))
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

fn error(
    status: u16,
    retry_after: Option<&str>,
    message: &str,
) -> (StatusCode, Response, Option<Value>) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, Json(error_body(status, message))).into_response();
    if let Some(ra) = retry_after.and_then(|v| v.parse().ok()) {
        resp.headers_mut().insert(reqwest::header::RETRY_AFTER, ra);
    }
    (code, resp, None)
}

/// Jelou's documented error shape.
fn error_body(status: u16, message: &str) -> Value {
    json!({
        "message": [message], "statusMessage": "error", "status": 0,
        "error": {"code": status.to_string(), "key": format!("E{status}"), "description": message,
                  "developerMessages": {}, "clientMessages": {}},
        "validationError": {},
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn send_webhook(
    http: reqwest::Client,
    target: WebhookTarget,
    project_id: String,
    mut event: Value,
) {
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
    if let Err(e) = result {
        tracing::warn!(error = %e, "mock-jelou: webhook delivery failed");
    }
}
