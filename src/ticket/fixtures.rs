//! Ticket events decoded from JSON, for the unit tests of the modules that take them: the
//! tests build their events through [`decode`], as the bridge does.

use serde_json::Value;

use super::{decode, InvalidMessage, TicketEvent, TicketOpened, TicketReply};

/// A body limit no test body comes near.
pub const MAX: usize = 1 << 20;

/// `body` decoded as a `ticket.opened`; panics on anything else.
pub fn opened(body: Value) -> TicketOpened {
    match decode("ticket.opened", body.to_string().as_bytes(), MAX).unwrap() {
        TicketEvent::Opened(t) => t,
        other => panic!("{other:?}"),
    }
}

/// `body` decoded as a `ticket.reply`, or why it was refused.
pub fn reply(body: Value) -> Result<TicketReply, InvalidMessage> {
    match decode("ticket.reply", body.to_string().as_bytes(), MAX)? {
        TicketEvent::Reply(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}
