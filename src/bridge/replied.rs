//! `ticket.reply`: an agent's reply sent to the customer through the ticket's conversation,
//! once per `messageId`.

use std::time::Instant;

use tracing::{error, info, warn};

use super::decision::{failure, invalid, park, park_store, rejected, Decision, History};
use super::Bridge;
use crate::events::{FailureReason, Outcome};
use crate::jelou::{Endpoint, JelouError};
use crate::store::{MessageClaim, TicketState};
use crate::ticket::{message_request, Recipient, TicketReply};

impl Bridge {
    /// An agent's reply: into the room of the ticket's active conversation, once per
    /// `messageId`. Waits (in order, behind the ticket's earlier events) for a start still
    /// under way; a ticket with no active conversation ends as `ticket.failed`.
    pub(super) async fn replied(&self, t: &TicketReply, past: &History) -> Decision {
        let waited = Instant::now();
        let record = loop {
            let record = match self.store.get(&t.ticket_id).await {
                Ok(r) => r,
                Err(e) => return park_store("message", e, past),
            };
            let patience_left = waited.elapsed() < self.in_process_patience();
            let no_conversation = |reason, error: &str| {
                failure(&t.ticket_id, "message", reason, error, past.prior_attempts)
            };
            match record {
                Some(r) if r.state == TicketState::Active && r.conversation_id.is_some() => {
                    break r
                }
                Some(r) if matches!(r.state, TicketState::Closing | TicketState::Closed) => {
                    return no_conversation(
                        FailureReason::AlreadyResolved,
                        "the ticket was resolved: its conversation is closed",
                    )
                }
                Some(r) if r.state == TicketState::Failed => {
                    return no_conversation(
                        FailureReason::UnknownTicket,
                        "the ticket has no active conversation: its start failed",
                    )
                }
                Some(_) if !patience_left => {
                    return park(
                        "message",
                        "waiting for the ticket's start to complete".into(),
                        None,
                        past.prior_attempts,
                        None,
                    )
                }
                None if !patience_left => {
                    if let Some(parking) = self.still_expecting_the_open("message", past) {
                        return parking;
                    }
                    return no_conversation(
                        FailureReason::UnknownTicket,
                        &format!(
                            "the bridge has no conversation for this ticket (waited {})",
                            humantime::format_duration(self.settings.store.unknown_ticket_wait)
                        ),
                    );
                }
                _ => {
                    if !self.pause().await {
                        return Decision::Requeue;
                    }
                }
            }
        };
        let conversation_id = record.conversation_id.clone().unwrap_or_default();
        let sent = |conversation_id: &str| {
            Decision::Done(Outcome::message_sent(
                &t.ticket_id,
                conversation_id,
                &t.message_id,
            ))
        };
        match self
            .store
            .claim_message(&t.ticket_id, &t.message_id, &conversation_id)
            .await
        {
            Err(e) => return park_store("message", e, past),
            Ok(MessageClaim::Sent { conversation_id: c }) => {
                info!("message already sent: no second send");
                metrics::counter!("jelou_bridge_duplicates_absorbed_total", "event" => "ticket.reply").increment(1);
                return sent(c.as_deref().unwrap_or(&conversation_id));
            }
            Ok(MessageClaim::Busy) => {
                return park(
                    "message",
                    "another bridge process is sending this message".into(),
                    None,
                    past.prior_attempts,
                    None,
                )
            }
            Ok(MessageClaim::Claimed) => {}
        }
        let outcome = self.send_reply(t, &record, &conversation_id, past).await;
        let forget = match &outcome {
            // Sent: recorded below. Refused for good: nothing was sent, forget the claim.
            Decision::Done(_) => None,
            Decision::Failed(_) => Some(true),
            _ => Some(false),
        };
        match forget {
            None => {
                if let Err(e) = self.store.finish_message(&t.ticket_id, &t.message_id).await {
                    // The customer has the message; a redelivery could send it again.
                    error!(error = %e, "message sent but the store could not record it");
                }
            }
            Some(forget) => {
                if let Err(e) = self
                    .store
                    .release_message(&t.ticket_id, &t.message_id, forget)
                    .await
                {
                    warn!(error = %e, "could not release the message (its lease will expire)");
                }
            }
        }
        outcome
    }

    /// Learns the room if needed, then sends; what the send leads to.
    pub(super) async fn send_reply(
        &self,
        t: &TicketReply,
        record: &crate::store::TicketRecord,
        conversation_id: &str,
        past: &History,
    ) -> Decision {
        let mut attempts = past.prior_attempts;
        let room_id = match &record.room_id {
            Some(room) => room.clone(),
            None => {
                // The conversation.start webhook did not reach us (yet): ask Jelou.
                let read = self
                    .policy
                    .run(Endpoint::Conversation, &self.shutdown, || {
                        self.jelou.conversation(conversation_id)
                    })
                    .await;
                attempts += read.attempts;
                let conversation = match read.result {
                    Ok(c) => c,
                    Err(e) => return self.message_failed(t, e, attempts),
                };
                if conversation.is_closed() {
                    return failure(
                        &t.ticket_id,
                        "message",
                        FailureReason::AlreadyResolved,
                        &format!(
                            "the ticket's conversation {conversation_id} is closed in Jelou ({})",
                            conversation
                                .ended_reason
                                .as_deref()
                                .unwrap_or("no reason given")
                        ),
                        attempts,
                    );
                }
                let Some(room) = conversation.room_id else {
                    return failure(
                        &t.ticket_id,
                        "message",
                        FailureReason::Rejected,
                        &format!("Jelou names no room for conversation {conversation_id}"),
                        attempts,
                    );
                };
                if let Err(e) = self.store.note_room(conversation_id, &room).await {
                    warn!(error = %e, "could not record the conversation's room");
                }
                room
            }
        };
        let (Some(bot_id), Some(user_id)) = (record.bot_id.as_deref(), record.user_id.as_deref())
        else {
            return invalid(
                &t.ticket_id,
                "message",
                "the store knows no bot and user for this ticket",
                past,
            );
        };
        let project_id = self
            .settings
            .jelou
            .project_id
            .as_deref()
            .unwrap_or_default();
        let req = message_request(
            t,
            Recipient {
                project_id,
                room_id: &room_id,
                bot_id,
                user_id,
            },
        );
        let attempted = self
            .policy
            .run(Endpoint::Message, &self.shutdown, || {
                self.jelou.send_message(&req)
            })
            .await;
        attempts += attempted.attempts;
        match attempted.result {
            Ok(()) => {
                info!(conversation_id, room_id = %room_id, attempts, "message sent");
                Decision::Done(Outcome::message_sent(
                    &t.ticket_id,
                    conversation_id,
                    &t.message_id,
                ))
            }
            Err(e) => self.message_failed(t, e, attempts),
        }
    }

    /// A send (or the read before it) that did not succeed.
    pub(super) fn message_failed(&self, t: &TicketReply, e: JelouError, attempts: u32) -> Decision {
        match e {
            JelouError::Shutdown => Decision::Requeue,
            e if e.is_retryable() => park(
                "message",
                e.to_string(),
                e.http_status(),
                attempts,
                e.retry_after(),
            ),
            e => rejected("message", &t.ticket_id, &e, attempts),
        }
    }
}
