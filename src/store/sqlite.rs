//! An embedded SQLite store's URL: its file's directory is created and the file asked for, so
//! a first start needs nothing prepared; and the file the pool opened.

use std::path::PathBuf;

use super::StoreError;

/// Whether `pool` is an embedded SQLite store (else PostgreSQL).
pub(super) fn is_sqlite(pool: &sqlx::AnyPool) -> bool {
    pool.connect_options().database_url.scheme() == "sqlite"
}

/// The file of the pool's database as SQLite resolved it (whatever the URL's spelling);
/// None for a database in memory.
pub(super) async fn database_file(pool: &sqlx::AnyPool) -> Result<Option<PathBuf>, StoreError> {
    let file: Option<String> =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_optional(pool)
            .await?;
    Ok(file.filter(|f| !f.is_empty()).map(PathBuf::from))
}

/// Creates the SQLite file's directory and asks for the file to be created.
pub(super) fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
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
        std::fs::create_dir_all(dir).map_err(|e| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source: std::sync::Arc::new(e),
        })?;
    }
    Ok(if rest.contains("mode=") {
        url.to_string()
    } else if rest.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_asked_for_and_its_directory_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/store.db");
        let url = format!("sqlite://{}", file.display());
        assert_eq!(prepare_sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.path().join("a/b").is_dir());
        let with_query = format!("{url}?cache=shared");
        assert_eq!(
            prepare_sqlite_url(&with_query).unwrap(),
            format!("{with_query}&mode=rwc")
        );
        let read_only = format!("{url}?mode=ro");
        assert_eq!(prepare_sqlite_url(&read_only).unwrap(), read_only);
        assert_eq!(
            prepare_sqlite_url("sqlite::memory:").unwrap(),
            "sqlite::memory:"
        );
    }
}
