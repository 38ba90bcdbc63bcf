//! Jelou as a whole: one gate every call to Jelou passes, shared by start, close, read and
//! send-message.
//!
//! - **`Retry-After`**: a `429` or `503` that names a wait closes the gate until it passes.
//!   No new call is made before then; calls already in flight finish. Waiting is the
//!   caller's choice ([`crate::jelou::retry::RetryPolicy::run`] waits when the wait is short
//!   enough, else the delivery parks); the gate itself never sleeps on it.
//! - **Circuit breaker**: after `jelou.breaker_failures` retryable failures in a row, no call
//!   for `jelou.breaker_cooldown`; then one probe goes through, and its answer closes the
//!   breaker again or reopens it. While it is open calls fail at once with
//!   [`JelouError::CircuitOpen`], so deliveries park instead of spending their attempts.
//! - **Caps**: `jelou.max_rate` (calls per second, a token bucket) and
//!   `jelou.max_concurrency` (calls in flight at once); both off by default.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::error::JelouError;
use crate::config::JelouSettings;

/// What the breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Every call goes through.
    Closed,
    /// No call until the cool-down ends.
    Open,
    /// The cool-down is over: one probe is (or may be) on its way.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `jelou_bridge_jelou_breaker_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// The gate and the breaker, as /readyz shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateView {
    /// How long no new call may be made because Jelou asked to wait.
    pub held_for: Option<Duration>,
    pub breaker: BreakerState,
}

#[derive(Debug, Default)]
struct State {
    /// No new call before this (Jelou's `Retry-After`).
    held_until: Option<Instant>,
    /// Retryable failures in a row.
    failures: u32,
    /// The breaker is open until this; past it, half-open.
    open_until: Option<Instant>,
    /// When the half-open probe was let through; a probe that never reports back (its
    /// future dropped) is replaced after a cool-down.
    probe_since: Option<Instant>,
}

/// Shared by every call the client makes; see the module doc.
pub struct JelouGate {
    state: Mutex<State>,
    /// 0: no breaker.
    breaker_failures: u32,
    breaker_cooldown: Duration,
    rate: Option<DefaultDirectRateLimiter>,
    /// Owned by the gate: a call holds one permit from before it is sent until its answer.
    concurrency: Option<std::sync::Arc<Semaphore>>,
}

