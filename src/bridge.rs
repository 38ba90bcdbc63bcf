//! What happens to one ticket event: decide (store + Jelou), then settle (publish the
//! outcome, dead-letter or park, and only then ack).
//!
//! [`Bridge::decide`] turns a decoded event into a [`Decision`] without touching the broker;
//! [`Bridge::settle`] carries the decision out on the broker. A delivery is acked only after
//! everything it leads to was confirmed by the broker; when that fails it is returned to the
//! queue and, being idempotent, done again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::amqp::publisher::{PublishError, Publisher};
use crate::amqp::topology::delay_queue;
use crate::amqp::{header_i64, header_str, headers, set_i64, set_str};
use crate::config::Settings;
use crate::events::{Failure, FailureReason, Outcome};
use crate::jelou::client::Conversation;
use crate::jelou::retry::RetryPolicy;
use crate::jelou::{Endpoint, JelouClient, JelouError};
use crate::lanes::{LanePlace, TicketLanes};
use crate::ownership::{self, ClosePlan, Reopened};
use crate::store::{now_ms, CloseClaim, MessageClaim, StartClaim, Store, TicketState, SUPERSEDED};
use crate::ticket::{
    self, close_request, message_request, start_request, InvalidMessage, Recipient, TicketEvent,
    TicketOpened, TicketReply, TicketResolved,
};
use crate::trace_context;

/// How often a delivery waiting on another one's work looks at the store again.
const POLL: Duration = Duration::from_millis(100);
/// How long a delivery whose outcome the broker refused waits before it goes back.
const REQUEUE_PAUSE: Duration = Duration::from_millis(500);
/// The longest a delivery waits in process for another of its ticket's events.
const IN_PROCESS_PATIENCE: Duration = Duration::from_secs(1);

/// One inbound delivery, with what earlier passes through the bridge wrote on it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The routing key it was first published with.
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    /// The queue it was consumed from (parking returns it there).
    pub source_queue: String,
    /// Times parked so far.
    pub parked: i64,
    /// When the bridge first saw it (ms since the epoch).
    pub first_seen: i64,
    /// Jelou calls made for it on earlier passes.
    pub prior_attempts: u32,
    /// Not to be tried before this time (ms since the epoch): a `Retry-After` longer than
    /// every delay tier.
    pub not_before: Option<i64>,
    /// A conversation an earlier pass had from Jelou but could not record.
    pub conversation_id: Option<String>,
}

impl Inbound {
    /// Takes the body out of the delivery (only its acker is needed afterwards).
    pub fn from_delivery(delivery: &mut Delivery, source_queue: &str) -> Inbound {
        Inbound::new(
            delivery.routing_key.as_str(),
            std::mem::take(&mut delivery.data),
            delivery.properties.clone(),
            source_queue,
        )
    }

    /// A delivery's parts, with what earlier passes wrote in its headers read back.
    pub fn new(
        routing_key: &str,
        body: Vec<u8>,
        properties: BasicProperties,
        source_queue: &str,
    ) -> Inbound {
        let h = properties.headers().as_ref();
        let now = now_ms();
        Inbound {
            routing_key: header_str(h, headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_string()),
            source_queue: source_queue.to_string(),
            // Headers from the bus are input too: counts are clamped, and a first sighting
            // in the future (a skewed clock, a hand-made header) is taken as now, so the
            // total budget cannot be switched off.
            parked: header_i64(h, headers::PARKED)
                .unwrap_or(0)
                .clamp(0, 1 << 30),
            first_seen: header_i64(h, headers::FIRST_SEEN)
                .filter(|t| *t > 0)
                .map_or(now, |t| t.min(now)),
            prior_attempts: header_i64(h, headers::ATTEMPTS)
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX / 2)) as u32,
            not_before: header_i64(h, headers::NOT_BEFORE).filter(|t| *t > now),
            conversation_id: header_str(h, headers::CONVERSATION_ID).filter(|c| !c.is_empty()),
            body,
            properties,
        }
    }

    /// How long until the message may be tried (a long `Retry-After`), if it is still to come.
    pub fn not_before_in(&self) -> Option<Duration> {
        let left = self.not_before? - now_ms();
        (left > 0).then(|| Duration::from_millis(left as u64))
    }

    /// The inbound `correlation_id`, else its `message_id`.
    pub fn correlation_id(&self) -> Option<String> {
        self.properties
            .correlation_id()
            .as_ref()
            .or(self.properties.message_id().as_ref())
            .map(|s| s.as_str().to_string())
    }

    pub fn reply_to(&self) -> Option<String> {
        self.properties
            .reply_to()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish this outcome, then ack.
    Done(Outcome),
    /// Publish `ticket.failed`, dead-letter the message, then ack.
    Failed(Failure),
    /// Not done yet: park the message in a delay queue, then ack.
    Park(Parking),
    /// Shutting down: give it back to the queue untouched.
    Requeue,
}

