//! The real `jelou-bridge` binary as a child process, configured through the environment
//! only, as an operator runs it: [`BridgeProcess`] for a `run` that binds port 0 and says
//! where it listens, [`run_to_end`] for the other commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use jelou_bridge::config::Settings;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::metrics::scrape_metric;

/// The `jelou-bridge` binary built with the test or example running now: cargo puts it in
/// the profile's directory, above this executable's (`target/<profile>/deps/…` for a test,
/// `target/<profile>/examples/…` for an example).
pub fn bridge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("this executable has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("this executable is in target/<profile>/<dir>/")
        .join(format!("jelou-bridge{}", std::env::consts::EXE_SUFFIX))
}

/// `program` with none of this process's own `JELOU_BRIDGE*` environment: only what the
/// caller sets reaches it.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("JELOU_BRIDGE") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The binary under test, through [`clean_command`].
pub fn clean_bridge_command() -> Command {
    clean_command(bridge_bin())
}

/// The binary under test configured through the environment only: the broker, exchanges,
/// queue and store of `settings`, no `RUST_LOG`.
pub fn bridge_command(settings: &Settings) -> Command {
    command_for(bridge_bin(), settings)
}

/// As [`bridge_command`], with another build of `jelou-bridge` at `program`.
pub fn command_for(program: impl AsRef<std::ffi::OsStr>, settings: &Settings) -> Command {
    let mut cmd = clean_command(program);
    cmd.env_remove("RUST_LOG")
        .env("JELOU_BRIDGE__AMQP__URL", settings.amqp.url.expose_secret())
        .env("JELOU_BRIDGE__AMQP__EXCHANGE", &settings.amqp.exchange)
        .env("JELOU_BRIDGE__AMQP__QUEUE", &settings.amqp.queue)
        .env(
            "JELOU_BRIDGE__AMQP__EVENTS_EXCHANGE",
            &settings.amqp.events_exchange,
        )
        .env(
            "JELOU_BRIDGE__STORE__URL",
            settings.store.url.expose_secret(),
        );
    cmd
}

/// What a command that ran to its end printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Fails the test, showing what was printed, unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to its end, bounded to 60 s (the test then fails), and echoes what it printed
/// for the test's log, headed by `what`.
pub async fn run_to_end(cmd: Command, what: &str) -> Ran {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("jelou-bridge {what} did not finish within 60s"))
        .unwrap();
    let ran = Ran {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("jelou-bridge prints UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("jelou-bridge prints UTF-8"),
    };
    println!(
        "$ jelou-bridge {what}\n[exit {:?}]\n{}{}",
        ran.code, ran.stdout, ran.stderr
    );
    ran
}

/// The message of the line that says where a starting bridge listens (its `http` field).
const STARTING: &str = "jelou-bridge starting";

/// `log.level`, made to keep the [`STARTING`] line (logged by the `app` module at `info`)
/// when it asks for a quieter level, as an operator who wants quiet logs but the start line
/// would set it.
fn level_keeping_the_start_line(level: &str) -> Option<String> {
    matches!(level, "warn" | "error" | "off").then(|| format!("{level},jelou_bridge::app=info"))
}

/// A running `jelou-bridge run`: its JSON logs (stderr) and its stdout go to files in its
/// directory. Dropping it kills the process.
pub struct BridgeProcess {
    child: Mutex<Child>,
    /// Where it listens: `http://<the address it bound>`.
    pub http: String,
    log: PathBuf,
    out: PathBuf,
}

