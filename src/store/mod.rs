//! The ticket store: what the bridge did per ticket, so that redeliveries and duplicates are
//! absorbed and a `ticket.resolved` can be served from a ticket id alone.
//!
//! One interface over SQLite (embedded, WAL, the default) and PostgreSQL (several replicas),
//! through sqlx's `Any` driver and one set of portable migrations. Every state change is a
//! single atomic statement; which bridge process works on a ticket is a lease in the row
//! (`owner`, `lease_until`), renewed while it works, so a crashed replica's hold expires.
//!
//! The store by concern: [`Store`] opened here; a ticket's claims and records in `tickets`;
//! leases and [`Hold`] in `leases`; agents' messages in `messages`; webhook dedupe in
//! `webhooks`; reads and lists in `reads`; group commit of the hottest writes in `batch`
//! (on an embedded store, through a connection of their own in `embedded`); the schema
//! version in [`schema`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashMap;

use secrecy::ExposeSecret;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};

pub use crate::clock::{now_ms, Clock};
use crate::config::StoreSettings;

mod batch;
mod embedded;
mod error;
mod leases;
mod messages;
mod reads;
mod record;
pub mod schema;
mod sqlite;
mod tickets;
mod webhooks;

pub use error::StoreError;
pub use leases::Hold;
pub use record::{
    CloseClaim, MessageClaim, StartClaim, TicketRecord, TicketState, WebhookClaim, SUPERSEDED,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const COLUMNS: &str = "ticket_id, bot_id, user_id, conversation_id, room_id, state, owner, \
                       lease_until, ended_reason, last_error, attempts, created_at, updated_at, traceparent";

/// The store, opened once per process; clones share its pool, its batching writer, its
/// clock and the tickets it holds.
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

impl Store {
    /// Opens (creating a SQLite file and its directory if needed) and migrates the store;
    /// refuses a store that a newer release migrated (see [`schema`]).
    pub async fn connect(settings: &StoreSettings, instance: String) -> Result<Store, StoreError> {
        Store::connect_with_clock(settings, instance, Clock::default()).await
    }

    /// [`Store::connect`] with the clock its leases are kept on given: a PostgreSQL store
    /// sets its offset to the database's (see [`Store::sync_clock`]); tests put a replica's
    /// clock ahead to see a lease expire without waiting for it.
    pub async fn connect_with_clock(
        settings: &StoreSettings,
        instance: String,
        clock: Clock,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let mut url = settings.url.expose_secret().to_string();
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            url = sqlite::prepare_sqlite_url(&url)?;
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
        let lease_ms = settings.lease.as_millis() as i64;
        let file = if sqlite {
            sqlite::database_file(&pool).await?
        } else {
            None
        };
        // A store in a file gets its own writer connection; one in memory (tests) is only
        // reachable through the pool.
        let writes = match file {
            Some(file) => {
                batch::Batcher::start_embedded(&file, clock.clone(), instance.clone(), lease_ms)?
            }
            None => batch::Batcher::start(pool.clone(), clock.clone(), instance.clone(), lease_ms),
        };
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

    /// What `check-config --probe` says of the store: its URL (password redacted) and its
    /// schema version against this binary's. An embedded store is opened as the daemon
    /// opens it (so created and migrated); a PostgreSQL store gets one connection, not a
    /// pool, which would retry a refused connection until its acquire timeout and then
    /// report only that it timed out. A store a newer release migrated is refused.
    pub async fn probe(settings: &StoreSettings) -> Result<String, StoreError> {
        let url = settings.url.expose_secret();
        // The schema first: opening an embedded store migrates it, and the version to
        // report is the one found.
        let schema = schema::inspect(url).await?.describe()?;
        if url.starts_with("sqlite:") {
            let store = Store::connect(settings, "check-config".into()).await?;
            store.ping().await?;
            store.close().await;
        } else {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(url).await?;
            sqlx::query("SELECT 1").execute(&mut conn).await?;
            let _ = conn.close().await;
        }
        Ok(format!("{}; {schema}", crate::config::redacted_url(url)))
    }

    /// The store's clock (see [`Clock`]).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }
}
