//! What a delivery leads to, as plain data: a [`Decision`], the [`History`] of earlier
//! passes it is taken on, and the pure rules over them (the total budget, the failures no
//! Jelou answer gave). Nothing here touches the broker, the store or Jelou.

use std::time::Duration;

use tracing::warn;

use crate::clock::now_ms;
use crate::events::{Failure, FailureReason, Outcome};
use crate::jelou::JelouError;

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish this outcome, then ack.
    Done(Outcome),
    /// Publish `ticket.failed`, dead-letter the message, then ack.
    Failed(Failure),
    /// Not done yet: park the message in a delay queue, then ack.
    Park(Parking),
    /// Shutting down: give it back to the queue untouched.
    Requeue,
}

/// Why and how a message waits in a delay queue before its next pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Parking {
    pub action: &'static str,
    pub error: String,
    pub http_status: Option<u16>,
    /// Jelou calls made for the message so far.
    pub attempts: u32,
    /// Jelou's `Retry-After`: the park lasts at least this long.
    pub retry_after: Option<Duration>,
    /// A conversation Jelou opened that the store could not record: the next pass records
    /// it instead of starting again.
    pub conversation_id: Option<String>,
}

impl Parking {
    pub fn new(action: &'static str, error: String, attempts: u32) -> Parking {
        Parking {
            action,
            error,
            http_status: None,
            attempts,
            retry_after: None,
            conversation_id: None,
        }
    }
}

/// What earlier passes of a message left on it (read back from its headers by
/// [`crate::amqp::inbound`]): all a decision needs to know of the message besides its event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// When the bridge first saw it (ms since the epoch): the total budget's start.
    pub first_seen: i64,
    /// Jelou calls made for it on earlier passes.
    pub prior_attempts: u32,
    /// Not to be tried before this time (ms since the epoch): a `Retry-After` longer than
    /// every delay tier.
    pub not_before: Option<i64>,
    /// A conversation an earlier pass had from Jelou but could not record.
    pub conversation_id: Option<String>,
}

impl History {
    /// How long until the message may be tried (a long `Retry-After`), if it is still to come.
    pub fn not_before_in(&self) -> Option<Duration> {
        let left = self.not_before? - now_ms();
        (left > 0).then(|| Duration::from_millis(left as u64))
    }
}

/// `endedReason` of a ticket resolved before the bridge ever started it.
pub const NEVER_STARTED: &str = "never_started";

/// A park past the total budget (`budget`, counted from `first_seen` to `now`, ms since the
/// epoch) becomes `retries_exhausted`; every other decision is kept.
pub fn within_budget(
    decision: Decision,
    ticket_id: Option<&str>,
    first_seen: i64,
    now: i64,
    budget: Duration,
) -> Decision {
    let Decision::Park(Parking {
        action,
        error,
        http_status,
        attempts,
        ..
    }) = &decision
    else {
        return decision;
    };
    let elapsed = Duration::from_millis((now - first_seen).max(0) as u64);
    if elapsed < budget {
        return decision;
    }
    Decision::Failed(Failure {
        ticket_id: ticket_id.map(str::to_string),
        action: Some(action),
        reason: FailureReason::RetriesExhausted,
        http_status: *http_status,
        error: format!(
            "gave up after {} of retries: {error}",
            humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
        ),
        response: None,
        attempts: *attempts,
    })
}

/// `invalid_message`: the event cannot become a Jelou call; no retry can help.
pub(super) fn invalid(
    ticket_id: &str,
    action: &'static str,
    detail: &str,
    past: &History,
) -> Decision {
    failure(
        ticket_id,
        action,
        FailureReason::InvalidMessage,
        detail,
        past.prior_attempts,
    )
}

/// `rejected`: Jelou refused the call for good (a 4xx other than 408/429).
pub(super) fn rejected(
    action: &'static str,
    ticket_id: &str,
    e: &JelouError,
    attempts: u32,
) -> Decision {
    Decision::Failed(Failure {
        ticket_id: Some(ticket_id.to_string()),
        action: Some(action),
        reason: FailureReason::Rejected,
        http_status: e.http_status(),
        error: e.to_string(),
        response: e.raw_body().map(str::to_string),
        attempts,
    })
}

/// Not done yet: parked, and tried again after the delay tier (or `retry_after`).
pub(super) fn park(
    action: &'static str,
    error: String,
    http_status: Option<u16>,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Decision {
    Decision::Park(Parking {
        http_status,
        retry_after,
        ..Parking::new(action, error, attempts)
    })
}

/// `ticket.failed` for a reason no Jelou answer gave.
pub(super) fn failure(
    ticket_id: &str,
    action: &'static str,
    reason: FailureReason,
    error: &str,
    attempts: u32,
) -> Decision {
    Decision::Failed(Failure {
        ticket_id: Some(ticket_id.to_string()),
        action: Some(action),
        reason,
        http_status: None,
        error: error.to_string(),
        response: None,
        attempts,
    })
}

/// The store could not be read or written: parked, as it may be back on the next pass.
pub(super) fn park_store_attempts(
    action: &'static str,
    e: crate::store::StoreError,
    attempts: u32,
) -> Decision {
    warn!(error = %e, "ticket store unavailable; parking the message");
    park(action, e.to_string(), None, attempts, None)
}

/// [`park_store_attempts`] with the calls made before this pass.
pub(super) fn park_store(
    action: &'static str,
    e: crate::store::StoreError,
    past: &History,
) -> Decision {
    park_store_attempts(action, e, past.prior_attempts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(600);

    fn parked() -> Decision {
        Decision::Park(Parking {
            http_status: Some(503),
            ..Parking::new("start", "Jelou answered HTTP 503".into(), 3)
        })
    }

    #[test]
    fn a_park_within_the_budget_stays_a_park() {
        let now = 1_000_000_000;
        let kept = within_budget(parked(), Some("T-1"), now - 599_000, now, BUDGET);
        assert_eq!(kept, parked());
    }

    #[test]
    fn a_park_past_the_budget_becomes_retries_exhausted_with_its_last_error() {
        let now = 1_000_000_000;
        let Decision::Failed(f) = within_budget(parked(), Some("T-1"), now - 600_000, now, BUDGET)
        else {
            panic!("expected a failure");
        };
        assert_eq!(f.reason, FailureReason::RetriesExhausted);
        assert_eq!(f.ticket_id.as_deref(), Some("T-1"));
        assert_eq!(
            (f.action, f.http_status, f.attempts),
            (Some("start"), Some(503), 3)
        );
        assert_eq!(
            f.error,
            "gave up after 10m of retries: Jelou answered HTTP 503"
        );
    }

    #[test]
    fn only_parks_are_held_to_the_budget() {
        let done = Decision::Requeue;
        assert_eq!(within_budget(done.clone(), None, 0, i64::MAX, BUDGET), done);
    }

    #[test]
    fn a_not_before_in_the_past_is_no_wait() {
        let past = History {
            not_before: Some(now_ms() - 1),
            ..History::default()
        };
        assert_eq!(past.not_before_in(), None);
        let later = History {
            not_before: Some(now_ms() + 60_000),
            ..History::default()
        };
        assert!(later.not_before_in().unwrap() > Duration::from_secs(59));
    }
}
