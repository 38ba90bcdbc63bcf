//! Stores for a test or a benchmark case: a SQLite file in its directory, or a PostgreSQL
//! database of its own on the server of `JB_TEST_PG_URL`, dropped afterwards.

use std::path::Path;

use anyhow::Context;
use sqlx::Connection as _;

use crate::names::pg_url;

/// Where a ticket store lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreKind, String> {
        match s {
            "sqlite" => Ok(StoreKind::Sqlite),
            "postgres" => Ok(StoreKind::Postgres),
            other => Err(format!("{other:?} is not a store: sqlite or postgres")),
        }
    }
}

/// A store of one's own: its `store.url`, and the database to drop when this is dropped.
pub struct TestStore {
    pub url: String,
    _pg: Option<PgDatabase>,
}

impl TestStore {
    /// A SQLite file in `dir`, or a fresh database on the PostgreSQL server `pg_admin_url`.
    pub async fn create(kind: StoreKind, dir: &Path, pg_admin_url: &str) -> anyhow::Result<Self> {
        Ok(match kind {
            StoreKind::Sqlite => TestStore {
                url: format!("sqlite://{}", dir.join("store.db").display()),
                _pg: None,
            },
            StoreKind::Postgres => {
                let pg = PgDatabase::create_on(pg_admin_url).await?;
                TestStore {
                    url: pg.url.clone(),
                    _pg: Some(pg),
                }
            }
        })
    }
}

/// A PostgreSQL database of one's own (`jbt_<unique>`), dropped when this value is dropped,
/// also when the test fails.
pub struct PgDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDatabase {
    /// A database on the tests' server ([`pg_url`]), or a failed test.
    pub async fn create() -> PgDatabase {
        PgDatabase::create_on(&pg_url()).await.unwrap_or_else(|e| {
            panic!("{e:#} (PostgreSQL must be running on 127.0.0.1:5432: scripts/ensure-services.sh --postgres)")
        })
    }

    /// A database on the server `admin_url` points at.
    pub async fn create_on(admin_url: &str) -> anyhow::Result<PgDatabase> {
        let name = format!("jbt_{}", uuid::Uuid::new_v4().simple());
        pg_admin(admin_url, &format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating a database on {admin_url}"))?;
        let mut url = url::Url::parse(admin_url)?;
        url.set_path(&name);
        Ok(PgDatabase {
            url: url.to_string(),
            name,
            admin_url: admin_url.to_string(),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code: a short-lived runtime on its own thread does the
        // DROP, forcing out any connection a pool still holds.
        let (admin, sql) = (
            self.admin_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(pg_admin(&admin, &sql))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Runs one statement on the PostgreSQL server `admin_url` points at.
pub async fn pg_admin(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {admin_url}"))?;
    sqlx::query(sql).execute(&mut admin).await?;
    admin.close().await?;
    Ok(())
}
