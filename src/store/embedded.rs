//! The embedded store's group commit without a driver in between: on SQLite the claim and
//! finish writes of a round go to one connection of their own, on a thread of its own, in
//! one transaction. sqlx runs each SQLite statement on its worker thread and sends each row
//! back through a channel; here a round costs one wake-up of this thread and one commit,
//! whatever the number of tickets in it, and the statements are prepared once.
//!
//! Each ticket is decided alone by the same single-row conditions as [`super::batch`]'s
//! statements decide it; the transaction commits before any caller is answered, so a write
//! that must come before an ack still does. A failed round is rolled back and every caller
//! in it gets the error, as after a failed batch statement.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use tokio::sync::mpsc;

use super::batch::round::Round;
use super::batch::{next_round, Claim, Finish, Taken, Write, CLAIM_TAKES_OVER};
use super::{Clock, StoreError, TicketRecord, TicketState, COLUMNS, SUPERSEDED};

/// How long a write waits for another connection's write lock (as the pool's connections).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The rows a start of ticket ?1 with conversation ?5 replaced: the same bot (?3) and user
/// (?4), still active on another conversation (?2 is the time of the update).
const REPLACED: &str = "bot_id = ?3 AND user_id = ?4 AND state = 'active' AND ticket_id <> ?1 \
                        AND conversation_id <> ?5";

/// Opens the writer's own connection to the store's file (migrated already, in WAL mode) and
/// starts its thread; the callers' side is `tx`'s receiver.
pub(super) fn start(
    path: &Path,
    clock: Clock,
    instance: String,
    lease_ms: i64,
    rx: mpsc::UnboundedReceiver<Write>,
) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(embedded)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(embedded)?;
    // As the pool's connections: durable across a process crash, no fsync per commit.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(embedded)?;
    let writer = Writer {
        conn: Some(conn),
        rules: Rules {
            clock,
            instance,
            lease_ms,
            sql: Statements::new(),
        },
    };
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| embedded(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    Ok(())
}

fn embedded(e: rusqlite::Error) -> StoreError {
    StoreError::Embedded(Arc::new(e))
}

struct Writer {
    /// None once the store closed: later writes fail.
    conn: Option<Connection>,
    rules: Rules,
}

/// What every round's statements are given besides the rows.
struct Rules {
    /// The store's clock: leases are written and compared on it.
    clock: Clock,
    /// This process, as the `owner` of what it claims.
    instance: String,
    lease_ms: i64,
    sql: Statements,
}

/// The single-row forms of `batch`'s statements, prepared once by the connection.
///
/// Without `RETURNING`: SQLite builds a temporary table and a statement journal for every
/// statement that returns what it wrote (three per ticket), which cost more than the write
/// itself. What a write took is read back by primary key in the same transaction instead
/// (not at all for a claim of a new ticket, whose row holds only what the claim wrote), and
/// the supersede update runs only when there is something to supersede.
struct Statements {
    /// A claim of a ticket the store does not know: nothing to take over, nothing learned.
    fresh: String,
    /// `claim_start`'s insert-or-take (see `batch::claim_rows`).
    claim: String,
    /// `finish_start`'s update (see `batch::finish_rows`).
    finish: String,
    /// Whether a start replaced conversations of other tickets (see `batch::supersede_after`).
    replaced: String,
    /// The conversations a start replaced.
    supersede: String,
    /// A ticket's row, all of [`COLUMNS`].
    row: String,
}

impl Statements {
    fn new() -> Statements {
        const INSERT: &str = "INSERT INTO tickets (ticket_id, bot_id, user_id, state, owner, \
             lease_until, attempts, created_at, updated_at, traceparent) \
             VALUES (?1, ?2, ?3, 'starting', ?4, ?5, 1, ?6, ?6, ?7)";
        Statements {
            fresh: format!("{INSERT} ON CONFLICT (ticket_id) DO NOTHING"),
            claim: format!("{INSERT} {CLAIM_TAKES_OVER}"),
            finish: "UPDATE tickets SET state = 'active', conversation_id = ?2, owner = NULL, \
                 lease_until = NULL, last_error = NULL, updated_at = ?3 \
                 WHERE ticket_id = ?1 AND state = 'starting'"
                .to_string(),
            replaced: format!("SELECT 1 FROM tickets WHERE {REPLACED} LIMIT 1"),
            supersede: format!(
                "UPDATE tickets SET state = 'closed', ended_reason = '{SUPERSEDED}', owner = NULL, \
                 lease_until = NULL, last_error = 'its conversation was replaced by ticket ' || ?1, \
                 updated_at = ?2 WHERE {REPLACED}"
            ),
            row: format!("SELECT {COLUMNS} FROM tickets WHERE ticket_id = ?1"),
        }
    }
}

