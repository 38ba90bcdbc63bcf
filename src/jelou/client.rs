//! The HTTP client for Jelou's external-support API: one pooled HTTP/1.1 client (hyper-util's,
//! with rustls and Mozilla's roots), start and close paths configured separately, `x-api-key`
//! or HTTP Basic, a timeout on every call.
//!
//! Not reqwest: its redirect layer parses every request's URL twice, even with redirects off,
//! some 5 % of the bridge's instructions a ticket (docs/performance.md). The bridge never
//! follows a redirect (a redirected POST could carry the credentials elsewhere), so hyper's
//! client is all it needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use secrecy::ExposeSecret;
use tracing::Instrument;

use super::answer::Data;
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

    /// The name of a call's span (`otel.name`): a constant, so no string is built per call.
    fn span_name(self) -> &'static str {
        match self {
            Endpoint::Start => "jelou start",
            Endpoint::Close => "jelou close",
            Endpoint::Message => "jelou message",
            Endpoint::Conversation => "jelou conversation",
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

/// hyper-util's pooled client over plain TCP (a loopback stand-in) or TLS.
type HttpClient = hyper_util::client::legacy::Client<Egress, Full<Bytes>>;

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("jelou-bridge/", env!("CARGO_PKG_VERSION")));
const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub struct JelouClient {
    http: HttpClient,
    start_url: Uri,
    close_url: Uri,
    /// With `{conversationId}` still in it.
    conversation_url: String,
    messages_url: Uri,
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
        Self::with_tls(settings, signing_secret, tls_config()?, Matcher::from_env())
    }

    /// [`JelouClient::new`] trusting what `tls` trusts (a test's own CA) and going through
    /// the proxies `proxy` names.
    fn with_tls(
        settings: &JelouSettings,
        signing_secret: Option<secrecy::SecretString>,
        tls: rustls::ClientConfig,
        proxy: Matcher,
    ) -> anyhow::Result<Self> {
        let project = settings.project_id.clone().unwrap_or_default();
        let joined = |path: &str| {
            format!(
                "{}{}",
                settings.base_url.trim_end_matches('/'),
                path.replace("{projectId}", &project)
            )
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
        let http = http_client(settings, tls, proxy);
        Ok(Self {
            http,
            start_url: absolute_uri(&joined(&settings.start_path))?,
            close_url: absolute_uri(&joined(&settings.close_path))?,
            conversation_url: joined(&settings.conversation_path),
            messages_url: absolute_uri(&settings.messages_url).context("jelou.messages_url")?,
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
        let (status, raw) = self.post(Endpoint::Start, &self.start_url, req).await?;
        match Data::of(&raw).conversation_id {
            Some(conversation_id) if !conversation_id.is_empty() => Ok(Started { conversation_id }),
            _ => Err(JelouError::bad_response(
                status,
                "data.conversationId",
                &raw,
            )),
        }
    }

    pub async fn close(&self, req: &CloseRequest) -> Result<Closed, JelouError> {
        let (_, raw) = self.post(Endpoint::Close, &self.close_url, req).await?;
        let data = Data::of(&raw);
        Ok(Closed {
            conversation_id: data.conversation_id,
            ended_reason: data.ended_reason,
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
        let signature = HeaderValue::try_from(signature)
            .map_err(|e| JelouError::Transport(format!("the signature header: {e}")))?;
        let mut request = request(Method::POST, self.messages_url.clone(), body.into());
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, JSON);
        headers.insert(crate::webhook::SIGNATURE_HEADER, signature);
        self.send(Endpoint::Message, request).await.map(|_| ())
    }

    /// Jelou's view of one conversation: its room and whether it is still active.
    pub async fn conversation(&self, conversation_id: &str) -> Result<Conversation, JelouError> {
        let url = self.conversation_url.replace(
            "{conversationId}",
            &url::form_urlencoded::byte_serialize(conversation_id.as_bytes()).collect::<String>(),
        );
        // Through `url` as the configured URLs are (host names, percent-encoding).
        let url = absolute_uri(&url).map_err(|e| JelouError::Transport(format!("{e:#}")))?;
        let request = self.with_auth(request(Method::GET, url, Bytes::new()));
        let (status, raw) = self.send(Endpoint::Conversation, request).await?;
        let data = Data::of(&raw);
        // Jelou names the id `_id`; accept `id`/`conversationId` too.
        let id = data.underscore_id.or(data.id).or(data.conversation_id);
        match (id, data.state) {
            (Some(conversation_id), Some(state)) => Ok(Conversation {
                conversation_id,
                room_id: data.room_id,
                state,
                ended_reason: data.ended_reason,
            }),
            _ => Err(JelouError::bad_response(
                status,
                "data._id and data.state",
                &raw,
            )),
        }
    }

    /// POSTs `body` with the credentials; a 2xx answer yields its status and body, anything
    /// else an error.
    async fn post<B: serde::Serialize>(
        &self,
        endpoint: Endpoint,
        url: &Uri,
        body: &B,
    ) -> Result<(u16, Bytes), JelouError> {
        let body = serde_json::to_vec(body).map_err(|e| JelouError::Transport(e.to_string()))?;
        let mut request = request(Method::POST, url.clone(), body.into());
        request.headers_mut().insert(header::CONTENT_TYPE, JSON);
        self.send(endpoint, self.with_auth(request)).await
    }

    /// `request` with the credentials header, when there are credentials.
    fn with_auth(&self, mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
        if let Some((name, value)) = &self.auth {
            request.headers_mut().insert(name, value.clone());
        }
        request
    }

    /// Sends one request through the gate, counts and times it; a 2xx answer yields its
    /// status and body, anything else an error.
    ///
    /// Each call is a client span of the delivery's trace, and carries it (`traceparent`).
    async fn send(
        &self,
        endpoint: Endpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), JelouError> {
        let pass = self.gate.admit(&self.shutdown).await?;
        let result = self.send_now(endpoint, request).await;
        self.gate.record(pass, &result);
        result
    }

    async fn send_now(
        &self,
        endpoint: Endpoint,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), JelouError> {
        let span = tracing::info_span!(
            "jelou.call",
            otel.name = endpoint.span_name(),
            otel.kind = "client",
            endpoint = endpoint.as_str(),
            http.response.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = async {
            crate::trace_context::inject_http(&tracing::Span::current(), request.headers_mut());
            let target = Target::of(request.method(), request.uri());
            // The timeout covers the whole call: connecting, sending, the answer's body.
            let call = async {
                let response = self
                    .http
                    .request(request)
                    .await
                    .map_err(|e| target.client_error(&e))?;
                let (head, body) = response.into_parts();
                let raw = body
                    .collect()
                    .await
                    .map_err(|e| target.lost_answer(&e))?
                    .to_bytes();
                Ok::<_, JelouError>((head.status.as_u16(), head.headers, raw))
            };
            let (status, headers, raw) = tokio::time::timeout(self.timeout, call)
                .await
                .map_err(|_| JelouError::Timeout(self.timeout))??;
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
        Ok((status, raw))
    }
}

/// Rustls with Mozilla's roots (webpki-roots).
fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    Ok(tls_builder()?.with_webpki_roots().with_no_client_auth())
}

/// Rustls with the ring provider, named explicitly so that a second provider in the tree
/// cannot make the choice ambiguous, and its safe protocol versions; the roots are next.
fn tls_builder(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
}

/// One pool of HTTP/1.1 connections to Jelou, kept up to a minute when idle. Plain http is
/// only ever a loopback stand-in (the configuration refuses it elsewhere).
fn http_client(
    settings: &JelouSettings,
    mut tls: rustls::ClientConfig,
    proxy: Matcher,
) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    // A peer that vanished without a word is noticed on an idle pooled connection.
    tcp.set_keepalive(Some(Duration::from_secs(15)));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = Egress {
        tcp,
        tls: Arc::new(tls),
        proxy: Arc::new(proxy),
        connect_timeout: settings.connect_timeout,
    };
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>, BoxError>,
            > + Send,
    >,
>;

/// How a connection to Jelou is made: directly, or through the HTTPS proxy that
/// `HTTPS_PROXY`/`ALL_PROXY` name unless `NO_PROXY` exempts the host (curl's rules; an HTTP
/// CONNECT tunnel, with the proxy URL's user and password as `Proxy-Authorization`); then
/// TLS. `jelou.connect_timeout` bounds all of it, name lookup and handshake included. A plain
/// http URL (only ever a loopback stand-in) is always reached directly.
#[derive(Clone)]
struct Egress {
    tcp: HttpConnector,
    tls: Arc<rustls::ClientConfig>,
    proxy: Arc<Matcher>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Egress {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let via = match dst.scheme_str() {
            Some("https") => self.proxy.intercept(&dst),
            _ => None,
        };
        let connecting = match via {
            // Only a plain-http proxy speaks CONNECT as the tunnel does; an https:// or
            // socks proxy would get bytes it cannot read.
            Some(via) if via.uri().scheme_str() != Some("http") => {
                let named = format!(
                    "{}://{}",
                    via.uri().scheme_str().unwrap_or("?"),
                    via.uri().host().unwrap_or("?")
                );
                Box::pin(async move {
                    Err(std::io::Error::other(format!(
                        "the proxy {named} (HTTPS_PROXY/ALL_PROXY) is not an http:// proxy: only HTTP CONNECT proxies are supported"
                    ))
                    .into())
                })
            }
            Some(via) => {
                let mut tunnel = Tunnel::new(via.uri().clone(), self.tcp.clone());
                if let Some(auth) = via.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                HttpsConnector::from((tunnel, self.tls.clone())).call(dst)
            }
            None => HttpsConnector::from((self.tcp.clone(), self.tls.clone())).call(dst),
        };
        let limit = self.connect_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within jelou.connect_timeout ({limit:?})"),
                )
                .into()),
            }
        })
    }
}

