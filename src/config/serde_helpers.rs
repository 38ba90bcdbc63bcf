//! Field formats the `config` crate does not parse itself: lists that may arrive as one
//! comma-separated environment variable, and lists of durations.

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serializer};

/// A list, or (from an environment variable) a comma-separated string.
pub(super) fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// [`string_list`] of secrets: broker URLs that may carry a password.
pub(super) fn secret_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<SecretString>, D::Error> {
    Ok(string_list(d)?
        .into_iter()
        .map(SecretString::from)
        .collect())
}

/// A [`string_list`] of durations (`"5s"`, `"2m"`).
pub(super) fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    string_list(d)?
        .iter()
        .map(|s| humantime::parse_duration(s.trim()).map_err(serde::de::Error::custom))
        .collect()
}

/// Durations written back as [`durations`] reads them.
pub(super) fn durations_out<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
}
