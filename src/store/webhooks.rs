//! Jelou's webhook deliveries already forwarded (`webhook_events`): the dedupe that keeps a
//! retried delivery from reaching the bus twice, pruned by age.

use std::time::Duration;

use super::{Store, StoreError, WebhookClaim};

impl Store {
    /// Claims a webhook delivery for forwarding. A claim left unpublished for `stale_after`
    /// (its process died before the broker confirmed) may be taken again.
    pub async fn claim_webhook(
        &self,
        key: &str,
        stale_after: Duration,
    ) -> Result<WebhookClaim, StoreError> {
        let now = self.clock.now();
        let claimed = sqlx::query(
            "INSERT INTO webhook_events (event_key, received_at, published) VALUES ($1, $2, 0) \
             ON CONFLICT (event_key) DO UPDATE SET received_at = excluded.received_at \
             WHERE webhook_events.published = 0 AND webhook_events.received_at < $3 \
             RETURNING event_key",
        )
        .bind(key)
        .bind(now)
        .bind(now - stale_after.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(WebhookClaim::Claimed);
        }
        let published: Option<i64> =
            sqlx::query_scalar("SELECT published FROM webhook_events WHERE event_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match published {
            Some(0) => WebhookClaim::InFlight,
            _ => WebhookClaim::Published,
        })
    }

    /// The claimed delivery was forwarded: later deliveries of it are duplicates.
    pub async fn mark_webhook_published(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_events SET published = 1 WHERE event_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a webhook delivery that could not be forwarded, so Jelou's retry gets through.
    pub async fn forget_webhook(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_events WHERE event_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes at most `limit` webhook deliveries received more than `older_than` ago (on
    /// the store's clock); how many went. Bounded, so one prune never holds the table long.
    pub async fn prune_webhooks(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let cutoff = self.clock.now() - older_than.as_millis().min(i64::MAX as u128) as i64;
        let done = sqlx::query(
            "DELETE FROM webhook_events WHERE event_key IN \
             (SELECT event_key FROM webhook_events WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Webhook deliveries the dedupe table holds now.
    pub async fn webhook_events(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
            .fetch_one(&self.pool)
            .await?)
    }
}
