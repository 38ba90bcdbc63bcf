//! What happens to one ticket event, decided: the store and Jelou consulted, the answer a
//! [`Decision`]. Carrying it out on the broker (publish, park, dead-letter, ack) is
//! [`crate::amqp::settle`]'s job; this module never touches a delivery.
//!
//! [`Bridge::decide`] is the one entry: `opened`, `resolved` and `replied` hold the
//! three flows, [`decision`] the plain data and the pure rules they share.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Settings;
use crate::events::{Failure, FailureReason};
use crate::jelou::retry::RetryPolicy;
use crate::jelou::{Endpoint, JelouClient, JelouError};
use crate::lanes::{LanePlace, TicketLanes};
use crate::store::{now_ms, Store};
use crate::ticket::{self, InvalidMessage, TicketEvent};

pub mod decision;
mod opened;
mod replied;
mod resolved;

use decision::{park, rejected};
pub use decision::{within_budget, Decision, History, Parking, NEVER_STARTED};

/// How often a delivery waiting on another one's work looks at the store again.
const POLL: Duration = Duration::from_millis(100);
/// The longest a delivery waits in process for another of its ticket's events.
const IN_PROCESS_PATIENCE: Duration = Duration::from_secs(1);

pub struct Bridge {
    pub settings: Arc<Settings>,
    pub jelou: JelouClient,
    pub store: Store,
    policy: RetryPolicy,
    /// Cancelled when the process begins to shut down; waits and retries end early.
    shutdown: CancellationToken,
    /// One start or close at a time per (bot, user) in this process: Jelou keeps one active
    /// conversation per bot and user and closes by bot + user, so two tickets of one user
    /// must not race their calls. Owned by the bridge; entries live while a call is made.
    conversations: Arc<TicketLanes>,
}

impl Bridge {
    pub fn new(
        settings: Arc<Settings>,
        jelou: JelouClient,
        store: Store,
        shutdown: CancellationToken,
    ) -> Bridge {
        let jelou = jelou.stopping_on(shutdown.clone());
        Bridge {
            policy: RetryPolicy {
                gate: Some(jelou.gate()),
                ..RetryPolicy::from(&settings.retry)
            },
            settings,
            jelou,
            store,
            shutdown,
            conversations: Arc::default(),
        }
    }

    /// Decides what one decoded delivery leads to.
    pub async fn decide(
        &self,
        event: &Result<TicketEvent, InvalidMessage>,
        past: &History,
    ) -> Decision {
        if let (Ok(e), Some(wait)) = (event, past.not_before_in()) {
            // Jelou asked for more time than the longest delay tier: park again, no call.
            let parking = Parking {
                http_status: Some(429),
                ..Parking::new(
                    e.kind().action(),
                    format!(
                        "Jelou asked to wait {} more",
                        humantime::format_duration(Duration::from_secs(wait.as_secs()))
                    ),
                    past.prior_attempts,
                )
            };
            return self.within_budget(Decision::Park(parking), event, past);
        }
        // Its lease (if this pass takes one) is renewed only while this pass runs.
        let _hold = event.as_ref().ok().map(|e| self.store.hold(e.ticket_id()));
        let decision = match event {
            Err(invalid) => Decision::Failed(Failure {
                ticket_id: invalid.ticket_id.clone(),
                action: invalid.kind.map(ticket::EventKind::action),
                reason: FailureReason::InvalidMessage,
                http_status: None,
                error: invalid.detail.clone(),
                response: None,
                attempts: past.prior_attempts,
            }),
            Ok(TicketEvent::Opened(t)) => self.opened(t, past).await,
            Ok(TicketEvent::Resolved(t)) => self.resolved(t, past).await,
            Ok(TicketEvent::Reply(t)) => self.replied(t, past).await,
        };
        self.within_budget(decision, event, past)
    }

    /// A park past the total budget becomes `retries_exhausted` ([`within_budget`]).
    fn within_budget(
        &self,
        decision: Decision,
        event: &Result<TicketEvent, InvalidMessage>,
        past: &History,
    ) -> Decision {
        within_budget(
            decision,
            event.as_ref().ok().map(|e| e.ticket_id()),
            past.first_seen,
            now_ms(),
            self.settings.retry.total_budget,
        )
    }

    /// A store write that must follow a Jelou answer: tried three times (0, 200 ms, 1 s apart)
    /// before its failure is reported.
    async fn store_retry<T, F, Fut>(&self, write: F) -> Result<T, crate::store::StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
    {
        let mut result = write().await;
        for delay in [Duration::from_millis(200), Duration::from_secs(1)] {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(delay).await;
            result = write().await;
        }
        result
    }

    /// Waits for this process's turn on a bot + user (see [`Bridge::conversations`]).
    async fn conversation_turn(&self, bot_id: &str, user_id: &str) -> LanePlace {
        let mut place = self
            .conversations
            .enter(&format!("{bot_id}\u{1f}{user_id}"));
        place.wait_turn().await;
        place
    }

    /// A Jelou call that did not succeed: back to the queue when shutting down, parked when a
    /// later try may succeed, else recorded as failed and rejected.
    async fn unsuccessful(
        &self,
        endpoint: Endpoint,
        ticket_id: &str,
        e: JelouError,
        attempts: u32,
    ) -> Decision {
        let action = endpoint.as_str();
        if let JelouError::Shutdown = e {
            self.release(ticket_id, None).await;
            return Decision::Requeue;
        }
        let error = e.to_string();
        if e.is_retryable() {
            self.release(ticket_id, Some(&error)).await;
            return park(action, error, e.http_status(), attempts, e.retry_after());
        }
        let recorded = match endpoint {
            Endpoint::Start => self.store.fail_start(ticket_id, &error).await,
            Endpoint::Close => self.store.fail_close(ticket_id, &error).await,
            // Messages settle their own claims (`replied`).
            Endpoint::Message | Endpoint::Conversation => Ok(()),
        };
        if let Err(se) = recorded {
            warn!(error = %se, "could not record the failed {action}");
        }
        rejected(action, ticket_id, &e, attempts)
    }

    async fn release(&self, ticket_id: &str, error: Option<&str>) {
        if let Err(e) = self.store.release(ticket_id, error).await {
            warn!(error = %e, "could not release the ticket (its lease will expire)");
        }
    }

    /// How long a delivery waits in process for another event of its ticket (its open still
    /// under way): short, as it holds a prefetch slot the awaited event may need.
    fn in_process_patience(&self) -> Duration {
        self.settings
            .store
            .unknown_ticket_wait
            .min(IN_PROCESS_PATIENCE)
    }

    /// A ticket the store has never seen, for a message first seen less than
    /// `store.unknown_ticket_wait` ago: its open may still be on its way (redelivered after a
    /// crash, behind other messages): park until the wait is over instead of concluding.
    fn still_expecting_the_open(&self, action: &'static str, past: &History) -> Option<Decision> {
        let seen_for = Duration::from_millis((now_ms() - past.first_seen).max(0) as u64);
        let left = self
            .settings
            .store
            .unknown_ticket_wait
            .checked_sub(seen_for)?;
        if left.is_zero() {
            return None;
        }
        Some(park(
            action,
            "the ticket is not known yet: waiting for its ticket.opened".into(),
            None,
            past.prior_attempts,
            Some(left),
        ))
    }

    /// Waits a poll interval; false when shutdown began.
    async fn pause(&self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests;
