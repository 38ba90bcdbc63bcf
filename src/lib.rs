//! jelou-bridge connects a helpdesk's ticket events on RabbitMQ to Jelou's external-support
//! API, and brings Jelou's webhooks back onto the bus.
//!
//! # Map
//! - [`config`]: typed settings in layers (defaults → files → `--config` → env).
//! - [`telemetry`]: structured logs, spans (OTLP export) and the Prometheus recorder.
//! - [`trace_context`]: W3C `traceparent`/`tracestate` in from the helpdesk, out on every
//!   Jelou call and published message.
//! - [`ticket`]: the domain: inbound ticket events, checked, and the Jelou requests they become.
//! - [`events`]: what the bridge publishes (`conversation.started`, `ticket.failed`, …).
//! - [`contract`]: every bus message as a Rust type, and the JSON Schemas derived from them.
//! - [`jelou`]: the API client, failure classification, retries with `backon`, the gate
//!   every call passes (`Retry-After`, circuit breaker, caps), a stand-in.
//! - [`store`]: what was done per ticket (SQLite or PostgreSQL), for idempotency and order;
//!   [`store::schema`]: its schema version against this binary's (upgrades).
//! - [`amqp`]: connection, topology, confirmed publisher, supervised consumer; the delivery
//!   side of each ticket event: [`amqp::inbound`] (a delivery and its headers read back) and
//!   [`amqp::settle`] (a decision carried out on the broker, then the ack).
//! - [`lanes`]: per-ticket order among concurrent deliveries (and one call at a time per
//!   bot + user).
//! - [`ownership`]: Jelou's one-conversation-per-user model as decisions: which ticket owns
//!   a user's conversation, what a close may do.
//! - [`bridge`]: what happens to one ticket event, decided (never touching a delivery).
//! - [`webhook`], [`http`]: Jelou's signed webhooks (replay window, dedupe), health,
//!   readiness and metrics, served with limits against slow clients.
//! - [`reconcile`]: the store brought in line with Jelou's view of each conversation.
//! - [`app`]: the daemon assembled; [`cli`]: the commands; [`shutdown`]: stopping on a
//!   signal, and in-flight work drained within the grace.
//! - [`clock`]: this host's clock and the lease clock; [`error`]: errors on one line.
//!
//! # The path of one ticket event
//! consume ([`amqp::consumer`]; its span continues the inbound `traceparent`) → decode
//! ([`amqp::inbound::Inbound`], [`ticket::decode`]) → wait its turn ([`lanes`]) → decide:
//! claim in the [`store`], call Jelou with retries ([`jelou`]), record the result
//! ([`bridge::Bridge::decide`], called once per delivery) → settle: publish the outcome with
//! confirms, or park it in a delay queue, or dead-letter it, then ack
//! ([`amqp::settle::Settler::settle`]).

pub mod amqp;
pub mod app;
pub mod bridge;
pub mod cli;
pub mod clock;
pub mod config;
pub mod contract;
pub mod error;
pub mod events;
pub mod http;
pub mod jelou;
pub mod lanes;
pub mod ownership;
pub mod reconcile;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod ticket;
pub mod trace_context;
pub mod webhook;
