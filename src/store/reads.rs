//! Reading tickets: one by id or by conversation, and the lists the CLI (`tickets`), the
//! ownership decisions and `reconcile` page through. Nothing here writes.

use super::{Store, StoreError, TicketRecord, TicketState, COLUMNS};

impl Store {
    pub async fn get(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE ticket_id = $1"
        ))
        .bind(ticket_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn find_by_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE conversation_id = $1 ORDER BY updated_at DESC LIMIT 1"
        ))
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The other tickets of a bot + user whose conversation the bridge believes open
    /// (`active`, or `closing` and not closed yet): who owns that user's conversation.
    pub async fn open_tickets_of(
        &self,
        bot_id: &str,
        user_id: &str,
        except_ticket: &str,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE bot_id = $1 AND user_id = $2 \
             AND state IN ('active', 'closing') AND ticket_id <> $3 ORDER BY updated_at"
        ))
        .bind(bot_id)
        .bind(user_id)
        .bind(except_ticket)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tickets whose conversation the store believes open and that nobody works on now
    /// (`active`, or `closing` with no live holder), not updated since `before`, oldest
    /// first: what `reconcile` checks against Jelou.
    pub async fn open_tickets_before(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE conversation_id IS NOT NULL AND updated_at < $1 \
             AND (state = 'active' OR (state = 'closing' AND (owner IS NULL OR lease_until < $2))) \
             ORDER BY updated_at LIMIT $3"
        ))
        .bind(before)
        .bind(self.clock.now())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tickets, newest first, optionally in one state.
    pub async fn list(
        &self,
        state: Option<TicketState>,
        limit: i64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        let rows = match state {
            Some(s) => {
                sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tickets WHERE state = $1 ORDER BY updated_at DESC LIMIT $2"
            ))
                .bind(s.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM tickets ORDER BY updated_at DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows)
    }
}
