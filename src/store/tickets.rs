//! A ticket's lifecycle in the store: the claim before a start or close call and the record
//! of its answer, each a single atomic statement (the claim and finish of a start go through
//! [`super::batch`]), and what Jelou's webhooks say about its conversation.

use super::{CloseClaim, StartClaim, Store, StoreError, TicketRecord, TicketState, COLUMNS};

impl Store {
    /// Takes the ticket for a start call, unless it was started already or another live
    /// process is starting it. A ticket whose start failed for good, or whose starter let go
    /// (parked) or died (lease expired), can be taken again.
    pub async fn claim_start(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
    ) -> Result<StartClaim, StoreError> {
        self.claim_start_traced(ticket_id, bot_id, user_id, None)
            .await
    }

    /// [`Store::claim_start`], keeping `traceparent` as the ticket's trace when it has none
    /// yet (Jelou's webhooks about the ticket join it; `tickets show` names it).
    pub async fn claim_start_traced(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
        traceparent: Option<&str>,
    ) -> Result<StartClaim, StoreError> {
        // Insert, or take over a row that failed for good or whose holder let go or died;
        // the statement is in `batch` (shared with concurrent claims).
        if let Some(taken) = self
            .writes
            .claim(ticket_id, bot_id, user_id, traceparent)
            .await?
        {
            return Ok(StartClaim::Claimed {
                learned_conversation: taken.learned_conversation,
            });
        }
        let record = self
            .get(ticket_id)
            .await?
            .ok_or_else(|| StoreError::vanished(ticket_id, "while claiming it"))?;
        Ok(match record.state {
            TicketState::Starting => StartClaim::Busy(record),
            _ => StartClaim::AlreadyStarted(record),
        })
    }

    /// Records the conversation Jelou opened. Returns the ticket as stored afterwards: when
    /// another process recorded a conversation first, that one stands.
    pub async fn finish_start(
        &self,
        ticket_id: &str,
        conversation_id: &str,
    ) -> Result<TicketRecord, StoreError> {
        // Only a row still `starting` is updated (the statement is in `batch`).
        if let Some(record) = self.writes.finish(ticket_id, conversation_id).await? {
            return Ok(record);
        }
        self.get(ticket_id)
            .await?
            .ok_or_else(|| StoreError::vanished(ticket_id, "after its start"))
    }

    /// The start failed for good.
    pub async fn fail_start(&self, ticket_id: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = 'failed', owner = NULL, lease_until = NULL, last_error = $2, \
             updated_at = $3 WHERE ticket_id = $1 AND state = 'starting'",
        )
        .bind(ticket_id)
        .bind(error)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets go of a ticket without a result (its message is parked or goes back to the
    /// queue): the state stays, so later events of the ticket keep waiting for it.
    pub async fn release(&self, ticket_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET owner = NULL, lease_until = NULL, last_error = COALESCE($3, last_error), \
             updated_at = $4 WHERE ticket_id = $1 AND owner = $2",
        )
        .bind(ticket_id)
        .bind(&self.instance)
        .bind(error)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes an active ticket for a close call.
    pub async fn claim_close(&self, ticket_id: &str) -> Result<CloseClaim, StoreError> {
        let now = self.clock.now();
        let claimed: Option<TicketRecord> = sqlx::query_as(&format!(
            "UPDATE tickets SET state = 'closing', owner = $2, lease_until = $3, updated_at = $4 \
             WHERE ticket_id = $1 AND (state = 'active' OR (state = 'closing' AND (owner IS NULL \
                 OR owner = $2 OR lease_until < $4))) \
             RETURNING {COLUMNS}"
        ))
        .bind(ticket_id)
        .bind(&self.instance)
        .bind(now + self.lease_ms())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(record) = claimed {
            return Ok(CloseClaim::Claimed(record));
        }
        Ok(match self.get(ticket_id).await? {
            None => CloseClaim::Unknown,
            Some(r) => match r.state {
                TicketState::Closed => CloseClaim::AlreadyClosed(r),
                TicketState::Failed => CloseClaim::StartFailed(r),
                _ => CloseClaim::Pending(r),
            },
        })
    }

    /// Takes a ticket the store has never seen for a close, with the ids its message gave.
    pub async fn claim_close_unknown(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
    ) -> Result<CloseClaim, StoreError> {
        let now = self.clock.now();
        let inserted: Option<TicketRecord> = sqlx::query_as(&format!(
            "INSERT INTO tickets (ticket_id, bot_id, user_id, state, owner, lease_until, attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, 'closing', $4, $5, 0, $6, $6) ON CONFLICT (ticket_id) DO NOTHING \
             RETURNING {COLUMNS}"
        ))
        .bind(ticket_id)
        .bind(bot_id)
        .bind(user_id)
        .bind(&self.instance)
        .bind(now + self.lease_ms())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(r) => Ok(CloseClaim::Claimed(r)),
            None => self.claim_close(ticket_id).await,
        }
    }

