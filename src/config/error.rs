//! The one-line configuration error, and the translation of the `config` crate's errors into
//! it without echoing a value that may be a secret.

/// A configuration that cannot run: one line naming the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {key}: {problem}")]
pub struct ConfigError {
    /// The dotted key at fault (`amqp.prefetch`), or `--config`, a file, or `config`.
    pub key: String,
    /// What is wrong with it, never quoting a value that may be a secret.
    pub problem: String,
}

impl ConfigError {
    /// The error for `key`; `problem` must not quote a value that may be a secret.
    pub(super) fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Turns the `config` crate's errors into one line that names the key.
pub(super) fn from_config_error(err: ::config::ConfigError) -> ConfigError {
    match err {
        // The crate's message quotes the offending value, which may be a secret typed in the
        // wrong place: say only what was expected.
        ::config::ConfigError::Type { key, expected, .. } => ConfigError::new(
            key.unwrap_or_else(|| "?".into()),
            format!("has the wrong type: expected {expected}"),
        ),
        ::config::ConfigError::At { error, key, .. } => {
            let inner = from_config_error(*error);
            match key {
                Some(key) if inner.key == "config" || inner.key == "?" => {
                    ConfigError::new(key, inner.problem)
                }
                _ => inner,
            }
        }
        ::config::ConfigError::NotFound(key) => ConfigError::new(key, "is missing"),
        ::config::ConfigError::FileParse { uri, cause } => ConfigError::new(
            uri.unwrap_or_else(|| "config file".into()),
            format!("cannot parse: {cause}"),
        ),
        ::config::ConfigError::Message(msg) => split_message(&msg),
        other => ConfigError::new("config", other.to_string()),
    }
}

/// serde's messages look like `missing field \`x\`` or `… for key \`a.b\``.
fn split_message(msg: &str) -> ConfigError {
    if let Some(idx) = msg.find(" for key `") {
        let key = msg[idx + 10..].trim_end_matches('`').to_string();
        return ConfigError::new(key, scrub(&msg[..idx]));
    }
    ConfigError::new("config", scrub(msg))
}

/// Drops quoted values from a serde message, which could be secrets typed in the wrong place.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    for ch in msg.chars() {
        if ch == '"' {
            if !in_quote {
                out.push_str("\"…");
            }
            in_quote = !in_quote;
            if !in_quote {
                out.push('"');
            }
            continue;
        }
        if !in_quote {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serde_message_names_its_key_and_drops_quoted_values() {
        let e = split_message(
            "invalid value: string \"sk-live-1\", expected u16 for key `amqp.prefetch`",
        );
        assert_eq!(e.key, "amqp.prefetch");
        assert_eq!(e.problem, "invalid value: string \"…\", expected u16");
        let e = split_message("missing field `queue`");
        assert_eq!(e.key, "config", "{e}");
    }
}
