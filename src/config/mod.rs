//! Typed settings, loaded in the contract's layers and checked before anything starts.
//!
//! Layers, later wins: the compiled-in `config/default.toml` → `config/default.toml` and
//! `config/{JELOU_BRIDGE_ENV}.toml` in the working directory → `--config FILE` →
//! `JELOU_BRIDGE__SECTION__KEY` environment variables. Secrets are [`SecretString`]s: they
//! print as `[redacted]` in `check-config` and never reach a log line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod error;
mod redact;
mod serde_helpers;

use error::from_config_error;
pub use error::ConfigError;
pub use redact::redacted_url;
use redact::{redact_opt, redact_url, redact_urls};
use serde_helpers::{durations, durations_out, secret_list, string_list};

/// The repository's `config/default.toml`, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub jelou: JelouSettings,
    pub retry: RetrySettings,
    pub routing: RoutingSettings,
    pub close: CloseSettings,
    pub store: StoreSettings,
    pub http: HttpSettings,
    /// Health, readiness and metrics on a port of their own.
    #[serde(default)]
    pub admin: AdminSettings,
    pub webhook: WebhookSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    /// Other nodes of the same cluster (`url`'s TLS settings apply to them too): with
    /// `url`, the nodes the consumer tries in turn when its connection is lost.
    #[serde(
        default,
        deserialize_with = "secret_list",
        serialize_with = "redact_urls"
    )]
    pub failover_urls: Vec<SecretString>,
    pub exchange: String,
    pub queue: String,
    #[serde(deserialize_with = "string_list")]
    pub binding_keys: Vec<String>,
    pub events_exchange: String,
    pub prefetch: u16,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
    pub declare_topology: bool,
    #[serde(deserialize_with = "string_list")]
    pub consume_queues: Vec<String>,
    pub max_message_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
    /// The sharded topology: a consistent-hash exchange between `exchange` and the
    /// `consume_queues`, hashing on the `shard_header` header. Empty: not declared.
    pub shard_exchange: String,
    pub shard_header: String,
    /// Replicas sharing `consume_queues`: this one consumes queue `i` when
    /// `i % replica_count == replica_index % replica_count`.
    pub replica_count: u32,
    pub replica_index: u32,
}

impl AmqpSettings {
    /// The queues this process consumes: `consume_queues`, or just `queue`.
    pub fn consumed_queues(&self) -> Vec<String> {
        if self.consume_queues.is_empty() {
            vec![self.queue.clone()]
        } else {
            self.consume_queues.clone()
        }
    }

    /// The queues this process consumes: with several replicas, its share of
    /// [`Self::consumed_queues`]. Processes with the same `replica_index % replica_count`
    /// consume the same share; single active consumer makes one of them work and the others
    /// wait as standbys.
    pub fn own_queues(&self) -> Vec<String> {
        let count = self.replica_count.max(1) as usize;
        let index = self.replica_index as usize % count;
        self.consumed_queues()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % count == index)
            .map(|(_, q)| q)
            .collect()
    }

    /// Where dead letters are published: `<queue>.dlx`, bound to `<queue>.dead`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The broker URL with its password replaced, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redacted_url(self.url.expose_secret())
    }

    /// Every node of the cluster: `url`, then `failover_urls`.
    pub fn node_urls(&self) -> Vec<SecretString> {
        std::iter::once(&self.url)
            .chain(&self.failover_urls)
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JelouAuth {
    ApiKey,
    Basic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JelouSettings {
    pub base_url: String,
    pub start_path: String,
    pub close_path: String,
    /// Path of the read of one conversation (`{projectId}`, `{conversationId}`).
    pub conversation_path: String,
    /// Jelou's send-message endpoint (a full URL: it lives on another host), signed with
    /// `webhook.signing_secret` instead of the API key.
    pub messages_url: String,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default, serialize_with = "redact_opt")]
    pub api_key: Option<SecretString>,
    #[serde(default)]
    pub bot_id: Option<String>,
    pub auth: JelouAuth,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default, serialize_with = "redact_opt")]
    pub client_secret: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// After a start that may have opened a conversation without answering (a timeout, a
    /// lost connection, a gateway 502/504): how long to wait for Jelou's `conversation.start`
    /// webhook to name it before the start is sent again. Only with a webhook configured.
    #[serde(with = "humantime_serde")]
    pub reconcile_wait: Duration,
    /// Calls to Jelou per second at most, all endpoints together (a token bucket); none: no
    /// cap.
    #[serde(default)]
    pub max_rate: Option<u32>,
    /// Calls to Jelou in flight at once at most; none: no cap (`amqp.prefetch` bounds them).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Retryable failures in a row (network, timeouts, 5xx) that open the circuit breaker;
    /// 0 turns it off.
    pub breaker_failures: u32,
    /// How long the open breaker lets no call through before one probe.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetrySettings {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub factor: f32,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    #[serde(deserialize_with = "durations", serialize_with = "durations_out")]
    pub delays: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub total_budget: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RoutingSettings {
    pub default_queue: String,
    #[serde(default)]
    pub rules: Vec<RoutingRule>,
}

