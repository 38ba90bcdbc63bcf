//! How secrets look when settings are printed (`check-config`) or a URL is logged: passwords
//! replaced, secret values shown as `[redacted]`.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

/// What a secret looks like in `check-config` output.
const REDACTED: &str = "[redacted]";

/// The URL with any password replaced.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        // No authority to show (`amqp:user:password@host`): nothing of it is shown.
        Ok(url) if url.cannot_be_a_base() => REDACTED.to_string(),
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            url.to_string()
        }
        Err(_) => REDACTED.to_string(),
    }
}

/// Serializes a secret URL as [`redacted_url`] shows it.
pub(super) fn redact_url<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(secret.expose_secret()))
}

/// Serializes secret URLs as [`redacted_url`] shows them.
pub(super) fn redact_urls<S: Serializer>(
    secrets: &[SecretString],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(secrets.iter().map(|u| redacted_url(u.expose_secret())))
}

/// Serializes an optional secret as `[redacted]`, or `""` when unset, so `check-config`
/// shows whether it is set and nothing more.
pub(super) fn redact_opt<S: Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(v) if !v.expose_secret().is_empty() => s.serialize_str(REDACTED),
        _ => s.serialize_str(""),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::vars;
    use crate::config::Settings;

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
    fn a_url_without_an_authority_is_refused_and_never_shown() {
        assert_eq!(
            super::redacted_url("amqp:bob:hunter2@rabbit"),
            super::REDACTED
        );
        for (key, value) in [
            ("JELOU_BRIDGE__AMQP__URL", "amqp:bob:hunter2@rabbit"),
            (
                "JELOU_BRIDGE__AMQP__FAILOVER_URLS",
                "amqp:bob:hunter2@rabbit",
            ),
        ] {
            let e = Settings::load(&vars(&[(key, value)]), true)
                .expect_err("no host: refused when the configuration loads")
                .to_string();
            assert!(e.contains("needs a host"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__AMQP__URL",
                "amqp://bob:hunter2@rabbit/%2f?frame_max=big",
            )]),
            true,
        )
        .expect_err("a query parameter the client cannot read")
        .to_string();
        assert!(
            e.contains("amqp.url") && e.contains("not an AMQP URL"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }
}
