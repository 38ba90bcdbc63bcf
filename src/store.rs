//! The ticket store: what the bridge did per ticket, so that redeliveries and duplicates are
//! absorbed and a `ticket.resolved` can be served from a ticket id alone.
//!
//! One interface over SQLite (embedded, WAL, the default) and PostgreSQL (several replicas),
//! through sqlx's `Any` driver and one set of portable migrations. Every state change is a
//! single atomic statement; which bridge process works on a ticket is a lease in the row
//! (`owner`, `lease_until`), renewed while it works, so a crashed replica's hold expires.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, FromRow, Row};

pub use crate::clock::{now_ms, Clock};
use crate::config::StoreSettings;

mod batch;
pub mod schema;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, thiserror::Error)]
#[error("ticket store: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError(crate::error::error_chain(&e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError(format!("migration failed: {e}"))
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A newer release migrated the store: a configuration error (exit 2), not an outage.
    #[error(transparent)]
    SchemaTooNew(#[from] schema::SchemaTooNew),
}

impl From<sqlx::Error> for ConnectError {
    fn from(e: sqlx::Error) -> Self {
        ConnectError::Store(e.into())
    }
}

impl From<sqlx::migrate::MigrateError> for ConnectError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        ConnectError::Store(e.into())
    }
}

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

const COLUMNS: &str = "ticket_id, bot_id, user_id, conversation_id, room_id, state, owner, \
                       lease_until, ended_reason, last_error, attempts, created_at, updated_at, traceparent";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// This process, as the `owner` of the tickets it works on.
    instance: String,
    lease: Duration,
    /// Gathers the per-ticket claim and finish writes of concurrent deliveries into one
    /// statement each (see [`batch`]).
    writes: batch::Batcher,
    /// The store's clock, which every lease is read and written on.
    clock: Clock,
    /// Tickets this process is working on right now: the only leases it renews.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// While alive, its ticket counts as in flight in this process: its lease is renewed.
pub struct Hold {
    held: Arc<Mutex<HashMap<String, usize>>>,
    ticket_id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ticket_id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ticket_id);
            }
        }
    }
}

