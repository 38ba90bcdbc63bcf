//! Retrying one Jelou call in process: exponential backoff with jitter (`backon`),
//! `Retry-After` honoured, every sleep racing shutdown.
//!
//! Only *whether* to retry lives in [`JelouError::is_retryable`]; *how* lives here.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use super::client::Endpoint;
use super::error::JelouError;
use super::gate::JelouGate;
use crate::config::RetrySettings;

/// The in-process budget of one call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
    /// A longer `Retry-After` ends the in-process attempts (the message is parked instead).
    pub max_retry_after: Duration,
    /// Jelou's gate: before each attempt, a held gate is waited out (when its wait is no
    /// longer than `max_retry_after`), so a call waiting on `Retry-After` spends no attempt.
    pub gate: Option<std::sync::Arc<JelouGate>>,
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        Self {
            max_attempts: s.max_attempts,
            min_delay: s.min_delay,
            max_delay: s.max_delay,
            factor: s.factor,
            max_retry_after: s.max_retry_after,
            gate: None,
        }
    }
}

/// How a retried call ended, and how many attempts it took.
pub struct Attempted<T> {
    pub result: Result<T, JelouError>,
    pub attempts: u32,
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, runs out of attempts, or shutdown begins.
    /// A call already under way when shutdown begins is allowed to finish, so that its
    /// effect is recorded; only waits between attempts are cut short.
    pub async fn run<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        shutdown: &CancellationToken,
        op: F,
    ) -> Attempted<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, JelouError>>,
    {
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let max_retry_after = self.max_retry_after;
        let stop_token = shutdown.clone();
        let result = (|| async {
            if shutdown.is_cancelled() {
                return Err(JelouError::Shutdown);
            }
            self.wait_for_gate(shutdown).await?;
            let result = op().await;
            if !matches!(&result, Err(e) if e.not_sent_by_gate()) {
                attempts.fetch_add(1, Ordering::Relaxed);
            }
            result
        })
        .retry(backoff)
        .sleep(move |delay| {
            let stop = stop_token.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
        .when(|e: &JelouError| {
            // A start that may have opened a conversation is not sent again blindly: the
            // caller first looks for what it opened (the start webhook).
            let blind_repeat = endpoint == Endpoint::Start && e.may_have_taken_effect();
            // An open breaker parks the delivery at once: waiting here would only spend
            // its attempts on a Jelou known to be down.
            e.is_retryable()
                && !blind_repeat
                && !matches!(e, JelouError::CircuitOpen(_))
                && e.retry_after().is_none_or(|ra| ra <= max_retry_after)
        })
        .adjust(|e: &JelouError, delay| {
            // Jelou's own word on when to come back beats our backoff; a None delay means
            // the attempts are used up.
            delay.map(|d| e.retry_after().unwrap_or(d))
        })
        .notify(|e: &JelouError, delay: Duration| {
            metrics::counter!("jelou_bridge_jelou_retries_total", "endpoint" => endpoint.as_str()).increment(1);
            tracing::warn!(endpoint = endpoint.as_str(), error = %e, retry_in_ms = delay.as_millis() as u64, "Jelou call failed, retrying");
        })
        .await;
        Attempted {
            result,
            attempts: attempts.load(Ordering::Relaxed),
        }
    }
}

impl RetryPolicy {
    /// Waits while Jelou's gate is held, racing shutdown. A wait longer than
    /// `max_retry_after` is not waited: the error says how long, and the delivery parks.
    async fn wait_for_gate(&self, shutdown: &CancellationToken) -> Result<(), JelouError> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        // Again after each wait: an answer that came meanwhile may have held it longer.
        while let Some(wait) = gate.held_for() {
            if wait > self.max_retry_after {
                return Err(JelouError::HeldBack(wait));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Err(JelouError::Shutdown),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            factor: 2.0,
            max_retry_after: Duration::from_secs(5),
            gate: None,
        }
    }

    fn status(s: u16, retry_after: Option<Duration>) -> JelouError {
        JelouError::Status {
            status: s,
            summary: String::new(),
            body: String::new(),
            retry_after,
        }
    }

    #[tokio::test]
    async fn retries_retryable_until_success() {
        let answers = Mutex::new(vec![Ok(7), Err(status(503, None)), Err(status(503, None))]);
        let out = policy(5)
            .run(Endpoint::Start, &CancellationToken::new(), || async {
                answers.lock().unwrap().pop().unwrap()
            })
            .await;
        assert_eq!(out.result.unwrap(), 7);
        assert_eq!(out.attempts, 3);
    }

    #[tokio::test]
    async fn stops_at_once_on_rejection_and_after_max_attempts() {
        let out = policy(5)
            .run(Endpoint::Start, &CancellationToken::new(), || async {
                Err::<(), _>(status(422, None))
            })
            .await;
        assert_eq!(out.attempts, 1);
        let out = policy(3)
            .run(Endpoint::Start, &CancellationToken::new(), || async {
                Err::<(), _>(status(500, None))
            })
            .await;
        assert_eq!(out.attempts, 3);
        assert!(out.result.unwrap_err().is_retryable());
    }

    #[tokio::test]
    async fn honours_retry_after_and_gives_up_on_a_long_one() {
        let answers = Mutex::new(vec![
            Ok(()),
            Err(status(429, Some(Duration::from_millis(300)))),
        ]);
        let t0 = Instant::now();
        let out = policy(3)
            .run(Endpoint::Close, &CancellationToken::new(), || async {
                answers.lock().unwrap().pop().unwrap()
            })
            .await;
        assert!(out.result.is_ok());
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        let out = policy(3)
            .run(Endpoint::Close, &CancellationToken::new(), || async {
                Err::<(), _>(status(503, Some(Duration::from_secs(60))))
            })
            .await;
        assert_eq!(
            out.attempts, 1,
            "a Retry-After beyond max_retry_after parks instead of waiting"
        );
    }

    #[tokio::test]
    async fn shutdown_cuts_the_wait_short() {
        let token = CancellationToken::new();
        let mut p = policy(10);
        p.min_delay = Duration::from_secs(30);
        p.max_delay = Duration::from_secs(30);
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.cancel();
        });
        let t0 = Instant::now();
        let out = p
            .run(Endpoint::Start, &token, || async {
                Err::<(), _>(status(503, None))
            })
            .await;
        assert!(matches!(out.result, Err(JelouError::Shutdown)));
        assert_eq!(out.attempts, 1);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
