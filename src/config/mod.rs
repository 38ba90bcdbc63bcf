//! Typed settings, loaded in the contract's layers and checked before anything starts.
//!
//! Layers, later wins: the compiled-in `config/default.toml` → `config/default.toml` and
//! `config/{JELOU_BRIDGE_ENV}.toml` in the working directory → `--config FILE` →
//! `JELOU_BRIDGE__SECTION__KEY` environment variables. Secrets are [`SecretString`]s: they
//! print as `[redacted]` in `check-config` and never reach a log line.
//!
//! One file per section (`amqp`, `jelou`, `retry`, `routing` with `close`, `store`, `http`
//! with `admin`, `webhook`, `telemetry` with `log`, `shutdown`), each checking itself;
//! `Settings::validate` asks each in turn and the first problem is the error. The repository's
//! `config/default.toml` is the operator's reference: every key, commented, with its default.
//!
//! [`SecretString`]: secrecy::SecretString

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

mod amqp;
mod error;
mod http;
mod jelou;
mod redact;
#[cfg(test)]
mod reference;
mod retry;
mod routing;
mod serde_helpers;
mod shutdown;
mod store;
mod telemetry;
mod webhook;

pub use amqp::{amqp_uri, AmqpSettings, QueueType};
use error::from_config_error;
pub use error::ConfigError;
pub use http::{AdminSettings, HttpSettings};
pub use jelou::{JelouAuth, JelouSettings};
pub use redact::redacted_url;
pub use retry::RetrySettings;
pub use routing::{CloseSettings, OneOrMany, RoutingRule, RoutingSettings};
pub use shutdown::ShutdownSettings;
pub use store::StoreSettings;
pub use telemetry::{LogFormat, LogSettings, TelemetrySettings};
pub use webhook::WebhookSettings;

/// The repository's `config/default.toml`, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Everything the bridge is configured with, one field per TOML section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// `[amqp]`: the broker and the topology.
    pub amqp: AmqpSettings,
    /// `[jelou]`: Jelou's API and how hard it may be pressed.
    pub jelou: JelouSettings,
    /// `[retry]`: retries of a failed Jelou call, in process and by parking.
    pub retry: RetrySettings,
    /// `[routing]`: the Jelou queue of a new conversation.
    pub routing: RoutingSettings,
    /// `[close]`: the closing text.
    pub close: CloseSettings,
    /// `[store]`: where tickets are remembered.
    pub store: StoreSettings,
    /// `[http]`: the webhook listener and its limits.
    pub http: HttpSettings,
    /// `[admin]`: health, readiness and metrics on a port of their own.
    #[serde(default)]
    pub admin: AdminSettings,
    /// `[webhook]`: the signing secret and the replay window.
    pub webhook: WebhookSettings,
    /// `[log]`: log lines.
    pub log: LogSettings,
    /// `[shutdown]`: the grace period of a stop.
    pub shutdown: ShutdownSettings,
    /// `[telemetry]`: where trace spans go.
    pub telemetry: TelemetrySettings,
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
        settings.webhook.trim_signing_secret();
        settings.validate(sandbox)?;
        Ok(settings)
    }

    /// Settings with only the compiled-in defaults (tests start from these).
    pub fn defaults() -> Settings {
        Self::load(&Sources::default(), true).expect("compiled-in defaults are valid")
    }

    /// Asks each section to check itself; the first problem found is the error.
    /// `sandbox` relaxes what the sandbox supplies (Jelou's project and credentials).
    fn validate(&self, sandbox: bool) -> Result<(), ConfigError> {
        self.amqp.validate()?;
        self.jelou.validate(sandbox)?;
        self.webhook.validate()?;
        self.store.validate()?;
        self.retry.validate()?;
        self.routing.validate()?;
        self.http.validate()?;
        self.telemetry.validate()?;
        self.admin_listen()?;
        Ok(())
    }

    /// `admin.listen` parsed, when set.
    pub fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.admin.listen_addr(&self.http)
    }

    /// `http.listen` as a socket address.
    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen_addr()
    }

    /// The effective configuration as TOML, secrets redacted (`check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::*;

    /// Sources with no `config/` directory and these `JELOU_BRIDGE__…` variables.
    pub(super) fn vars(pairs: &[(&str, &str)]) -> Sources {
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
}
