//! A local stand-in for Jelou's external-support API: `jelou-bridge mock-jelou`,
//! `run --sandbox`, the tests and the benchmark all talk to this real HTTP server.
//!
//! It behaves like Jelou as its docs show it: start, close (addressed by bot + user: one active
//! conversation per bot and user, a new start replaces it), the read of one conversation
//! (`_id`, `roomId`, `state`), and send-message (signed with the integration's secret, no API
//! key). It checks credentials when given some, and has switches for latency, random
//! failures, scripted answers and outages. With a webhook target it also sends the signed
//! `conversation.start`/`conversation.close` events and customers' messages (which carry no
//! `event` field) that Jelou would send.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::client::Endpoint;

/// Where Jelou serves send-message (on its own host).
pub const MESSAGES_PATH: &str = "/v1/external-support/webhook";

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
    /// The read of one conversation, with `{projectId}` and `{conversationId}`.
    pub conversation_path: String,
    /// The path of the send-message endpoint (Jelou serves it on another host).
    pub messages_path: String,
    /// The key send-message bodies must be signed with; else the webhook target's.
    pub signing_secret: Option<String>,
    /// A start for a bot + user with an active conversation answers that conversation
    /// instead of replacing it (Jelou may do either).
    pub reuse_active: bool,
    /// Each message sent to a room is answered by its customer (a message webhook): what
    /// the sandbox shows.
    pub echo_messages: bool,
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
            conversation_path:
                "/jelouapi/v1/external-support/{projectId}/conversations/{conversationId}".into(),
            messages_path: MESSAGES_PATH.into(),
            signing_secret: None,
            reuse_active: false,
            echo_messages: false,
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

#[derive(Default)]
struct Conversations {
    /// Every conversation by id.
    all: HashMap<String, MockConversation>,
    /// The active conversation of each (botId, userId), as Jelou addresses a close.
    active: HashMap<(String, String), String>,
}

struct MockState {
    options: Mutex<MockOptions>,
    script: Mutex<VecDeque<Scripted>>,
    /// Every call answered with this status while set (an outage).
    down: Mutex<Option<u16>>,
    calls: Mutex<Vec<RecordedCall>>,
    conversations: Mutex<Conversations>,
    /// The next calls of these endpoints act, then wait this long before answering.
    stalls: Mutex<Vec<(Endpoint, Duration)>>,
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
            conversations: Mutex::new(Conversations::default()),
            stalls: Mutex::new(Vec::new()),
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
            .route(
                &options
                    .conversation_path
                    .replace("{projectId}", "{project_id}")
                    .replace("{conversationId}", "{conversation_id}"),
                get(read_conversation),
            )
            .route(&options.messages_path, post(send_message))
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

