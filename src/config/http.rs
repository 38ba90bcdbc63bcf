//! `[http]` and `[admin]`: the listener Jelou's webhook reaches, its limits against slow or
//! greedy clients, and the optional admin port for health, readiness and metrics.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `[http]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    /// `host:port` of the webhook, and of health and metrics unless `admin.listen` is set.
    pub listen: String,
    /// Largest webhook body accepted (bytes); a larger one gets 413.
    pub max_body_bytes: usize,
    /// A connection must send a complete request head within this (a duration), also between
    /// requests on a kept-alive connection (so it is the idle timeout too); else it is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this after its head (a duration); else 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections per listener at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Requests being handled at once per listener at most; one more is answered 503.
    pub max_requests: usize,
}

impl HttpSettings {
    /// `listen` as a socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!("{:?} is not a host:port address", self.listen),
            )
        })
    }

    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        for (key, value) in [
            ("http.header_timeout", self.header_timeout),
            ("http.body_timeout", self.body_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("http.max_connections", self.max_connections),
            ("http.max_requests", self.max_requests),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The admin port (`admin.listen`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AdminSettings {
    /// When set (`host:port`), `/healthz`, `/readyz` and `/metrics` are served here and
    /// `http.listen` serves only the webhook (the one port to expose to the internet).
    #[serde(default)]
    pub listen: Option<String>,
}

impl AdminSettings {
    /// `listen` parsed, when set; it must be another port than `http`'s.
    pub fn listen_addr(&self, http: &HttpSettings) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = self.listen.as_deref().filter(|l| !l.trim().is_empty()) else {
            return Ok(None);
        };
        let addr: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::new(
                "admin.listen",
                format!("{listen:?} is not a host:port address"),
            )
        })?;
        if http.listen.parse::<SocketAddr>().ok() == Some(addr) && addr.port() != 0 {
            return Err(ConfigError::new(
                "admin.listen",
                "must differ from http.listen (the point is two ports)",
            ));
        }
        Ok(Some(addr))
    }
}
