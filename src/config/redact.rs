//! How secrets look when settings are printed (`check-config`) or a URL is logged: passwords
//! replaced, secret values shown as `[redacted]`.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

/// What a secret looks like in `check-config` output.
const REDACTED: &str = "[redacted]";

/// The URL with any password replaced.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            url.to_string()
        }
        Err(_) => REDACTED.to_string(),
    }
}

pub(super) fn redact_url<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(secret.expose_secret()))
}

pub(super) fn redact_urls<S: Serializer>(
    secrets: &[SecretString],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(secrets.iter().map(|u| redacted_url(u.expose_secret())))
}

pub(super) fn redact_opt<S: Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(v) if !v.expose_secret().is_empty() => s.serialize_str(REDACTED),
        _ => s.serialize_str(""),
    }
}