    /// Where the stand-in sends its webhooks from now on (none: it sends none).
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        self.state.options.lock().unwrap().webhook = target;
    }

    /// The next call to `endpoint` takes effect at once (the conversation opens or closes,
    /// the webhook goes out) but is answered only `stall` later: what a lost answer looks
    /// like to the caller. Calls after it are answered at once.
    pub fn stall_next(&self, endpoint: Endpoint, stall: Duration) {
        self.state.stalls.lock().unwrap().push((endpoint, stall));
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

    /// What the send-message endpoint of this stand-in is (`jelou.messages_url`).
    pub fn messages_url(&self) -> String {
        let path = self.state.options.lock().unwrap().messages_path.clone();
        format!("http://{}{path}", self.addr)
    }

    /// A conversation as the stand-in knows it.
    pub fn conversation(&self, id: &str) -> Option<MockConversation> {
        self.state
            .conversations
            .lock()
            .unwrap()
            .all
            .get(id)
            .cloned()
    }

    /// The conversations still active.
    pub fn active_conversations(&self) -> Vec<MockConversation> {
        let c = self.state.conversations.lock().unwrap();
        c.active
            .values()
            .filter_map(|id| c.all.get(id).cloned())
            .collect()
    }

    /// Closes a conversation as an operator would in Jelou's panel, and sends the
    /// `conversation.close` webhook when a target is set. False if it was not active.
    pub async fn close_by_operator(&self, id: &str) -> bool {
        let event = {
            let mut c = self.state.conversations.lock().unwrap();
            let Some(conv) = c.all.get(id).cloned().filter(|c| c.state == "active") else {
                return false;
            };
            c.active
                .remove(&(conv.bot_id.clone(), conv.user_id.clone()));
            end(&mut c, id, "closed_by_operator");
            close_event(&conv, None)
        };
        self.deliver(event).await;
        true
    }

    /// Sends a customer's message in conversation `id`, shaped as Jelou sends one (no
    /// `event` field), to the webhook target. The webhook's HTTP status, if it answered.
    pub async fn customer_message(&self, id: &str, value: Value) -> Option<u16> {
        let conv = self.conversation(id)?;
        self.deliver(message_event(&conv, value)).await
    }

    async fn deliver(&self, event: Value) -> Option<u16> {
        let target = self.state.options.lock().unwrap().webhook.clone()?;
        let project = self.project_of_calls();
        send_webhook(self.state.http.clone(), target, project, event).await
    }

    /// The project id calls were made for (the webhook's `project_id`).
    fn project_of_calls(&self) -> String {
        self.state
            .calls
            .lock()
            .unwrap()
            .last()
            .map(|c| c.project_id.clone())
            .unwrap_or_else(|| "PROJECT_ID".into())
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

async fn read_conversation(
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

async fn send_message(
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
type Answer = (StatusCode, Response, Vec<Value>);

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
            return (status, resp, Vec::new());
        }
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

/// One active conversation per bot + user: a start replaces the active one (or, with
/// `reuse_active`, answers it).
fn start_conversation(
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
    let webhook = json!({
        "event": "conversation.start", "timestamp": crate::clock::now_ms(), "field": "conversation",
        "object": "conversation_event", "event_type": "start",
        "room_id": conv.room_id, "contact": {"id": user, "name": user},
        "conversation": {"id": conv.id, "assignment": body.get("assignment")},
        "bot": {"id": bot, "name": bot},
        "value": {"initial_message": body.get("initialMessage"), "metadata": body.get("metadata")},
    });
    let resp = json!({
        "message": ["Conversation started successfully"], "statusMessage": "success", "status": 1,
        "data": {"conversationId": conv.id, "botId": bot, "userId": user, "status": "active"},
    });
    (StatusCode::OK, Json(resp).into_response(), vec![webhook])
}

fn close_conversation(state: &MockState, body: &Value, bot: &str, user: &str) -> Answer {
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
fn read(state: &MockState, body: &Value) -> Answer {
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
fn message(state: &MockState, options: &MockOptions, body: &Value) -> Answer {
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

fn end(c: &mut Conversations, id: &str, reason: &str) {
    if let Some(conv) = c.all.get_mut(id) {
        conv.state = "closed".into();
        conv.ended_reason = Some(reason.into());
        conv.end_at = Some(crate::clock::now_ms());
    }
}

fn close_event(conv: &MockConversation, redirect: Option<&Value>) -> Value {
    json!({
        "event": "conversation.close", "timestamp": crate::clock::now_ms(), "field": "conversation",
        "object": "conversation_event", "event_type": "close",
        "room_id": conv.room_id, "contact": {"id": conv.user_id, "name": conv.user_id},
        "conversation": {"id": conv.id}, "bot": {"id": conv.bot_id, "name": conv.bot_id},
        "value": {"reason": "closed_by_operator", "redirectPayload": redirect},
    })
}

/// A customer's message as Jelou sends it: no `event` field.
fn message_event(conv: &MockConversation, value: Value) -> Value {
    json!({
        "timestamp": crate::clock::now_ms(), "field": "messages", "object": "message_event",
        "event_type": "message", "room_id": conv.room_id,
        "contact": {"id": conv.user_id, "name": conv.user_id},
        "conversation": {"id": conv.id}, "bot": {"id": conv.bot_id, "name": conv.bot_id},
        "value": value,
    })
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

fn error(status: u16, retry_after: Option<&str>, message: &str) -> Answer {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, Json(error_body(status, message))).into_response();
    if let Some(ra) = retry_after.and_then(|v| v.parse().ok()) {
        resp.headers_mut().insert(reqwest::header::RETRY_AFTER, ra);
    }
    (code, resp, Vec::new())
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

/// Posts one signed event to the webhook target; its HTTP status, if it answered.
async fn send_webhook(
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
