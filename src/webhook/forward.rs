//! A verified event onto the bus, once: resolve its ticket, claim it against repeated
//! deliveries, tell the store what Jelou said, publish with confirm, and only then answer 200.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use tracing::{debug, info, warn, Instrument};

use super::event::dedup_key;
use super::handler::reply;
use super::WebhookState;
use crate::amqp::{headers, set_str};
use crate::events::Outcome;
use crate::store::WebhookClaim;
use crate::trace_context;

/// Why a verified event was not published.
enum NotForwarded {
    Store(String),
    Broker(String),
}

/// A verified event: resolve its ticket, drop a repeated delivery, update the store, publish.
pub(super) async fn accept(
    state: &WebhookState,
    event: &str,
    conversation_id: Option<&str>,
    payload: &Value,
    raw: &[u8],
) -> Response {
    let store_down = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "webhook: store unavailable");
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            event,
            "the ticket store is unavailable; retry later",
        )
    };
    let ticket_id = match resolve_ticket(state, conversation_id, payload).await {
        Ok(t) => t,
        Err(e) => return store_down(&e),
    };
    if let Some(t) = &ticket_id {
        tracing::Span::current().record("ticket_id", t.as_str());
    }
    let key = dedup_key(event, payload, raw);
    match state
        .store
        .claim_webhook(&key, state.claim_stale_after)
        .await
    {
        Ok(WebhookClaim::Claimed) => {}
        Ok(WebhookClaim::Published) => {
            info!(
                conversation_id,
                "duplicate webhook delivery: already published"
            );
            return reply(StatusCode::OK, "duplicate", event, "");
        }
        Ok(WebhookClaim::InFlight) => {
            // Not 200: should the other request fail, this delivery must come again.
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "in_progress",
                event,
                "the same event is being forwarded by another request; retry later",
            );
        }
        Err(e) => return store_down(&e),
    }
    let forwarded = forward(
        state,
        event,
        ticket_id.as_deref(),
        conversation_id,
        payload,
        &key,
    )
    .await;
    let Err(not_forwarded) = forwarded else {
        if let Err(e) = state.store.mark_webhook_published(&key).await {
            // Published all the same; a redelivery after the claim grows stale publishes again.
            warn!(error = %e, "could not mark the webhook delivery as published");
        }
        info!(conversation_id, "webhook published");
        return reply(StatusCode::OK, "published", event, "");
    };
    // Not published: forget the delivery so Jelou's retry is not taken for a duplicate.
    let _ = state.store.forget_webhook(&key).await;
    match not_forwarded {
        NotForwarded::Store(e) => store_down(&e),
        NotForwarded::Broker(detail) => {
            warn!(detail = %detail, "webhook not published: broker unavailable");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                event,
                &detail,
            )
        }
    }
}

/// The ticket an event is about: `value.metadata.ticketId` (Jelou echoes the metadata the
/// bridge sent with the start call), else the ticket whose conversation it is.
async fn resolve_ticket(
    state: &WebhookState,
    conversation_id: Option<&str>,
    payload: &Value,
) -> Result<Option<String>, crate::store::StoreError> {
    if let Some(t) = payload
        .pointer("/value/metadata/ticketId")
        .and_then(Value::as_str)
    {
        return Ok(Some(t.to_string()));
    }
    match conversation_id {
        Some(c) => Ok(state
            .store
            .find_by_conversation(c)
            .await?
            .map(|r| r.ticket_id)),
        None => Ok(None),
    }
}

/// Longest wait for the ticket's trace before publishing a webhook event without it.
const TRACE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tells the store what Jelou said about the conversation, then publishes with confirm.
async fn forward(
    state: &WebhookState,
    event: &str,
    ticket_id: Option<&str>,
    conversation_id: Option<&str>,
    payload: &Value,
    key: &str,
) -> Result<(), NotForwarded> {
    let noted = match (event, ticket_id, conversation_id) {
        ("conversation.start", Some(t), Some(c)) => {
            let room = payload.get("room_id").and_then(Value::as_str);
            state.store.note_conversation_started(t, c, room).await
        }
        ("conversation.close", _, Some(c)) => {
            let reason = payload.pointer("/value/reason").and_then(Value::as_str);
            state.store.note_conversation_closed(c, reason).await
        }
        _ => Ok(()),
    };
    noted.map_err(|e| NotForwarded::Store(e.to_string()))?;
    let outcome = Outcome::from_webhook(event, ticket_id, conversation_id, payload.clone());
    let publisher = state
        .link
        .publisher()
        .ok_or_else(|| NotForwarded::Broker("the broker is not connected".into()))?;
    let mut table = lapin::types::FieldTable::default();
    if let Some(t) = ticket_id {
        set_str(&mut table, headers::TICKET_ID, t);
    }
    // The event joins its ticket's trace when the store knows one; a store that cannot say
    // costs the trace, not the event.
    let span = tracing::info_span!("webhook.publish", event, ticket_id);
    if let Some(t) = ticket_id {
        match tokio::time::timeout(TRACE_LOOKUP_TIMEOUT, state.store.get(t)).await {
            Ok(Ok(Some(record))) => {
                if let Some(tp) = record.traceparent.as_deref() {
                    trace_context::continue_trace(&span, trace_context::from_traceparent(tp));
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => debug!(error = %e, "webhook: could not read the ticket's trace"),
            Err(_) => debug!("webhook: the ticket's trace was not read in time"),
        }
    }
    trace_context::inject_amqp(&span, &mut table);
    let mut props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(key.into())
        .with_app_id("jelou-bridge".into())
        .with_headers(table);
    if let Some(c) = conversation_id {
        props = props.with_correlation_id(c.into());
    }
    let body = outcome.body.as_bytes();
    publisher
        .publish(
            &state.events_exchange,
            &outcome.routing_key,
            body,
            props,
            false,
        )
        .instrument(span)
        .await
        .map_err(|e| NotForwarded::Broker(e.to_string()))
}
