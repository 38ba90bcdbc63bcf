//! Time, in one place: this host's wall clock ([`now_ms`]) and the clock leases are kept on
//! ([`Clock`]), which follows the store's database and which tests can set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// This host's wall clock, in ms since the epoch (0 before 1970, which no host runs at).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The clock leases are kept on: the database's. Replicas whose own clocks disagree (one
/// runs 30 s fast, say) would otherwise take over each other's live leases. The offset
/// between this host's clock and the database's is measured at connect and again at each
/// lease renewal (PostgreSQL, [`crate::store::Store::sync_clock`]); an embedded SQLite store
/// shares this host's clock. Clones share one offset.
#[derive(Clone, Default, Debug)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// A clock `offset_ms` ahead of this host's (behind when negative): what a store whose
    /// database runs fast or slow sees, and how tests put a replica's clock off.
    pub fn offset_by(offset_ms: i64) -> Self {
        Clock {
            offset_ms: Arc::new(AtomicI64::new(offset_ms)),
        }
    }

    /// Now on this clock, in ms since the epoch.
    pub fn now(&self) -> i64 {
        now_ms().saturating_add(self.offset_ms())
    }

    /// How far this clock is ahead of this host's, in ms.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Sets the offset (a new measurement); returns the previous one.
    pub fn set_offset_ms(&self, offset_ms: i64) -> i64 {
        self.offset_ms.swap(offset_ms, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_moves_now_and_is_shared_by_clones() {
        let clock = Clock::offset_by(30_000);
        let copy = clock.clone();
        let host = now_ms();
        let ahead = copy.now() - host;
        assert!((30_000..31_000).contains(&ahead), "{ahead}");
        assert_eq!(clock.set_offset_ms(-5_000), 30_000);
        let behind = copy.now() - now_ms();
        assert!((-5_000..-4_000).contains(&behind), "{behind}");
    }
}