impl Store {
    /// Opens (creating a SQLite file and its directory if needed) and migrates the store;
    /// refuses a store that a newer release migrated (see [`schema`]).
    pub async fn connect(
        settings: &StoreSettings,
        instance: String,
    ) -> Result<Store, ConnectError> {
        sqlx::any::install_default_drivers();
        let mut url = settings.url.expose_secret().to_string();
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            url = prepare_sqlite_url(&url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // An embedded SQLite connection cannot go stale, and checking it costs a round
            // trip to its worker thread before every statement.
            .test_before_acquire(!sqlite)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers run beside the writer; NORMAL sync is durable
                        // across a process crash (the bridge's failure model) and cheap.
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if sqlite {
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        // Before migrating: sqlx would refuse a newer store too, but with an error about a
        // "missing" migration that reads like a broken build.
        let applied = {
            let mut conn = pool.acquire().await?;
            schema::applied(&mut conn).await?
        };
        if let Some(refusal) = schema::SchemaReport::compare(&applied, &schema::known()).refusal() {
            pool.close().await;
            return Err(refusal.into());
        }
        MIGRATOR.run(&pool).await?;
        let clock = Clock::default();
        let writes = batch::Batcher::start(
            pool.clone(),
            clock.clone(),
            instance.clone(),
            settings.lease.as_millis() as i64,
        );
        let store = Store {
            pool,
            instance,
            lease: settings.lease,
            writes,
            clock,
            held: Arc::default(),
        };
        if !sqlite {
            store.sync_clock().await?;
        }
        Ok(store)
    }

    /// Measures the offset between this host's clock and the database's (PostgreSQL).
    pub async fn sync_clock(&self) -> Result<(), StoreError> {
        if self.pool.connect_options().database_url.scheme() == "sqlite" {
            return Ok(());
        }
        // This host's own clock, not the store's (which already carries the offset).
        let before = now_ms();
        let db: i64 = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await?;
        let after = now_ms();
        let offset = db - (before + after) / 2;
        let previous = self.clock.set_offset_ms(offset);
        if offset.abs() > 2000 && (previous - offset).abs() > 1000 {
            tracing::warn!(
                offset_ms = offset,
                "this host's clock differs from the store's; leases follow the store's clock"
            );
        }
        Ok(())
    }

    /// The store's clock (see [`Clock`]).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Marks `ticket_id` as in flight in this process until the hold is dropped: its lease
    /// is renewed meanwhile, and only then.
    pub fn hold(&self, ticket_id: &str) -> Hold {
        *self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ticket_id.to_string())
            .or_default() += 1;
        Hold {
            held: self.held.clone(),
            ticket_id: ticket_id.to_string(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn get(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE ticket_id = $1"
        ))
        .bind(ticket_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn find_by_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE conversation_id = $1 ORDER BY updated_at DESC LIMIT 1"
        ))
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The other tickets of a bot + user whose conversation the bridge believes open
    /// (`active`, or `closing` and not closed yet): who owns that user's conversation.
    pub async fn open_tickets_of(
        &self,
        bot_id: &str,
        user_id: &str,
        except_ticket: &str,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE bot_id = $1 AND user_id = $2 \
             AND state IN ('active', 'closing') AND ticket_id <> $3 ORDER BY updated_at"
        ))
        .bind(bot_id)
        .bind(user_id)
        .bind(except_ticket)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tickets whose conversation the store believes open and that nobody works on now
    /// (`active`, or `closing` with no live holder), not updated since `before`, oldest
    /// first: what `reconcile` checks against Jelou.
    pub async fn open_tickets_before(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE conversation_id IS NOT NULL AND updated_at < $1 \
             AND (state = 'active' OR (state = 'closing' AND (owner IS NULL OR lease_until < $2))) \
             ORDER BY updated_at LIMIT $3"
        ))
        .bind(before)
        .bind(self.clock.now())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tickets, newest first, optionally in one state.
    pub async fn list(
        &self,
        state: Option<TicketState>,
        limit: i64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        let rows = match state {
            Some(s) => {
                sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tickets WHERE state = $1 ORDER BY updated_at DESC LIMIT $2"
            ))
                .bind(s.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM tickets ORDER BY updated_at DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// Takes the ticket for a start call, unless it was started already or another live
    /// process is starting it. A ticket whose start failed for good, or whose starter let go
    /// (parked) or died (lease expired), can be taken again.
    pub async fn claim_start(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
    ) -> Result<StartClaim, StoreError> {
        self.claim_start_traced(ticket_id, bot_id, user_id, None)
            .await
    }

    /// [`Store::claim_start`], keeping `traceparent` as the ticket's trace when it has none
    /// yet (Jelou's webhooks about the ticket join it; `tickets show` names it).
    pub async fn claim_start_traced(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
        traceparent: Option<&str>,
    ) -> Result<StartClaim, StoreError> {
        // Insert, or take over a row that failed for good or whose holder let go or died;
        // the statement is in `batch` (shared with concurrent claims).
        if let Some(taken) = self
            .writes
            .claim(ticket_id, bot_id, user_id, traceparent)
            .await?
        {
            return Ok(StartClaim::Claimed {
                learned_conversation: taken.learned_conversation,
            });
        }
        let record = self
            .get(ticket_id)
            .await?
            .ok_or_else(|| StoreError(format!("ticket {ticket_id} vanished while claiming it")))?;
        Ok(match record.state {
            TicketState::Starting => StartClaim::Busy(record),
            _ => StartClaim::AlreadyStarted(record),
        })
    }

    /// Records the conversation Jelou opened. Returns the ticket as stored afterwards: when
    /// another process recorded a conversation first, that one stands.
    pub async fn finish_start(
        &self,
        ticket_id: &str,
        conversation_id: &str,
    ) -> Result<TicketRecord, StoreError> {
        // Only a row still `starting` is updated (the statement is in `batch`).
        if let Some(record) = self.writes.finish(ticket_id, conversation_id).await? {
            return Ok(record);
        }
        self.get(ticket_id)
            .await?
            .ok_or_else(|| StoreError(format!("ticket {ticket_id} vanished after its start")))
    }

    /// The start failed for good.
    pub async fn fail_start(&self, ticket_id: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = 'failed', owner = NULL, lease_until = NULL, last_error = $2, \
             updated_at = $3 WHERE ticket_id = $1 AND state = 'starting'",
        )
        .bind(ticket_id)
        .bind(error)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets go of a ticket without a result (its message is parked or goes back to the
    /// queue): the state stays, so later events of the ticket keep waiting for it.
    pub async fn release(&self, ticket_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET owner = NULL, lease_until = NULL, last_error = COALESCE($3, last_error), \
             updated_at = $4 WHERE ticket_id = $1 AND owner = $2",
        )
        .bind(ticket_id)
        .bind(&self.instance)
        .bind(error)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes an active ticket for a close call.
    pub async fn claim_close(&self, ticket_id: &str) -> Result<CloseClaim, StoreError> {
        let now = self.clock.now();
        let claimed: Option<TicketRecord> = sqlx::query_as(&format!(
            "UPDATE tickets SET state = 'closing', owner = $2, lease_until = $3, updated_at = $4 \
             WHERE ticket_id = $1 AND (state = 'active' OR (state = 'closing' AND (owner IS NULL \
                 OR owner = $2 OR lease_until < $4))) \
             RETURNING {COLUMNS}"
        ))
        .bind(ticket_id)
        .bind(&self.instance)
        .bind(now + self.lease_ms())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(record) = claimed {
            return Ok(CloseClaim::Claimed(record));
        }
        Ok(match self.get(ticket_id).await? {
            None => CloseClaim::Unknown,
            Some(r) => match r.state {
                TicketState::Closed => CloseClaim::AlreadyClosed(r),
                TicketState::Failed => CloseClaim::StartFailed(r),
                _ => CloseClaim::Pending(r),
            },
        })
    }

    /// Takes a ticket the store has never seen for a close, with the ids its message gave.
    pub async fn claim_close_unknown(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
    ) -> Result<CloseClaim, StoreError> {
        let now = self.clock.now();
        let inserted: Option<TicketRecord> = sqlx::query_as(&format!(
            "INSERT INTO tickets (ticket_id, bot_id, user_id, state, owner, lease_until, attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, 'closing', $4, $5, 0, $6, $6) ON CONFLICT (ticket_id) DO NOTHING \
             RETURNING {COLUMNS}"
        ))
        .bind(ticket_id)
        .bind(bot_id)
        .bind(user_id)
        .bind(&self.instance)
        .bind(now + self.lease_ms())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(r) => Ok(CloseClaim::Claimed(r)),
            None => self.claim_close(ticket_id).await,
        }
    }

    /// Records a ticket the store has never seen as resolved, without bot or user (its
    /// message named none): a later `ticket.opened` for it then makes no start call. Unknown
    /// when recorded; otherwise the claim of the row that appeared meanwhile.
    pub async fn resolve_unstarted(&self, ticket_id: &str) -> Result<CloseClaim, StoreError> {
        let now = self.clock.now();
        let inserted = sqlx::query(
            "INSERT INTO tickets (ticket_id, state, ended_reason, attempts, created_at, updated_at) \
             VALUES ($1, 'closed', 'never_started', 0, $2, $2) ON CONFLICT (ticket_id) DO NOTHING",
        )
        .bind(ticket_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(CloseClaim::Unknown);
        }
        self.claim_close(ticket_id).await
    }

    pub async fn finish_close(
        &self,
        ticket_id: &str,
        conversation_id: Option<&str>,
        ended_reason: Option<&str>,
    ) -> Result<TicketRecord, StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = 'closed', conversation_id = COALESCE(conversation_id, $2), \
             ended_reason = COALESCE($3, ended_reason), owner = NULL, lease_until = NULL, last_error = NULL, \
             updated_at = $4 WHERE ticket_id = $1",
        )
        .bind(ticket_id)
        .bind(conversation_id)
        .bind(ended_reason)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        self.get(ticket_id)
            .await?
            .ok_or_else(|| StoreError(format!("ticket {ticket_id} vanished after its close")))
    }

