//! The bridge under test: the release binary, run as a separate process configured only
//! through `JELOU_BRIDGE__…` variables, with its own store (a SQLite file in a temporary
//! directory, or a fresh PostgreSQL database dropped afterwards).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;

/// Where the binary is: next to this example's directory (`target/<profile>/`), built first
/// with cargo so it matches the source, unless told otherwise.
pub fn binary(explicit: Option<PathBuf>, build: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(
            path.exists(),
            "--bridge-bin {} does not exist",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/loadtest → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot tell where this example was built")?
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|p| p == "release");
    if !release {
        eprintln!("loadtest: warning: not a release build; run with `cargo run --release --example loadtest`");
    }
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--bin",
            "jelou-bridge",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        anyhow::ensure!(status.success(), "cargo build --bin jelou-bridge failed");
    }
    let path = profile_dir.join("jelou-bridge");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --release",
        path.display()
    );
    Ok(path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A store for one run.
pub struct StoreDb {
    pub url: String,
    /// PostgreSQL: the server's admin URL and the database to drop afterwards.
    pg: Option<(String, String)>,
}

impl StoreDb {
    pub async fn create(
        kind: StoreKind,
        dir: &Path,
        pg_admin_url: &str,
        name: &str,
    ) -> anyhow::Result<StoreDb> {
        match kind {
            StoreKind::Sqlite => Ok(StoreDb {
                url: format!("sqlite://{}", dir.join("store.db").display()),
                pg: None,
            }),
            StoreKind::Postgres => {
                let db = name.replace(['-', '.'], "_");
                let mut conn = sqlx::PgConnection::connect(pg_admin_url)
                    .await
                    .with_context(|| {
                        format!("cannot reach PostgreSQL at {pg_admin_url} (scripts/ensure-services.sh --postgres)")
                    })?;
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(&mut conn)
                    .await?;
                let _ = conn.close().await;
                let base = pg_admin_url
                    .rsplit_once('/')
                    .map_or(pg_admin_url, |(base, _)| base);
                Ok(StoreDb {
                    url: format!("{base}/{db}"),
                    pg: Some((pg_admin_url.to_string(), db)),
                })
            }
        }
    }

    pub async fn drop_database(self) {
        let Some((admin, db)) = self.pg else { return };
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut conn)
                .await
            {
                eprintln!("loadtest: could not drop database {db}: {e}");
            }
            let _ = conn.close().await;
        }
    }
}

/// What the bridge process is told.
pub struct BridgeConfig<'a> {
    pub amqp_url: &'a str,
    pub exchange: &'a str,
    pub queue: &'a str,
    pub events_exchange: &'a str,
    pub prefetch: u16,
    pub jelou_base_url: &'a str,
    pub project_id: &'a str,
    pub api_key: &'a str,
    pub store_url: &'a str,
    pub http_listen: &'a str,
    /// More environment variables (name, value).
    pub extra: &'a [(String, String)],
}

pub struct BridgeProcess {
    child: tokio::process::Child,
    pub pid: u32,
    log: PathBuf,
}

impl BridgeProcess {
    pub fn spawn(bin: &Path, dir: &Path, config: &BridgeConfig<'_>) -> anyhow::Result<Self> {
        let log = dir.join("bridge.log");
        let stderr = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("run")
            // Its own working directory: no config/ files there, only the variables below.
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("JELOU_BRIDGE") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        let prefetch = config.prefetch.to_string();
        for (key, value) in [
            ("AMQP__URL", config.amqp_url),
            ("AMQP__EXCHANGE", config.exchange),
            ("AMQP__QUEUE", config.queue),
            ("AMQP__EVENTS_EXCHANGE", config.events_exchange),
            ("AMQP__PREFETCH", &prefetch),
            ("JELOU__BASE_URL", config.jelou_base_url),
            ("JELOU__PROJECT_ID", config.project_id),
            ("JELOU__API_KEY", config.api_key),
            ("STORE__URL", config.store_url),
            ("HTTP__LISTEN", config.http_listen),
            ("LOG__LEVEL", "warn"),
            ("LOG__FORMAT", "json"),
        ] {
            cmd.env(format!("JELOU_BRIDGE__{key}"), value);
        }
        for (key, value) in config.extra {
            cmd.env(key, value);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("the bridge exited at once")?;
        Ok(BridgeProcess { child, pid, log })
    }

    /// Some(description) once the process has ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{status}; log:\n{}", self.log_tail())),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The last lines the bridge logged (warnings and errors only at this log level).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Warnings and errors it logged (at this log level, every line is one).
    pub fn logged_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// SIGTERM, as an operator would, then waits for the graceful exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => {
                anyhow::bail!("the bridge exited with {status}:\n{}", self.log_tail())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the bridge did not stop within 30 s of SIGTERM")
            }
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
