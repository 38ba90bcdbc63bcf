//! The deadlock fallback of the batches, against a real PostgreSQL (`JB_TEST_PG_URL`): a batch
//! that PostgreSQL picks as a deadlock's victim is written again one row at a time, so every
//! caller still gets its row. Without the fallback these tests fail: each caller in the
//! batch gets the deadlock error.
//!
//! The deadlock is made, not hoped for: another transaction locks the batch's second row,
//! the batch locks its first row and waits for the second, then the other transaction asks
//! for the first. Only the batch's session looks for deadlocks in time (the other waits
//! 60 s before it would), so the batch is the victim.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::config::Settings;
use crate::store::{StartClaim, Store};

fn pg_url() -> String {
    std::env::var("JB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

async fn admin() -> PgConnection {
    let url = pg_url();
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("these tests need PostgreSQL at {url} (set JB_TEST_PG_URL): {e}")
    })
}

/// A database of its own, dropped (with whatever is still connected) when the test ends.
struct Database {
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Database {
        let name = format!("jbt_deadlock_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin().await;
        for sql in [
            format!("CREATE DATABASE {name}"),
            // The store's sessions look for a deadlock after 3 s of waiting (not the default
            // 1 s), time enough for the test to close the cycle on a busy machine.
            format!("ALTER DATABASE {name} SET deadlock_timeout = '3s'"),
        ] {
            sqlx::query(&sql).execute(&mut admin).await.unwrap();
        }
        let _ = admin.close().await;
        let mut url = url::Url::parse(&pg_url()).unwrap();
        url.set_path(&name);
        Database {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Drop is not async: a runtime of its own, on a thread of its own.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { sqlx::query(&sql).execute(&mut admin().await).await })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

async fn store(db: &Database) -> Store {
    let mut settings = Settings::defaults().store;
    settings.url = db.url.clone().into();
    Store::connect(&settings, "batch-test".into())
        .await
        .unwrap()
}

/// Runs `writes` (spawned: two writes that go as one batch, `first` then `second` in
/// ticket order) into a deadlock with another transaction, and returns what they answered.
async fn deadlocked<T: Send + 'static>(
    db: &Database,
    first: &str,
    second: &str,
    writes: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let lock = |ticket: &str, nowait: &str| {
        format!("SELECT ticket_id FROM tickets WHERE ticket_id = '{ticket}' FOR UPDATE {nowait}")
    };
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    for sql in [
        "SET LOCAL deadlock_timeout = '60s'".into(),
        lock(second, ""),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    // On this test's single thread, both writes are queued before the batching task runs:
    // they go as one statement.
    let writes = tokio::spawn(writes);

    // The batch has taken `first` and waits for `second`.
    let mut watch = PgConnection::connect(&db.url).await.unwrap();
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock'";
    let started = std::time::Instant::now();
    while sqlx::query_scalar::<_, i64>(waiting)
        .fetch_one(&mut watch)
        .await
        .unwrap()
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the batch never waited for {second}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("SAVEPOINT probe")
        .execute(&mut *tx)
        .await
        .unwrap();
    let taken = sqlx::query(&lock(first, "NOWAIT")).execute(&mut *tx).await;
    assert!(
        matches!(&taken, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03")),
        "the batch should hold {first} while it waits for {second}: {taken:?}"
    );
    sqlx::query("ROLLBACK TO SAVEPOINT probe")
        .execute(&mut *tx)
        .await
        .unwrap();

    // The cycle: granted only once PostgreSQL has failed the batch's statement (the batch
    // cannot finish while this transaction holds `second`).
    tokio::time::timeout(
        Duration::from_secs(30),
        sqlx::query(&lock(first, "")).execute(&mut *tx),
    )
    .await
    .expect("PostgreSQL resolves the deadlock within 30 s")
    .expect("the batch, not this transaction, is the deadlock's victim");
    tx.commit().await.unwrap();
    let _ = other.close().await;
    tokio::time::timeout(Duration::from_secs(30), writes)
        .await
        .expect("the writes finish once the other transaction is gone")
        .unwrap()
}

#[tokio::test]
async fn a_claim_batch_chosen_as_a_deadlock_victim_claims_each_ticket_alone() {
    let db = Database::create().await;
    let store = store(&db).await;
    // Two tickets whose starts failed for good: a claim takes each again (and so locks it).
    for ticket in ["t-a", "t-b"] {
        store.claim_start(ticket, "bot", ticket).await.unwrap();
        store.fail_start(ticket, "refused").await.unwrap();
    }
    let s = store.clone();
    let (a, b) = deadlocked(&db, "t-a", "t-b", async move {
        tokio::join!(
            s.claim_start("t-a", "bot", "t-a"),
            s.claim_start("t-b", "bot", "t-b")
        )
    })
    .await;
    for (ticket, claim) in [("t-a", a), ("t-b", b)] {
        match claim {
            Ok(StartClaim::Claimed { .. }) => {}
            Ok(other) => panic!("{ticket}: not claimed: {other:?}"),
            Err(e) => panic!("{ticket}: {e}"),
        }
        let row = store.get(ticket).await.unwrap().unwrap();
        assert_eq!(row.owner.as_deref(), Some("batch-test"), "{row:?}");
        assert_eq!(row.attempts, 2, "{row:?}");
    }
    store.close().await;
}

#[tokio::test]
async fn a_finish_batch_chosen_as_a_deadlock_victim_finishes_each_ticket_alone() {
    let db = Database::create().await;
    let store = store(&db).await;
    for ticket in ["t-a", "t-b"] {
        store.claim_start(ticket, "bot", ticket).await.unwrap();
    }
    let s = store.clone();
    let (a, b) = deadlocked(&db, "t-a", "t-b", async move {
        tokio::join!(
            s.finish_start("t-a", "conv-a"),
            s.finish_start("t-b", "conv-b")
        )
    })
    .await;
    for (conversation, finished) in [("conv-a", a), ("conv-b", b)] {
        let row = finished.unwrap_or_else(|e| panic!("{conversation}: {e}"));
        assert_eq!(
            row.conversation_id.as_deref(),
            Some(conversation),
            "{row:?}"
        );
        assert_eq!(row.state.as_str(), "active", "{row:?}");
    }
    store.close().await;
}

/// The plan PostgreSQL gives the statement prepared as `name` for `args`, as text.
async fn plan(conn: &mut PgConnection, name: &str, args: &str) -> String {
    let rows = sqlx::raw_sql(&format!("EXPLAIN EXECUTE {name}({args})"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    use sqlx::Row;
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A round's finish and supersede statements find their rows by key and by user however
/// much the table grew after the writer's connection first ran them: the store starts
/// empty, and PostgreSQL would otherwise keep the plan of its first rounds (a scan of the
/// table, or of every active ticket through `tickets_state`), or read the `starting`
/// stretch of that index, which holds a dead entry for every ticket finished since the last
/// vacuum. Either made each round cost more as the store grew (the benchmark's PostgreSQL
/// case slowed from 1,750 to 1,250 tickets/s between a 20,000 and a 30,000 backlog).
#[tokio::test]
async fn a_rounds_statements_find_rows_by_key_and_user_at_any_table_size() {
    use super::{finish_sql, supersede_sql, INDEXES_ONLY};

    // A full round.
    const ROWS: usize = super::round::MAX_BATCH;
    let db = Database::create().await;
    let store = store(&db).await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // The writer's connection, as the batcher sets it up, on a new store's few tickets.
    sqlx::query(INDEXES_ONLY).execute(&mut conn).await.unwrap();
    let fill = |prefix: &str, state: &str, n: usize| {
        format!(
            "INSERT INTO tickets (ticket_id, bot_id, user_id, conversation_id, state, owner, \
             created_at, updated_at) SELECT '{prefix}' || g, 'bot', '{prefix}' || g, \
             CASE WHEN '{state}' = 'active' THEN 'c' || g END, '{state}', \
             CASE WHEN '{state}' = 'starting' THEN 'me' END, g, g FROM generate_series(1, {n}) g"
        )
    };
    sqlx::raw_sql(&fill("a", "active", 3))
        .execute(&mut conn)
        .await
        .unwrap();
    let statements = format!(
        "PREPARE finish AS {}; PREPARE supersede AS {}",
        finish_sql(ROWS),
        supersede_sql(ROWS, false)
    );
    sqlx::raw_sql(&statements).execute(&mut conn).await.unwrap();
    let args = |row: &dyn Fn(usize) -> String| {
        let rows: Vec<String> = (0..ROWS).map(row).collect();
        format!("1, {}", rows.join(", "))
    };
    let finish_args = args(&|i| format!("'x{i}', 'c'"));
    let supersede_args = args(&|i| format!("'x{i}', 'bot', 'u{i}', 'c'"));
    // More runs than PostgreSQL's five before it may settle on one plan for good.
    for _ in 0..8 {
        let run = format!("EXECUTE finish({finish_args}); EXECUTE supersede({supersede_args})");
        sqlx::raw_sql(&run).execute(&mut conn).await.unwrap();
    }

    // The store grows: many tickets finished (active), a few starting.
    sqlx::raw_sql(&format!(
        "{}; {}",
        fill("b", "active", 20_000),
        fill("s", "starting", 40)
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let finish = plan(&mut conn, "finish", &finish_args).await;
    assert!(
        finish.contains("tickets_pkey") && !finish.contains("tickets_state"),
        "the finish should find each row by its key:\n{finish}"
    );
    let supersede = plan(&mut conn, "supersede", &supersede_args).await;
    assert!(
        supersede.contains("tickets_bot_user") && !supersede.contains("tickets_state"),
        "the supersede should find the user's tickets by the user's index:\n{supersede}"
    );
    store.close().await;
}

/// The lease renewal finds its tickets by primary key on PostgreSQL too, with statistics
/// that put every ticket in flight on this process (no index on `owner` serves it).
#[tokio::test]
async fn the_lease_renewal_finds_its_tickets_by_key() {
    let db = Database::create().await;
    let store = store(&db).await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO tickets (ticket_id, bot_id, user_id, state, owner, lease_until, \
         created_at, updated_at) SELECT 's' || g, 'bot', 'u' || g, 'starting', 'me', g, g, g \
         FROM generate_series(1, 20000) g; ANALYZE tickets",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let prepare = format!("PREPARE renew AS {}", crate::store::leases::renew_sql(3));
    sqlx::raw_sql(&prepare).execute(&mut conn).await.unwrap();
    let renew = plan(&mut conn, "renew", "1, 'me', 's1', 's2', 's3'").await;
    assert!(
        renew.contains("tickets_pkey"),
        "the renewal should find its tickets by key:\n{renew}"
    );
    store.close().await;
}
