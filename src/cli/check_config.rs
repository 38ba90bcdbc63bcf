//! `check-config`: the effective configuration, secrets redacted, and with `--probe` whether
//! each dependency answers: every broker node, the store (and its schema version), Jelou.
//! Exit 1 when a probe fails.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;

/// Prints the configuration and, with `probe`, one `# probe NAME: ok (…)` or
/// `# probe NAME: FAILED: …` line per dependency.
pub(super) async fn run(settings: &Settings, probe: bool) -> anyhow::Result<ExitCode> {
    print!("{}", settings.to_redacted_toml());
    if !probe {
        return Ok(ExitCode::SUCCESS);
    }
    let mut ok = true;
    let mut report = |name: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("# probe {name}: ok ({detail})"),
        Err(e) => {
            ok = false;
            println!("# probe {name}: FAILED: {e}");
        }
    };
    // Every node of the cluster: a failover node that cannot be reached is found now, not
    // when the bridge needs it.
    for (i, node) in settings.amqp.node_urls().iter().enumerate() {
        let name = match i {
            0 => "broker".to_string(),
            _ => format!("broker failover_urls[{}]", i - 1),
        };
        let broker = crate::amqp::connection::probe(&settings.amqp, node).await;
        report(&name, broker.map_err(|e| e.to_string()));
    }
    let store = tokio::time::timeout(
        Duration::from_secs(10),
        crate::store::Store::probe(&settings.store),
    )
    .await;
    report(
        "store",
        match store {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 10s".into()),
        },
    );
    let jelou = crate::jelou::client::probe(&settings.jelou).await;
    report("jelou", jelou.map_err(|e| e.to_string()));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
