//! `[retry]`: how a failed Jelou call is tried again, first in process, then by parking the
//! message in delay queues, until the total budget runs out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::serde_helpers::{durations, durations_out};
use super::ConfigError;

/// The `[retry]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetrySettings {
    /// Tries of one Jelou call in process (a count, the first one included) before parking.
    pub max_attempts: u32,
    /// First backoff between in-process tries (a duration; full jitter below it).
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Longest backoff between in-process tries (a duration).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Growth of the backoff from one try to the next (a multiplier, at least 1.0).
    pub factor: f32,
    /// Longest `Retry-After` honoured in process (a duration); a longer one parks the message.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Delay-queue tiers a parked message waits in (durations), one per park, the last repeats.
    #[serde(deserialize_with = "durations", serialize_with = "durations_out")]
    pub delays: Vec<Duration>,
    /// Time since a message was first seen after which it fails as `retries_exhausted`
    /// (a duration).
    #[serde(with = "humantime_serde")]
    pub total_budget: Duration,
}

impl RetrySettings {
    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("retry.max_attempts", "must be at least 1"));
        }
        if self.delays.is_empty() || self.delays.iter().any(Duration::is_zero) {
            return Err(ConfigError::new(
                "retry.delays",
                "must list at least one non-zero delay",
            ));
        }
        if self.factor.is_nan() || self.factor < 1.0 {
            return Err(ConfigError::new("retry.factor", "must be at least 1.0"));
        }
        Ok(())
    }
}