/// Why and how a message waits in a delay queue before its next pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Parking {
    pub action: &'static str,
    pub error: String,
    pub http_status: Option<u16>,
    /// Jelou calls made for the message so far.
    pub attempts: u32,
    /// Jelou's `Retry-After`: the park lasts at least this long.
    pub retry_after: Option<Duration>,
    /// A conversation Jelou opened that the store could not record: the next pass records
    /// it instead of starting again.
    pub conversation_id: Option<String>,
}

impl Parking {
    pub fn new(action: &'static str, error: String, attempts: u32) -> Parking {
        Parking {
            action,
            error,
            http_status: None,
            attempts,
            retry_after: None,
            conversation_id: None,
        }
    }
}

/// `endedReason` of a ticket resolved before the bridge ever started it.
pub const NEVER_STARTED: &str = "never_started";

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
        msg: &Inbound,
    ) -> Decision {
        if let (Ok(e), Some(wait)) = (event, msg.not_before_in()) {
            // Jelou asked for more time than the longest delay tier: park again, no call.
            let parking = Parking {
                http_status: Some(429),
                ..Parking::new(
                    e.kind().action(),
                    format!(
                        "Jelou asked to wait {} more",
                        humantime::format_duration(Duration::from_secs(wait.as_secs()))
                    ),
                    msg.prior_attempts,
                )
            };
            return self.within_budget(Decision::Park(parking), event, msg);
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
                attempts: msg.prior_attempts,
            }),
            Ok(TicketEvent::Opened(t)) => self.opened(t, msg).await,
            Ok(TicketEvent::Resolved(t)) => self.resolved(t, msg).await,
            Ok(TicketEvent::Reply(t)) => self.replied(t, msg).await,
        };
        self.within_budget(decision, event, msg)
    }

    /// A park past the total budget becomes `retries_exhausted`.
    fn within_budget(
        &self,
        decision: Decision,
        event: &Result<TicketEvent, InvalidMessage>,
        msg: &Inbound,
    ) -> Decision {
        let Decision::Park(Parking {
            action,
            error,
            http_status,
            attempts,
            ..
        }) = &decision
        else {
            return decision;
        };
        let elapsed = Duration::from_millis((now_ms() - msg.first_seen).max(0) as u64);
        if elapsed < self.settings.retry.total_budget {
            return decision;
        }
        Decision::Failed(Failure {
            ticket_id: event.as_ref().ok().map(|e| e.ticket_id().to_string()),
            action: Some(action),
            reason: FailureReason::RetriesExhausted,
            http_status: *http_status,
            error: format!(
                "gave up after {} of retries: {error}",
                humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
            ),
            response: None,
            attempts: *attempts,
        })
    }

    async fn opened(&self, t: &TicketOpened, msg: &Inbound) -> Decision {
        let req = match start_request(t, &self.settings) {
            Ok(req) => req,
            Err(missing) => return invalid(&t.ticket_id, "start", &missing.0, msg),
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
                Err(e) => return park_store("start", e, msg),
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
                            msg.prior_attempts,
                        ),
                    };
                }
                Ok(StartClaim::Busy(_)) => {
                    if waited.elapsed() >= self.in_process_patience() {
                        return park(
                            "start",
                            "another bridge process is starting this ticket".into(),
                            None,
                            msg.prior_attempts,
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
        if let Some(conversation_id) = learned.or_else(|| msg.conversation_id.clone()) {
            info!(conversation_id = %conversation_id, "the conversation of an earlier start is known: no second start call");
            metrics::counter!("jelou_bridge_starts_reconciled_total").increment(1);
            return self
                .record_start(t, &req, conversation_id, msg.prior_attempts)
                .await;
        }
        let mut attempts = msg.prior_attempts;
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
    async fn await_started_conversation(&self, ticket_id: &str) -> Option<String> {
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
    async fn record_start(
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

    async fn resolved(&self, t: &TicketResolved, msg: &Inbound) -> Decision {
        let waited = Instant::now();
        let record = loop {
            let claim = match self.store.claim_close(&t.ticket_id).await {
                Ok(c) => c,
                Err(e) => return park_store("close", e, msg),
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
                        msg.prior_attempts,
                    );
                }
                CloseClaim::Pending(r) if !patience_left => {
                    let what = if r.state == TicketState::Starting {
                        "waiting for the ticket's start to complete"
                    } else {
                        "another bridge process is closing this ticket"
                    };
                    return park("close", what.into(), None, msg.prior_attempts, None);
                }
                CloseClaim::Unknown if !patience_left => {
                    if let Some(parking) = self.still_expecting_the_open("close", msg) {
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
                                msg.prior_attempts,
                            )
                        }
                        Ok(_) => continue,
                        Err(e) => return park_store("close", e, msg),
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
                return invalid(&t.ticket_id, "close", &missing.0, msg);
            }
        };
        let _turn = self.conversation_turn(&req.bot_id, &req.user_id).await;
        let mut attempts = msg.prior_attempts;
        let others = match self
            .store
            .open_tickets_of(&req.bot_id, &req.user_id, &t.ticket_id)
            .await
        {
            Ok(others) => others,
            Err(e) => {
                self.release(&t.ticket_id, Some(&e.to_string())).await;
                return park_store("close", e, msg);
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
    async fn settle_by_reading(
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
    async fn read_conversation(
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
    async fn record_close(
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
    async fn resolved_without_conversation(
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
    async fn closed_another(
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

    /// An agent's reply: into the room of the ticket's active conversation, once per
    /// `messageId`. Waits (in order, behind the ticket's earlier events) for a start still
    /// under way; a ticket with no active conversation ends as `ticket.failed`.
    async fn replied(&self, t: &TicketReply, msg: &Inbound) -> Decision {
        let waited = Instant::now();
        let record = loop {
            let record = match self.store.get(&t.ticket_id).await {
                Ok(r) => r,
                Err(e) => return park_store("message", e, msg),
            };
            let patience_left = waited.elapsed() < self.in_process_patience();
            let no_conversation = |reason, error: &str| {
                failure(&t.ticket_id, "message", reason, error, msg.prior_attempts)
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
                        msg.prior_attempts,
                        None,
                    )
                }
                None if !patience_left => {
                    if let Some(parking) = self.still_expecting_the_open("message", msg) {
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
            Err(e) => return park_store("message", e, msg),
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
                    msg.prior_attempts,
                    None,
                )
            }
            Ok(MessageClaim::Claimed) => {}
        }
        let outcome = self.send_reply(t, &record, &conversation_id, msg).await;
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
    async fn send_reply(
        &self,
        t: &TicketReply,
        record: &crate::store::TicketRecord,
        conversation_id: &str,
        msg: &Inbound,
    ) -> Decision {
        let mut attempts = msg.prior_attempts;
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
                msg,
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
    fn message_failed(&self, t: &TicketReply, e: JelouError, attempts: u32) -> Decision {
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
    fn still_expecting_the_open(&self, action: &'static str, msg: &Inbound) -> Option<Decision> {
        let seen_for = Duration::from_millis((now_ms() - msg.first_seen).max(0) as u64);
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
            msg.prior_attempts,
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

    /// Carries a decision out on the broker and acks, nacks or requeues the delivery.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        msg: &Inbound,
        decision: Decision,
        publisher: &Publisher,
    ) {
        let event = EventLabel::of(msg);
        let result = match decision {
            Decision::Done(outcome) => {
                let label = match outcome.routing_key.as_str() {
                    crate::events::CONVERSATION_STARTED => "started",
                    crate::events::MESSAGE_SENT => "sent",
                    _ => "closed",
                };
                self.publish_outcome(publisher, &outcome, msg)
                    .await
                    .map(|_| label)
            }
            Decision::Failed(failure) => {
                self.fail(publisher, &failure, msg).await.map(|_| "failed")
            }
            Decision::Park(parking) => self.park(publisher, msg, &parking).await.map(|_| "parked"),
            Decision::Requeue => {
                metrics::counter!("jelou_bridge_ticket_events_total", "event" => event.0, "outcome" => "requeued").increment(1);
                if let Err(e) = acknowledge(delivery, Acknowledgement::Requeue).await {
                    debug!(error = %e, "could not return the delivery (the broker will redeliver it)");
                }
                return;
            }
        };
        match result {
            Ok(outcome) => {
                metrics::counter!("jelou_bridge_ticket_events_total", "event" => event.0, "outcome" => outcome).increment(1);
                if let Err(e) = acknowledge(delivery, Acknowledgement::Ack).await {
                    warn!(error = %e, "could not ack (the broker will redeliver; the store absorbs it)");
                }
            }
            Err(e) => {
                warn!(error = %e, "could not publish the outcome; returning the delivery to the queue");
                metrics::counter!("jelou_bridge_ticket_events_total", "event" => event.0, "outcome" => "requeued").increment(1);
                // A broker that keeps refusing (a full queue with reject-publish) would
                // otherwise see the same delivery again at once, in a tight loop; the quorum
                // queue's delivery limit still ends a message that never gets through.
                if !matches!(e, PublishError::Unavailable) {
                    tokio::select! {
                        _ = tokio::time::sleep(REQUEUE_PAUSE) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                let _ = acknowledge(delivery, Acknowledgement::Requeue).await;
            }
        }
    }

    /// Publishes on the events exchange and, when asked for, to `reply_to`.
    async fn publish_outcome(
        &self,
        publisher: &Publisher,
        outcome: &Outcome,
        msg: &Inbound,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(&outcome.body).unwrap_or_default();
        let props = outcome_properties(outcome, msg.correlation_id());
        let main = publisher.publish(
            &self.settings.amqp.events_exchange,
            &outcome.routing_key,
            &body,
            props.clone(),
            false,
        );
        match msg.reply_to() {
            None => main.await,
            Some(reply_to) => {
                let reply = publisher.publish("", &reply_to, &body, props, true);
                let (main, reply) = tokio::join!(main, reply);
                if let Err(e) = reply {
                    // A vanished reply queue must not hold the ticket back: the outcome is on
                    // the events exchange either way.
                    warn!(reply_to = %reply_to, error = %e, "could not deliver the outcome to reply_to");
                }
                main
            }
        }
    }

    /// The message into the dead-letter queue with the reason on it, then `ticket.failed`:
    /// whoever sees the failure finds the dead letter already there.
    async fn fail(
        &self,
        publisher: &Publisher,
        failure: &Failure,
        msg: &Inbound,
    ) -> Result<(), PublishError> {
        warn!(reason = failure.reason.as_str(), http_status = failure.http_status, error = %failure.error, "ticket event failed");
        let mut table = msg.properties.headers().clone().unwrap_or_default();
        set_str(&mut table, headers::REASON, failure.reason.as_str());
        set_str(&mut table, headers::ERROR, &failure.error);
        if let Some(status) = failure.http_status {
            set_i64(&mut table, headers::HTTP_STATUS, i64::from(status));
        }
        set_str(&mut table, headers::SOURCE_QUEUE, &msg.source_queue);
        set_str(&mut table, headers::ORIGINAL_ROUTING_KEY, &msg.routing_key);
        set_i64(&mut table, headers::DEAD_AT, now_ms());
        set_i64(&mut table, headers::FIRST_SEEN, msg.first_seen);
        set_i64(&mut table, headers::ATTEMPTS, i64::from(failure.attempts));
        if let Some(t) = &failure.ticket_id {
            set_str(&mut table, headers::TICKET_ID, t);
        }
        trace_context::inject_amqp(&tracing::Span::current(), &mut table);
        let props = msg
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        publisher
            .publish(
                &self.settings.amqp.dead_letter_exchange(),
                &msg.routing_key,
                &msg.body,
                props,
                true,
            )
            .await?;
        metrics::counter!("jelou_bridge_dead_letters_total", "reason" => failure.reason.as_str())
            .increment(1);
        self.publish_outcome(publisher, &Outcome::failed(failure), msg)
            .await
    }

    /// Into the delay queue of the tier this park reaches; it dead-letters back by itself.
    /// A `Retry-After` longer than every tier parks in the longest one and marks the message
    /// not to be tried before then (it is parked again, without a call, until it may).
    async fn park(
        &self,
        publisher: &Publisher,
        msg: &Inbound,
        parking: &Parking,
    ) -> Result<(), PublishError> {
        let wait = parking
            .retry_after
            .or_else(|| msg.not_before_in().filter(|w| !w.is_zero()));
        let tier = &park_tier(&self.settings.retry.delays, msg.parked, wait);
        let queue = delay_queue(&msg.source_queue, *tier);
        let mut table = msg.properties.headers().clone().unwrap_or_default();
        set_i64(&mut table, headers::PARKED, msg.parked.saturating_add(1));
        set_i64(&mut table, headers::FIRST_SEEN, msg.first_seen);
        set_i64(&mut table, headers::ATTEMPTS, i64::from(parking.attempts));
        set_str(&mut table, headers::LAST_ERROR, &parking.error);
        set_str(&mut table, headers::ORIGINAL_ROUTING_KEY, &msg.routing_key);
        if let Some(status) = parking.http_status {
            set_i64(&mut table, headers::HTTP_STATUS, i64::from(status));
        }
        if let Some(ra) = parking.retry_after.filter(|ra| ra > tier) {
            let until = now_ms().saturating_add(ra.as_millis().min(i64::MAX as u128) as i64);
            set_i64(&mut table, headers::NOT_BEFORE, until);
        }
        if let Some(c) = &parking.conversation_id {
            set_str(&mut table, headers::CONVERSATION_ID, c);
        }
        // Its next pass continues this delivery's trace.
        trace_context::inject_amqp(&tracing::Span::current(), &mut table);
        let props = msg
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        publisher
            .publish("", &queue, &msg.body, props, true)
            .await?;
        let (action, error) = (parking.action, &parking.error);
        info!(action, delay = %humantime::format_duration(*tier), parked = msg.parked.saturating_add(1), error, "parked in the delay queue");
        metrics::counter!("jelou_bridge_parked_total", "action" => action.to_string()).increment(1);
        Ok(())
    }
}

/// Longest wait for an ack or nack to be handed to the connection. lapin can leave that
/// future pending for ever when the connection dies at that very moment, which would hold the
/// ticket's lane, and with it the redelivered copy, for good. Giving up is safe: the broker
/// returns a delivery that was not settled when its connection goes, and the store absorbs
/// the redelivery.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

enum Acknowledgement {
    Ack,
    /// Back to the queue, for another try.
    Requeue,
}

async fn acknowledge(delivery: &Delivery, how: Acknowledgement) -> Result<(), String> {
    let sent = async {
        match how {
            Acknowledgement::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Acknowledgement::Requeue => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        }
    };
    match tokio::time::timeout(ACK_TIMEOUT, sent).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer from the connection within {ACK_TIMEOUT:?}"
        )),
    }
}

/// The event label of a delivery for metrics, from its routing key.
struct EventLabel(&'static str);

impl EventLabel {
    fn of(msg: &Inbound) -> Self {
        EventLabel(match ticket::EventKind::parse(&msg.routing_key) {
            Some(k) => k.as_str(),
            None => "unknown",
        })
    }
}

fn outcome_properties(outcome: &Outcome, correlation_id: Option<String>) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(t) = &outcome.ticket_id {
        set_str(&mut table, headers::TICKET_ID, t);
    }
    trace_context::inject_amqp(&tracing::Span::current(), &mut table);
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_timestamp((now_ms() / 1000) as u64)
        .with_app_id("jelou-bridge".into())
        .with_headers(table);
    if let Some(c) = correlation_id {
        props = props.with_correlation_id(c.into());
    }
    props
}

fn invalid(ticket_id: &str, action: &'static str, detail: &str, msg: &Inbound) -> Decision {
    failure(
        ticket_id,
        action,
        FailureReason::InvalidMessage,
        detail,
        msg.prior_attempts,
    )
}

fn rejected(action: &'static str, ticket_id: &str, e: &JelouError, attempts: u32) -> Decision {
    Decision::Failed(Failure {
        ticket_id: Some(ticket_id.to_string()),
        action: Some(action),
        reason: FailureReason::Rejected,
        http_status: e.http_status(),
        error: e.to_string(),
        response: e.raw_body().map(str::to_string),
        attempts,
    })
}

fn park(
    action: &'static str,
    error: String,
    http_status: Option<u16>,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Decision {
    Decision::Park(Parking {
        http_status,
        retry_after,
        ..Parking::new(action, error, attempts)
    })
}

/// The delay tier a park goes to: the shortest one that covers `wait` (else the longest),
/// or, with nothing to wait for, the tier of the park's rank (the last one repeating).
pub fn park_tier(delays: &[Duration], parked: i64, wait: Option<Duration>) -> Duration {
    let longest = delays.iter().max().copied().unwrap_or_default();
    match wait {
        Some(wait) => delays
            .iter()
            .filter(|d| **d >= wait)
            .min()
            .copied()
            .unwrap_or(longest),
        None => delays
            .get((parked.max(0) as usize).min(delays.len().saturating_sub(1)))
            .copied()
            .unwrap_or(longest),
    }
}

/// `ticket.failed` for a reason no Jelou answer gave.
fn failure(
    ticket_id: &str,
    action: &'static str,
    reason: FailureReason,
    error: &str,
    attempts: u32,
) -> Decision {
    Decision::Failed(Failure {
        ticket_id: Some(ticket_id.to_string()),
        action: Some(action),
        reason,
        http_status: None,
        error: error.to_string(),
        response: None,
        attempts,
    })
}

fn park_store_attempts(
    action: &'static str,
    e: crate::store::StoreError,
    attempts: u32,
) -> Decision {
    warn!(error = %e, "ticket store unavailable; parking the message");
    park(action, e.to_string(), None, attempts, None)
}

fn park_store(action: &'static str, e: crate::store::StoreError, msg: &Inbound) -> Decision {
    park_store_attempts(action, e, msg.prior_attempts)
}

/// Bus input is untrusted: arbitrary bodies and headers end as an event or a clear error,
/// never a panic, and headers cannot switch a budget off or overflow a count. A fixed number
/// of cases keeps CI's time bounded.
#[cfg(test)]
mod properties {
    use super::*;
    use lapin::types::{AMQPValue, LongString, ShortString};
    use proptest::prelude::*;

    fn header_value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            ".{0,24}".prop_map(|s| AMQPValue::LongString(LongString::from(s.into_bytes()))),
            any::<bool>().prop_map(AMQPValue::Boolean),
        ]
    }

    fn headers_table() -> impl Strategy<Value = FieldTable> {
        let keys = prop::sample::select(vec![
            headers::PARKED,
            headers::FIRST_SEEN,
            headers::ATTEMPTS,
            headers::NOT_BEFORE,
            headers::CONVERSATION_ID,
            headers::ORIGINAL_ROUTING_KEY,
            "x-other",
        ]);
        prop::collection::vec((keys, header_value()), 0..8).prop_map(|pairs| {
            let mut table = FieldTable::default();
            for (k, v) in pairs {
                table.insert(ShortString::from(k), v);
            }
            table
        })
    }

    /// JSON-ish bodies: objects with the contract's field names holding any kind of value,
    /// and raw bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let field = prop::sample::select(vec![
            "event",
            "ticketId",
            "userId",
            "botId",
            "messageId",
            "text",
            "attachment",
            "redirectPayload",
            "assignment",
            "metadata",
            "queue",
        ]);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                "ticket.opened",
                "ticket.resolved",
                "ticket.reply",
                "text",
                "image",
                "https://a.example/x"
            ])
            .prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(2, 16, 4, |inner| {
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        });
        prop_oneof![
            prop::collection::btree_map(field, value, 0..8)
                .prop_map(|m| { serde_json::to_vec(&m).expect("a map serialises") }),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_body_decodes_to_an_event_or_a_named_error(
            key in prop::sample::select(vec!["ticket.opened", "ticket.resolved", "ticket.reply", "other", ""]),
            body in body(),
        ) {
            match ticket::decode(key, &body, 1 << 20) {
                Ok(event) => prop_assert!(!event.ticket_id().trim().is_empty()),
                Err(invalid) => prop_assert!(!invalid.detail.is_empty()),
            }
        }

        #[test]
        fn headers_from_the_bus_are_clamped(table in headers_table()) {
            let before = now_ms();
            let props = BasicProperties::default().with_headers(table);
            let msg = Inbound::new("ticket.opened", Vec::new(), props, "q");
            let after = now_ms();
            prop_assert!(msg.parked >= 0 && msg.parked <= 1 << 30);
            prop_assert!(msg.prior_attempts <= u32::MAX / 2);
            // A first sighting in the future cannot switch the total budget off.
            prop_assert!(msg.first_seen > 0 && msg.first_seen <= after);
            if let Some(t) = msg.not_before {
                prop_assert!(t > before);
            }
            // Adding this pass's attempts cannot overflow.
            prop_assert!(msg.prior_attempts.checked_add(1 << 20).is_some());
        }

        #[test]
        fn a_park_always_lands_in_a_tier_that_covers_the_wait_when_one_does(
            delays in prop::collection::vec(1u64..100_000, 1..6),
            parked in any::<i64>(),
            wait in prop::option::of(0u64..200_000),
        ) {
            let delays: Vec<Duration> = delays.into_iter().map(Duration::from_millis).collect();
            let wait = wait.map(Duration::from_millis);
            let tier = park_tier(&delays, parked, wait);
            prop_assert!(delays.contains(&tier));
            if let Some(wait) = wait {
                let longest = *delays.iter().max().unwrap();
                prop_assert!(tier >= wait || tier == longest);
            }
        }
    }
}
