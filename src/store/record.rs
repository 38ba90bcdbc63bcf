//! What the store holds and answers: a ticket's state and record, and the answers to the
//! claims a delivery makes before it calls Jelou.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    Starting,
    Active,
    Closing,
    Closed,
    Failed,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Starting => "starting",
            TicketState::Active => "active",
            TicketState::Closing => "closing",
            TicketState::Closed => "closed",
            TicketState::Failed => "failed",
        }
    }
}

impl FromStr for TicketState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "starting" => TicketState::Starting,
            "active" => TicketState::Active,
            "closing" => TicketState::Closing,
            "closed" => TicketState::Closed,
            "failed" => TicketState::Failed,
            other => return Err(format!("unknown ticket state {other:?}")),
        })
    }
}

/// One ticket as the store knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketRecord {
    pub ticket_id: String,
    pub bot_id: Option<String>,
    pub user_id: Option<String>,
    pub conversation_id: Option<String>,
    /// The conversation's room in Jelou (what sending it a message needs), once known.
    pub room_id: Option<String>,
    #[serde(serialize_with = "state_str")]
    pub state: TicketState,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
    pub ended_reason: Option<String>,
    pub last_error: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The W3C `traceparent` of the delivery that started the ticket, when it had a trace.
    pub traceparent: Option<String>,
}

fn state_str<S: serde::Serializer>(state: &TicketState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

impl<'r> FromRow<'r, AnyRow> for TicketRecord {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        let state: String = row.try_get("state")?;
        Ok(TicketRecord {
            ticket_id: row.try_get("ticket_id")?,
            bot_id: row.try_get("bot_id")?,
            user_id: row.try_get("user_id")?,
            conversation_id: row.try_get("conversation_id")?,
            room_id: row.try_get("room_id")?,
            state: state
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            owner: row.try_get("owner")?,
            lease_until: row.try_get("lease_until")?,
            ended_reason: row.try_get("ended_reason")?,
            last_error: row.try_get("last_error")?,
            attempts: row.try_get("attempts")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            traceparent: row.try_get("traceparent")?,
        })
    }
}

/// `ended_reason` of a ticket whose conversation a later ticket of the same user replaced.
pub const SUPERSEDED: &str = "superseded";

/// The answer to "may I start this ticket?".
#[derive(Debug, Clone, PartialEq)]
pub enum StartClaim {
    /// Yes: this process holds the ticket until it records the result or releases it.
    /// `learned_conversation`: an earlier start whose answer was lost did open this
    /// conversation (Jelou's webhook said so): finish with it, call nobody.
    Claimed {
        learned_conversation: Option<String>,
    },
    /// Already started (or further along): publish what is known, call nobody.
    AlreadyStarted(TicketRecord),
    /// Another live process is starting it right now.
    Busy(TicketRecord),
}

/// The answer to "may I close this ticket?".
#[derive(Debug, Clone, PartialEq)]
pub enum CloseClaim {
    Claimed(TicketRecord),
    AlreadyClosed(TicketRecord),
    /// Its start or another close is under way (or parked): wait.
    Pending(TicketRecord),
    /// Its start failed for good.
    StartFailed(TicketRecord),
    /// The store has never seen it.
    Unknown,
}

/// The answer to "may I send this agent's message?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageClaim {
    /// Yes: this process holds it until it records the send or lets go.
    Claimed,
    /// Sent already, in this conversation: publish `message.sent` again, call nobody.
    Sent { conversation_id: Option<String> },
    /// Another live process is sending it right now.
    Busy,
}

/// The answer to "should this webhook delivery be forwarded?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookClaim {
    /// Yes, by this request.
    Claimed,
    /// No: it was forwarded already.
    Published,
    /// Another request is forwarding it right now.
    InFlight,
}
