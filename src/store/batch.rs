//! Group commit for the two writes every ticket makes. Concurrent `claim_start` calls are
//! gathered and sent to the database as one multi-row statement, and so are concurrent
//! `finish_start` calls: a busy bridge pays one round trip (and one commit) per batch
//! instead of one per ticket. Each row is still decided alone by the statement's conditions,
//! exactly as the single-row statement decided it: batching changes the cost, not the answer.
//!
//! One task owns the batching. It takes what callers queued while the previous batch ran
//! (so an idle bridge sends batches of one, without waiting) and answers each caller on
//! its own channel. It keeps one connection for its batches, so that no pool hand-off is
//! paid per batch and, on SQLite, the connection's page cache is not thrown away because
//! another connection wrote in between.

use std::collections::{HashMap, VecDeque};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::{Clock, StoreError, TicketRecord, COLUMNS, SUPERSEDED};

pub(super) mod round;
pub(super) use round::next_round;

pub(super) struct Claim {
    pub(super) ticket_id: String,
    pub(super) bot_id: String,
    pub(super) user_id: String,
    pub(super) traceparent: Option<String>,
    /// Some when the row was taken.
    pub(super) done: oneshot::Sender<Result<Option<Taken>, StoreError>>,
}

/// A `starting` row this process took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Taken {
    /// The conversation the store learned for the ticket while an earlier start's answer
    /// was lost (Jelou's `conversation.start` webhook): no second start call is needed.
    pub(super) learned_conversation: Option<String>,
}

pub(super) struct Finish {
    pub(super) ticket_id: String,
    pub(super) conversation_id: String,
    /// The row after the update, or None when it was not `starting` any more.
    pub(super) done: oneshot::Sender<Result<Option<TicketRecord>, StoreError>>,
}

pub(super) enum Write {
    Claim(Claim),
    Finish(Finish),
    /// The store is closing: give the connection back and take no other.
    Close(oneshot::Sender<()>),
}

/// The callers' side; clones share the one batching task, which ends when the last is
/// dropped.
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Write>,
}

impl Batcher {
    pub(super) fn start(pool: AnyPool, clock: Clock, instance: String, lease_ms: i64) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, clock, instance, lease_ms, rx));
        Batcher { tx }
    }

    /// The same writes on an embedded store's file, by a connection and a thread of their
    /// own (see [`super::embedded`]).
    pub(super) fn start_embedded(
        file: &std::path::Path,
        clock: Clock,
        instance: String,
        lease_ms: i64,
    ) -> Result<Batcher, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        super::embedded::start(file, clock, instance, lease_ms, rx)?;
        Ok(Batcher { tx })
    }

    /// The `claim_start` insert-or-take of one ticket; Some when this process took it.
    pub(super) async fn claim(
        &self,
        ticket_id: &str,
        bot_id: &str,
        user_id: &str,
        traceparent: Option<&str>,
    ) -> Result<Option<Taken>, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Write::Claim(Claim {
            ticket_id: ticket_id.to_string(),
            bot_id: bot_id.to_string(),
            user_id: user_id.to_string(),
            traceparent: traceparent.map(str::to_string),
            done,
        }))?;
        answer.await.map_err(|_| stopped())?
    }

    /// The `finish_start` update of one ticket; the row after it, if it was `starting`.
    pub(super) async fn finish(
        &self,
        ticket_id: &str,
        conversation_id: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Write::Finish(Finish {
            ticket_id: ticket_id.to_string(),
            conversation_id: conversation_id.to_string(),
            done,
        }))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Gives the batches' connection back to the pool, which waits for it when closing;
    /// later writes fail as the closed pool's statements do.
    pub(super) async fn close(&self) {
        let (done, answer) = oneshot::channel();
        if self.tx.send(Write::Close(done)).is_ok() {
            let _ = answer.await;
        }
    }

    fn send(&self, write: Write) -> Result<(), StoreError> {
        self.tx.send(write).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::WriterStopped
}

