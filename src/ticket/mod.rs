//! The domain: helpdesk ticket events, checked field by field, and the Jelou requests they
//! become. Pure data and functions; no I/O.
//!
//! - this file: the events as types ([`TicketEvent`] and what each kind carries);
//! - `decode`: bytes off the bus → [`TicketEvent`], or [`InvalidMessage`] naming the field;
//! - `routing`: who takes a new conversation (the message's assignment, its queue, the
//!   routing rules, the default queue);
//! - `requests`: the Jelou calls an event becomes ([`start_request`], [`close_request`],
//!   [`message_request`]).
//!
//! The submodules are private and everything public is re-exported here, so callers name
//! `ticket::decode`, `ticket::StartRequest`, … whichever file holds them.

mod decode;
#[cfg(test)]
mod fixtures;
mod requests;
mod routing;

use serde::Serialize;
use serde_json::{Map, Value};

pub use decode::{decode, InvalidMessage};
pub use requests::{
    close_request, message_request, start_request, CloseRequest, MessageRequest, MessageValue,
    MissingField, Recipient, StartRequest,
};
pub use routing::choose_queue;

/// The event types the bridge consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new ticket: start its conversation.
    Opened,
    /// A solved ticket: close its conversation.
    Resolved,
    /// A helpdesk agent's message to the customer.
    Reply,
}

impl EventKind {
    /// The kind a routing key or `event` names; None for anything else.
    pub fn parse(name: &str) -> Option<EventKind> {
        match name {
            "ticket.opened" => Some(EventKind::Opened),
            "ticket.resolved" => Some(EventKind::Resolved),
            "ticket.reply" => Some(EventKind::Reply),
            _ => None,
        }
    }

    /// Its name on the bus (the routing key).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "ticket.opened",
            EventKind::Resolved => "ticket.resolved",
            EventKind::Reply => "ticket.reply",
        }
    }

    /// The Jelou action it leads to, as `ticket.failed` names it.
    pub fn action(self) -> &'static str {
        match self {
            EventKind::Opened => "start",
            EventKind::Resolved => "close",
            EventKind::Reply => "message",
        }
    }
}

/// A Jelou assignment: `queue`, `operator` or `team`, and its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
}

/// `ticket.opened`: open a Jelou conversation for the ticket's customer.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketOpened {
    pub ticket_id: String,
    pub user_id: String,
    pub bot_id: Option<String>,
    pub initial_message: Option<String>,
    pub queue: Option<String>,
    pub assignment: Option<Assignment>,
    pub metadata: Map<String, Value>,
    /// The whole body, for routing rules that look at any field.
    pub body: Value,
}

/// `ticket.resolved`: close the ticket's conversation. Bot and user may be left out when
/// the store remembers them.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketResolved {
    pub ticket_id: String,
    pub user_id: Option<String>,
    pub bot_id: Option<String>,
    pub closing_message: Option<String>,
    pub redirect_payload: Option<Value>,
}

/// `ticket.reply`: an agent's message, sent to the customer once per `messageId`.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketReply {
    pub ticket_id: String,
    /// The helpdesk's own id of the message: the send-once key, and Jelou's `value.id`.
    pub message_id: String,
    pub content: ReplyContent,
}

/// What an agent's message carries: text, or one attachment.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyContent {
    Text(String),
    Attachment(Attachment),
}

/// A media attachment of a reply; `url` is https.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// `image`, `video`, `audio` or `document`.
    pub kind: String,
    pub url: String,
    pub mime_type: String,
    pub caption: Option<String>,
    pub filename: Option<String>,
}

/// The attachment types Jelou's send-message endpoint takes.
pub const ATTACHMENT_TYPES: &[&str] = &["image", "video", "audio", "document"];

/// One inbound ticket event, decoded and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum TicketEvent {
    Opened(TicketOpened),
    Resolved(TicketResolved),
    Reply(TicketReply),
}

impl TicketEvent {
    /// The helpdesk's ticket id.
    pub fn ticket_id(&self) -> &str {
        match self {
            TicketEvent::Opened(t) => &t.ticket_id,
            TicketEvent::Resolved(t) => &t.ticket_id,
            TicketEvent::Reply(t) => &t.ticket_id,
        }
    }

    /// Which of the event types it is.
    pub fn kind(&self) -> EventKind {
        match self {
            TicketEvent::Opened(_) => EventKind::Opened,
            TicketEvent::Resolved(_) => EventKind::Resolved,
            TicketEvent::Reply(_) => EventKind::Reply,
        }
    }
}