impl BridgeProcess {
    /// Starts `cmd` (a `jelou-bridge run`, possibly under a wrapper such as `faketime`) in
    /// `dir` with `http.listen` on port 0 and JSON logs, and reads the address it bound from
    /// its start line: the child binds its own port, none is reserved and released here for
    /// another process to take first.
    pub async fn start(mut cmd: Command, dir: &Path) -> anyhow::Result<BridgeProcess> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("bridge-{n}.log"));
        let out = dir.join(format!("bridge-{n}.stdout"));
        let level = cmd
            .get_envs()
            .find(|(k, _)| *k == "JELOU_BRIDGE__LOG__LEVEL")
            .and_then(|(_, v)| v?.to_str().and_then(level_keeping_the_start_line));
        if let Some(level) = level {
            cmd.env("JELOU_BRIDGE__LOG__LEVEL", level);
        }
        // A group of its own, which every signal goes to: a bridge started under a wrapper
        // (`faketime … jelou-bridge run`) is the wrapper's child, and killing the wrapper
        // alone left it running, redeclaring its queues, after its test had ended.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&log)?)
            .env_remove("RUST_LOG")
            .env("JELOU_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
            .env("JELOU_BRIDGE__LOG__FORMAT", "json");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let bound = text.lines().filter(|l| l.contains(STARTING)).find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                v["http"].as_str().map(str::to_string)
            });
            if let Some(addr) = bound {
                return Ok(BridgeProcess {
                    child: Mutex::new(child),
                    http: format!("http://{addr}"),
                    log,
                    out,
                });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("jelou-bridge exited ({status}) before it started:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("jelou-bridge did not say where it listens within 30s:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// `GET /readyz`'s status, or None when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        reqwest::Client::new()
            .get(format!("{}/readyz", self.http))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Waits until `/readyz` answers `status`; fails the test after `timeout`, or at once
    /// when the process exits.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readyz().await != Some(status) {
            if let Some(exit) = self.exited() {
                panic!("the bridge exited ({exit}); log:\n{}", self.log_tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "/readyz did not answer {status} within {timeout:?}; log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the bridge is ready (`/readyz` 200).
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_readyz(200, timeout).await
    }

    /// `kill -9`: no shutdown, no cleanup; the broker and the store see a crash.
    pub fn kill9(&self) {
        kill_group(&mut self.child.lock().unwrap()).unwrap();
    }

    /// SIGTERM, as an operator or an orchestrator stops it.
    pub fn sigterm(&self) {
        assert!(
            signal_group(self.pid(), "-TERM"),
            "kill -TERM -- -{}",
            self.pid()
        );
    }

    /// The exit status if the process has exited, else None.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().unwrap()
    }

    /// Waits for the process to exit; fails the test after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bridge did not exit within {timeout:?}; log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then its exit status once it exits; an error (and `kill -9`) when it has not
    /// exited within `timeout`.
    pub async fn stop(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.sigterm();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                anyhow::bail!(
                    "the bridge did not stop within {timeout:?} of SIGTERM; log:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything it logged so far (JSON, one object a line).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines it logged.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The sum of the samples of `name` on its `/metrics` whose labels contain one of
    /// `labels` (every sample when `labels` is empty).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        scrape_metric(&self.http, name, labels).await
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = kill_group(self.child.get_mut().unwrap_or_else(|e| e.into_inner()));
        if std::thread::panicking() {
            // The test's directory goes away with it: keep the log for the post-mortem.
            let kept = std::env::temp_dir().join(format!(
                "jb-bridge-{}-{}",
                std::process::id(),
                self.log.file_name().unwrap().to_string_lossy()
            ));
            let _ = std::fs::copy(&self.log, &kept);
            eprintln!(
                "--- bridge at {}: full log in {}; its end: ---\n{}",
                self.http,
                kept.display(),
                self.log_tail(15)
            );
        }
    }
}

/// `kill -9` to the child's whole group (its wrapper's child too), the child alone when the
/// group cannot be signalled, then reaps it.
fn kill_group(child: &mut Child) -> std::io::Result<ExitStatus> {
    if !signal_group(child.id(), "-KILL") {
        let _ = child.kill();
    }
    child.wait()
}

/// Sends `signal` (`-TERM`, `-KILL`) to the process group `pgid` leads (the bridge, and its
/// wrapper when it has one); whether `kill` succeeded.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        // A group already gone (the bridge exited) is no news.
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