/// An absolute http(s) URL as a request target; what `url` accepts and normalises, hyper's
/// `Uri` takes as is.
fn absolute_uri(raw: &str) -> anyhow::Result<Uri> {
    let url = url::Url::parse(raw).with_context(|| format!("jelou URL {raw:?}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        anyhow::bail!("jelou URL {raw:?}: not an http(s) URL with a host");
    }
    url.as_str()
        .parse()
        .with_context(|| format!("jelou URL {raw:?}"))
}

fn request(method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    request.headers_mut().insert(header::USER_AGENT, USER_AGENT);
    request
}

/// What a failed call names: the method and the URL without any user information (the
/// credentials travel in headers, never in the URL, but a URL could still carry some).
/// Written out only when a call fails (the method and URI are reference-counted copies).
struct Target {
    method: Method,
    uri: Uri,
}

impl Target {
    fn of(method: &Method, uri: &Uri) -> Target {
        Target {
            method: method.clone(),
            uri: uri.clone(),
        }
    }

    /// No connection could be made (refused, DNS, TLS, the connect timeout): nothing was
    /// sent. Anything later (a reset, a connection closed before the answer) may have acted.
    fn client_error(&self, e: &hyper_util::client::legacy::Error) -> JelouError {
        let text = format!("{self}: {}", crate::error::error_chain(e));
        if e.is_connect() {
            JelouError::NotSent(text)
        } else {
            JelouError::Transport(text)
        }
    }

    /// The connection broke while the answer's body was read: the call may have acted.
    fn lost_answer(&self, e: &hyper::Error) -> JelouError {
        JelouError::Transport(format!(
            "{self}: reading the answer: {}",
            crate::error::error_chain(e)
        ))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = &self.uri;
        write!(
            f,
            "{} {}://{}",
            self.method,
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or("")
        )?;
        if let Some(port) = uri.port_u16() {
            write!(f, ":{port}")?;
        }
        f.write_str(uri.path())
    }
}

/// What `check-config --probe` does for Jelou: a GET of `jelou.base_url`, with the configured
/// timeouts, the bridge's own TLS settings and no credentials. Any HTTP answer means the host
/// is reachable (the API itself needs credentials); Ok says which status it answered.
pub async fn probe(settings: &JelouSettings) -> anyhow::Result<String> {
    let http = http_client(settings, tls_config()?, Matcher::from_env());
    let base = &settings.base_url;
    let uri = absolute_uri(base)?;
    let target = Target::of(&Method::GET, &uri);
    match tokio::time::timeout(
        settings.timeout,
        http.request(request(Method::GET, uri, Bytes::new())),
    )
    .await
    {
        Ok(Ok(resp)) => Ok(format!("{base} answered HTTP {}", resp.status().as_u16())),
        Ok(Err(e)) => Err(anyhow::anyhow!("{}", target.client_error(&e))),
        Err(_) => Err(anyhow::anyhow!(
            "{base}: no answer within {:?}",
            settings.timeout
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

#[cfg(test)]
mod tests {
    //! Jelou over HTTPS: a TLS server of the test's own, with a certificate for `localhost`
    //! that a test CA signed.

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Server {
        base_url: String,
        ca: CertificateDer<'static>,
        /// Each request's head and body as the server read it.
        seen: tokio::sync::mpsc::UnboundedReceiver<String>,
    }

    /// Answers every request on every connection with a close's answer.
    async fn https_server() -> Server {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A refused handshake (an untrusting client) just ends the connection.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = tls.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).to_string();
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_string)
                            })
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() < head_end + 4 + length {
                            continue;
                        }
                        let _ = tx.send(text);
                        got.clear();
                        let body = r#"{"status":"success","data":{"conversationId":"C-TLS","endedReason":"resolved"}}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            base_url: format!("https://localhost:{port}"),
            ca: ca_cert.der().clone(),
            seen,
        }
    }

    fn settings(base_url: &str) -> JelouSettings {
        let mut settings = crate::config::Settings::defaults().jelou;
        settings.base_url = base_url.to_string();
        settings.project_id = Some("proj-tls".into());
        settings.api_key = Some(secrecy::SecretString::from("tls-key".to_string()));
        settings.timeout = Duration::from_secs(10);
        settings
    }

    fn close() -> CloseRequest {
        CloseRequest {
            bot_id: "B-TLS".into(),
            user_id: "U-TLS".into(),
            redirect_payload: serde_json::json!({"ticketId": "T-TLS"}),
        }
    }

    fn no_proxy() -> Matcher {
        Matcher::builder().build()
    }

    /// A client configuration that trusts the test CA only.
    fn trusting(ca: &CertificateDer<'static>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        tls_builder()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// An HTTP CONNECT proxy: sends each CONNECT request's head, then relays the tunnel.
    async fn connect_proxy() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let _ = tx.send(head);
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(target.replace("localhost", "127.0.0.1"))
                            .await
                    else {
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn calls_go_over_tls_to_a_server_whose_certificate_is_trusted() {
        let mut server = https_server().await;
        let tls = trusting(&server.ca);
        let settings = settings(&server.base_url);
        let path = settings.close_path.replace("{projectId}", "proj-tls");
        let client = JelouClient::with_tls(&settings, None, tls, no_proxy()).unwrap();

        for _ in 0..2 {
            let closed = client.close(&close()).await.expect("a close over TLS");
            assert_eq!(closed.conversation_id.as_deref(), Some("C-TLS"));
            assert_eq!(closed.ended_reason.as_deref(), Some("resolved"));
            let request = server.seen.recv().await.unwrap();
            let (head, body) = request.split_once("\r\n\r\n").unwrap();
            let head = head.to_ascii_lowercase();
            assert!(
                head.starts_with(&format!("post {} http/1.1\r\n", path.to_ascii_lowercase())),
                "{head}"
            );
            assert!(head.contains("\r\nx-api-key: tls-key"), "{head}");
            assert!(head.contains("\r\nhost: localhost:"), "{head}");
            assert!(
                head.contains("\r\ncontent-type: application/json"),
                "{head}"
            );
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"botId": "B-TLS", "userId": "U-TLS", "redirectPayload": {"ticketId": "T-TLS"}})
            );
        }
    }

    #[tokio::test]
    async fn a_certificate_the_roots_do_not_vouch_for_is_refused_before_anything_is_sent() {
        let mut server = https_server().await;
        // The bridge's own roots (Mozilla's): the test CA is not among them.
        let client = JelouClient::new(&settings(&server.base_url), None).unwrap();
        let err = client.close(&close()).await.unwrap_err();
        assert!(matches!(err, JelouError::NotSent(_)), "{err:?}");
        assert!(!err.may_have_taken_effect());
        let text = err.to_string();
        assert!(text.contains("certificate"), "{text}");
        assert!(text.contains("POST https://localhost:"), "{text}");
        assert!(
            server.seen.try_recv().is_err(),
            "nothing reached the server"
        );
    }

    #[tokio::test]
    async fn calls_go_through_the_https_proxy_the_environment_names_unless_no_proxy_exempts_the_host(
    ) {
        let mut server = https_server().await;
        let (proxy_port, mut proxied) = connect_proxy().await;
        let proxy =
            || Matcher::builder().https(format!("http://relay:s3cret@127.0.0.1:{proxy_port}"));
        let settings = settings(&server.base_url);
        let port = server.base_url.rsplit(':').next().unwrap().to_string();

        let client =
            JelouClient::with_tls(&settings, None, trusting(&server.ca), proxy().build()).unwrap();
        let closed = client
            .close(&close())
            .await
            .expect("a close through the proxy");
        assert_eq!(closed.conversation_id.as_deref(), Some("C-TLS"));
        let connect = proxied.recv().await.unwrap();
        assert!(
            connect.starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\n")),
            "{connect}"
        );
        // relay:s3cret
        assert!(
            connect
                .to_ascii_lowercase()
                .contains("\r\nproxy-authorization: basic cmvsyxk6cznjcmv0\r\n"),
            "{connect}"
        );
        assert!(server
            .seen
            .recv()
            .await
            .unwrap()
            .contains("\r\nx-api-key: tls-key"));

        // NO_PROXY naming the host: straight to it.
        let direct = JelouClient::with_tls(
            &settings,
            None,
            trusting(&server.ca),
            proxy().no("localhost").build(),
        )
        .unwrap();
        direct
            .close(&close())
            .await
            .expect("a close without the proxy");
        assert!(server.seen.recv().await.is_some());
        assert!(proxied.try_recv().is_err(), "the proxy saw nothing");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_ends_is_not_sent_within_the_connect_timeout() {
        // Takes the connection, never answers the TLS hello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                open.push(tcp);
            }
        });
        let mut settings = settings(&format!("https://localhost:{port}"));
        settings.connect_timeout = Duration::from_millis(300);
        settings.timeout = Duration::from_secs(30);
        let client =
            JelouClient::with_tls(&settings, None, tls_config().unwrap(), no_proxy()).unwrap();
        let started = Instant::now();
        let err = client.close(&close()).await.unwrap_err();
        assert!(matches!(err, JelouError::NotSent(_)), "{err:?}");
        assert!(err.to_string().contains("jelou.connect_timeout"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }

    #[tokio::test]
    async fn a_proxy_that_is_not_plain_http_is_refused_by_name_and_nothing_is_sent() {
        let mut server = https_server().await;
        for proxy in ["socks5://127.0.0.1:1", "https://user:pw@127.0.0.1:1"] {
            let client = JelouClient::with_tls(
                &settings(&server.base_url),
                None,
                trusting(&server.ca),
                Matcher::builder().https(proxy).build(),
            )
            .unwrap();
            let err = client.close(&close()).await.unwrap_err();
            assert!(matches!(err, JelouError::NotSent(_)), "{proxy}: {err:?}");
            let text = err.to_string();
            assert!(text.contains("only HTTP CONNECT proxies"), "{text}");
            assert!(!text.contains("pw"), "{text}");
        }
        assert!(
            server.seen.try_recv().is_err(),
            "nothing reached the server"
        );
    }
}
