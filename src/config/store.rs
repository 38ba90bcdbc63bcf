//! `[store]`: where the bridge remembers tickets (SQLite embedded, or PostgreSQL shared by
//! replicas) and how long a replica holds a ticket it works on.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::redact::redact_url;
use super::ConfigError;

/// The `[store]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StoreSettings {
    /// `sqlite://path` (created on first run) or `postgres://…`; its password is never logged.
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    /// Connections in the store's pool at most (a count).
    pub max_connections: u32,
    /// How long a `ticket.resolved` waits for its `ticket.opened` still in flight before
    /// parking or failing as `unknown_ticket` (a duration).
    #[serde(with = "humantime_serde")]
    pub unknown_ticket_wait: Duration,
    /// How long a replica's hold on a ticket lasts unless renewed (a duration, at least 1s).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl StoreSettings {
    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // A ticket's lease must outlast a store round trip with room to spare, or a live
        // process's hold expires under it and another takes the ticket over (a second call);
        // it is renewed every third of itself.
        if self.lease < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "store.lease",
                "must be at least 1s (15s by default): a live process's hold on a ticket is renewed every third of the lease and must never expire between two renewals, or another process takes the ticket over and calls Jelou again",
            ));
        }
        let url = self.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "store.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "store.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::vars;
    use crate::config::Settings;

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
}