/// Leave to make one call. Report its result with [`JelouGate::record`].
pub struct Pass {
    probe: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl JelouGate {
    pub fn new(settings: &JelouSettings) -> JelouGate {
        JelouGate {
            state: Mutex::new(State::default()),
            breaker_failures: settings.breaker_failures,
            breaker_cooldown: settings.breaker_cooldown,
            rate: settings
                .max_rate
                .and_then(NonZeroU32::new)
                .map(|n| RateLimiter::direct(Quota::per_second(n))),
            concurrency: settings
                .max_concurrency
                .filter(|n| *n > 0)
                .map(|n| std::sync::Arc::new(Semaphore::new(n as usize))),
        }
    }

    /// How long no new call may be made because Jelou asked to wait; none when calls may go.
    pub fn held_for(&self) -> Option<Duration> {
        let state = self.lock();
        let until = state.held_until?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// The gate and the breaker as they stand; also sets their gauges.
    pub fn view(&self) -> GateView {
        let held_for = self.held_for();
        let breaker = breaker_state(&self.lock(), Instant::now());
        metrics::gauge!("jelou_bridge_jelou_gate_held_seconds")
            .set(held_for.map_or(0.0, |d| d.as_secs_f64()));
        metrics::gauge!("jelou_bridge_jelou_breaker_state").set(breaker.gauge());
        GateView { held_for, breaker }
    }

    /// Leave to call Jelou now, or why not: the gate is held ([`JelouError::HeldBack`]) or
    /// the breaker is open ([`JelouError::CircuitOpen`]); both at once, never after a wait.
    /// Only the caps wait (for a token, for a free slot), racing `shutdown`.
    pub async fn admit(&self, shutdown: &CancellationToken) -> Result<Pass, JelouError> {
        self.check(false)?;
        if let Some(rate) = &self.rate {
            tokio::select! {
                _ = rate.until_ready() => {}
                _ = shutdown.cancelled() => return Err(JelouError::Shutdown),
            }
        }
        let permit = match &self.concurrency {
            Some(slots) => tokio::select! {
                permit = slots.clone().acquire_owned() => permit.ok(),
                _ = shutdown.cancelled() => return Err(JelouError::Shutdown),
            },
            None => None,
        };
        // Checked again last: a 429 or a failure may have come back while this call waited.
        let probe = self.check(true)?;
        Ok(Pass {
            probe,
            _permit: permit,
        })
    }

    /// Whether a call may go now; `take_probe` claims the half-open probe (true: this call
    /// is it).
    fn check(&self, take_probe: bool) -> Result<bool, JelouError> {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(wait) = state
            .held_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
        {
            refused("held");
            return Err(JelouError::HeldBack(wait));
        }
        match breaker_state(&state, now) {
            BreakerState::Closed => Ok(false),
            BreakerState::Open => {
                refused("breaker");
                let left = state
                    .open_until
                    .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
                Err(JelouError::CircuitOpen(left))
            }
            BreakerState::HalfOpen => {
                let probing = state
                    .probe_since
                    .is_some_and(|since| now.duration_since(since) < self.breaker_cooldown);
                if probing {
                    refused("breaker");
                    return Err(JelouError::CircuitOpen(Duration::ZERO));
                }
                if take_probe {
                    state.probe_since = Some(now);
                    tracing::info!("Jelou circuit breaker half-open: one probe call goes through");
                }
                Ok(take_probe)
            }
        }
    }

    /// What one call's answer says about Jelou as a whole.
    pub fn record<T>(&self, pass: Pass, result: &Result<T, JelouError>) {
        let now = Instant::now();
        let mut state = self.lock();
        if pass.probe {
            state.probe_since = None;
        }
        let e = match result {
            Ok(_) => {
                self.close_breaker(&mut state);
                return;
            }
            Err(e) => e,
        };
        if let (Some(wait), Some(429 | 503)) = (e.retry_after(), e.http_status()) {
            let until = now + wait;
            if state.held_until.is_none_or(|h| h < until) {
                if state.held_until.is_none_or(|h| h <= now) {
                    tracing::warn!(
                        wait_ms = wait.as_millis() as u64,
                        status = e.http_status(),
                        "Jelou asked to wait: no new call until then"
                    );
                    metrics::counter!("jelou_bridge_jelou_gate_closed_total").increment(1);
                }
                state.held_until = Some(until);
            }
        }
        // A 429 is Jelou answering and pacing the bridge, not Jelou failing; an answer that
        // retrying cannot fix (a 4xx) shows Jelou up too.
        if !e.is_retryable() || e.http_status() == Some(429) {
            self.close_breaker(&mut state);
            return;
        }
        state.failures = state.failures.saturating_add(1);
        if self.breaker_failures == 0 {
            return;
        }
        if pass.probe || state.failures >= self.breaker_failures && state.open_until.is_none() {
            state.open_until = Some(now + self.breaker_cooldown);
            tracing::warn!(failures = state.failures, cooldown_ms = self.breaker_cooldown.as_millis() as u64, error = %e, "Jelou circuit breaker open: no call until the cool-down ends");
            metrics::counter!("jelou_bridge_jelou_breaker_opened_total").increment(1);
        }
    }

    fn close_breaker(&self, state: &mut State) {
        if state.open_until.is_some() {
            tracing::info!("Jelou circuit breaker closed: Jelou answers again");
        }
        state.failures = 0;
        state.open_until = None;
        state.probe_since = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every step: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for JelouGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JelouGate")
            .field("state", &*self.lock())
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("max_rate", &self.rate.is_some())
            .field("max_concurrency", &self.concurrency.is_some())
            .finish()
    }
}

fn breaker_state(state: &State, now: Instant) -> BreakerState {
    match state.open_until {
        None => BreakerState::Closed,
        Some(until) if now < until => BreakerState::Open,
        Some(_) => BreakerState::HalfOpen,
    }
}

fn refused(reason: &'static str) {
    metrics::counter!("jelou_bridge_jelou_calls_refused_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(failures: u32, cooldown: Duration) -> JelouGate {
        let mut s = crate::config::Settings::defaults().jelou;
        s.breaker_failures = failures;
        s.breaker_cooldown = cooldown;
        JelouGate::new(&s)
    }

    fn status(s: u16, retry_after: Option<Duration>) -> Result<(), JelouError> {
        Err(JelouError::Status {
            status: s,
            summary: String::new(),
            body: String::new(),
            retry_after,
        })
    }

    #[tokio::test]
    async fn a_retry_after_holds_every_call_until_it_passes() {
        let g = gate(0, Duration::from_secs(1));
        let stop = CancellationToken::new();
        let pass = g.admit(&stop).await.unwrap();
        g.record(pass, &status(429, Some(Duration::from_millis(200))));
        assert!(matches!(
            g.admit(&stop).await.err(),
            Some(JelouError::HeldBack(_))
        ));
        tokio::time::sleep(Duration::from_millis(220)).await;
        assert!(g.admit(&stop).await.is_ok());
    }

    #[tokio::test]
    async fn the_breaker_opens_after_a_run_of_failures_and_lets_one_probe_through() {
        let g = gate(3, Duration::from_millis(100));
        let stop = CancellationToken::new();
        for _ in 0..3 {
            let pass = g.admit(&stop).await.unwrap();
            g.record(pass, &status(500, None));
        }
        assert_eq!(g.view().breaker, BreakerState::Open);
        assert!(matches!(
            g.admit(&stop).await.err(),
            Some(JelouError::CircuitOpen(_))
        ));
        tokio::time::sleep(Duration::from_millis(120)).await;
        let probe = g.admit(&stop).await.unwrap();
        assert!(
            g.admit(&stop).await.is_err(),
            "only one probe while half-open"
        );
        g.record(probe, &status(503, None));
        assert_eq!(
            g.view().breaker,
            BreakerState::Open,
            "a failed probe reopens"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        let probe = g.admit(&stop).await.unwrap();
        g.record(probe, &Ok::<(), JelouError>(()));
        assert_eq!(g.view().breaker, BreakerState::Closed);
        assert!(g.admit(&stop).await.is_ok());
    }

    #[tokio::test]
    async fn a_success_or_a_rejection_resets_the_run() {
        let g = gate(2, Duration::from_secs(10));
        let stop = CancellationToken::new();
        for answer in [status(500, None), status(422, None), status(500, None)] {
            let pass = g.admit(&stop).await.unwrap();
            g.record(pass, &answer);
        }
        assert_eq!(g.view().breaker, BreakerState::Closed);
    }
}
