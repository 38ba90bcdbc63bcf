//! The bridge under test: the release binary, run as a separate process
//! ([`testkit::BridgeProcess`]) configured only through `JELOU_BRIDGE__…` variables, with its
//! own store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use jelou_bridge::config::Settings;
use testkit::{BridgeProcess, API_KEY, PROJECT};

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
    let path = testkit::bridge_bin();
    let release = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|p| p == "release");
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
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --release",
        path.display()
    );
    Ok(path)
}

/// Starts `bin` in `dir` on the broker, exchanges, queue, prefetch and store of `settings`,
/// against the stand-in at `jelou_base_url`, logging warnings only; `extra` are more
/// environment variables (name, value).
pub async fn start(
    bin: &Path,
    dir: &Path,
    settings: &Settings,
    jelou_base_url: &str,
    extra: &[(String, String)],
) -> anyhow::Result<BridgeProcess> {
    let mut cmd = testkit::command_for(bin, settings);
    cmd.arg("run")
        .env(
            "JELOU_BRIDGE__AMQP__PREFETCH",
            settings.amqp.prefetch.to_string(),
        )
        .env("JELOU_BRIDGE__JELOU__BASE_URL", jelou_base_url)
        .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
        .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY)
        .env("JELOU_BRIDGE__LOG__LEVEL", "warn")
        .envs(extra.iter().cloned());
    BridgeProcess::start(cmd, dir)
        .await
        .with_context(|| format!("starting {}", bin.display()))
}

/// Warnings and errors it logged (the start and stop lines are `info`).
pub fn warnings_logged(bridge: &BridgeProcess) -> usize {
    bridge
        .log()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).map_or(true, |v| {
                matches!(v["level"].as_str(), Some("WARN" | "ERROR"))
            })
        })
        .count()
}