/// PostgreSQL plans a prepared statement for its first executions, then may keep one
/// generic plan for the connection's life. Made on a new store's first rounds, on a table
/// of a few rows, that plan scans the whole table (as cheap as a key lookup then) and costs
/// more as the store grows. The writer's statements always have an index that finds their
/// rows (the key; the user's index, see [`STILL_ACTIVE`]): with sequential scans off on its
/// connection, the plan it keeps uses it at any size. (Planning every execution instead,
/// `plan_cache_mode = force_custom_plan`, did the same for 15-20 % more of the database's
/// CPU a ticket.)
pub(super) const INDEXES_ONLY: &str = "SET enable_seqscan = off";

/// The batches' connection, taken from the pool on first use and given back (closed) after
/// an error, so that a broken one is replaced.
struct Writer {
    pool: AnyPool,
    /// The store's clock: leases are written and compared on it.
    clock: Clock,
    conn: Option<PoolConnection<Any>>,
    closed: bool,
    /// SQLite, whose planner needs telling which index a join with `VALUES` should use.
    sqlite: bool,
}

impl Writer {
    async fn conn(&mut self) -> Result<&mut PoolConnection<Any>, sqlx::Error> {
        if self.closed {
            return Err(sqlx::Error::PoolClosed);
        }
        if self.conn.is_none() {
            let mut conn = self.pool.acquire().await?;
            if !self.sqlite {
                sqlx::query(INDEXES_ONLY).execute(&mut *conn).await?;
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// After a statement: a connection that failed other than by the database's answer
    /// (a deadlock, say) is closed, and the next batch takes a fresh one.
    fn check<T>(&mut self, result: &Result<T, sqlx::Error>) {
        if matches!(result, Err(e) if !matches!(e, sqlx::Error::Database(_))) {
            if let Some(mut conn) = self.conn.take() {
                conn.close_on_drop();
            }
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.conn = None;
    }
}

async fn run(
    pool: AnyPool,
    clock: Clock,
    instance: String,
    lease_ms: i64,
    mut rx: mpsc::UnboundedReceiver<Write>,
) {
    let sqlite = super::sqlite::is_sqlite(&pool);
    let mut writer = Writer {
        pool,
        clock,
        conn: None,
        closed: false,
        sqlite,
    };
    let mut queued: VecDeque<Write> = VecDeque::new();
    loop {
        if queued.is_empty() {
            match rx.recv().await {
                Some(w) => queued.push_back(w),
                None => return,
            }
        }
        let round = next_round(&mut queued, &mut rx);
        if !round.claims.is_empty() {
            claim_batch(&mut writer, &instance, lease_ms, round.claims).await;
        }
        if !round.finishes.is_empty() {
            finish_batch(&mut writer, round.finishes).await;
        }
        if !round.closing.is_empty() {
            writer.close();
            for done in round.closing {
                let _ = done.send(());
            }
        }
    }
}

/// Claims a batch: one statement for all, rows in ticket order so that two processes
/// claiming the same tickets lock them in the same order. Should PostgreSQL still report a
/// deadlock, the rows go one statement each, as they did before batching.
async fn claim_batch(writer: &mut Writer, instance: &str, lease_ms: i64, mut claims: Vec<Claim>) {
    claims.sort_by(|a, b| a.ticket_id.cmp(&b.ticket_id));
    match claim_rows(writer, instance, lease_ms, &claims).await {
        Err(e) if deadlocked(&e) && claims.len() > 1 => {
            for claim in claims {
                let taken =
                    claim_rows(writer, instance, lease_ms, std::slice::from_ref(&claim)).await;
                answer_claims(vec![claim], taken);
            }
        }
        taken => answer_claims(claims, taken),
    }
}

fn answer_claims(claims: Vec<Claim>, taken: Result<HashMap<String, Taken>, sqlx::Error>) {
    match taken {
        Ok(mut taken) => {
            for c in claims {
                let _ = c.done.send(Ok(taken.remove(&c.ticket_id)));
            }
        }
        Err(e) => fail_all(claims.into_iter().map(|c| c.done), e),
    }
}

/// Which existing row a claim takes over: one that failed for good, or is `starting` with
/// no holder, this process as holder, or a holder whose lease ran out.
pub(super) const CLAIM_TAKES_OVER: &str =
    "ON CONFLICT (ticket_id) DO UPDATE SET state = 'starting', bot_id = excluded.bot_id, \
         user_id = excluded.user_id, owner = excluded.owner, lease_until = excluded.lease_until, \
         attempts = tickets.attempts + 1, updated_at = excluded.updated_at, \
         traceparent = COALESCE(tickets.traceparent, excluded.traceparent) \
     WHERE tickets.state = 'failed' OR (tickets.state = 'starting' AND (tickets.owner IS NULL \
         OR tickets.owner = excluded.owner OR tickets.lease_until < excluded.updated_at))";

/// `claim_start`'s statement for many tickets: insert, or take over a row that failed for
/// good or whose holder let go or died; the rows taken, with what they learned meanwhile.
async fn claim_rows(
    writer: &mut Writer,
    instance: &str,
    lease_ms: i64,
    claims: &[Claim],
) -> Result<HashMap<String, Taken>, sqlx::Error> {
    let rows: Vec<String> = (0..claims.len())
        .map(|i| {
            let p = 4 + 4 * i;
            format!(
                "(${p}, ${}, ${}, 'starting', $1, $2, 1, $3, $3, ${})",
                p + 1,
                p + 2,
                p + 3
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO tickets (ticket_id, bot_id, user_id, state, owner, lease_until, attempts, created_at, updated_at, traceparent) \
         VALUES {} {CLAIM_TAKES_OVER} RETURNING ticket_id, conversation_id",
        rows.join(", ")
    );
    let now = writer.clock.now();
    let mut query = sqlx::query_as::<_, (String, Option<String>)>(&sql)
        .bind(instance)
        .bind(now + lease_ms)
        .bind(now);
    for c in claims {
        query = query
            .bind(&c.ticket_id)
            .bind(&c.bot_id)
            .bind(&c.user_id)
            .bind(c.traceparent.as_deref());
    }
    let conn = writer.conn().await?;
    let taken = query.fetch_all(&mut **conn).await;
    writer.check(&taken);
    Ok(taken?
        .into_iter()
        .map(|(id, learned_conversation)| {
            (
                id,
                Taken {
                    learned_conversation,
                },
            )
        })
        .collect())
}

/// Finishes a batch: one statement, rows in ticket order, one by one after a deadlock (see
/// [`claim_batch`]).
async fn finish_batch(writer: &mut Writer, mut finishes: Vec<Finish>) {
    finishes.sort_by(|a, b| a.ticket_id.cmp(&b.ticket_id));
    match finish_rows(writer, &finishes).await {
        Err(e) if deadlocked(&e) && finishes.len() > 1 => {
            for finish in finishes {
                let rows = finish_rows(writer, std::slice::from_ref(&finish)).await;
                let rows = supersede_after(writer, rows).await;
                answer_finishes(vec![finish], rows);
            }
        }
        rows => {
            let rows = supersede_after(writer, rows).await;
            answer_finishes(finishes, rows)
        }
    }
}

/// Jelou keeps one active conversation per bot and user: a start that answered a new
/// conversation replaced the one an earlier ticket of the same user had. Those tickets are
/// recorded closed (`superseded`), so that their resolve makes no close call (which would
/// end the new ticket's conversation). A ticket that got the same conversation back shares
/// it and stays active. A failure here fails the finish (nothing is acked on it).
async fn supersede_after(
    writer: &mut Writer,
    rows: Result<HashMap<String, TicketRecord>, sqlx::Error>,
) -> Result<HashMap<String, TicketRecord>, sqlx::Error> {
    let rows = rows?;
    let started: Vec<&TicketRecord> = rows
        .values()
        .filter(|r| r.bot_id.is_some() && r.user_id.is_some() && r.conversation_id.is_some())
        .collect();
    if started.is_empty() {
        return Ok(rows);
    }
    let sql = supersede_sql(started.len(), writer.sqlite);
    let mut query = sqlx::query(&sql).bind(writer.clock.now());
    for r in &started {
        query = query
            .bind(&r.ticket_id)
            .bind(r.bot_id.as_deref())
            .bind(r.user_id.as_deref())
            .bind(r.conversation_id.as_deref());
    }
    let conn = writer.conn().await?;
    let done = query.execute(&mut **conn).await;
    writer.check(&done);
    report_superseded(done?.rows_affected());
    Ok(rows)
}

/// The supersede statement for `rows` starts: $1 the time, then ticket, bot, user and
/// conversation of each.
pub(super) fn supersede_sql(rows: usize, sqlite: bool) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let p = 2 + 4 * i;
            format!("(${p}, ${}, ${}, ${})", p + 1, p + 2, p + 3)
        })
        .collect();
    // Without statistics SQLite walks every active ticket (`tickets_state`) for each row of
    // `VALUES`, a cost that grows with the store; the user's index finds the few rows there.
    let indexed = if sqlite {
        " INDEXED BY tickets_bot_user"
    } else {
        ""
    };
    format!(
        "UPDATE tickets{indexed} SET state = 'closed', ended_reason = '{SUPERSEDED}', owner = NULL, \
         lease_until = NULL, last_error = 'its conversation was replaced by ticket ' || v.column1, \
         updated_at = $1 \
         FROM (VALUES {}) AS v WHERE tickets.bot_id = v.column2 AND tickets.user_id = v.column3 \
         AND {STILL_ACTIVE} AND tickets.ticket_id <> v.column1 \
         AND tickets.conversation_id <> v.column4",
        values.join(", ")
    )
}

/// Logs and counts the tickets a round's starts superseded, once the round is written (both
/// writers: this batcher and the embedded store's, `super::embedded`).
pub(super) fn report_superseded(superseded: u64) {
    if superseded > 0 {
        tracing::info!(
            superseded,
            "tickets whose conversation a later ticket's start replaced"
        );
        metrics::counter!("jelou_bridge_conversations_superseded_total").increment(superseded);
    }
}

fn answer_finishes(
    finishes: Vec<Finish>,
    rows: Result<HashMap<String, TicketRecord>, sqlx::Error>,
) {
    match rows {
        Ok(mut by_id) => {
            for f in finishes {
                let _ = f.done.send(Ok(by_id.remove(&f.ticket_id)));
            }
        }
        Err(e) => fail_all(finishes.into_iter().map(|f| f.done), e),
    }
}

/// A round's conditions on the state, written so that no index can serve them: the finish
/// finds each row by its key, the supersede a user's rows by the user's index. Left to
/// itself PostgreSQL's planner reads the state's stretch of `tickets_state` instead when it
/// expects few rows there: it does on a new store's small table, and the `starting`
/// stretch (every ticket passes through it) also holds an entry for each row a finish moved
/// on, dead until a vacuum. Either way a round cost more as the store grew.
const STILL_STARTING: &str = "tickets.state || '' = 'starting'";
const STILL_ACTIVE: &str = "tickets.state || '' = 'active'";

/// `finish_start`'s statement for many tickets: record each conversation on a row still
/// `starting`; rows another process finished first are left alone (and not returned).
async fn finish_rows(
    writer: &mut Writer,
    finishes: &[Finish],
) -> Result<HashMap<String, TicketRecord>, sqlx::Error> {
    let sql = finish_sql(finishes.len());
    let mut query = sqlx::query_as::<_, TicketRecord>(&sql).bind(writer.clock.now());
    for f in finishes {
        query = query.bind(&f.ticket_id).bind(&f.conversation_id);
    }
    let conn = writer.conn().await?;
    let records = query.fetch_all(&mut **conn).await;
    writer.check(&records);
    Ok(records?
        .into_iter()
        .map(|r| (r.ticket_id.clone(), r))
        .collect())
}

/// The finish statement for `rows` tickets: $1 the time, then ticket and conversation of
/// each.
pub(super) fn finish_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("(${}, ${})", 2 + 2 * i, 3 + 2 * i))
        .collect();
    format!(
        "UPDATE tickets SET state = 'active', conversation_id = v.column2, owner = NULL, \
         lease_until = NULL, last_error = NULL, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE tickets.ticket_id = v.column1 AND {STILL_STARTING} \
         RETURNING {COLUMNS}",
        values.join(", ")
    )
}

/// PostgreSQL broke a lock cycle by failing this statement.
fn deadlocked(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}

/// The statement failed: every caller in the batch gets its error, as each would have alone.
fn fail_all<T>(
    callers: impl Iterator<Item = oneshot::Sender<Result<T, StoreError>>>,
    e: sqlx::Error,
) {
    let e = StoreError::from(e);
    for done in callers {
        let _ = done.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests;
