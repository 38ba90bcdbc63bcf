//! The store's schema version against this binary's: what `check-config --probe` reports and
//! what start-up checks before it migrates.
//!
//! Migrations are additive (expand, then contract: a release adds nullable or defaulted
//! columns and tables; a column is dropped only by a release after one that stopped using
//! it), so a binary may run against a store one release older, which it migrates, and a
//! process already running keeps working while a newer release migrates under it (a rolling
//! upgrade). A binary *started* against a store that a newer release migrated refuses: it
//! cannot know what the newer rows mean. sqlx's migrator would also refuse, but with an error
//! about a "missing" migration that reads like a broken build; this says what happened.

use sqlx::{AnyConnection, Connection};

use super::{StoreError, MIGRATOR};

/// One applied (or known) migration: its version (`YYYYMMDDNNNNNN`) and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub description: String,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, self.description)
    }
}

/// The store's migrations set against this binary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaReport {
    /// The store's newest applied migration; None for an empty store.
    pub store: Option<Migration>,
    /// This binary's newest migration.
    pub binary: Migration,
    /// This binary's migrations the store lacks: applied at the next start.
    pub pending: Vec<Migration>,
    /// Migrations applied to the store that this binary does not know: a newer release (or
    /// another branch) migrated it.
    pub unknown: Vec<Migration>,
}

/// Whether this binary can use the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    /// Nothing applied yet: this binary creates the schema.
    Empty,
    /// Exactly this binary's schema.
    Current,
    /// Older: this binary migrates it at start (additively; the older release keeps working).
    Older,
    /// Migrated by a newer release: this binary refuses to start on it.
    Newer,
}

impl SchemaReport {
    /// Compares the migrations `applied` to a store with this binary's `known` ones.
    pub fn compare(applied: &[Migration], known: &[Migration]) -> SchemaReport {
        let has = |set: &[Migration], v: i64| set.iter().any(|m| m.version == v);
        let newest = |set: &[Migration]| set.iter().max_by_key(|m| m.version).cloned();
        SchemaReport {
            store: newest(applied),
            binary: newest(known).unwrap_or(Migration {
                version: 0,
                description: "none".into(),
            }),
            pending: known
                .iter()
                .filter(|m| !has(applied, m.version))
                .cloned()
                .collect(),
            unknown: applied
                .iter()
                .filter(|m| !has(known, m.version))
                .cloned()
                .collect(),
        }
    }

    pub fn compatibility(&self) -> Compatibility {
        if !self.unknown.is_empty() {
            Compatibility::Newer
        } else if self.store.is_none() {
            Compatibility::Empty
        } else if self.pending.is_empty() {
            Compatibility::Current
        } else {
            Compatibility::Older
        }
    }

    /// The refusal when the store is newer than this binary, else None.
    pub fn refusal(&self) -> Option<SchemaTooNew> {
        let newest_unknown = self.unknown.iter().max_by_key(|m| m.version)?;
        Some(SchemaTooNew {
            store: newest_unknown.clone(),
            binary: self.binary.clone(),
        })
    }

    /// One line for `check-config --probe`: the store's version and what this binary does
    /// with it; Err when it cannot use it.
    pub fn describe(&self) -> Result<String, SchemaTooNew> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let binary = format!(
            "this binary ({}) knows up to {}",
            env!("CARGO_PKG_VERSION"),
            self.binary.version
        );
        Ok(match &self.store {
            None => format!("empty store; {binary} and creates the schema at start"),
            Some(store) if self.pending.is_empty() => {
                format!("schema version {store}; {binary}: can use it")
            }
            Some(store) => format!(
                "schema version {store}; {binary}: can use it, applies {} additive migration(s) at start ({})",
                self.pending.len(),
                self.pending
                    .iter()
                    .map(|m| m.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

/// A store migrated by a newer release than this binary: starting on it would misread rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "store.url: the store's schema is at version {store}, newer than this jelou-bridge {version} \
     knows (up to {binary_version}); a newer release migrated it: run that release or a later one \
     (a store cannot be downgraded)",
    version = env!("CARGO_PKG_VERSION"),
    binary_version = binary.version
)]
pub struct SchemaTooNew {
    pub store: Migration,
    pub binary: Migration,
}

/// This binary's migrations.
pub fn known() -> Vec<Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect()
}

/// The migrations applied to the store (none when sqlx never migrated it).
pub async fn applied(conn: &mut AnyConnection) -> Result<Vec<Migration>, StoreError> {
    let exists_sql = if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
    } else {
        "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()"
    };
    let exists: i64 = sqlx::query_scalar(exists_sql).fetch_one(&mut *conn).await?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(version, description)| Migration {
            version,
            description,
        })
        .collect())
}

/// Reads the store at `url` (one connection, nothing written) and compares it with this
/// binary's migrations.
pub async fn inspect(url: &str) -> Result<SchemaReport, StoreError> {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") {
        super::sqlite::prepare_sqlite_url(url)?
    } else {
        url.to_string()
    };
    let mut conn = AnyConnection::connect(&url).await?;
    let applied = applied(&mut conn).await;
    let _ = conn.close().await;
    Ok(SchemaReport::compare(&applied?, &known()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: i64) -> Migration {
        Migration {
            version,
            description: format!("m{version}"),
        }
    }

    #[test]
    fn a_store_migrated_by_a_newer_release_is_refused_and_named() {
        let report = SchemaReport::compare(&[m(1), m(2), m(3)], &[m(1), m(2)]);
        assert_eq!(report.compatibility(), Compatibility::Newer);
        let refusal = report.refusal().expect("refused");
        assert_eq!(refusal.store, m(3));
        let line = refusal.to_string();
        assert!(line.starts_with("store.url: "), "{line}");
        assert!(
            line.contains("3 (m3)") && line.contains("up to 2"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert!(report.describe().is_err());
    }

    #[test]
    fn an_older_store_is_migrated_and_the_same_one_is_current() {
        let older = SchemaReport::compare(&[m(1)], &[m(1), m(2)]);
        assert_eq!(older.compatibility(), Compatibility::Older);
        assert_eq!(older.pending, vec![m(2)]);
        assert!(older.refusal().is_none());
        assert!(older.describe().unwrap().contains("applies 1 additive"));
        let current = SchemaReport::compare(&[m(1), m(2)], &[m(1), m(2)]);
        assert_eq!(current.compatibility(), Compatibility::Current);
        assert!(current
            .describe()
            .unwrap()
            .contains("schema version 2 (m2)"));
        let empty = SchemaReport::compare(&[], &[m(1)]);
        assert_eq!(empty.compatibility(), Compatibility::Empty);
    }

    #[test]
    fn an_applied_migration_this_binary_lacks_is_newer_even_when_older_than_its_own() {
        // A hotfix migrated by another branch: sqlx's migrator would refuse it too.
        let report = SchemaReport::compare(&[m(1), m(2)], &[m(1), m(3)]);
        assert_eq!(report.compatibility(), Compatibility::Newer);
    }

    #[test]
    fn this_binary_knows_its_migrations() {
        let known = known();
        assert!(known.iter().any(|m| m.version == 20261122000001));
        assert!(known.windows(2).all(|w| w[0].version < w[1].version));
    }
}
