//! `[shutdown]`: how long a stopping process lets its in-flight work finish.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[shutdown]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ShutdownSettings {
    /// After SIGINT/SIGTERM, how long in-flight deliveries get to finish before the rest go
    /// back to the queue (a duration).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}
