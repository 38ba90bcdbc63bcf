//! Agents' messages sent to a conversation (`sent_messages`): claimed before the send, so a
//! redelivered message is not sent twice.

use super::{MessageClaim, Store, StoreError};

impl Store {
    /// Takes an agent's message of a ticket for sending, unless it was sent already or
    /// another live process is sending it. A claim whose holder let go (parked) or died
    /// (lease expired) is taken again: its earlier send's answer was never recorded.
    pub async fn claim_message(
        &self,
        ticket_id: &str,
        message_id: &str,
        conversation_id: &str,
    ) -> Result<MessageClaim, StoreError> {
        let now = self.clock.now();
        let claimed = sqlx::query(
            "INSERT INTO sent_messages (ticket_id, message_id, conversation_id, state, owner, lease_until, created_at, updated_at) \
             VALUES ($1, $2, $3, 'sending', $4, $5, $6, $6) \
             ON CONFLICT (ticket_id, message_id) DO UPDATE SET owner = excluded.owner, \
                 lease_until = excluded.lease_until, updated_at = excluded.updated_at \
             WHERE sent_messages.state = 'sending' AND (sent_messages.owner IS NULL \
                 OR sent_messages.owner = excluded.owner OR sent_messages.lease_until < $6) \
             RETURNING message_id",
        )
        .bind(ticket_id)
        .bind(message_id)
        .bind(conversation_id)
        .bind(&self.instance)
        .bind(now + self.lease_ms())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(MessageClaim::Claimed);
        }
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT state, conversation_id FROM sent_messages WHERE ticket_id = $1 AND message_id = $2",
        )
        .bind(ticket_id)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((state, conversation_id)) if state == "sent" => {
                MessageClaim::Sent { conversation_id }
            }
            _ => MessageClaim::Busy,
        })
    }

    /// Jelou took the message.
    pub async fn finish_message(
        &self,
        ticket_id: &str,
        message_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sent_messages SET state = 'sent', owner = NULL, lease_until = NULL, updated_at = $3 \
             WHERE ticket_id = $1 AND message_id = $2",
        )
        .bind(ticket_id)
        .bind(message_id)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets go of a message: `forget` when Jelou refused it (nothing was sent, and a replay
    /// of the dead letter may try again), else only the hold (it may have been sent).
    pub async fn release_message(
        &self,
        ticket_id: &str,
        message_id: &str,
        forget: bool,
    ) -> Result<(), StoreError> {
        let sql = if forget {
            "DELETE FROM sent_messages WHERE ticket_id = $1 AND message_id = $2 AND state = 'sending' AND owner = $3"
        } else {
            "UPDATE sent_messages SET owner = NULL, lease_until = NULL \
             WHERE ticket_id = $1 AND message_id = $2 AND state = 'sending' AND owner = $3"
        };
        sqlx::query(sql)
            .bind(ticket_id)
            .bind(message_id)
            .bind(&self.instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
