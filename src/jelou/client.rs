//! The HTTP client for Jelou's external-support API: one pooled `reqwest` client, start and
//! close paths configured separately, `x-api-key` or HTTP Basic, a timeout on every call.

use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use reqwest::header::{self, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::Value;
use tracing::Instrument;

use super::error::JelouError;
use super::gate::JelouGate;
use crate::config::{JelouAuth, JelouSettings};
use crate::ticket::{CloseRequest, MessageRequest, StartRequest};

/// Which of Jelou's endpoints a call goes to (a metrics label too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Start,
    Close,
    /// Send-message (an agent's reply to the customer).
    Message,
    /// Reading one conversation.
    Conversation,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Start => "start",
            Endpoint::Close => "close",
            Endpoint::Message => "message",
            Endpoint::Conversation => "conversation",
        }
    }
}

/// What a successful start returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub conversation_id: String,
}

/// What a successful close returns; every field is optional in Jelou's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub conversation_id: Option<String>,
    pub ended_reason: Option<String>,
}

/// Jelou's view of one conversation (`GET …/conversations/{id}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub conversation_id: String,
    pub room_id: Option<String>,
    /// `active` or `closed`.
    pub state: String,
    pub ended_reason: Option<String>,
}

impl Conversation {
    pub fn is_closed(&self) -> bool {
        self.state == "closed"
    }
}

pub struct JelouClient {
    http: reqwest::Client,
    start_url: reqwest::Url,
    close_url: reqwest::Url,
    /// With `{conversationId}` still in it.
    conversation_url: String,
    messages_url: reqwest::Url,
    /// Signs send-message bodies; none when no `webhook.signing_secret` is set.
    signing_secret: Option<secrecy::SecretString>,
    /// The credentials header, built once and marked sensitive (never printed); none in a
    /// sandbox without credentials, where the stand-in does not check.
    auth: Option<(HeaderName, HeaderValue)>,
    timeout: Duration,
    /// Every call passes it: `Retry-After`, the circuit breaker and the caps apply to Jelou
    /// as a whole. Shared with /readyz and /metrics.
    gate: std::sync::Arc<JelouGate>,
    /// Ends the waits for a rate token or a free slot; set by [`JelouClient::stopping_on`].
    shutdown: tokio_util::sync::CancellationToken,
}