/// `field` (a dotted path into the `ticket.opened` body) equal to one of `equals` → `queue`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RoutingRule {
    pub field: String,
    pub equals: OneOrMany,
    pub queue: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn contains(&self, value: &str) -> bool {
        match self {
            OneOrMany::One(v) => v == value,
            OneOrMany::Many(vs) => vs.iter().any(|v| v == value),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CloseSettings {
    pub default_text: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StoreSettings {
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub unknown_ticket_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    /// A connection must send a complete request head within this, also between requests
    /// on a kept-alive connection (so it is the idle timeout too); else it is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this after its head; else 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections per listener at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Requests being handled at once per listener at most; one more is answered 503.
    pub max_requests: usize,
}

/// The admin port (`admin.listen`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AdminSettings {
    /// When set, `/healthz`, `/readyz` and `/metrics` are served here and `http.listen`
    /// serves only the webhook (the one port to expose to the internet).
    #[serde(default)]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebhookSettings {
    #[serde(default, serialize_with = "redact_opt")]
    pub signing_secret: Option<SecretString>,
    /// Signed events whose `timestamp` is older than this, or as far in the future, are
    /// refused; the dedupe table keeps deliveries for twice this long, then prunes them.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// Traces: W3C trace context always travels with a ticket; these settings only say where the
/// spans go.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TelemetrySettings {
    /// OTLP/HTTP (protobuf) collector URL, e.g. `http://127.0.0.1:4318` (`/v1/traces` is
    /// appended unless the path already ends with it); none or empty: spans are not exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl TelemetrySettings {
    /// Where spans are POSTed, when export is on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref().map(str::trim)?;
        if base.is_empty() {
            return None;
        }
        if base.trim_end_matches('/').ends_with("/v1/traces") {
            return Some(base.to_string());
        }
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ShutdownSettings {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// Where the layers come from; tests pass their own instead of touching the process env.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Directory holding `config/`; `None` reads the working directory.
    pub dir: Option<std::path::PathBuf>,
    /// `JELOU_BRIDGE_ENV`.
    pub env_name: Option<String>,
    /// `--config FILE`.
    pub file: Option<std::path::PathBuf>,
    /// `JELOU_BRIDGE__…` variables, as `(name, value)`.
    pub vars: Vec<(String, String)>,
}

impl Sources {
    /// The sources a started process has: its working directory and environment.
    pub fn from_process(file: Option<std::path::PathBuf>) -> Self {
        Self {
            dir: None,
            env_name: std::env::var("JELOU_BRIDGE_ENV").ok(),
            file,
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("JELOU_BRIDGE__"))
                .collect(),
        }
    }
}

impl Settings {
    /// Loads every layer and checks the result. `sandbox` relaxes what the sandbox supplies.
    pub fn load(sources: &Sources, sandbox: bool) -> Result<Settings, ConfigError> {
        let dir = sources.dir.clone().unwrap_or_default();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from(dir.join("config/default.toml")).required(false));
        if let Some(env_name) = sources.env_name.as_deref().filter(|e| !e.is_empty()) {
            builder = builder.add_source(
                config::File::from(dir.join(format!("config/{env_name}.toml"))).required(false),
            );
        }
        if let Some(file) = &sources.file {
            if !file.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("file {} does not exist", file.display()),
                ));
            }
            builder = builder.add_source(config::File::from(file.as_path()).required(true));
        }
        let env = config::Environment::with_prefix("JELOU_BRIDGE")
            .prefix_separator("__")
            .separator("__")
            // Values stay strings until a typed field asks for a number or a bool: an API key
            // or project id like "007" must not turn into the number 7.
            .try_parsing(false)
            .source(Some(sources.vars.iter().cloned().collect()));
        builder = builder.add_source(env);
        let raw = builder.build().map_err(from_config_error)?;
        let mut settings: Settings = raw.try_deserialize().map_err(from_config_error)?;
        // A secret read from a file often ends in a newline, which Jelou's key does not have.
        if let Some(secret) = &settings.webhook.signing_secret {
            let trimmed = secret.expose_secret().trim();
            settings.webhook.signing_secret =
                (!trimmed.is_empty()).then(|| SecretString::from(trimmed.to_string()));
        }
        settings.validate(sandbox)?;
        Ok(settings)
    }

    /// Settings with only the compiled-in defaults (tests start from these).
    pub fn defaults() -> Settings {
        Self::load(&Sources::default(), true).expect("compiled-in defaults are valid")
    }

    fn validate(&self, sandbox: bool) -> Result<(), ConfigError> {
        let a = &self.amqp;
        let url = url::Url::parse(a.url.expose_secret())
            .map_err(|e| ConfigError::new("amqp.url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(ConfigError::new("amqp.url", "scheme must be amqp or amqps"));
        }
        for (i, other) in a.failover_urls.iter().enumerate() {
            // Which entry, never its text: it may hold a password.
            let key = "amqp.failover_urls";
            let url = url::Url::parse(other.expose_secret())
                .map_err(|e| ConfigError::new(key, format!("entry {}: not a URL: {e}", i + 1)))?;
            if !matches!(url.scheme(), "amqp" | "amqps") {
                return Err(ConfigError::new(
                    key,
                    format!("entry {}: scheme must be amqp or amqps", i + 1),
                ));
            }
        }
        for (key, value) in [
            ("amqp.exchange", &a.exchange),
            ("amqp.queue", &a.queue),
            ("amqp.events_exchange", &a.events_exchange),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        if a.prefetch == 0 {
            return Err(ConfigError::new("amqp.prefetch", "must be at least 1"));
        }
        if a.binding_keys.is_empty() {
            return Err(ConfigError::new(
                "amqp.binding_keys",
                "must name at least one key",
            ));
        }
        if a.client_cert_file.is_empty() != a.client_key_file.is_empty() {
            return Err(ConfigError::new(
                "amqp.client_key_file",
                "amqp.client_cert_file and amqp.client_key_file go together",
            ));
        }
        if a.reconnect_min_delay > a.reconnect_max_delay {
            return Err(ConfigError::new(
                "amqp.reconnect_min_delay",
                "must not exceed amqp.reconnect_max_delay",
            ));
        }
        self.validate_shards()?;
        for (key, path) in [
            ("amqp.ca_file", &a.ca_file),
            ("amqp.client_cert_file", &a.client_cert_file),
            ("amqp.client_key_file", &a.client_key_file),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                return Err(ConfigError::new(key, format!("file {path} does not exist")));
            }
        }

        let j = &self.jelou;
        check_https_url("jelou.base_url", &j.base_url)?;
        check_https_url("jelou.messages_url", &j.messages_url)?;
        for (key, path) in [
            ("jelou.start_path", &j.start_path),
            ("jelou.close_path", &j.close_path),
            ("jelou.conversation_path", &j.conversation_path),
        ] {
            if !path.starts_with('/') {
                return Err(ConfigError::new(key, "must start with /"));
            }
        }
        if !sandbox {
            if j.project_id.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::new(
                    "jelou.project_id",
                    "is required (or run with --sandbox)",
                ));
            }
            match j.auth {
                JelouAuth::ApiKey if is_blank(&j.api_key) => {
                    return Err(ConfigError::new(
                        "jelou.api_key",
                        "is required when jelou.auth = \"api_key\" (or run with --sandbox)",
                    ))
                }
                JelouAuth::Basic
                    if j.client_id.as_deref().is_none_or(str::is_empty)
                        || is_blank(&j.client_secret) =>
                {
                    return Err(ConfigError::new(
                        "jelou.client_secret",
                        "jelou.client_id and jelou.client_secret are required when jelou.auth = \"basic\"",
                    ))
                }
                _ => {}
            }
        }
        // Sent as the x-api-key header, which cannot carry control characters (a trailing
        // newline from a secrets file, say) or non-ASCII.
        if let Some(key) = &j.api_key {
            if reqwest::header::HeaderValue::from_str(key.expose_secret()).is_err() {
                return Err(ConfigError::new(
                    "jelou.api_key",
                    "holds characters an HTTP header cannot carry (a control character such as a trailing newline, or non-ASCII)",
                ));
            }
        }
        if j.max_rate == Some(0) {
            return Err(ConfigError::new(
                "jelou.max_rate",
                "must be at least 1 call per second (leave it out for no cap)",
            ));
        }
        if j.max_concurrency == Some(0) {
            return Err(ConfigError::new(
                "jelou.max_concurrency",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if j.breaker_failures > 0 && j.breaker_cooldown.is_zero() {
            return Err(ConfigError::new(
                "jelou.breaker_cooldown",
                "must be greater than zero (set jelou.breaker_failures = 0 to turn the breaker off)",
            ));
        }
        if let Some(secret) = &self.webhook.signing_secret {
            if secret.expose_secret().chars().any(char::is_control) {
                return Err(ConfigError::new(
                    "webhook.signing_secret",
                    "holds a control character (the value is not shown)",
                ));
            }
        }
        if self.webhook.max_age < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "webhook.max_age",
                "must be at least 1s (24h by default)",
            ));
        }
        if j.timeout.is_zero() {
            return Err(ConfigError::new(
                "jelou.timeout",
                "must be greater than zero",
            ));
        }

        // A ticket's lease must outlast a store round trip with room to spare, or a live
        // process's hold expires under it and another takes the ticket over (a second call);
        // it is renewed every third of itself.
        if self.store.lease < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "store.lease",
                "must be at least 1s (15s by default): a live process's hold on a ticket is renewed every third of the lease and must never expire between two renewals, or another process takes the ticket over and calls Jelou again",
            ));
        }

        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(ConfigError::new("retry.max_attempts", "must be at least 1"));
        }
        if r.delays.is_empty() || r.delays.iter().any(Duration::is_zero) {
            return Err(ConfigError::new(
                "retry.delays",
                "must list at least one non-zero delay",
            ));
        }
        if r.factor.is_nan() || r.factor < 1.0 {
            return Err(ConfigError::new("retry.factor", "must be at least 1.0"));
        }

        if self.routing.default_queue.trim().is_empty() {
            return Err(ConfigError::new(
                "routing.default_queue",
                "must not be empty",
            ));
        }
        for (i, rule) in self.routing.rules.iter().enumerate() {
            if rule.field.is_empty() || rule.queue.is_empty() {
                return Err(ConfigError::new(
                    format!("routing.rules[{i}]"),
                    "needs a field and a queue",
                ));
            }
        }

        let store = self.store.url.expose_secret();
        if !(store.starts_with("sqlite:")
            || store.starts_with("postgres://")
            || store.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "store.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(ConfigError::new(
                "store.max_connections",
                "must be at least 1",
            ));
        }
        self.http_listen()?;
        if let Some(traces) = self.telemetry.traces_url() {
            let url = url::Url::parse(&traces).map_err(|e| {
                ConfigError::new("telemetry.otlp_endpoint", format!("not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    "telemetry.otlp_endpoint",
                    "scheme must be http or https (OTLP over HTTP)",
                ));
            }
            // The exporter's own error lines quote the URL: no secret may be in it.
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::new(
                    "telemetry.otlp_endpoint",
                    "must not carry credentials; set OTEL_EXPORTER_OTLP_HEADERS instead",
                ));
            }
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(ConfigError::new(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        self.admin_listen()?;
        let h = &self.http;
        for (key, value) in [
            ("http.header_timeout", h.header_timeout),
            ("http.body_timeout", h.body_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("http.max_connections", h.max_connections),
            ("http.max_requests", h.max_requests),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// `admin.listen` parsed, when set.
    pub fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = self
            .admin
            .listen
            .as_deref()
            .filter(|l| !l.trim().is_empty())
        else {
            return Ok(None);
        };
        let addr: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::new(
                "admin.listen",
                format!("{listen:?} is not a host:port address"),
            )
        })?;
        if self.http.listen.parse::<SocketAddr>().ok() == Some(addr) && addr.port() != 0 {
            return Err(ConfigError::new(
                "admin.listen",
                "must differ from http.listen (the point is two ports)",
            ));
        }
        Ok(Some(addr))
    }

    /// The sharded topology and the replicas sharing it.
    fn validate_shards(&self) -> Result<(), ConfigError> {
        let a = &self.amqp;
        let mut seen = std::collections::HashSet::new();
        for q in &a.consume_queues {
            if q.trim().is_empty() || !seen.insert(q.as_str()) {
                return Err(ConfigError::new(
                    "amqp.consume_queues",
                    format!("{q:?} is empty or listed twice"),
                ));
            }
        }
        if !a.shard_exchange.is_empty() {
            if a.consume_queues.is_empty() {
                return Err(ConfigError::new(
                    "amqp.shard_exchange",
                    "needs amqp.consume_queues, the shard queues behind it",
                ));
            }
            if a.shard_exchange == a.exchange || a.shard_exchange == a.events_exchange {
                return Err(ConfigError::new(
                    "amqp.shard_exchange",
                    "must differ from amqp.exchange and amqp.events_exchange",
                ));
            }
            if a.shard_header.trim().is_empty() {
                return Err(ConfigError::new(
                    "amqp.shard_header",
                    "must name the header carrying the ticket id",
                ));
            }
        }
        let queues = a.consumed_queues().len();
        if a.replica_count == 0 || a.replica_count as usize > queues {
            return Err(ConfigError::new(
                "amqp.replica_count",
                format!("must be between 1 and the number of consumed queues ({queues})"),
            ));
        }
        Ok(())
    }

    /// `http.listen` as a socket address.
    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!("{:?} is not a host:port address", self.http.listen),
            )
        })
    }

    /// The effective configuration as TOML, secrets redacted (`check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn is_blank(secret: &Option<SecretString>) -> bool {
    secret
        .as_ref()
        .is_none_or(|s| s.expose_secret().trim().is_empty())
}

