//! How the stand-in is started: its paths, the credentials it checks, its latency and random
//! failures, and where it sends webhooks.

use std::time::Duration;

/// Where Jelou serves send-message (on its own host).
pub const MESSAGES_PATH: &str = "/v1/external-support/webhook";

/// Where the stand-in sends Jelou-style webhooks, and the key it signs them with.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// How a stand-in is started; [`Default`] is Jelou's paths, no credentials, no faults.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// The start call, with `{projectId}`.
    pub start_path: String,
    /// The close call, with `{projectId}`.
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
    /// The status of a random failure.
    pub fail_status: u16,
    /// When set, calls must carry this `x-api-key`.
    pub api_key: Option<String>,
    /// When set, calls must carry this HTTP Basic `clientId:clientSecret`.
    pub basic: Option<(String, String)>,
    /// Where to send Jelou's webhooks; none: it sends none.
    pub webhook: Option<WebhookTarget>,
    /// Keep every call for [`MockJelou::calls`](super::MockJelou::calls) (tests); off for long runs.
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
