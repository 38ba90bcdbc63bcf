//! The operator commands, run as the real binary against the real broker, the test's store
//! and a bridge running in this process.

use std::process::Command;
use std::time::Duration;

use jelou_bridge::config::Settings;
use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::{json, Value};

use testkit::*;

const WAIT: Duration = Duration::from_secs(15);

/// The binary, configured through the environment only, as an operator would run it.
fn command(settings: &Settings) -> Command {
    let mut cmd = bridge_command(settings);
    cmd.env("JELOU_BRIDGE__LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir());
    cmd
}

/// Runs `jelou-bridge <line>` (arguments split at spaces) to completion, bounded, echoing
/// what it printed for the test log.
async fn run(settings: &Settings, line: &str) -> Ran {
    run_cmd(command(settings), line).await
}

async fn run_cmd(mut cmd: Command, line: &str) -> Ran {
    cmd.args(line.split_whitespace());
    run_to_end(cmd, line).await
}

/// The JSON document a command printed after its first line.
fn printed_json(stdout: &str) -> Value {
    let start = stdout.find("\n{").expect("a JSON document is printed") + 1;
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_round_trips_through_a_running_bridge() {
    let mut app = spawn_app().await;
    let out = run(
        &app.settings,
        "publish opened --ticket T-PUB1 --user U-PUB --text Hola",
    )
    .await;
    out.assert_code(0);
    assert!(
        out.stdout.starts_with("published ticket.opened"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("waiting up to 30s"),
        "a progress line: {}",
        out.stderr
    );
    let outcome = printed_json(&out.stdout);
    assert_eq!(outcome["event"], "conversation.started");
    assert_eq!(outcome["ticketId"], "T-PUB1");
    assert_eq!(outcome["userId"], "U-PUB");
    let conversation = outcome["conversationId"].as_str().unwrap().to_string();
    let start = app.mock.calls_to(Endpoint::Start);
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].body["initialMessage"], "Hola");

    let out = run(&app.settings, "publish resolved --ticket T-PUB1").await;
    out.assert_code(0);
    let outcome = printed_json(&out.stdout);
    assert_eq!(outcome["event"], "conversation.closed");
    assert_eq!(outcome["conversationId"], conversation.as_str());

    // A failure is printed too, and is an operational failure.
    app.mock.script([Scripted::status(422)]);
    let out = run(&app.settings, "publish opened --ticket T-PUB2 --user U").await;
    out.assert_code(1);
    let outcome = printed_json(&out.stdout);
    assert_eq!(outcome["event"], "ticket.failed");
    assert_eq!(outcome["reason"], "rejected");

    // The helpdesk's observers saw the same outcomes on the events exchange.
    let seen = app.bus.expect(3, WAIT).await;
    let keys: Vec<&str> = seen.iter().map(|s| s.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "conversation.started",
            "conversation.closed",
            "ticket.failed"
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_without_a_running_bridge_times_out_clearly() {
    // The bridge ran once (so its queue exists and takes the message) and is gone.
    let app = spawn_app().await;
    let settings = app.settings.clone();
    let _topology = TopologyGuard(settings.clone());
    app.stop_keeping_topology().await;
    let out = run(
        &settings,
        "publish opened --ticket T-LONELY --user U --timeout 2s",
    )
    .await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("no outcome within 2s"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("jelou-bridge run"), "{}", out.stderr);

    // Never started at all: nothing to publish to, said plainly.
    let dir = tempfile::tempdir().unwrap();
    let fresh = test_settings(&unique("jbt-none"), "http://127.0.0.1:1", dir.path());
    let out = run(&fresh, "publish opened --ticket T-X --user U --timeout 2s").await;
    out.assert_code(1);
    assert!(out.stderr.contains(&fresh.amqp.exchange), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_listed_replayed_and_then_completes() {
    let mut app = spawn_app().await;
    let dead = app.dead_queue();
    app.mock.script([Scripted::status(422)]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-DLQ", "userId": "U", "botId": "B"}),
        )
        .await;
    assert_eq!(
        app.bus.expect(1, WAIT).await[0].routing_key,
        "ticket.failed"
    );
    wait_depth(&dead, 1, WAIT).await;

    let out = run(&app.settings, "dlq list").await;
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("1 dead letter(s) in {dead}")),
        "{}",
        out.stdout
    );
    let header = out.stdout.lines().nth(1).unwrap();
    for column in ["TICKET", "REASON", "ATTEMPTS", "AGE", "ERROR"] {
        assert!(header.contains(column), "{header}");
    }
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        ["T-DLQ", "ticket.opened", "rejected", "1"],
        "{row:?}"
    );
    assert!(row[4].ends_with('s'), "age: {row:?}");
    assert!(row[5..].join(" ").contains("422"), "the error: {row:?}");
    // Listing leaves the dead letter where it was.
    wait_depth(&dead, 1, WAIT).await;

    // A dry run and a replay of another ticket change nothing.
    let out = run(&app.settings, "dlq replay --all --dry-run").await;
    out.assert_code(0);
    assert!(out.stdout.contains("would replay T-DLQ"), "{}", out.stdout);
    assert!(out.stdout.contains("1 dead letter(s) would be replayed"));
    let out = run(&app.settings, "dlq replay --ticket T-OTHER").await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("0 dead letter(s) replayed"),
        "{}",
        out.stdout
    );
    wait_depth(&dead, 1, WAIT).await;
    app.bus.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(app.mock.calls_to(Endpoint::Start).len(), 1);

    // Jelou now accepts it: the replayed event completes and the dead-letter queue empties.
    let out = run(&app.settings, "dlq replay --ticket T-DLQ").await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("replayed T-DLQ ticket.opened"),
        "{}",
        out.stdout
    );
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "conversation.started");
    assert_eq!(seen.body["ticketId"], "T-DLQ");
    wait_depth(&dead, 0, WAIT).await;
    let out = run(&app.settings, "dlq list").await;
    out.assert_code(0);
    assert!(out.stdout.starts_with("0 dead letter(s)"), "{}", out.stdout);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_that_cannot_be_republished_is_kept() {
    let app = spawn_app().await;
    let dead = app.dead_queue();
    // A dead letter whose source queue no longer exists: the republish is not confirmed as
    // routed, so the dead letter must stay.
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-ticket-id", "T-ORPHAN"),
        ("x-jb-reason", "rejected"),
        ("x-jb-source-queue", "jbt-no-such-queue-anywhere"),
        ("x-original-routing-key", "ticket.opened"),
    ] {
        headers.insert(
            k.into(),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    app.bus
        .channel
        .basic_publish(
            "".into(),
            dead.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"ticketId":"T-ORPHAN","userId":"U","botId":"B"}"#,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    wait_depth(&dead, 1, WAIT).await;

    let out = run(&app.settings, "dlq replay --all").await;
    out.assert_code(1);
    assert!(out.stderr.contains("dead letter kept"), "{}", out.stderr);
    wait_depth(&dead, 1, WAIT).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tickets_show_and_list_what_the_store_knows() {
    let mut app = spawn_app().await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-SHOW", "userId": "U-S", "botId": "B-S"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    let conversation = started.body["conversationId"].as_str().unwrap();

    let out = run(&app.settings, "tickets show T-SHOW").await;
    out.assert_code(0);
    let record: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["ticketId"], "T-SHOW");
    assert_eq!(record["state"], "active");
    assert_eq!(record["conversationId"], conversation);
    assert_eq!(record["userId"], "U-S");
    assert_eq!(record["botId"], "B-S");

    let out = run(&app.settings, "tickets list --state active").await;
    out.assert_code(0);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("T-SHOW "))
        .unwrap_or_else(|| panic!("T-SHOW listed: {}", out.stdout));
    assert!(
        row.contains("active") && row.contains(conversation),
        "{row}"
    );
    let out = run(&app.settings, "tickets list --state closed").await;
    out.assert_code(0);
    assert!(!out.stdout.contains("T-SHOW"), "{}", out.stdout);

    let out = run(&app.settings, "tickets show T-NEVER").await;
    out.assert_code(1);
    assert!(out.stderr.contains("T-NEVER"), "{}", out.stderr);
    let out = run(&app.settings, "tickets list --state sleeping").await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("active"),
        "names the valid states: {}",
        out.stderr
    );
    app.stop().await;
}

