//! The bus contract as Rust types: one type per message body the bridge reads or writes, and
//! the JSON Schemas (draft 2020-12) derived from them.
//!
//! Outbound bodies are built from these types ([`crate::events::Outcome`] serializes them), so
//! what the bridge sends and what its schema says cannot drift apart. Inbound bodies are still
//! read by the hand-written [`crate::ticket::decode`] (its error messages name each field);
//! the inbound types here exist for their schemas, and a unit test keeps the two in agreement.
//! `jelou-bridge schemas --out schemas/` writes the files that `docs/asyncapi.yaml` refers to.
//!
//! - `outbound`: what the bridge publishes (`conversation.started`, `ticket.failed`, …);
//! - `inbound`: what the helpdesk sends (`ticket.opened`, `ticket.resolved`, `ticket.reply`);
//! - `schema`: the list of messages, their schemas, and the files `schemas/` holds.
//!
//! The types' doc comments are the schemas' `description`s: editing one changes a committed
//! schema file (a unit test then says to regenerate them).

mod inbound;
mod outbound;
mod schema;

pub use inbound::{
    AssignmentKind, AssignmentMessage, AttachmentKind, AttachmentMessage, RedirectPayload,
    ReplyContentMessage, TicketOpenedMessage, TicketReplyMessage, TicketResolvedMessage,
};
pub use outbound::{
    ActiveStatus, ClosedStatus, ConversationClosed, ConversationStarted, FailedAction, JelouEvent,
    MessageSent, TicketFailed,
};
pub use schema::{file_name, messages, render, write_all, Direction, Message, WriteError};
