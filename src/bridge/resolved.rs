//! `ticket.resolved`: close the ticket's own conversation (Jelou closes by bot + user), once,
//! never another ticket's.

use std::time::Instant;

use tracing::{error, info, warn};

use super::decision::{
    failure, invalid, park, park_store, park_store_attempts, Decision, History, NEVER_STARTED,
};
use super::Bridge;
use crate::events::{Failure, FailureReason, Outcome};
use crate::jelou::client::Conversation;
use crate::jelou::{Endpoint, JelouError};
use crate::ownership::{self, ClosePlan};
use crate::store::{CloseClaim, TicketState, SUPERSEDED};
use crate::ticket::{close_request, TicketResolved};

impl Bridge {
    pub(super) async fn resolved(&self, t: &TicketResolved, past: &History) -> Decision {
        let waited = Instant::now();
        let record = loop {
            let claim = match self.store.claim_close(&t.ticket_id).await {
                Ok(c) => c,
                Err(e) => return park_store("close", e, past),
            };
            let patience_left = waited.elapsed() < self.in_process_patience();
            match claim {
                CloseClaim::Claimed(r) => break r,
                CloseClaim::AlreadyClosed(r) => {
                    info!(
                        conversation_id = r.conversation_id.as_deref(),
                        "ticket already closed: no second close call"
                    );
                    metrics::counter!("jelou_bridge_duplicates_absorbed_total", "event" => "ticket.resolved").increment(1);
                    return Decision::Done(Outcome::closed(
                        &t.ticket_id,
                        r.conversation_id.as_deref(),
                        r.ended_reason.as_deref(),
                    ));
                }
                CloseClaim::StartFailed(r) => {
                    return failure(
                        &t.ticket_id,
                        "close",
                        FailureReason::UnknownTicket,
                        &format!(
                            "the ticket's conversation was never started ({})",
                            r.last_error.as_deref().unwrap_or("its start failed")
                        ),
                        past.prior_attempts,
                    );
                }
                CloseClaim::Pending(r) if !patience_left => {
                    let what = if r.state == TicketState::Starting {
                        "waiting for the ticket's start to complete"
                    } else {
                        "another bridge process is closing this ticket"
                    };
                    return park("close", what.into(), None, past.prior_attempts, None);
                }
                CloseClaim::Unknown if !patience_left => {
                    if let Some(parking) = self.still_expecting_the_open("close", past) {
                        return parking;
                    }
                    let bot = t
                        .bot_id
                        .as_deref()
                        .or(self.settings.jelou.bot_id.as_deref());
                    let claimed = match (bot, t.user_id.as_deref()) {
                        (Some(bot), Some(user)) => {
                            self.store
                                .claim_close_unknown(&t.ticket_id, bot, user)
                                .await
                        }
                        // Recorded as resolved all the same: a later ticket.opened for it
                        // makes no start call.
                        _ => self.store.resolve_unstarted(&t.ticket_id).await,
                    };
                    match claimed {
                        Ok(CloseClaim::Claimed(r)) => break r,
                        Ok(CloseClaim::Unknown) => {
                            return failure(
                                &t.ticket_id,
                                "close",
                                FailureReason::UnknownTicket,
                                &format!(
                                    "the bridge never started this ticket and the message gives no userId/botId (waited {})",
                                    humantime::format_duration(self.settings.store.unknown_ticket_wait)
                                ),
                                past.prior_attempts,
                            )
                        }
                        Ok(_) => continue,
                        Err(e) => return park_store("close", e, past),
                    }
                }
                CloseClaim::Pending(_) | CloseClaim::Unknown => {
                    if !self.pause().await {
                        return Decision::Requeue;
                    }
                }
            }
        };
        let req = match close_request(
            t,
            record.bot_id.as_deref(),
            record.user_id.as_deref(),
            &self.settings,
        ) {
            Ok(req) => req,
            Err(missing) => {
                let _ = self.store.fail_close(&t.ticket_id, &missing.0).await;
                return invalid(&t.ticket_id, "close", &missing.0, past);
            }
        };
        let _turn = self.conversation_turn(&req.bot_id, &req.user_id).await;
        let mut attempts = past.prior_attempts;
        let others = match self
            .store
            .open_tickets_of(&req.bot_id, &req.user_id, &t.ticket_id)
            .await
        {
            Ok(others) => others,
            Err(e) => {
                self.release(&t.ticket_id, Some(&e.to_string())).await;
                return park_store("close", e, past);
            }
        };
        match ownership::plan_close(&record, &others) {
            ClosePlan::Call => {}
            ClosePlan::Shared { conversation_id } => {
                info!(conversation_id = %conversation_id, "another open ticket shares this conversation: closed without a call");
                return self
                    .record_close(t, Some(&conversation_id), Some(ownership::SHARED), attempts)
                    .await;
            }
            ClosePlan::OwnedByAnother { ticket_id } => {
                let error = format!(
                    "the bridge never started this ticket, and the conversation of user {} with bot {} belongs to ticket {ticket_id}: it is not closed",
                    req.user_id, req.bot_id
                );
                return self
                    .resolved_without_conversation(t, &error, attempts)
                    .await;
            }
            ClosePlan::Verify { conversation_id } => {
                match self
                    .read_conversation(&conversation_id, &mut attempts)
                    .await
                {
                    Ok(Some(c)) if !c.is_closed() => {}
                    Ok(found) => {
                        // Replaced or closed in Jelou meanwhile: nothing to close.
                        let reason = found
                            .and_then(|c| c.ended_reason)
                            .unwrap_or_else(|| SUPERSEDED.to_string());
                        return self
                            .record_close(t, Some(&conversation_id), Some(&reason), attempts)
                            .await;
                    }
                    Err(e) => {
                        return self
                            .unsuccessful(Endpoint::Close, &t.ticket_id, e, attempts)
                            .await
                    }
                }
            }
        }
        let attempted = self
            .policy
            .run(Endpoint::Close, &self.shutdown, || self.jelou.close(&req))
            .await;
        attempts += attempted.attempts;
        let own = record.conversation_id.as_deref();
        match attempted.result {
            Ok(closed) => {
                if let Some(other) =
                    ownership::ended_other_conversation(own, closed.conversation_id.as_deref())
                {
                    return self.closed_another(t, own, other, attempts).await;
                }
                let conversation_id = own.or(closed.conversation_id.as_deref());
                self.record_close(t, conversation_id, closed.ended_reason.as_deref(), attempts)
                    .await
            }
            Err(e) if e.http_status() == Some(404) => match own {
                // "No active conversation for this bot and user": did an earlier close of
                // this ticket (its answer lost, or the process killed before recording it)
                // already end it? Jelou's view of the conversation settles it.
                Some(own) => self.settle_by_reading(t, own, e, attempts).await,
                None => {
                    let error =
                        format!("Jelou has no active conversation for this bot and user: {e}");
                    self.resolved_without_conversation(t, &error, attempts)
                        .await
                }
            },
            Err(e) => {
                self.unsuccessful(Endpoint::Close, &t.ticket_id, e, attempts)
                    .await
            }
        }
    }

