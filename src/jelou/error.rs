//! How a Jelou call fails, and which failures retrying can fix.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// The longest slice of Jelou's raw answer kept for `ticket.failed` and logs.
const MAX_RAW: usize = 2048;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JelouError {
    /// Reset, closed while reading the answer: the request may have arrived and acted.
    #[error("network error calling Jelou: {0}")]
    Transport(String),
    /// No connection could be made (refused, DNS, TLS): the request was not sent.
    #[error("network error calling Jelou (the request was not sent): {0}")]
    NotSent(String),
    #[error("Jelou did not answer within {0:?}")]
    Timeout(Duration),
    /// Jelou answered with a non-success status.
    #[error("Jelou answered HTTP {status}: {summary}")]
    Status {
        status: u16,
        summary: String,
        body: String,
        retry_after: Option<Duration>,
    },
    /// A success status whose body lacks what the bridge needs. Not retried: the call did
    /// take effect, and repeating a start could open a second conversation.
    #[error("Jelou answered HTTP {status} without {missing}")]
    BadResponse {
        status: u16,
        missing: &'static str,
        body: String,
    },
    /// The bridge is shutting down; the delivery goes back to the queue.
    #[error("shutting down before the call could be made")]
    Shutdown,
    /// The call cannot be made with this configuration (retrying will not help).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// Not sent: Jelou asked to wait (`Retry-After`) and no new call goes before then.
    #[error("not sent: Jelou asked to wait {0:?} before any new call")]
    HeldBack(Duration),
    /// Not sent: Jelou failed too often in a row and the circuit breaker is open for this
    /// much longer. Retryable, but not in process: the delivery parks at once.
    #[error("not sent: Jelou's circuit breaker is open ({0:?} left) after a run of failures")]
    CircuitOpen(Duration),
}

impl JelouError {
    /// Network errors, timeouts, 408, 429 and 5xx but 501 may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            JelouError::Transport(_)
            | JelouError::NotSent(_)
            | JelouError::Timeout(_)
            | JelouError::HeldBack(_)
            | JelouError::CircuitOpen(_) => true,
            JelouError::Status { status, .. } => is_retryable_status(*status),
            JelouError::BadResponse { .. }
            | JelouError::Shutdown
            | JelouError::NotConfigured(_) => false,
        }
    }

    /// A failure after which the call may still have taken effect in Jelou: a timeout or a
    /// connection lost after the request was sent, or a gateway's 502/504 (Jelou behind it
    /// may have answered). Jelou's own 500 and 503 are taken as "not done".
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            JelouError::Transport(_) | JelouError::Timeout(_) => true,
            JelouError::Status { status, .. } => matches!(status, 502 | 504),
            _ => false,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            JelouError::Status { status, .. } | JelouError::BadResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// How long Jelou asked to wait (or, for an open breaker, how long it stays open): a
    /// park lasts at least this long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JelouError::Status { retry_after, .. } => *retry_after,
            JelouError::HeldBack(wait) => Some(*wait),
            JelouError::CircuitOpen(left) if !left.is_zero() => Some(*left),
            _ => None,
        }
    }

    /// The gate refused the call: nothing was sent, and no attempt is counted.
    pub fn not_sent_by_gate(&self) -> bool {
        matches!(self, JelouError::HeldBack(_) | JelouError::CircuitOpen(_))
    }

    /// Jelou's raw answer, if any.
    pub fn raw_body(&self) -> Option<&str> {
        match self {
            JelouError::Status { body, .. } | JelouError::BadResponse { body, .. }
                if !body.is_empty() =>
            {
                Some(body)
            }
            _ => None,
        }
    }

    pub(crate) fn from_status(status: u16, headers: &http::header::HeaderMap, raw: &[u8]) -> Self {
        let body = truncate(raw);
        JelouError::Status {
            status,
            summary: summarize_error_body(raw).unwrap_or_else(|| {
                if body.is_empty() {
                    "(empty body)".to_string()
                } else {
                    body.clone()
                }
            }),
            body,
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        }
    }

    pub(crate) fn bad_response(status: u16, missing: &'static str, raw: &[u8]) -> Self {
        JelouError::BadResponse {
            status,
            missing,
            body: truncate(raw),
        }
    }
}

/// 408, 429 and every 5xx but 501 (Not Implemented will not start working).
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && status != 501
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Jelou's error body, leniently: `message` as a string or an array, `error.description`,
/// `error.key`, `statusMessage`; every field optional.
pub fn summarize_error_body(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let mut parts: Vec<String> = Vec::new();
    match v.get("message") {
        Some(Value::String(s)) if !s.is_empty() => parts.push(s.clone()),
        Some(Value::Array(items)) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect();
            if !joined.is_empty() {
                parts.push(joined.join("; "));
            }
        }
        _ => {}
    }
    if let Some(err) = v.get("error") {
        let key = err.get("key").and_then(Value::as_str);
        let desc = err.get("description").and_then(Value::as_str);
        match (key, desc) {
            (Some(k), Some(d)) => parts.push(format!("{k}: {d}")),
            (Some(x), None) | (None, Some(x)) => parts.push(x.to_string()),
            _ => {}
        }
    }
    if let Some(ve) = v
        .get("validationError")
        .filter(|ve| ve.as_object().is_some_and(|o| !o.is_empty()))
    {
        parts.push(format!("validation: {ve}"));
    }
    if parts.is_empty() {
        if let Some(s) = v.get("statusMessage").and_then(Value::as_str) {
            parts.push(s.to_string());
        }
    }
    (!parts.is_empty()).then(|| parts.join(" — "))
}

fn truncate(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.len() <= MAX_RAW {
        return text.into_owned();
    }
    let mut end = MAX_RAW;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_contract() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422, 501] {
            assert!(!is_retryable_status(s), "{s}");
        }
        assert!(JelouError::Transport("reset".into()).is_retryable());
        assert!(JelouError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!JelouError::bad_response(200, "data.conversationId", b"{}").is_retryable());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn error_bodies_are_read_leniently() {
        let s = summarize_error_body(br#"{"message":["Bot not found","check botId"],"error":{"key":"BOT_NOT_FOUND","description":"no such bot"}}"#).unwrap();
        assert_eq!(s, "Bot not found; check botId — BOT_NOT_FOUND: no such bot");
        assert_eq!(
            summarize_error_body(br#"{"message":"Unauthorized"}"#).unwrap(),
            "Unauthorized"
        );
        assert_eq!(
            summarize_error_body(br#"{"statusMessage":"failed","status":0}"#).unwrap(),
            "failed"
        );
        assert_eq!(summarize_error_body(br#"{}"#), None);
        assert_eq!(summarize_error_body(b"<html>bad gateway</html>"), None);
        let e = JelouError::from_status(
            502,
            &http::header::HeaderMap::new(),
            b"<html>bad gateway</html>",
        );
        assert!(e.to_string().contains("bad gateway"), "{e}");
    }
}
