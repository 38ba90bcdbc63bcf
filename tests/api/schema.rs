//! The store's schema version as the binary sees it: `check-config --probe` reports it, and a
//! binary older than the store (a newer release migrated it) refuses to start with one line
//! naming `store.url`, exit 2, instead of misreading rows. (The upgrade itself, from the
//! previous release's binary, is in `tests/faults/upgrade.rs`.)

use jelou_bridge::config::Settings;
use jelou_bridge::store::Store;
use secrecy::ExposeSecret;

use testkit::*;

/// A migration no release of this binary knows: what a newer release leaves in the store.
const FUTURE: i64 = 29991231000001;

async fn jelou_bridge(settings: &Settings, args: &[&str]) -> Ran {
    let mut cmd = bridge_command(settings);
    cmd.env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
        .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY)
        // Nothing answers here: the probe's Jelou line fails, the store line is what counts.
        .env("JELOU_BRIDGE__JELOU__BASE_URL", "http://127.0.0.1:9")
        .env("JELOU_BRIDGE__JELOU__CONNECT_TIMEOUT", "1s")
        .env("JELOU_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
        .env("JELOU_BRIDGE__LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .args(args);
    run_to_end(cmd, &args.join(" ")).await
}

fn store_probe_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("# probe store"))
        .unwrap_or_else(|| panic!("a store probe line in:\n{stdout}"))
        .to_string()
}

/// Records `FUTURE` as applied, as sqlx's migrator of a newer release would.
async fn migrate_to_the_future(url: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    // The checksum's type differs (BLOB, BYTEA); a hex literal of each dialect.
    let checksum = if url.starts_with("sqlite:") {
        "x'00'"
    } else {
        "'\\x00'::bytea"
    };
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from a newer release', TRUE, {checksum}, 0)"
    ))
    .bind(FUTURE)
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
}

async fn the_store_s_version_is_reported_and_a_newer_store_refused(url: String) {
    let mut settings = Settings::defaults();
    settings.store.url = url.clone().into();
    let name = unique("jbt-schema");
    settings.amqp.exchange = format!("{name}.helpdesk");
    settings.amqp.queue = format!("{name}.tickets");
    settings.amqp.events_exchange = format!("{name}.events");

    // A store of this release: its version, and that this binary can use it.
    Store::connect(&settings.store, "schema-test".into())
        .await
        .unwrap()
        .close()
        .await;
    let out = jelou_bridge(&settings, &["check-config", "--probe"]).await;
    let line = store_probe_line(&out.stdout);
    assert!(line.starts_with("# probe store: ok"), "{line}");
    let newest = newest_migration();
    assert!(
        line.contains(&format!("schema version {newest}")) && line.contains("can use it"),
        "{line}"
    );

    // The store a newer release migrated.
    migrate_to_the_future(settings.store.url.expose_secret()).await;
    let out = jelou_bridge(&settings, &["check-config", "--probe"]).await;
    out.code.expect("exited");
    let line = store_probe_line(&out.stdout);
    assert!(line.starts_with("# probe store: FAILED"), "{line}");
    assert!(
        line.contains(&FUTURE.to_string()) && line.contains("newer than this jelou-bridge"),
        "{line}"
    );

    for args in [&["run"][..], &["tickets", "list"][..]] {
        let out = jelou_bridge(&settings, args).await;
        assert_eq!(out.code, Some(2), "{args:?} refuses the store");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("jelou-bridge: store.url: "), "{err}");
        assert!(
            err.contains(&format!("{FUTURE} (from a newer release)")),
            "{err}"
        );
        assert!(
            !err.contains("previously applied"),
            "not sqlx's error: {err}"
        );
    }
    // The refusal changed nothing: the newer release's record is still there.
    let schema = jelou_bridge::store::schema::inspect(settings.store.url.expose_secret())
        .await
        .unwrap();
    assert_eq!(
        schema.store.map(|m| m.version),
        Some(FUTURE),
        "the newer record is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_version_reported_and_newer_store_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    the_store_s_version_is_reported_and_a_newer_store_refused(url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_store_version_reported_and_newer_store_refused_with_exit_2() {
    let pg = PgDatabase::create().await;
    the_store_s_version_is_reported_and_a_newer_store_refused(pg.url.clone()).await;
}

/// The version of the newest migration this release ships (`migrations/<version>_<name>.sql`).
fn newest_migration() -> String {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.split('_').next()?.to_string())
        })
        .max()
        .unwrap()
}
