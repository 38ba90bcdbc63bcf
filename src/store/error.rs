//! Why a store operation failed: one enum, each cause kept as its `source`.
//!
//! Each message is one line that starts `ticket store: ` (but a store too new for this
//! binary, a configuration error named by its key) and already carries its cause's
//! text (what logs and the parked messages' `x-last-error` have always shown), so printing
//! the chain as well would repeat it: print these with [`crate::error::error_chain`], which
//! leaves out a cause whose text is already there.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::error_chain;

/// Why a store operation failed. Clone, because one failed batch statement answers every
/// caller in the batch (the causes are shared behind an `Arc`: sqlx's errors are not Clone).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, or refused or failed a statement.
    #[error("ticket store: {}", error_chain(.0))]
    Database(#[source] Arc<sqlx::Error>),
    /// The embedded store's writer connection could not be opened, or failed a write.
    #[error("ticket store: {}", error_chain(.0))]
    Embedded(#[source] Arc<rusqlite::Error>),
    /// This binary's migrations could not be applied.
    #[error("ticket store: migration failed: {}", error_chain(.0))]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    /// An embedded store's directory could not be created.
    #[error("ticket store: cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A ticket's row disappeared between two statements (someone deleted it by hand).
    #[error("ticket store: ticket {ticket_id} vanished {when}")]
    Vanished {
        ticket_id: String,
        /// While doing what: "while claiming it", "after its start", "after its close".
        when: &'static str,
    },
    /// The task that batches the claim and finish writes ended (the runtime is going away).
    #[error("ticket store: the store's writer stopped")]
    WriterStopped,
    /// A newer release migrated the store: a configuration error (exit 2), not an outage.
    /// Its line names the key (`store.url: …`) as every configuration error does.
    #[error(transparent)]
    SchemaTooNew(#[from] super::schema::SchemaTooNew),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(Arc::new(e))
    }
}

impl StoreError {
    pub(super) fn vanished(ticket_id: &str, when: &'static str) -> StoreError {
        StoreError::Vanished {
            ticket_id: ticket_id.to_string(),
            when,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn refused() -> StoreError {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ))
        .into()
    }

    #[test]
    fn one_line_with_its_cause_and_the_cause_kept_as_source() {
        let e = refused();
        let line = e.to_string();
        assert!(line.starts_with("ticket store: "), "{line}");
        assert!(line.contains("Connection refused (os error 111)"), "{line}");
        assert!(!line.contains('\n'));
        let source = e.source().expect("the sqlx error as source");
        assert!(source.to_string().contains("Connection refused"));
        // The chain printer does not say the cause twice.
        assert_eq!(error_chain(&e), line);
        assert_eq!(error_chain(&e.clone()), line, "clones say the same");
    }

    #[test]
    fn each_kind_names_what_failed() {
        let dir = StoreError::CreateDir {
            path: "/nope/dir".into(),
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "Permission denied (os error 13)",
            )),
        };
        assert_eq!(
            error_chain(&dir),
            "ticket store: cannot create /nope/dir: Permission denied (os error 13)"
        );
        assert_eq!(
            StoreError::vanished("t-1", "after its start").to_string(),
            "ticket store: ticket t-1 vanished after its start"
        );
        assert_eq!(
            StoreError::WriterStopped.to_string(),
            "ticket store: the store's writer stopped"
        );
    }
}
