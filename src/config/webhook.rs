//! `[webhook]`: the secret Jelou signs with (both directions) and the replay window.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::redact::redact_opt;
use super::ConfigError;

/// The `[webhook]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebhookSettings {
    /// Key of `X-Jelou-Signature` on Jelou's webhooks and on the bridge's send-message calls;
    /// none: the webhook answers 503.
    #[serde(default, serialize_with = "redact_opt")]
    pub signing_secret: Option<SecretString>,
    /// Signed events whose `timestamp` is older than this (a duration), or as far in the
    /// future, are refused; the dedupe table keeps deliveries for twice this long.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl WebhookSettings {
    /// Drops the whitespace around the secret: one read from a file often ends in a newline,
    /// which Jelou's key does not have. A blank secret is no secret.
    pub(super) fn trim_signing_secret(&mut self) {
        if let Some(secret) = &self.signing_secret {
            let trimmed = secret.expose_secret().trim();
            self.signing_secret =
                (!trimmed.is_empty()).then(|| SecretString::from(trimmed.to_string()));
        }
    }

    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.signing_secret {
            if secret.expose_secret().chars().any(char::is_control) {
                return Err(ConfigError::new(
                    "webhook.signing_secret",
                    "holds a control character (the value is not shown)",
                ));
            }
        }
        if self.max_age < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "webhook.max_age",
                "must be at least 1s (24h by default)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::config::tests::vars;
    use crate::config::Settings;

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
}