    /// A close answered 404 for a ticket whose conversation is known: closed in Jelou → the
    /// ticket is closed (once); still active → try again later; unknown to Jelou → rejected.
    pub(super) async fn settle_by_reading(
        &self,
        t: &TicketResolved,
        conversation_id: &str,
        not_found: JelouError,
        mut attempts: u32,
    ) -> Decision {
        match self.read_conversation(conversation_id, &mut attempts).await {
            Ok(Some(c)) if c.is_closed() => {
                info!(
                    conversation_id,
                    ended_reason = c.ended_reason.as_deref(),
                    "the close found no active conversation: Jelou says this one is closed"
                );
                metrics::counter!("jelou_bridge_closes_settled_by_read_total").increment(1);
                self.record_close(
                    t,
                    Some(conversation_id),
                    c.ended_reason.as_deref(),
                    attempts,
                )
                .await
            }
            Ok(Some(_)) => {
                let error = format!("Jelou answered 404 to the close but reads conversation {conversation_id} as active");
                self.release(&t.ticket_id, Some(&error)).await;
                park("close", error, Some(404), attempts, None)
            }
            Ok(None) => {
                self.unsuccessful(Endpoint::Close, &t.ticket_id, not_found, attempts)
                    .await
            }
            Err(e) => {
                self.unsuccessful(Endpoint::Close, &t.ticket_id, e, attempts)
                    .await
            }
        }
    }