impl JelouClient {
    /// `signing_secret` signs agents' replies (`webhook.signing_secret`).
    pub fn new(
        settings: &JelouSettings,
        signing_secret: Option<secrecy::SecretString>,
    ) -> anyhow::Result<Self> {
        let project = settings.project_id.clone().unwrap_or_default();
        let url = |path: &str| {
            let url = format!(
                "{}{}",
                settings.base_url.trim_end_matches('/'),
                path.replace("{projectId}", &project)
            );
            reqwest::Url::parse(&url).with_context(|| format!("jelou URL {url:?}"))
        };
        let auth = match settings.auth {
            JelouAuth::ApiKey => settings.api_key.as_ref().map(|key| {
                (
                    HeaderName::from_static("x-api-key"),
                    key.expose_secret().to_string(),
                )
            }),
            JelouAuth::Basic => match (&settings.client_id, &settings.client_secret) {
                (Some(id), Some(secret)) => {
                    let pair = format!("{id}:{}", secret.expose_secret());
                    Some((
                        header::AUTHORIZATION,
                        format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair)
                        ),
                    ))
                }
                _ => None,
            },
        };
        let auth = match auth {
            Some((name, value)) => {
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    anyhow::anyhow!("the Jelou credentials hold characters a header cannot carry")
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            // A redirected POST could carry the credentials somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("jelou-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let conversation_url = format!(
            "{}{}",
            settings.base_url.trim_end_matches('/'),
            settings.conversation_path.replace("{projectId}", &project)
        );
        Ok(Self {
            http,
            start_url: url(&settings.start_path)?,
            close_url: url(&settings.close_path)?,
            conversation_url,
            messages_url: reqwest::Url::parse(&settings.messages_url)
                .with_context(|| format!("jelou.messages_url {:?}", settings.messages_url))?,
            signing_secret: signing_secret.filter(|s| !s.expose_secret().is_empty()),
            auth,
            timeout: settings.timeout,
            gate: std::sync::Arc::new(JelouGate::new(settings)),
            shutdown: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Waits for the caps end when `shutdown` is cancelled.
    pub fn stopping_on(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The gate every call passes (Jelou's `Retry-After`, the circuit breaker, the caps).
    pub fn gate(&self) -> std::sync::Arc<JelouGate> {
        self.gate.clone()
    }

    pub async fn start(&self, req: &StartRequest) -> Result<Started, JelouError> {
        let (status, data, raw) = self.post(Endpoint::Start, &self.start_url, req).await?;
        match data.get("conversationId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Started {
                conversation_id: id.to_string(),
            }),
            _ => Err(JelouError::bad_response(
                status,
                "data.conversationId",
                &raw,
            )),
        }
    }

    pub async fn close(&self, req: &CloseRequest) -> Result<Closed, JelouError> {
        let (_, data, _) = self.post(Endpoint::Close, &self.close_url, req).await?;
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(Closed {
            conversation_id: text("conversationId"),
            ended_reason: text("endedReason"),
        })
    }

    /// Sends an agent's reply. The body is serialised once, and those exact bytes are signed
    /// (`X-Jelou-Signature`) and sent; no API key goes with it.
    pub async fn send_message(&self, req: &MessageRequest) -> Result<(), JelouError> {
        let Some(secret) = &self.signing_secret else {
            return Err(JelouError::NotConfigured(
                "webhook.signing_secret is not set: Jelou's send-message endpoint takes only signed bodies",
            ));
        };
        let body = serde_json::to_vec(req).map_err(|e| JelouError::Transport(e.to_string()))?;
        let signature = crate::webhook::sign(secret.expose_secret().as_bytes(), &body);
        let request = self
            .http
            .post(self.messages_url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(crate::webhook::SIGNATURE_HEADER, signature)
            .body(body);
        self.send(Endpoint::Message, request).await.map(|_| ())
    }

    /// Jelou's view of one conversation: its room and whether it is still active.
    pub async fn conversation(&self, conversation_id: &str) -> Result<Conversation, JelouError> {
        let url = self.conversation_url.replace(
            "{conversationId}",
            &url::form_urlencoded::byte_serialize(conversation_id.as_bytes()).collect::<String>(),
        );
        let url = reqwest::Url::parse(&url)
            .map_err(|e| JelouError::Transport(format!("conversation URL {url:?}: {e}")))?;
        let mut request = self.http.get(url);
        if let Some((name, value)) = &self.auth {
            request = request.header(name, value.clone());
        }
        let (status, data, raw) = self.send(Endpoint::Conversation, request).await?;
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        // Jelou names the id `_id`; accept `id`/`conversationId` too.
        let id = text("_id")
            .or_else(|| text("id"))
            .or_else(|| text("conversationId"));
        match (id, text("state")) {
            (Some(conversation_id), Some(state)) => Ok(Conversation {
                conversation_id,
                room_id: text("roomId"),
                state,
                ended_reason: text("endedReason"),
            }),
            _ => Err(JelouError::bad_response(
                status,
                "data._id and data.state",
                &raw,
            )),
        }
    }

    /// POSTs `body` with the credentials; a 2xx answer yields its `data` object (or `{}`),
    /// anything else an error.
    async fn post<B: serde::Serialize>(
        &self,
        endpoint: Endpoint,
        url: &reqwest::Url,
        body: &B,
    ) -> Result<(u16, Value, bytes::Bytes), JelouError> {
        let mut request = self.http.post(url.clone()).json(body);
        if let Some((name, value)) = &self.auth {
            request = request.header(name, value.clone());
        }
        self.send(endpoint, request).await
    }

    /// Sends one request through the gate, counts and times it; a 2xx answer yields its
    /// `data` object (or `{}`), anything else an error.
    ///
    /// Each call is a client span of the delivery's trace, and carries it (`traceparent`).
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Value, bytes::Bytes), JelouError> {
        let pass = self.gate.admit(&self.shutdown).await?;
        let result = self.send_now(endpoint, request).await;
        self.gate.record(pass, &result);
        result
    }

    async fn send_now(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Value, bytes::Bytes), JelouError> {
        let span = tracing::info_span!(
            "jelou.call",
            otel.name = tracing::field::Empty,
            otel.kind = "client",
            endpoint = endpoint.as_str(),
            http.response.status_code = tracing::field::Empty,
        );
        span.record("otel.name", format!("jelou {}", endpoint.as_str()).as_str());
        let started = Instant::now();
        let result = async {
            let mut request = request.build().map_err(|e| self.transport_error(e))?;
            crate::trace_context::inject_http(&tracing::Span::current(), request.headers_mut());
            let response = self
                .http
                .execute(request)
                .await
                .map_err(|e| self.transport_error(e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let raw = response
                .bytes()
                .await
                .map_err(|e| self.transport_error(e))?;
            tracing::Span::current().record("http.response.status_code", status);
            Ok::<_, JelouError>((status, headers, raw))
        }
        .instrument(span)
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let class = match &result {
            Ok((status, _, _)) => status_class(*status),
            Err(JelouError::Timeout(_)) => "timeout",
            Err(_) => "network",
        };
        metrics::counter!("jelou_bridge_jelou_requests_total",
            "endpoint" => endpoint.as_str(), "status_class" => class)
        .increment(1);
        metrics::histogram!("jelou_bridge_jelou_request_duration_seconds",
            "endpoint" => endpoint.as_str())
        .record(elapsed);
        let (status, headers, raw) = result?;
        if !(200..300).contains(&status) {
            return Err(JelouError::from_status(status, &headers, &raw));
        }
        let mut parsed: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let data = parsed
            .get_mut("data")
            .map(Value::take)
            .unwrap_or_else(|| Value::Object(Default::default()));
        Ok((status, data, raw))
    }

    fn transport_error(&self, e: reqwest::Error) -> JelouError {
        if e.is_timeout() {
            JelouError::Timeout(self.timeout)
        } else if e.is_connect() {
            JelouError::NotSent(crate::error::error_chain(&e))
        } else {
            // reqwest's Display names the URL (no credentials in it) and the cause.
            JelouError::Transport(crate::error::error_chain(&e))
        }
    }
}

/// What `check-config --probe` does for Jelou: a GET of `jelou.base_url`, with the configured
/// timeouts and no credentials. Any HTTP answer means the host is reachable (the API itself
/// needs credentials); Ok says which status it answered.
pub async fn probe(settings: &JelouSettings) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .build()?;
    match http.get(&settings.base_url).send().await {
        Ok(resp) => Ok(format!(
            "{} answered HTTP {}",
            settings.base_url,
            resp.status().as_u16()
        )),
        Err(e) => Err(anyhow::anyhow!(
            "{}: {}",
            settings.base_url,
            crate::error::error_chain(&e)
        )),
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
