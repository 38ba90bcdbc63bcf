//! Failures on demand, which come before any normal answer: an outage (every call gets one
//! status) and scripted answers (the next calls get these, in order).

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::Value;

use super::handlers::{error, error_body, Answer};
use super::MockState;

/// One answer given in place of the normal one.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// A 2xx without a body lets the normal answer through (it still takes its turn).
    pub status: u16,
    /// The `Retry-After` header to send, as given.
    pub retry_after: Option<String>,
    /// The body; none: Jelou's error shape for `status`.
    pub body: Option<Value>,
}

impl Scripted {
    /// An answer with `status` and Jelou's error body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: None,
        }
    }

    /// The same answer with a `Retry-After` header.
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_string());
        self
    }
}

/// The answer an outage or the script gives in place of the normal one; None: answer
/// normally. A scripted success without a body takes its turn and falls through.
pub(super) fn injected(state: &MockState) -> Option<Answer> {
    if let Some(status) = *state.down.lock().unwrap() {
        return Some(error(status, None, "Service unavailable"));
    }
    if let Some(s) = state.script.lock().unwrap().pop_front() {
        if (200..300).contains(&s.status) && s.body.is_none() {
            // A scripted success falls through to the normal answer.
        } else {
            let status =
                StatusCode::from_u16(s.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let payload = s
                .body
                .unwrap_or_else(|| error_body(s.status, "Scripted failure"));
            let mut resp = (status, Json(payload)).into_response();
            if let Some(ra) = s.retry_after.and_then(|v| v.parse().ok()) {
                resp.headers_mut().insert(reqwest::header::RETRY_AFTER, ra);
            }
            return Some((status, resp, Vec::new()));
        }
    }
    None
}