    /// The close failed for good: the conversation stays as it was.
    pub async fn fail_close(&self, ticket_id: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = CASE WHEN conversation_id IS NULL THEN 'failed' ELSE 'active' END, \
             owner = NULL, lease_until = NULL, last_error = $2, updated_at = $3 \
             WHERE ticket_id = $1 AND state = 'closing'",
        )
        .bind(ticket_id)
        .bind(error)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Extends the lease of every ticket in flight in this process (see [`Store::hold`]);
    /// a ticket this process holds in the store but no longer works on (a write that failed
    /// after Jelou answered, say) is left to expire, so another pass can take it.
    pub async fn renew_leases(&self) -> Result<u64, StoreError> {
        let held: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut renewed = 0;
        for chunk in held.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "UPDATE tickets SET lease_until = $1 WHERE owner = $2 \
                 AND state IN ('starting', 'closing') AND ticket_id IN ({})",
                list.join(", ")
            );
            let mut query = sqlx::query(&sql)
                .bind(self.clock.now() + self.lease_ms())
                .bind(&self.instance);
            for t in chunk {
                query = query.bind(t);
            }
            renewed += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(renewed)
    }

    /// Jelou said a conversation started for this ticket (its webhook), in this room.
    pub async fn note_conversation_started(
        &self,
        ticket_id: &str,
        conversation_id: &str,
        room_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET conversation_id = COALESCE(conversation_id, $2), \
             room_id = CASE WHEN conversation_id IS NULL OR conversation_id = $2 \
                 THEN COALESCE($3, room_id) ELSE room_id END, updated_at = $4 \
             WHERE ticket_id = $1",
        )
        .bind(ticket_id)
        .bind(conversation_id)
        .bind(room_id)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The room of a conversation, learned from Jelou (the read of the conversation).
    pub async fn note_room(&self, conversation_id: &str, room_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET room_id = $2, updated_at = $3 WHERE conversation_id = $1 AND room_id IS NULL",
        )
        .bind(conversation_id)
        .bind(room_id)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes an agent's message of a ticket for sending, unless it was sent already or
    /// another live process is sending it. A claim whose holder let go (parked) or died
    /// (lease expired) is taken again: its earlier send's answer was never recorded.
    pub async fn claim_message(
        &self,
        ticket_id: &str,
        message_id: &str,
        conversation_id: &str,
    ) -> Result<MessageClaim, StoreError> {
        let now = self.clock.now();
        let claimed = sqlx::query(
            "INSERT INTO sent_messages (ticket_id, message_id, conversation_id, state, owner, lease_until, created_at, updated_at) \
             VALUES ($1, $2, $3, 'sending', $4, $5, $6, $6) \
             ON CONFLICT (ticket_id, message_id) DO UPDATE SET owner = excluded.owner, \
                 lease_until = excluded.lease_until, updated_at = excluded.updated_at \
             WHERE sent_messages.state = 'sending' AND (sent_messages.owner IS NULL \
                 OR sent_messages.owner = excluded.owner OR sent_messages.lease_until < $6) \
             RETURNING message_id",
        )
        .bind(ticket_id)
        .bind(message_id)
        .bind(conversation_id)
        .bind(&self.instance)
        .bind(now + self.lease_ms())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(MessageClaim::Claimed);
        }
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT state, conversation_id FROM sent_messages WHERE ticket_id = $1 AND message_id = $2",
        )
        .bind(ticket_id)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((state, conversation_id)) if state == "sent" => {
                MessageClaim::Sent { conversation_id }
            }
            _ => MessageClaim::Busy,
        })
    }

    /// Jelou took the message.
    pub async fn finish_message(
        &self,
        ticket_id: &str,
        message_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sent_messages SET state = 'sent', owner = NULL, lease_until = NULL, updated_at = $3 \
             WHERE ticket_id = $1 AND message_id = $2",
        )
        .bind(ticket_id)
        .bind(message_id)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets go of a message: `forget` when Jelou refused it (nothing was sent, and a replay
    /// of the dead letter may try again), else only the hold (it may have been sent).
    pub async fn release_message(
        &self,
        ticket_id: &str,
        message_id: &str,
        forget: bool,
    ) -> Result<(), StoreError> {
        let sql = if forget {
            "DELETE FROM sent_messages WHERE ticket_id = $1 AND message_id = $2 AND state = 'sending' AND owner = $3"
        } else {
            "UPDATE sent_messages SET owner = NULL, lease_until = NULL \
             WHERE ticket_id = $1 AND message_id = $2 AND state = 'sending' AND owner = $3"
        };
        sqlx::query(sql)
            .bind(ticket_id)
            .bind(message_id)
            .bind(&self.instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Jelou said a conversation was closed (say by an operator): a later `ticket.resolved`
    /// then makes no close call.
    pub async fn note_conversation_closed(
        &self,
        conversation_id: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET state = 'closed', ended_reason = COALESCE($2, ended_reason), \
             updated_at = $3 WHERE conversation_id = $1 AND state IN ('active', 'closing')",
        )
        .bind(conversation_id)
        .bind(reason)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims a webhook delivery for forwarding. A claim left unpublished for `stale_after`
    /// (its process died before the broker confirmed) may be taken again.
    pub async fn claim_webhook(
        &self,
        key: &str,
        stale_after: Duration,
    ) -> Result<WebhookClaim, StoreError> {
        let now = self.clock.now();
        let claimed = sqlx::query(
            "INSERT INTO webhook_events (event_key, received_at, published) VALUES ($1, $2, 0) \
             ON CONFLICT (event_key) DO UPDATE SET received_at = excluded.received_at \
             WHERE webhook_events.published = 0 AND webhook_events.received_at < $3 \
             RETURNING event_key",
        )
        .bind(key)
        .bind(now)
        .bind(now - stale_after.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(WebhookClaim::Claimed);
        }
        let published: Option<i64> =
            sqlx::query_scalar("SELECT published FROM webhook_events WHERE event_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match published {
            Some(0) => WebhookClaim::InFlight,
            _ => WebhookClaim::Published,
        })
    }

    /// The claimed delivery was forwarded: later deliveries of it are duplicates.
    pub async fn mark_webhook_published(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_events SET published = 1 WHERE event_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a webhook delivery that could not be forwarded, so Jelou's retry gets through.
    pub async fn forget_webhook(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_events WHERE event_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes at most `limit` webhook deliveries received more than `older_than` ago (on
    /// the store's clock); how many went. Bounded, so one prune never holds the table long.
    pub async fn prune_webhooks(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let cutoff = self.clock.now() - older_than.as_millis().min(i64::MAX as u128) as i64;
        let done = sqlx::query(
            "DELETE FROM webhook_events WHERE event_key IN \
             (SELECT event_key FROM webhook_events WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Webhook deliveries the dedupe table holds now.
    pub async fn webhook_events(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }
}

/// Creates the SQLite file's directory and asks for the file to be created.
fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_string());
    }
    if let Some(dir) = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(if rest.contains("mode=") {
        url.to_string()
    } else if rest.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}