    /// Jelou's view of a conversation, retried like every call; None when Jelou does not
    /// know it (404).
    pub(super) async fn read_conversation(
        &self,
        conversation_id: &str,
        attempts: &mut u32,
    ) -> Result<Option<Conversation>, JelouError> {
        let read = self
            .policy
            .run(Endpoint::Conversation, &self.shutdown, || {
                self.jelou.conversation(conversation_id)
            })
            .await;
        *attempts += read.attempts;
        match read.result {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.http_status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the close and publishes `conversation.closed`; a store that cannot record it
    /// parks the message (the next pass finds the conversation closed in Jelou).
    pub(super) async fn record_close(
        &self,
        t: &TicketResolved,
        conversation_id: Option<&str>,
        ended_reason: Option<&str>,
        attempts: u32,
    ) -> Decision {
        let stored = self
            .store_retry(|| {
                self.store
                    .finish_close(&t.ticket_id, conversation_id, ended_reason)
            })
            .await;
        match stored {
            Ok(record) => {
                let ended = ended_reason.map(str::to_string).or(record.ended_reason);
                let conversation_id = conversation_id
                    .map(str::to_string)
                    .or(record.conversation_id);
                info!(
                    conversation_id = conversation_id.as_deref(),
                    ended_reason = ended.as_deref(),
                    attempts,
                    "conversation closed"
                );
                Decision::Done(Outcome::closed(
                    &t.ticket_id,
                    conversation_id.as_deref(),
                    ended.as_deref(),
                ))
            }
            Err(e) => {
                error!(error = %e, "conversation closed but the store could not record it; parking the message");
                park(
                    "close",
                    format!("recording the close failed: {e}"),
                    None,
                    attempts,
                    None,
                )
            }
        }
    }

    /// A resolve for a ticket whose conversation the bridge never had: recorded as resolved
    /// (a later `ticket.opened` makes no start call), and told as `unknown_ticket`.
    pub(super) async fn resolved_without_conversation(
        &self,
        t: &TicketResolved,
        error: &str,
        attempts: u32,
    ) -> Decision {
        if let Err(e) = self
            .store_retry(|| {
                self.store
                    .finish_close(&t.ticket_id, None, Some(NEVER_STARTED))
            })
            .await
        {
            return park_store_attempts("close", e, attempts);
        }
        failure(
            &t.ticket_id,
            "close",
            FailureReason::UnknownTicket,
            error,
            attempts,
        )
    }

    /// Jelou's close ended `other`, not this ticket's conversation: the store had drifted
    /// (a conversation replaced outside the bridge, or a webhook missed). Never published as
    /// this ticket's close; the ticket whose conversation it was is recorded closed.
    pub(super) async fn closed_another(
        &self,
        t: &TicketResolved,
        own: Option<&str>,
        other: &str,
        attempts: u32,
    ) -> Decision {
        error!(
            own,
            other, "Jelou's close ended another conversation than the ticket's"
        );
        metrics::counter!("jelou_bridge_foreign_closes_total").increment(1);
        let noted = self
            .store
            .note_conversation_closed(other, Some("closed_by_another_tickets_resolve"))
            .await;
        let finished = self
            .store
            .finish_close(&t.ticket_id, own, Some(SUPERSEDED))
            .await;
        if let Some(e) = noted.err().or(finished.err()) {
            warn!(error = %e, "could not record the conversations Jelou closed");
        }
        Decision::Failed(Failure {
            ticket_id: Some(t.ticket_id.clone()),
            action: Some("close"),
            reason: FailureReason::Rejected,
            http_status: Some(200),
            error: format!(
                "Jelou's close by bot + user ended conversation {other}, not this ticket's {}: the ticket's own conversation was no longer active",
                own.unwrap_or("(none)")
            ),
            response: None,
            attempts,
        })
    }
}
