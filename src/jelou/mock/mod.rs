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
//!
//! - this file: the running server and the switches a test or the CLI turns;
//! - `options`: how it is started (paths, credentials, latency, webhook target);
//! - `handlers`: the HTTP endpoints, and how each call is answered and recorded;
//! - `faults`: outages and scripted answers, which come before any normal answer;
//! - `conversations`: Jelou's model as the stand-in keeps it: one active conversation per
//!   bot + user, what start, close, read and send-message do to it;
//! - `webhooks`: the signed events it sends, shaped as Jelou's.

mod conversations;
mod faults;
mod handlers;
mod options;
mod webhooks;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::client::Endpoint;
use conversations::Conversations;

pub use conversations::MockConversation;
pub use faults::Scripted;
pub use handlers::RecordedCall;
pub use options::{MockOptions, WebhookTarget, MESSAGES_PATH};

/// What the server's handlers share with the [`MockJelou`] that controls them.
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
                post(handlers::start),
            )
            .route(
                &options.close_path.replace("{projectId}", "{project_id}"),
                post(handlers::close),
            )
            .route(
                &options
                    .conversation_path
                    .replace("{projectId}", "{project_id}")
                    .replace("{conversationId}", "{conversation_id}"),
                get(handlers::read_conversation),
            )
            .route(&options.messages_path, post(handlers::send_message))
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

    /// The address it listens on.
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

    /// Every answer from now on comes `latency` late.
    pub fn set_latency(&self, latency: Duration) {
        self.state.options.lock().unwrap().latency = latency;
    }

    /// Every call recorded so far, in the order they took effect.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The recorded calls to `endpoint`.
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
            conversations::end(&mut c, id, "closed_by_operator");
            webhooks::close_event(&conv, None)
        };
        self.deliver(event).await;
        true
    }

    /// Sends a customer's message in conversation `id`, shaped as Jelou sends one (no
    /// `event` field), to the webhook target. The webhook's HTTP status, if it answered.
    pub async fn customer_message(&self, id: &str, value: Value) -> Option<u16> {
        let conv = self.conversation(id)?;
        self.deliver(webhooks::message_event(&conv, value)).await
    }

    async fn deliver(&self, event: Value) -> Option<u16> {
        let target = self.state.options.lock().unwrap().webhook.clone()?;
        let project = self.project_of_calls();
        webhooks::send_webhook(self.state.http.clone(), target, project, event).await
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

    /// Stops the server (as dropping it does).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for MockJelou {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
