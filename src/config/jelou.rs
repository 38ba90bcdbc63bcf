//! `[jelou]`: where Jelou's API is, how the bridge authenticates to it, and how hard it may be
//! pressed (timeouts, caps, the circuit breaker).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::redact::redact_opt;
use super::ConfigError;

/// How calls to Jelou authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JelouAuth {
    /// `api_key` in the `x-api-key` header.
    ApiKey,
    /// `Authorization: Basic client_id:client_secret`.
    Basic,
}

/// The `[jelou]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JelouSettings {
    /// Jelou's API gateway (https, or http to a loopback stand-in); the paths below hang off it.
    pub base_url: String,
    /// Path of the conversation start (`{projectId}` is replaced).
    pub start_path: String,
    /// Path of the conversation close (`{projectId}` is replaced).
    pub close_path: String,
    /// Path of the read of one conversation (`{projectId}`, `{conversationId}`).
    pub conversation_path: String,
    /// Jelou's send-message endpoint (a full URL: it lives on another host), signed with
    /// `webhook.signing_secret` instead of the API key.
    pub messages_url: String,
    /// The Jelou project every call names; required unless in the sandbox.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Secret sent as `x-api-key` when `auth` is `api_key`.
    #[serde(default, serialize_with = "redact_opt")]
    pub api_key: Option<SecretString>,
    /// Bot used when a ticket event names none.
    #[serde(default)]
    pub bot_id: Option<String>,
    /// `api_key` or `basic`.
    pub auth: JelouAuth,
    /// The user of `basic` authentication.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The secret of `basic` authentication.
    #[serde(default, serialize_with = "redact_opt")]
    pub client_secret: Option<SecretString>,
    /// Whole-call timeout of one request to Jelou (a duration).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Timeout of opening a connection to Jelou (a duration).
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
    /// How long the open breaker lets no call through before one probe (a duration).
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

impl JelouSettings {
    /// Checks the section; `sandbox` lets the project and the credentials be missing (the
    /// sandbox supplies them).
    pub(super) fn validate(&self, sandbox: bool) -> Result<(), ConfigError> {
        check_https_url("jelou.base_url", &self.base_url)?;
        check_https_url("jelou.messages_url", &self.messages_url)?;
        for (key, path) in [
            ("jelou.start_path", &self.start_path),
            ("jelou.close_path", &self.close_path),
            ("jelou.conversation_path", &self.conversation_path),
        ] {
            if !path.starts_with('/') {
                return Err(ConfigError::new(key, "must start with /"));
            }
        }
        if !sandbox {
            self.validate_credentials()?;
        }
        // Sent as the x-api-key header, which cannot carry control characters (a trailing
        // newline from a secrets file, say) or non-ASCII.
        if let Some(key) = &self.api_key {
            if http::HeaderValue::from_str(key.expose_secret()).is_err() {
                return Err(ConfigError::new(
                    "jelou.api_key",
                    "holds characters an HTTP header cannot carry (a control character such as a trailing newline, or non-ASCII)",
                ));
            }
        }
        if self.max_rate == Some(0) {
            return Err(ConfigError::new(
                "jelou.max_rate",
                "must be at least 1 call per second (leave it out for no cap)",
            ));
        }
        if self.max_concurrency == Some(0) {
            return Err(ConfigError::new(
                "jelou.max_concurrency",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if self.breaker_failures > 0 && self.breaker_cooldown.is_zero() {
            return Err(ConfigError::new(
                "jelou.breaker_cooldown",
                "must be greater than zero (set jelou.breaker_failures = 0 to turn the breaker off)",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "jelou.timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// Outside the sandbox: the project, and the credentials `auth` asks for.
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        if self.project_id.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::new(
                "jelou.project_id",
                "is required (or run with --sandbox)",
            ));
        }
        match self.auth {
            JelouAuth::ApiKey if is_blank(&self.api_key) => Err(ConfigError::new(
                "jelou.api_key",
                "is required when jelou.auth = \"api_key\" (or run with --sandbox)",
            )),
            JelouAuth::Basic
                if self.client_id.as_deref().is_none_or(str::is_empty)
                    || is_blank(&self.client_secret) =>
            {
                Err(ConfigError::new(
                    "jelou.client_secret",
                    "jelou.client_id and jelou.client_secret are required when jelou.auth = \"basic\"",
                ))
            }
            _ => Ok(()),
        }
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
    // The client sends no user information from a URL, and error lines name the URL.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            key,
            "must not carry a user or password (Jelou's credentials go in jelou.api_key, or jelou.client_id and jelou.client_secret)",
        ));
    }
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
    use crate::config::tests::vars;
    use crate::config::Settings;

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
            "https://id:secret@gateway.jelou.ai",
            "https://id@gateway.jelou.ai",
        ] {
            let err = load(bad).expect_err(bad);
            assert_eq!(err.key, "jelou.base_url", "{bad}: {err}");
            assert!(
                !err.to_string().contains("gateway"),
                "the URL is not repeated: {err}"
            );
        }
    }
}
