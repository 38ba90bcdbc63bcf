//! `check-config --probe`: each dependency checked, every failover node, no password shown.

use jelou_bridge::config::Settings;

use testkit::*;

use super::{command, run_cmd};

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