fn probe_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("# probe "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_probe_checks_each_dependency() {
    let app = spawn_app().await;
    let probe = |settings: &Settings, jelou: &str| {
        let mut cmd = command(settings);
        cmd.env("JELOU_BRIDGE__JELOU__BASE_URL", jelou)
            .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
            .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY)
            .env("JELOU_BRIDGE__JELOU__CONNECT_TIMEOUT", "2s");
        cmd
    };

    let out = run_cmd(
        probe(&app.settings, &app.mock.base_url()),
        "check-config --probe",
    )
    .await;
    out.assert_code(0);
    let lines = probe_lines(&out.stdout);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for (line, name) in lines.iter().zip(["broker", "store", "jelou"]) {
        assert!(line.starts_with(&format!("# probe {name}: ok")), "{line}");
    }
    assert!(!out.stdout.contains(API_KEY), "no secret printed");
    toml::from_str::<toml::Value>(&out.stdout).expect("the output stays valid TOML");

    // Everything unreachable: one failed line each, exit 1.
    let closed_port = unused_port();
    let mut broken = app.settings.clone();
    broken.amqp.url = format!("amqp://guest:guest@127.0.0.1:{closed_port}/%2f").into();
    broken.store.url = format!("postgres://postgres@127.0.0.1:{closed_port}/jbt").into();
    let out = run_cmd(
        probe(&broken, &format!("http://127.0.0.1:{closed_port}")),
        "check-config --probe",
    )
    .await;
    out.assert_code(1);
    let lines = probe_lines(&out.stdout);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for (line, name) in lines.iter().zip(["broker", "store", "jelou"]) {
        assert!(
            line.starts_with(&format!("# probe {name}: FAILED")),
            "{line}"
        );
        // The cause, not just a timeout.
        assert!(line.contains("refused"), "{line}");
    }

    // Only Jelou unreachable: the other two still pass, and the exit code says one failed.
    let out = run_cmd(
        probe(&app.settings, &format!("http://127.0.0.1:{closed_port}")),
        "check-config --probe",
    )
    .await;
    out.assert_code(1);
    let lines = probe_lines(&out.stdout);
    assert!(
        lines[0].contains("broker: ok") && lines[1].contains("store: ok"),
        "{lines:?}"
    );
    assert!(lines[2].contains("jelou: FAILED"), "{lines:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_probe_checks_every_failover_node_without_showing_its_password() {
    let app = spawn_app().await;
    let closed_port = unused_port();
    let mut cmd = command(&app.settings);
    cmd.env("JELOU_BRIDGE__JELOU__BASE_URL", app.mock.base_url())
        .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
        .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY)
        .env(
            "JELOU_BRIDGE__AMQP__FAILOVER_URLS",
            format!(
                "{},amqp://guest:n0de-s3cret@127.0.0.1:{closed_port}/%2f",
                amqp_url()
            ),
        );
    let out = run_cmd(cmd, "check-config --probe").await;
    out.assert_code(1);
    let lines = probe_lines(&out.stdout);
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert!(lines[0].starts_with("# probe broker: ok"), "{lines:?}");
    assert!(
        lines[1].starts_with("# probe broker failover_urls[0]: ok"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("# probe broker failover_urls[1]: FAILED")
            && lines[2].contains("refused")
            && lines[2].contains(&format!("127.0.0.1:{closed_port}")),
        "{lines:?}"
    );
    assert!(lines[3].contains("store: ok") && lines[4].contains("jelou: ok"));
    assert!(!out.stdout.contains("n0de-s3cret"), "{}", out.stdout);
    assert!(!out.stderr.contains("n0de-s3cret"), "{}", out.stderr);

    // The operator commands take the first node that answers.
    let mut down_first = app.settings.clone();
    down_first.amqp.url = format!("amqp://guest:n0de-s3cret@127.0.0.1:{closed_port}/%2f").into();
    let mut cmd = command(&down_first);
    cmd.env("JELOU_BRIDGE__AMQP__FAILOVER_URLS", amqp_url());
    let out = run_cmd(cmd, "dlq list").await;
    out.assert_code(0);
    assert!(out.stdout.contains("dead letter(s) in"), "{}", out.stdout);
    let mut cmd = command(&down_first);
    cmd.env(
        "JELOU_BRIDGE__AMQP__FAILOVER_URLS",
        format!("amqp://guest:n0de-s3cret@127.0.0.1:{closed_port}/%2f"),
    );
    let out = run_cmd(cmd, "dlq list").await;
    out.assert_code(1);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(!out.stderr.contains("n0de-s3cret"), "{}", out.stderr);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn help_explains_every_command_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&unique("jbt-help"), "http://127.0.0.1:1", dir.path());
    let out = run(&settings, "--help").await;
    out.assert_code(0);
    for (command, words) in [
        ("run", "daemon"),
        ("check-config", "effective configuration"),
        ("publish", "sample ticket event"),
        ("dlq", "dead letters"),
        ("tickets", "store knows"),
        ("mock-jelou", "stand-in"),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{command} in --help:\n{}", out.stdout));
        assert!(line.contains(words), "{line}");
    }
    assert!(out.stdout.contains("Exit codes"), "{}", out.stdout);
    for (args, mentions) in [
        (
            "publish --help",
            "--ticket --user --timeout opened resolved",
        ),
        ("dlq --help", "list replay"),
        ("dlq replay --help", "--ticket --all --dry-run"),
        ("dlq list --help", "--limit"),
        ("tickets --help", "show list"),
        ("tickets list --help", "--state active closed"),
        ("check-config --help", "--probe"),
    ] {
        let out = run(&settings, args).await;
        out.assert_code(0);
        for m in mentions.split(' ') {
            assert!(
                out.stdout.contains(m),
                "{args} mentions {m}:\n{}",
                out.stdout
            );
        }
    }

    for args in [
        "publish opened --user U",
        "publish opened --ticket T",
        "publish closed --ticket T",
        "dlq replay",
        "dlq replay --ticket T --all",
        "tickets show",
        "no-such-command",
    ] {
        let out = run(&settings, args).await;
        out.assert_code(2);
        assert!(!out.stderr.trim().is_empty(), "{args} says why");
    }

    // An operational failure: the broker cannot be reached.
    let mut unreachable = settings.clone();
    unreachable.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".to_string().into();
    let out = run(&unreachable, "dlq list").await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("cannot connect to the broker"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_closes_what_an_operator_closed_in_jelou_once_and_a_dry_run_changes_nothing() {
    let mut app = spawn_app().await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-REC", "userId": "U-REC", "botId": "B"}),
        )
        .await;
    let started = app.bus.expect(1, WAIT).await.remove(0);
    let conversation = started.body["conversationId"].as_str().unwrap().to_string();
    // An operator closes it in Jelou, and the webhook never reaches the bridge.
    assert!(app.mock.close_by_operator(&conversation).await);

    let reconcile = |line: &'static str| {
        let mut cmd = command(&app.settings);
        cmd.env("JELOU_BRIDGE__JELOU__BASE_URL", app.mock.base_url())
            .env("JELOU_BRIDGE__JELOU__PROJECT_ID", PROJECT)
            .env("JELOU_BRIDGE__JELOU__API_KEY", API_KEY);
        run_cmd(cmd, line)
    };
    let dry = reconcile("reconcile --dry-run --older-than 0s").await;
    dry.assert_code(0);
    assert!(
        dry.stdout.contains("T-REC") && dry.stdout.contains("would close"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("1 checked, 1 to change"),
        "{}",
        dry.stdout
    );
    app.bus.expect_silence(Duration::from_millis(500)).await;

    let real = reconcile("reconcile --older-than 0s").await;
    real.assert_code(0);
    assert!(real.stdout.contains("active -> closed"), "{}", real.stdout);
    let seen = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(seen.routing_key, "jelou.conversation.close");
    assert_eq!(seen.ticket(), "T-REC");
    assert_eq!(seen.body["conversationId"], conversation.as_str());
    assert_eq!(
        seen.body["payload"]["value"]["reason"],
        "closed_by_operator"
    );

    // Idempotent: nothing is open any more, nothing is published again.
    let again = reconcile("reconcile --older-than 0s").await;
    again.assert_code(0);
    assert!(
        again.stdout.contains("0 checked, 0 changed"),
        "{}",
        again.stdout
    );
    app.bus.expect_silence(Duration::from_millis(500)).await;

    // The helpdesk resolves it later: no close call, the operator's close is reported.
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": "T-REC"}))
        .await;
    let closed = app.bus.expect(1, WAIT).await.remove(0);
    assert_eq!(closed.routing_key, "conversation.closed");
    assert_eq!(closed.body["endedReason"], "closed_by_operator");
    assert!(app.mock.calls_to(Endpoint::Close).is_empty());
    app.stop().await;
}
