//! Opening a broker connection: plain or TLS (rustls, an extra CA, a client certificate), to
//! `amqp.url` or to any node of the cluster ([`Nodes`]: `amqp.url` and `amqp.failover_urls`).

use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{amqp_uri, redacted_url, AmqpSettings};

/// Connects once to `amqp.url`, or when it refuses, to the first of `amqp.failover_urls` that
/// takes the connection (the operator commands: any node of the cluster serves them). The
/// caller decides about retrying. Errors never carry a password.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let mut failures = Vec::new();
    for url in settings.node_urls() {
        match connect_to(settings, &url, name).await {
            Ok(conn) => return Ok(conn),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(anyhow::anyhow!(failures.join("; ")))
}

/// Connects once to one node of the cluster, with the TLS settings of `settings`. Bounded by
/// the caller: a node that takes TCP but never completes the handshake holds it.
pub async fn connect_to(
    settings: &AmqpSettings,
    url: &SecretString,
    name: &str,
) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let tls = tls_config(settings)?;
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| anyhow::anyhow!("no async runtime for the broker connection: {e}"))?;
    let uri = with_frame_max(url).map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the broker at {}: {e}",
            redacted_url(url.expose_secret())
        )
    })?;
    Connection::connect_uri_with_config(uri, props, tls, runtime)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the broker at {}: {}",
                redacted_url(url.expose_secret()),
                crate::error::error_chain(&e)
            )
        })
}

/// The largest frame the bridge asks for when `amqp.url` does not set `frame_max`. lapin keeps
/// two ring buffers of 32 frames per connection, filled with zeros up front: at RabbitMQ's
/// default of 128 KiB that is 8 MiB per connection, at 16 KiB 1 MiB. Ticket events are a few
/// KiB; a larger message simply takes more frames.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// `url` parsed, asking for [`DEFAULT_FRAME_MAX`] unless it sets `frame_max` itself (the
/// broker may still choose smaller frames; it never has to take larger ones).
fn with_frame_max(url: &SecretString) -> Result<lapin::uri::AMQPUri, String> {
    let mut uri = amqp_uri(url)?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    Ok(uri)
}

/// What `check-config --probe` does for one node of the cluster: connect (at most 10 s, for a
/// node that takes TCP but never completes the handshake), then close. Ok names the node,
/// password redacted.
pub async fn probe(settings: &AmqpSettings, node: &SecretString) -> anyhow::Result<String> {
    let name = redacted_url(node.expose_secret());
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        connect_to(settings, node, "jelou-bridge check-config"),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{name}: no answer within 10s"))??;
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connected.close(200, "probe done".into()),
    )
    .await;
    Ok(name)
}

/// The nodes of the cluster as the consumer's supervisor walks them: it stays on the current
/// node while that one answers, and on a failed attempt moves to the next, round the list.
/// The walk starts at a random node, so replicas started together spread over the cluster
/// instead of all crowding the first node of the list.
pub struct Nodes {
    urls: Vec<SecretString>,
    /// Passwords replaced: what logs and `/metrics` name a node by.
    names: Vec<String>,
    current: usize,
}

impl Nodes {
    pub fn new(settings: &AmqpSettings) -> Nodes {
        let urls = settings.node_urls();
        let names = urls
            .iter()
            .map(|u| redacted_url(u.expose_secret()))
            .collect();
        let current = fastrand::usize(..urls.len());
        Nodes {
            urls,
            names,
            current,
        }
    }

    /// The node to try (or in use).
    pub fn current(&self) -> &SecretString {
        &self.urls[self.current]
    }

    /// The current node's URL, password redacted.
    pub fn name(&self) -> &str {
        &self.names[self.current]
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Moves on to the next node (round the list); with a single node, stays on it.
    pub fn advance(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }

    /// `jelou_bridge_broker_node{node}`: 1 for the node the bridge is connected to, 0 for the
    /// others (all 0 while it has no connection).
    pub fn record(&self, connected: bool) {
        for (i, name) in self.names.iter().enumerate() {
            let on = connected && i == self.current;
            metrics::gauge!("jelou_bridge_broker_node", "node" => name.clone()).set(if on {
                1.0
            } else {
                0.0
            });
        }
    }
}

fn tls_config(settings: &AmqpSettings) -> anyhow::Result<OwnedTLSConfig> {
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path}: {e}"))
    };
    let cert_chain = if settings.ca_file.is_empty() {
        None
    } else {
        Some(String::from_utf8(read("amqp.ca_file", &settings.ca_file)?)?)
    };
    let identity = if settings.client_cert_file.is_empty() {
        None
    } else {
        Some(OwnedIdentity::PKCS8 {
            pem: read("amqp.client_cert_file", &settings.client_cert_file)?,
            key: read("amqp.client_key_file", &settings.client_key_file)?,
        })
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn frames_of_16_kib_are_asked_for_unless_the_url_says_otherwise() {
        let uri = with_frame_max(&"amqp://u:p@h:5672/%2f?heartbeat=30".into()).unwrap();
        assert_eq!(uri.query.frame_max, Some(DEFAULT_FRAME_MAX));
        assert_eq!(
            uri.query.heartbeat,
            Some(30),
            "the URL's other settings stay"
        );
        let uri = with_frame_max(&"amqp://u:p@h:5672/%2f?frame_max=131072".into()).unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert!(with_frame_max(&"amqp://h:notaport/".into()).is_err());
    }

    #[tokio::test]
    async fn a_url_the_client_refuses_is_named_without_its_password() {
        let settings = Settings::defaults().amqp;
        let url = SecretString::from("amqp:guest:pw-secret@localhost");
        let e = connect_to(&settings, &url, "test")
            .await
            .expect_err("a URL without an authority is refused")
            .to_string();
        assert!(e.contains("needs a host"), "{e}");
        assert!(!e.contains("pw-secret"), "{e}");
    }

    #[test]
    fn nodes_go_round_every_url_and_never_name_a_password() {
        let mut settings = Settings::defaults().amqp;
        settings.url = "amqp://u:pw-1@a:5672/%2f".into();
        settings.failover_urls = vec![
            "amqp://u:pw-2@b:5672/%2f".into(),
            "amqps://u:pw-3@c/%2f".into(),
        ];
        let mut nodes = Nodes::new(&settings);
        assert_eq!(nodes.len(), 3);
        let start = nodes.name().to_string();
        let mut seen = Vec::new();
        for _ in 0..3 {
            assert!(!nodes.name().contains("pw-"), "{}", nodes.name());
            seen.push(nodes.name().to_string());
            nodes.advance();
        }
        assert_eq!(nodes.name(), start, "round the list, back to the start");
        seen.sort();
        assert_eq!(
            seen,
            [
                "amqp://u:redacted@a:5672/%2f",
                "amqp://u:redacted@b:5672/%2f",
                "amqps://u:redacted@c/%2f"
            ]
        );

        // The walk starts at a random node: sixty starts all on one of three nodes would
        // happen once in 10^28 runs.
        let starts: std::collections::HashSet<String> = (0..60)
            .map(|_| Nodes::new(&settings).name().to_string())
            .collect();
        assert!(starts.len() > 1, "every start on {starts:?}");

        settings.failover_urls.clear();
        let mut single = Nodes::new(&settings);
        single.advance();
        assert_eq!(single.current().expose_secret(), "amqp://u:pw-1@a:5672/%2f");
    }
}
