//! Jelou's webhooks onto the bus: `POST /webhooks/jelou`, signed with
//! `X-Jelou-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
//!
//! A verified event is published as `jelou.<event>` and answered 200 only after the broker
//! confirmed it; a repeated delivery of the same event publishes once. The store learns from
//! lifecycle events too, so a conversation an operator closed in Jelou is known as closed.
//!
//! - `verify`: whether to believe an event: its signature, its timestamp (the replay window);
//! - `event`: what an event is: its kind (`classify`) and the key its repeats share
//!   (`dedup_key`);
//! - `handler`: `POST /webhooks/jelou`, from the raw request to a verified, known event;
//! - `forward`: that event onto the bus, once: its ticket, the store told, the publish.

mod event;
mod forward;
mod handler;
mod verify;

use std::sync::Arc;

use secrecy::SecretString;

use crate::amqp::BrokerLink;
use crate::store::Store;

pub use event::{classify, dedup_key};
pub use handler::handle;
pub use verify::{outside_window, sign, verify, SIGNATURE_HEADER};

/// What the webhook handler needs.
pub struct WebhookState {
    /// `webhook.signing_secret`: the key Jelou signs with; without one every event is refused.
    pub secret: Option<SecretString>,
    /// Where the bridge keeps its tickets, and the webhook deliveries already published.
    pub store: Store,
    /// The broker connection the events are published on.
    pub link: Arc<BrokerLink>,
    /// `amqp.events_exchange`.
    pub events_exchange: String,
    /// How long a claimed but unpublished delivery blocks repeats of it: past this, its
    /// process is taken to have died, and a repeat forwards the event.
    pub claim_stale_after: std::time::Duration,
    /// `http.body_timeout`.
    pub body_timeout: std::time::Duration,
    /// `webhook.max_age`: the replay window.
    pub max_age: std::time::Duration,
}