    /// Records a ticket the store has never seen as resolved, without bot or user (its
    /// message named none): a later `ticket.opened` for it then makes no start call. Unknown
    /// when recorded; otherwise the claim of the row that appeared meanwhile.
    pub async fn resolve_unstarted(&self, ticket_id: &str) -> Result<CloseClaim, StoreError> {
        let now = self.clock.now();
        let inserted = sqlx::query(
            "INSERT INTO tickets (ticket_id, state, ended_reason, attempts, created_at, updated_at) \
             VALUES ($1, 'closed', 'never_started', 0, $2, $2) ON CONFLICT (ticket_id) DO NOTHING",
        )
        .bind(ticket_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(CloseClaim::Unknown);
        }
        self.claim_close(ticket_id).await
    }

    pub async fn finish_close(
        &self,
        ticket_id: &str,
        conversation_id: Option<&str>,
        ended_reason: Option<&str>,
    ) -> Result<TicketRecord, StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = 'closed', conversation_id = COALESCE(conversation_id, $2), \
             ended_reason = COALESCE($3, ended_reason), owner = NULL, lease_until = NULL, last_error = NULL, \
             updated_at = $4 WHERE ticket_id = $1",
        )
        .bind(ticket_id)
        .bind(conversation_id)
        .bind(ended_reason)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        self.get(ticket_id)
            .await?
            .ok_or_else(|| StoreError::vanished(ticket_id, "after its close"))
    }

    /// The close failed for good: the conversation stays as it was.
    pub async fn fail_close(&self, ticket_id: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = CASE WHEN conversation_id IS NULL THEN 'failed' ELSE 'active' END, \
             owner = NULL, lease_until = NULL, last_error = $2, updated_at = $3 \
             WHERE ticket_id = $1 AND state = 'closing'",
        )
        .bind(ticket_id)
        .bind(error)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jelou said a conversation started for this ticket (its webhook), in this room.
    pub async fn note_conversation_started(
        &self,
        ticket_id: &str,
        conversation_id: &str,
        room_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET conversation_id = COALESCE(conversation_id, $2), \
             room_id = CASE WHEN conversation_id IS NULL OR conversation_id = $2 \
                 THEN COALESCE($3, room_id) ELSE room_id END, updated_at = $4 \
             WHERE ticket_id = $1",
        )
        .bind(ticket_id)
        .bind(conversation_id)
        .bind(room_id)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The room of a conversation, learned from Jelou (the read of the conversation).
    pub async fn note_room(&self, conversation_id: &str, room_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET room_id = $2, updated_at = $3 WHERE conversation_id = $1 AND room_id IS NULL",
        )
        .bind(conversation_id)
        .bind(room_id)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jelou said a conversation was closed (say by an operator): a later `ticket.resolved`
    /// then makes no close call.
    pub async fn note_conversation_closed(
        &self,
        conversation_id: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = 'closed', ended_reason = COALESCE($2, ended_reason), \
             updated_at = $3 WHERE conversation_id = $1 AND state IN ('active', 'closing')",
        )
        .bind(conversation_id)
        .bind(reason)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
