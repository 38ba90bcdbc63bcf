//! `jelou-bridge reconcile`: brings the store in line with Jelou's view of each conversation,
//! for when webhooks were missed (not configured, the bridge down, Jelou gave up).
//!
//! For every ticket the store believes open (`active`, or `closing` with no live holder) and
//! older than `--older-than`, it reads the conversation from Jelou. A conversation Jelou has
//! closed (say an operator closed it) becomes closed in the store, and
//! `jelou.conversation.close` is published for it once (the same claim-then-publish
//! deduplication as the webhook's). Every change is one conditional statement, so it is safe
//! while the daemon runs and safe to run again (from cron or a Kubernetes CronJob).

use std::time::Duration;

use serde_json::{json, Value};

use crate::amqp::{headers, set_str, Publisher};
use crate::events::Outcome;
use crate::jelou::client::Conversation;
use crate::jelou::{JelouClient, JelouError};
use crate::store::{now_ms, Store, TicketRecord, WebhookClaim};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only tickets not updated for this long.
    pub older_than: Duration,
    /// Print what would change, change nothing.
    pub dry_run: bool,
    /// At most this many tickets per run.
    pub limit: i64,
}

/// What happened to one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Jelou agrees with the store.
    InLine,
    /// Closed in Jelou, open in the store: closed (or would be, in a dry run).
    Closed { ended_reason: Option<String> },
    /// The room was unknown; learned.
    RoomLearned(String),
    /// Jelou does not know the conversation.
    UnknownToJelou,
    /// Jelou or the store could not be asked.
    Error(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Line {
    pub ticket: TicketRecord,
    pub finding: Finding,
}

/// Reads each open ticket's conversation and brings the store in line.
pub async fn run(
    store: &Store,
    jelou: &JelouClient,
    publisher: &Publisher,
    events_exchange: &str,
    options: &Options,
) -> Result<Vec<Line>, crate::store::StoreError> {
    let cutoff = now_ms() - options.older_than.as_millis().min(i64::MAX as u128) as i64;
    let mut report = Vec::new();
    for ticket in store.open_tickets_before(cutoff, options.limit).await? {
        let Some(conversation_id) = ticket.conversation_id.clone() else {
            continue;
        };
        let finding = match jelou.conversation(&conversation_id).await {
            Err(JelouError::Status { status: 404, .. }) => Finding::UnknownToJelou,
            Err(e) => Finding::Error(e.to_string()),
            Ok(c) if c.is_closed() => {
                let ended_reason = c.ended_reason.clone();
                if !options.dry_run {
                    if let Err(e) = close(store, publisher, events_exchange, &ticket, &c).await {
                        report.push(Line {
                            ticket,
                            finding: Finding::Error(e),
                        });
                        continue;
                    }
                }
                Finding::Closed { ended_reason }
            }
            Ok(c) => match (&ticket.room_id, c.room_id) {
                (None, Some(room)) => {
                    if !options.dry_run {
                        store.note_room(&conversation_id, &room).await?;
                    }
                    Finding::RoomLearned(room)
                }
                _ => Finding::InLine,
            },
        };
        report.push(Line { ticket, finding });
    }
    Ok(report)
}

/// Publishes `jelou.conversation.close` once for the conversation, then records it closed.
async fn close(
    store: &Store,
    publisher: &Publisher,
    events_exchange: &str,
    ticket: &TicketRecord,
    c: &Conversation,
) -> Result<(), String> {
    let key = format!("conversation.close:{}:reconcile", c.conversation_id);
    let claim = store
        .claim_webhook(&key, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    if claim == WebhookClaim::Claimed {
        // Shaped like Jelou's conversation.close webhook, from what the read returned.
        let payload = json!({
            "event": "conversation.close", "source": "reconcile", "timestamp": now_ms(),
            "field": "conversation", "object": "conversation_event", "event_type": "close",
            "room_id": c.room_id, "contact": {"id": ticket.user_id}, "bot": {"id": ticket.bot_id},
            "conversation": {"id": c.conversation_id},
            "value": {"reason": c.ended_reason, "redirectPayload": Value::Null},
        });
        let outcome = Outcome::from_webhook(
            "conversation.close",
            Some(&ticket.ticket_id),
            Some(&c.conversation_id),
            payload,
        );
        let mut table = lapin::types::FieldTable::default();
        set_str(&mut table, headers::TICKET_ID, &ticket.ticket_id);
        // The close joins the ticket's trace, as Jelou's own webhook would.
        let span = tracing::info_span!("reconcile.publish", ticket_id = %ticket.ticket_id);
        if let Some(tp) = ticket.traceparent.as_deref() {
            crate::trace_context::continue_trace(&span, crate::trace_context::from_traceparent(tp));
        }
        crate::trace_context::inject_amqp(&span, &mut table);
        let props = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(key.as_str().into())
            .with_correlation_id(c.conversation_id.as_str().into())
            .with_app_id("jelou-bridge".into())
            .with_headers(table);
        let body = outcome.body.as_bytes();
        let published = publisher
            .publish(events_exchange, &outcome.routing_key, body, props, false)
            .await;
        if let Err(e) = published {
            let _ = store.forget_webhook(&key).await;
            return Err(format!("could not publish jelou.conversation.close: {e}"));
        }
        store
            .mark_webhook_published(&key)
            .await
            .map_err(|e| e.to_string())?;
    }
    store
        .note_conversation_closed(&c.conversation_id, c.ended_reason.as_deref())
        .await
        .map_err(|e| e.to_string())
}
