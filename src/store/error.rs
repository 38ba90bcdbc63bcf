//! Why a store operation failed.

#[derive(Debug, Clone, thiserror::Error)]
#[error("ticket store: {0}")]
pub struct StoreError(pub(super) String);

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
    SchemaTooNew(#[from] super::schema::SchemaTooNew),
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
