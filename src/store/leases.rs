//! Which process works on a ticket: a lease in its row (`owner`, `lease_until`), renewed
//! while the process holds the ticket ([`Hold`]), and kept on the database's clock so that
//! replicas whose own clocks disagree do not take over each other's live leases.

use std::sync::{Arc, Mutex};

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;

use super::{now_ms, Store, StoreError};

/// While alive, its ticket counts as in flight in this process: its lease is renewed.
pub struct Hold {
    held: Arc<Mutex<HashMap<String, usize>>>,
    ticket_id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let EntryRef::Occupied(mut n) = held.entry_ref(self.ticket_id.as_str()) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

impl Store {
    /// Measures the offset between this host's clock and the database's (PostgreSQL).
    pub async fn sync_clock(&self) -> Result<(), StoreError> {
        if super::sqlite::is_sqlite(&self.pool) {
            return Ok(());
        }
        // This host's own clock, not the store's (which already carries the offset).
        let before = now_ms();
        let db: i64 = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await?;
        let after = now_ms();
        let offset = db - (before + after) / 2;
        let previous = self.clock.set_offset_ms(offset);
        if offset.abs() > 2000 && (previous - offset).abs() > 1000 {
            tracing::warn!(
                offset_ms = offset,
                "this host's clock differs from the store's; leases follow the store's clock"
            );
        }
        Ok(())
    }

    /// Marks `ticket_id` as in flight in this process until the hold is dropped: its lease
    /// is renewed meanwhile, and only then.
    pub fn hold(&self, ticket_id: &str) -> Hold {
        *self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry_ref(ticket_id)
            .or_default() += 1;
        Hold {
            held: self.held.clone(),
            ticket_id: ticket_id.to_string(),
        }
    }

    /// Extends the lease of every ticket in flight in this process (see [`Store::hold`]);
    /// a ticket this process holds in the store but no longer works on (a write that failed
    /// after Jelou answered, say) is left to expire, so another pass can take it.
    pub async fn renew_leases(&self) -> Result<u64, StoreError> {
        let held: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut renewed = 0;
        for chunk in held.chunks(500) {
            let sql = renew_sql(chunk.len());
            let mut query = sqlx::query(&sql)
                .bind(self.clock.now() + self.lease_ms())
                .bind(&self.instance);
            for t in chunk {
                query = query.bind(t);
            }
            renewed += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(renewed)
    }
}

/// Extends the leases of `n` tickets named by key (`$3`…), those this process (`$2`) still
/// holds, to `$1`. The rows are found by primary key: no index on `owner` serves it.
pub(crate) fn renew_sql(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("${}", i + 3)).collect();
    format!(
        "UPDATE tickets SET lease_until = $1 WHERE owner = $2 \
         AND state IN ('starting', 'closing') AND ticket_id IN ({})",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use crate::clock::Clock;
    use crate::config::Settings;
    use crate::store::{StartClaim, Store};

    /// Two processes on one embedded store; the second one's clock is `offset_ms` ahead.
    async fn two_processes(offset_ms: i64) -> (Store, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut settings = Settings::defaults().store;
        settings.url = secrecy::SecretString::from(format!(
            "sqlite://{}",
            dir.path().join("store.db").display()
        ));
        settings.lease = std::time::Duration::from_secs(30);
        let first = Store::connect(&settings, "first".into()).await.unwrap();
        let second =
            Store::connect_with_clock(&settings, "second".into(), Clock::offset_by(offset_ms))
                .await
                .unwrap();
        (first, second, dir)
    }

    #[tokio::test]
    async fn a_live_lease_keeps_another_process_out() {
        let (first, second, _dir) = two_processes(29_000).await;
        let claim = first.claim_start("T-1", "BOT", "U-1").await.unwrap();
        assert!(matches!(claim, StartClaim::Claimed { .. }), "{claim:?}");
        let other = second.claim_start("T-1", "BOT", "U-1").await.unwrap();
        assert!(matches!(other, StartClaim::Busy(_)), "{other:?}");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over() {
        // 31 s later on the second process's clock: the first one's 30 s lease has run out
        // (it crashed, or stopped renewing), so the ticket is not stuck for good.
        let (first, second, _dir) = two_processes(31_000).await;
        let claim = first.claim_start("T-1", "BOT", "U-1").await.unwrap();
        assert!(matches!(claim, StartClaim::Claimed { .. }), "{claim:?}");
        let other = second.claim_start("T-1", "BOT", "U-1").await.unwrap();
        assert!(matches!(other, StartClaim::Claimed { .. }), "{other:?}");
    }

    /// The renewal finds its tickets by primary key, on a store of many held tickets.
    #[tokio::test]
    async fn the_renewal_finds_its_tickets_by_key() {
        let (first, _second, dir) = two_processes(0).await;
        for i in 0..200 {
            first
                .claim_start(&format!("T-{i}"), "BOT", &format!("U-{i}"))
                .await
                .unwrap();
        }
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        let mut explain = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::renew_sql(3)))
            .unwrap();
        let plan: Vec<String> = explain
            .query_map(rusqlite::params![0, "first", "T-1", "T-2", "T-3"], |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING INDEX sqlite_autoindex_tickets_1 (ticket_id=?)"),
            "the renewal should find its tickets by key:\n{plan}"
        );
    }
}
