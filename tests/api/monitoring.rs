//! The monitoring kit (deploy/monitoring/) names only metrics the binary exports: an alert on
//! a misspelt metric never fires, a panel on one stays empty, and neither says so.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;

use testkit::*;

/// Every `jelou_bridge_…` name in `text`, with a histogram's series suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("jelou_bridge_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

/// The names the code records (`counter!`/`gauge!`/`histogram!` in src/).
fn recorded_by_the_code() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_ in ["counter!(", "gauge!(", "histogram!("] {
                    for (at, _) in text.match_indices(macro_) {
                        let rest = text[at + macro_.len()..].trim_start();
                        if let Some(rest) = rest.strip_prefix('"') {
                            if let Some(end) = rest.find('"') {
                                out.insert(rest[..end].to_string());
                            }
                        }
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

fn kit() -> Vec<(String, BTreeSet<String>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let mut out = Vec::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        if file.ends_with(".json") {
            let _: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
        }
        out.push((file.to_string(), metric_names(&text)));
    }
    out
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_the_code_records() {
    let recorded = recorded_by_the_code();
    assert!(
        recorded.contains("jelou_bridge_dead_letters_total"),
        "the scan finds the code's metrics: {recorded:?}"
    );
    for (file, names) in kit() {
        assert!(
            names.len() >= 5,
            "{file} names the bridge's metrics: {names:?}"
        );
        let unknown: Vec<_> = names.difference(&recorded).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the bridge never records: {unknown:?}"
        );
    }
}

/// And a running bridge really exports them on `/metrics` once it has seen the traffic that
/// records them (a ticket, a failure, a park, a webhook with a bad signature).
#[tokio::test(flavor = "multi_thread")]
async fn a_running_bridge_exports_every_metric_the_kit_names() {
    let mut app = spawn_app_with(|s, m| {
        signed(s, m);
        s.retry.max_attempts = 2;
    })
    .await;
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-MON1", "userId": "U-M1", "botId": "B"}),
        )
        .await;
    app.bus
        .publish("ticket.opened", b"{broken", Default::default())
        .await;
    app.bus.expect(2, std::time::Duration::from_secs(15)).await;
    // 503, retried in process, 503 again: parked; back, 503, retried, started.
    app.mock.script([
        jelou_bridge::jelou::mock::Scripted::status(503),
        jelou_bridge::jelou::mock::Scripted::status(503),
        jelou_bridge::jelou::mock::Scripted::status(503),
    ]);
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-MON2", "userId": "U-M2", "botId": "B"}),
        )
        .await;
    app.bus.expect(1, std::time::Duration::from_secs(15)).await;
    // Twice, so the ticket's second event is absorbed from the store.
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": "T-MON1", "userId": "U-M1", "botId": "B"}),
        )
        .await;
    app.bus.expect(1, std::time::Duration::from_secs(15)).await;
    let hook = reqwest::Client::new()
        .post(format!("{}/webhooks/jelou", app.http))
        .header("x-jelou-signature", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 401);
    let scraped = reqwest::get(format!("{}/metrics", app.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = metric_names(&scraped);
    for (file, names) in kit() {
        let missing: Vec<_> = names.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file}: not on /metrics: {missing:?}\n{scraped}"
        );
    }
    app.stop().await;
}