/// A URL Jelou is reached at: https, or plain http to a loopback stand-in.
fn check_https_url(key: &str, raw: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::new(key, format!("not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(ConfigError::new(
            key,
            "must be https:// (plain http is allowed only for a loopback stand-in)",
        )),
        other => Err(ConfigError::new(key, format!("unsupported scheme {other}"))),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            dir: Some(std::path::PathBuf::from("/nonexistent")),
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Sources::default()
        }
    }

    #[test]
    fn compiled_in_defaults_match_the_contract() {
        let s = Settings::load(&vars(&[]), true).unwrap();
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(s.amqp.exchange, "helpdesk");
        assert_eq!(s.amqp.queue, "jelou-bridge.tickets");
        assert_eq!(s.amqp.events_exchange, "jelou-bridge.events");
        assert_eq!(s.amqp.prefetch, 32);
        assert_eq!(s.jelou.base_url, "https://gateway.jelou.ai");
        assert_eq!(
            s.jelou.start_path,
            "/platform/v1/external-support/{projectId}/conversations/start"
        );
        assert_eq!(
            s.jelou.close_path,
            "/jelouapi/v1/external-support/{projectId}/conversations/close"
        );
        assert!(s.jelou.project_id.is_none());
        assert!(s.jelou.api_key.is_none());
        assert_eq!(s.routing.default_queue, "SOPORTE");
        assert_eq!(s.store.url.expose_secret(), "sqlite://data/jelou-bridge.db");
        assert_eq!(s.http.listen, "127.0.0.1:8080");
        assert!(s.webhook.signing_secret.is_none());
        assert!(s.telemetry.otlp_endpoint.is_none());
        assert!(s.telemetry.traces_url().is_none());
    }

    #[test]
    fn otlp_endpoint_gets_the_traces_path_and_a_bad_one_is_named() {
        let s = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT",
                "http://otel:4318/",
            )]),
            true,
        )
        .unwrap();
        assert_eq!(
            s.telemetry.traces_url().as_deref(),
            Some("http://otel:4318/v1/traces")
        );
        let e = Settings::load(
            &vars(&[("JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT", "otel:4317")]),
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("telemetry.otlp_endpoint"), "{e}");
        let s = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT",
                "https://u:pw-otlp-123@otel:4318",
            )]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            s.contains("telemetry.otlp_endpoint") && !s.contains("pw-otlp-123"),
            "credentials refused, and not shown: {s}"
        );
    }

    #[test]
    fn env_vars_override_with_double_underscores_and_lists() {
        let s = Settings::load(
            &vars(&[
                ("JELOU_BRIDGE__AMQP__PREFETCH", "7"),
                ("JELOU_BRIDGE__JELOU__API_KEY", "k-123"),
                ("JELOU_BRIDGE__JELOU__PROJECT_ID", "007"),
                ("JELOU_BRIDGE__RETRY__DELAYS", "1s,2s"),
                ("JELOU_BRIDGE__AMQP__DECLARE_TOPOLOGY", "false"),
                ("JELOU_BRIDGE__RETRY__FACTOR", "1.5"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(s.amqp.prefetch, 7);
        assert!(!s.amqp.declare_topology);
        assert_eq!(s.retry.factor, 1.5);
        assert_eq!(
            s.jelou.project_id.as_deref(),
            Some("007"),
            "digits stay a string"
        );
        assert_eq!(s.jelou.api_key.unwrap().expose_secret(), "k-123");
        assert_eq!(
            s.retry.delays,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
    }

    #[test]
    fn file_layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("jb-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::write(
            dir.join("config/default.toml"),
            "[amqp]\nprefetch = 3\nqueue = \"from-default\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("config/staging.toml"),
            "[amqp]\nprefetch = 4\nexchange = \"from-staging\"\nevents_exchange = \"from-staging\"\n",
        )
        .unwrap();
        let extra = dir.join("extra.toml");
        std::fs::write(&extra, "[amqp]\nevents_exchange = \"from-file\"\n[routing]\ndefault_queue = \"VENTAS\"\n[[routing.rules]]\nfield = \"metadata.category\"\nequals = [\"billing\", \"invoices\"]\nqueue = \"FACTURACION\"\n").unwrap();
        let load = |vars: Vec<(String, String)>| {
            Settings::load(
                &Sources {
                    dir: Some(dir.clone()),
                    env_name: Some("staging".into()),
                    file: Some(extra.clone()),
                    vars,
                },
                true,
            )
            .unwrap()
        };
        // Each layer wins over the ones before it, key by key.
        let s = load(Vec::new());
        assert_eq!(
            s.amqp.queue, "from-default",
            "default.toml over the compiled-in"
        );
        assert_eq!(s.amqp.prefetch, 4, "staging.toml over default.toml");
        assert_eq!(s.amqp.exchange, "from-staging");
        assert_eq!(
            s.amqp.events_exchange, "from-file",
            "--config over staging.toml"
        );
        assert_eq!(s.routing.default_queue, "VENTAS");
        assert!(s.routing.rules[0].equals.contains("invoices"));
        let s = load(vec![("JELOU_BRIDGE__AMQP__PREFETCH".into(), "5".into())]);
        assert_eq!(s.amqp.prefetch, 5, "the environment over every file");
        assert_eq!(s.amqp.exchange, "from-staging");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_lease_too_short_to_renew_is_refused() {
        for lease in ["0s", "500ms"] {
            let err =
                Settings::load(&vars(&[("JELOU_BRIDGE__STORE__LEASE", lease)]), true).unwrap_err();
            assert_eq!(err.key, "store.lease", "{lease}: {err}");
            assert!(err.problem.contains("at least 1s"), "{err}");
        }
        assert!(Settings::load(&vars(&[("JELOU_BRIDGE__STORE__LEASE", "2s")]), true).is_ok());
    }

    #[test]
    fn broken_config_names_the_key() {
        let err =
            Settings::load(&vars(&[("JELOU_BRIDGE__AMQP__PREFETCH", "lots")]), true).unwrap_err();
        assert_eq!(err.key, "amqp.prefetch", "{err}");
        let err = Settings::load(&vars(&[]), false).unwrap_err();
        assert_eq!(err.key, "jelou.project_id");
        let err = Settings::load(
            &vars(&[
                ("JELOU_BRIDGE__JELOU__PROJECT_ID", "p"),
                ("JELOU_BRIDGE__JELOU__BASE_URL", "http://jelou.example.com"),
                ("JELOU_BRIDGE__JELOU__API_KEY", "k"),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(err.key, "jelou.base_url");
        let err = Settings::load(
            &vars(&[
                ("JELOU_BRIDGE__JELOU__PROJECT_ID", "p"),
                ("JELOU_BRIDGE__JELOU__API_KEY", "k-123\n"),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(err.key, "jelou.api_key");
        assert!(!err.to_string().contains("k-123"), "{err}");
        let err =
            Settings::load(&vars(&[("JELOU_BRIDGE__STORE__URL", "mysql://x")]), true).unwrap_err();
        assert_eq!(err.key, "store.url");
        assert!(err
            .to_string()
            .starts_with("configuration error: store.url: "));
    }

    #[test]
    fn redacted_toml_hides_every_secret() {
        let s = Settings::load(
            &vars(&[
                (
                    "JELOU_BRIDGE__AMQP__URL",
                    "amqp://bob:hunter2@rabbit:5672/%2f",
                ),
                ("JELOU_BRIDGE__JELOU__API_KEY", "sk-live-abc"),
                ("JELOU_BRIDGE__JELOU__CLIENT_SECRET", "cs-xyz"),
                ("JELOU_BRIDGE__WEBHOOK__SIGNING_SECRET", "whsec-1"),
                ("JELOU_BRIDGE__STORE__URL", "postgres://u:pgpass@db/x"),
                (
                    "JELOU_BRIDGE__AMQP__FAILOVER_URLS",
                    "amqp://bob:hunter3@rabbit-2:5672/%2f, amqps://bob:hunter4@rabbit-3/%2f",
                ),
            ]),
            true,
        )
        .unwrap();
        let out = s.to_redacted_toml();
        for secret in [
            "hunter2",
            "hunter3",
            "hunter4",
            "sk-live-abc",
            "cs-xyz",
            "whsec-1",
            "pgpass",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("amqp://bob:redacted@rabbit:5672/%2f"), "{out}");
        assert!(out.contains("amqps://bob:redacted@rabbit-3/%2f"), "{out}");
        assert_eq!(
            s.amqp.node_urls().len(),
            3,
            "amqp.url and both failover nodes"
        );
        assert!(!format!("{s:?}").contains("sk-live-abc"));
    }

    #[test]
    fn failover_urls_are_checked_without_echoing_them() {
        let defaults = Settings::load(&vars(&[]), true).unwrap();
        assert!(defaults.amqp.failover_urls.is_empty());
        assert_eq!(defaults.amqp.node_urls().len(), 1);
        let err = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__AMQP__FAILOVER_URLS",
                "amqp://u:p@ok:5672/%2f,http://u:s3cret@bad/",
            )]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "amqp.failover_urls", "{err}");
        assert!(err.to_string().contains("entry 2"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn the_signing_secret_is_trimmed_and_never_shown_in_an_error() {
        let load = |secret: &str| {
            Settings::load(
                &vars(&[("JELOU_BRIDGE__WEBHOOK__SIGNING_SECRET", secret)]),
                true,
            )
        };
        let s = load("  whsec-abc123\n").unwrap();
        assert_eq!(
            s.webhook.signing_secret.unwrap().expose_secret(),
            "whsec-abc123"
        );
        assert!(load(" \n").unwrap().webhook.signing_secret.is_none());
        let err = load("whsec-ab\x07cd").unwrap_err();
        assert_eq!(err.key, "webhook.signing_secret");
        assert!(!err.to_string().contains("whsec-ab"), "{err}");
        let err = Settings::load(
            &vars(&[("JELOU_BRIDGE__WEBHOOK__MAX_AGE", "12 parsecs")]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "webhook.max_age", "{err}");
    }

    #[test]
    fn jelou_is_reached_over_https_unless_the_base_url_is_loopback() {
        let load = |base: &str| {
            Settings::load(
                &vars(&[
                    ("JELOU_BRIDGE__JELOU__PROJECT_ID", "p"),
                    ("JELOU_BRIDGE__JELOU__API_KEY", "k"),
                    ("JELOU_BRIDGE__JELOU__BASE_URL", base),
                ]),
                false,
            )
        };
        for ok in [
            "https://gateway.jelou.ai",
            "https://10.0.0.5:8443",
            "http://127.0.0.1:8090",
            "http://127.8.9.10:8090",
            "http://localhost:8090",
            "http://[::1]:8090",
        ] {
            assert!(load(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "http://gateway.jelou.ai",
            "http://10.0.0.5:8090",
            "http://localhost.example.com:8090",
            "http://0.0.0.0:8090",
            "ftp://127.0.0.1/",
        ] {
            let err = load(bad).expect_err(bad);
            assert_eq!(err.key, "jelou.base_url", "{bad}: {err}");
        }
    }

    #[test]
    fn replicas_split_the_shard_queues() {
        let shards = "s0,s1,s2,s3,s4,s5";
        let load = |count: &str, index: &str| {
            Settings::load(
                &vars(&[
                    ("JELOU_BRIDGE__AMQP__CONSUME_QUEUES", shards),
                    ("JELOU_BRIDGE__AMQP__SHARD_EXCHANGE", "helpdesk.shards"),
                    ("JELOU_BRIDGE__AMQP__REPLICA_COUNT", count),
                    ("JELOU_BRIDGE__AMQP__REPLICA_INDEX", index),
                ]),
                true,
            )
        };
        let s = load("3", "1").unwrap();
        assert_eq!(s.amqp.shard_header, "x-ticket-id");
        assert_eq!(s.amqp.own_queues(), ["s1", "s4"]);
        assert_eq!(load("1", "0").unwrap().amqp.own_queues().len(), 6);
        // Every queue is some replica's, exactly once.
        let mut owned: Vec<String> = (0..4)
            .flat_map(|i| load("4", &i.to_string()).unwrap().amqp.own_queues())
            .collect();
        owned.sort();
        assert_eq!(owned, ["s0", "s1", "s2", "s3", "s4", "s5"]);
        // A second process with an index one count higher is the first one's standby.
        assert_eq!(load("3", "4").unwrap().amqp.own_queues(), ["s1", "s4"]);

        assert_eq!(load("7", "0").unwrap_err().key, "amqp.replica_count");
        assert_eq!(load("0", "0").unwrap_err().key, "amqp.replica_count");
        let defaults = Settings::load(&vars(&[]), true).unwrap();
        assert_eq!(defaults.amqp.own_queues(), ["jelou-bridge.tickets"]);
        let err = Settings::load(
            &vars(&[("JELOU_BRIDGE__AMQP__SHARD_EXCHANGE", "helpdesk.shards")]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "amqp.shard_exchange", "shards need their queues");
        let err = Settings::load(
            &vars(&[("JELOU_BRIDGE__AMQP__CONSUME_QUEUES", "s0,s1,s0")]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "amqp.consume_queues");
    }
}
