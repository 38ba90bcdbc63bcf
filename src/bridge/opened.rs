//! `ticket.opened`: one conversation per ticket, started once, whatever the redeliveries.

use std::time::Instant;

use tracing::{error, info, warn};

use super::decision::{failure, invalid, park, park_store, Decision, History, Parking};
use super::Bridge;
use crate::events::{FailureReason, Outcome};
use crate::jelou::Endpoint;
use crate::ownership::{self, Reopened};
use crate::store::StartClaim;
use crate::ticket::{self, start_request, TicketOpened};
use crate::trace_context;

impl Bridge {
    pub(super) async fn opened(&self, t: &TicketOpened, past: &History) -> Decision {
        let req = match start_request(t, &self.settings) {
            Ok(req) => req,
            Err(missing) => return invalid(&t.ticket_id, "start", &missing.0, past),
        };
        let waited = Instant::now();
        let traceparent = trace_context::traceparent(&tracing::Span::current());
        let learned = loop {
            match self
                .store
                .claim_start_traced(
                    &t.ticket_id,
                    &req.bot_id,
                    &req.user_id,
                    traceparent.as_deref(),
                )
                .await
            {
                Err(e) => return park_store("start", e, past),
                Ok(StartClaim::Claimed {
                    learned_conversation,
                }) => break learned_conversation,
                Ok(StartClaim::AlreadyStarted(r)) => {
                    return match ownership::reopened(&r) {
                        Reopened::Started { conversation_id } => {
                            info!(
                                conversation_id = %conversation_id,
                                "ticket already started: no second start call"
                            );
                            metrics::counter!("jelou_bridge_duplicates_absorbed_total", "event" => "ticket.opened").increment(1);
                            Decision::Done(Outcome::started(
                                &t.ticket_id,
                                &conversation_id,
                                r.bot_id.as_deref().unwrap_or(&req.bot_id),
                                r.user_id.as_deref().unwrap_or(&req.user_id),
                            ))
                        }
                        Reopened::AlreadyResolved => failure(
                            &t.ticket_id,
                            "start",
                            FailureReason::AlreadyResolved,
                            "the ticket was resolved before it was started: no conversation is opened for it",
                            past.prior_attempts,
                        ),
                    };
                }
                Ok(StartClaim::Busy(_)) => {
                    if waited.elapsed() >= self.in_process_patience() {
                        return park(
                            "start",
                            "another bridge process is starting this ticket".into(),
                            None,
                            past.prior_attempts,
                            None,
                        );
                    }
                    if !self.pause().await {
                        return Decision::Requeue;
                    }
                }
            }
        };
        // One start or close at a time per bot + user: a start may replace the user's
        // conversation, so the order of the calls is the order the store records.
        let _turn = self.conversation_turn(&req.bot_id, &req.user_id).await;
        // An earlier start's answer was lost, but the store learned its conversation (the
        // start webhook, or a pass that could not record Jelou's answer): no second call.
        if let Some(conversation_id) = learned.or_else(|| past.conversation_id.clone()) {
            info!(conversation_id = %conversation_id, "the conversation of an earlier start is known: no second start call");
            metrics::counter!("jelou_bridge_starts_reconciled_total").increment(1);
            return self
                .record_start(t, &req, conversation_id, past.prior_attempts)
                .await;
        }
        let mut attempts = past.prior_attempts;
        let mut sent_this_pass = 0;
        loop {
            let attempted = self
                .policy
                .run(Endpoint::Start, &self.shutdown, || self.jelou.start(&req))
                .await;
            attempts += attempted.attempts;
            sent_this_pass += attempted.attempts;
            let e = match attempted.result {
                Ok(started) => {
                    return self
                        .record_start(t, &req, started.conversation_id, attempts)
                        .await
                }
                Err(e) if e.is_retryable() && e.may_have_taken_effect() => e,
                Err(e) => {
                    return self
                        .unsuccessful(Endpoint::Start, &t.ticket_id, e, attempts)
                        .await
                }
            };
            // The start may have opened a conversation: look for it before sending again.
            metrics::counter!("jelou_bridge_starts_ambiguous_total").increment(1);
            warn!(error = %e, "the start's answer was lost; looking for the conversation it may have opened");
            if let Some(conversation_id) = self.await_started_conversation(&t.ticket_id).await {
                info!(conversation_id = %conversation_id, "Jelou's webhook named the conversation: no second start call");
                metrics::counter!("jelou_bridge_starts_reconciled_total").increment(1);
                return self.record_start(t, &req, conversation_id, attempts).await;
            }
            if sent_this_pass >= self.policy.max_attempts || self.shutdown.is_cancelled() {
                // Parked: the next pass's claim looks for the conversation again first.
                return self
                    .unsuccessful(Endpoint::Start, &t.ticket_id, e, attempts)
                    .await;
            }
            metrics::counter!("jelou_bridge_starts_resent_total").increment(1);
        }
    }

    /// After an ambiguous start: waits up to `jelou.reconcile_wait` for the store to learn
    /// the ticket's conversation from Jelou's `conversation.start` webhook. None at once
    /// when no webhook is configured (nothing could tell).
    pub(super) async fn await_started_conversation(&self, ticket_id: &str) -> Option<String> {
        self.settings.webhook.signing_secret.as_ref()?;
        let deadline = Instant::now() + self.settings.jelou.reconcile_wait;
        loop {
            match self.store.get(ticket_id).await {
                Ok(Some(r)) if r.conversation_id.is_some() => return r.conversation_id,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "could not look for the started conversation"),
            }
            if Instant::now() >= deadline || !self.pause().await {
                return None;
            }
        }
    }

    /// Records the conversation a start opened (superseding the user's earlier tickets'
    /// conversations it replaced) and publishes it. When the store cannot record it, the
    /// message is parked carrying the conversation id, so the next pass records it without
    /// a second start call.
    pub(super) async fn record_start(
        &self,
        t: &TicketOpened,
        req: &ticket::StartRequest,
        conversation_id: String,
        attempts: u32,
    ) -> Decision {
        let recorded = self
            .store_retry(|| self.store.finish_start(&t.ticket_id, &conversation_id))
            .await;
        let conversation_id = match recorded {
            Ok(record) => {
                let stored = record
                    .conversation_id
                    .unwrap_or_else(|| conversation_id.clone());
                if stored != conversation_id {
                    warn!(stored = %stored, ours = %conversation_id,
                        "another process recorded a conversation for this ticket first");
                }
                stored
            }
            Err(e) => {
                error!(error = %e, conversation_id = %conversation_id,
                    "conversation started but the store could not record it; parking the message with its id");
                self.release(&t.ticket_id, Some(&e.to_string())).await;
                return Decision::Park(Parking {
                    conversation_id: Some(conversation_id),
                    ..Parking::new(
                        "start",
                        format!("recording the start failed: {e}"),
                        attempts,
                    )
                });
            }
        };
        info!(conversation_id = %conversation_id, attempts, "conversation started");
        Decision::Done(Outcome::started(
            &t.ticket_id,
            &conversation_id,
            &req.bot_id,
            &req.user_id,
        ))
    }
}