/// What a committed round answers, in the round's order: what each claim took, the row each
/// finish updated.
type Answers = (Vec<Option<Taken>>, Vec<Option<TicketRecord>>);

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Write>) {
        let mut queued: VecDeque<Write> = VecDeque::new();
        loop {
            if queued.is_empty() {
                match rx.blocking_recv() {
                    Some(w) => queued.push_back(w),
                    None => return,
                }
            }
            let Round {
                claims,
                finishes,
                closing,
            } = next_round(&mut queued, &mut rx);
            if !claims.is_empty() || !finishes.is_empty() {
                let answers = match self.conn.as_mut() {
                    Some(conn) => write(conn, &self.rules, &claims, &finishes).map_err(embedded),
                    None => Err(StoreError::WriterStopped),
                };
                answer(claims, finishes, answers);
            }
            if !closing.is_empty() {
                self.conn = None;
                for done in closing {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// One round in one transaction: the claims, then the finishes and the conversations they
/// supersede (see `batch::supersede_after`), committed before anyone is answered.
fn write(
    conn: &mut Connection,
    rules: &Rules,
    claims: &[Claim],
    finishes: &[Finish],
) -> rusqlite::Result<Answers> {
    let (now, lease_ms) = (rules.clock.now(), rules.lease_ms);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut taken = Vec::with_capacity(claims.len());
    if !claims.is_empty() {
        let mut fresh = tx.prepare_cached(&rules.sql.fresh)?;
        let mut claim = tx.prepare_cached(&rules.sql.claim)?;
        let mut row = tx.prepare_cached(&rules.sql.row)?;
        for c in claims {
            let values = params![
                c.ticket_id,
                c.bot_id,
                c.user_id,
                rules.instance,
                now + lease_ms,
                now,
                c.traceparent
            ];
            // Most claims are of new tickets: one insert, no row to read back.
            let took = if fresh.execute(values)? == 1 {
                Some(Taken {
                    learned_conversation: None,
                })
            } else if claim.execute(values)? == 1 {
                // Taken over: a row taken over may know its conversation.
                let learned_conversation =
                    row.query_row(params![c.ticket_id], |r| r.get::<_, Option<String>>(3))?;
                Some(Taken {
                    learned_conversation,
                })
            } else {
                None
            };
            taken.push(took);
        }
    }
    let mut finished = Vec::with_capacity(finishes.len());
    let mut superseded = 0;
    if !finishes.is_empty() {
        let mut finish = tx.prepare_cached(&rules.sql.finish)?;
        let mut row = tx.prepare_cached(&rules.sql.row)?;
        let mut replaced = tx.prepare_cached(&rules.sql.replaced)?;
        let mut supersede = tx.prepare_cached(&rules.sql.supersede)?;
        for f in finishes {
            if finish.execute(params![f.ticket_id, f.conversation_id, now])? == 0 {
                finished.push(None);
                continue;
            }
            let record = row.query_row(params![f.ticket_id], record)?;
            if let (Some(bot), Some(user), Some(conversation)) =
                (&record.bot_id, &record.user_id, &record.conversation_id)
            {
                let replacing = params![record.ticket_id, now, bot, user, conversation];
                if replaced.exists(replacing)? {
                    superseded += supersede.execute(replacing)?;
                }
            }
            finished.push(Some(record));
        }
    }
    tx.commit()?;
    // Only what was committed is reported.
    super::batch::report_superseded(superseded as u64);
    Ok((taken, finished))
}

/// A row of [`COLUMNS`], in their order.
fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<TicketRecord> {
    let state: String = row.get(5)?;
    Ok(TicketRecord {
        ticket_id: row.get(0)?,
        bot_id: row.get(1)?,
        user_id: row.get(2)?,
        conversation_id: row.get(3)?,
        room_id: row.get(4)?,
        state: state.parse::<TicketState>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into())
        })?,
        owner: row.get(6)?,
        lease_until: row.get(7)?,
        ended_reason: row.get(8)?,
        last_error: row.get(9)?,
        attempts: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
        traceparent: row.get(13)?,
    })
}

fn answer(claims: Vec<Claim>, finishes: Vec<Finish>, answers: Result<Answers, StoreError>) {
    match answers {
        Ok((taken, finished)) => {
            // One answer per write, in the round's order (`write` pushes one for each).
            debug_assert_eq!(
                (taken.len(), finished.len()),
                (claims.len(), finishes.len())
            );
            for (c, took) in claims.into_iter().zip(taken) {
                let _ = c.done.send(Ok(took));
            }
            for (f, record) in finishes.into_iter().zip(finished) {
                let _ = f.done.send(Ok(record));
            }
        }
        Err(e) => {
            for c in claims {
                let _ = c.done.send(Err(e.clone()));
            }
            for f in finishes {
                let _ = f.done.send(Err(e.clone()));
            }
        }
    }
}
