//! The operator commands, run as the real binary against the real broker, the test's store
//! and a bridge running in this process.

use std::process::Command;
use std::time::Duration;

use jelou_bridge::config::Settings;
use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use serde_json::Value;

use testkit::*;

mod dlq;
mod probe;
mod store;

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

/// Runs `cmd` with `line`'s arguments to completion (see [`run`]).
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
