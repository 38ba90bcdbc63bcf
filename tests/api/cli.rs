//! The binary as users run it: configuration errors, check-config, and no secret in any log.

use std::process::{Command, Stdio};
use std::time::Duration;

use jelou_bridge::jelou::mock::{MockOptions, Scripted};
use serde_json::{json, Value};

use testkit::*;

fn bridge() -> Command {
    let mut cmd = clean_bridge_command();
    cmd.current_dir(std::env::temp_dir());
    cmd
}

#[test]
fn broken_config_exits_2_with_one_line_naming_the_key() {
    let out = bridge()
        .args(["check-config"])
        .env("JELOU_BRIDGE__AMQP__PREFETCH", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("amqp.prefetch"), "{err}");

    let out = bridge().args(["run"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "run without credentials and without --sandbox"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("jelou.project_id"), "{err}");

    let out = bridge()
        .args(["check-config", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = bridge().args(["no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let out = bridge()
        .args(["check-config"])
        .env("JELOU_BRIDGE__JELOU__PROJECT_ID", "p-1")
        .env("JELOU_BRIDGE__JELOU__API_KEY", "sk-live-SECRET1")
        .env("JELOU_BRIDGE__WEBHOOK__SIGNING_SECRET", "whsec-SECRET2")
        .env(
            "JELOU_BRIDGE__AMQP__URL",
            "amqp://bob:SECRET3@rabbit:5672/%2f",
        )
        .env("JELOU_BRIDGE__AMQP__PREFETCH", "64")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["SECRET1", "SECRET2", "SECRET3"] {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
    let parsed: toml::Value = toml::from_str(&text).expect("check-config prints TOML");
    assert_eq!(parsed["amqp"]["prefetch"].as_integer(), Some(64));
    assert_eq!(parsed["jelou"]["api_key"].as_str(), Some("[redacted]"));
    assert_eq!(parsed["jelou"]["project_id"].as_str(), Some("p-1"));
}

/// A broker user with a password only this test knows, so the test can look for it.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    fn create(password: &str) -> BrokerUser {
        let name = unique("jbt-user");
        rabbitmqctl(&["add_user", &name, password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        BrokerUser { name }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_line() {
    const API_KEY_S: &str = "sk-live-0123456789abcdef";
    const AMQP_PW: &str = "pw-9f8e7d6c5b4a";
    const SIGNING: &str = "whsec-a1b2c3d4e5";
    let user = BrokerUser::create(AMQP_PW);
    let mock = start_stand_in(MockOptions {
        api_key: Some(API_KEY_S.into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let name = unique("jbt-logs");
    let settings = test_settings(&name, &mock.base_url(), dir.path());
    let _topology = TopologyGuard(settings.clone());
    let mut bus = Bus::new(&settings).await;
    let mut cmd = bridge_command(&settings);
    cmd.arg("run")
        .env(
            "JELOU_BRIDGE__AMQP__URL",
            format!("amqp://{}:{AMQP_PW}@127.0.0.1:5672/%2f", user.name),
        )
        .env("JELOU_BRIDGE__JELOU__BASE_URL", mock.base_url())
        .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
        .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY_S)
        .env("JELOU_BRIDGE__WEBHOOK__SIGNING_SECRET", SIGNING)
        .env("JELOU_BRIDGE__LOG__FORMAT", "json")
        .env("JELOU_BRIDGE__LOG__LEVEL", "debug")
        .env("JELOU_BRIDGE__RETRY__MIN_DELAY", "10ms");
    let child = BridgeProcess::start(cmd, dir.path()).await.unwrap();
    let http = reqwest::Client::new();
    child.wait_ready(Duration::from_secs(20)).await;
    // A success, a rejection, a retry, bad input and a badly signed webhook: every path logs.
    bus.publish_json(
        "ticket.opened",
        &json!({"ticketId": "T-LOG1", "userId": "U1", "botId": "B"}),
    )
    .await;
    bus.expect(1, Duration::from_secs(15)).await;
    mock.script([Scripted::status(503), Scripted::status(401)]);
    bus.publish_json(
        "ticket.opened",
        &json!({"ticketId": "T-LOG2", "userId": "U2", "botId": "B"}),
    )
    .await;
    bus.publish("ticket.opened", b"{broken", Default::default())
        .await;
    bus.expect(2, Duration::from_secs(15)).await;
    let hook = http
        .post(format!("{}/webhooks/jelou", child.http))
        .header("x-jelou-signature", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 401);

    let status = child.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
    let (stdout, stderr) = (child.stdout(), child.log());
    let logs = format!("{stdout}{stderr}");
    assert!(logs.lines().count() > 5, "logs were captured:\n{logs}");
    for secret in [API_KEY_S, AMQP_PW, SIGNING] {
        assert!(!logs.contains(secret), "secret {secret} found in logs");
    }
    // Production format: one JSON object per line; lines about a ticket name it.
    let mut about_ticket = 0;
    for line in stderr.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "conversation started" {
            assert_eq!(v["span"]["ticket_id"], "T-LOG1", "{line}");
            assert!(
                v["span"]["correlation_id"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty()),
                "{line}"
            );
            about_ticket += 1;
        }
    }
    assert_eq!(about_ticket, 1);
}

#[test]
fn schemas_writes_every_bus_messages_schema_as_committed() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("nested").join("schemas");
    let out = bridge()
        .args(["schemas", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut names: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 10, "{names:?}");
    for name in &names {
        assert!(
            std::fs::read(out_dir.join(name)).unwrap()
                == std::fs::read(committed.join(name)).unwrap_or_default(),
            "schemas/{name} differs from what `schemas` writes: run `cargo run -- schemas --out schemas`"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(name.as_str()),
            "{name} not listed"
        );
    }
    assert!(names.contains(&"ticket.reply.schema.json".to_string()));
}

/// Quiet logs keep the lines they ask for. A PostgreSQL store that is already migrated makes
/// the driver report a notice (below `warn`, so turned down); that once made the bridge's
/// next line, its start line, disappear too (tracing-subscriber's per-layer filter state).
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_log_level_still_logs_the_start_line_after_library_logs_it_turned_down() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&unique("jbt-quiet"), "http://127.0.0.1:9", dir.path());
    settings.store.url = secrecy::SecretString::from(pg.url.clone());
    let _topology = TopologyGuard(settings.clone());
    // The first run migrates; the second finds the store migrated and gets the notice.
    for run in ["migrating", "already migrated"] {
        let mut cmd = bridge_command(&settings);
        cmd.args(["run", "--sandbox"])
            .env("JELOU_BRIDGE__LOG__LEVEL", "warn,jelou_bridge::app=info");
        let child = BridgeProcess::start(cmd, dir.path())
            .await
            .unwrap_or_else(|e| panic!("{run}: {e}"));
        child.stop(Duration::from_secs(10)).await.unwrap();
        let log = child.log();
        assert!(log.contains("jelou-bridge stopped"), "{run}: {log}");
    }
}
