//! `[amqp]`: the broker, the topology the bridge consumes from and publishes to, and the
//! sharded layout several replicas share.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::redact::{redact_url, redact_urls, redacted_url};
use super::serde_helpers::{secret_list, string_list};
use super::ConfigError;

/// The kind of queue the bridge declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, with a delivery limit against poison messages.
    Quorum,
    /// A single-node queue, for brokers without quorum queues.
    Classic,
}

/// The `[amqp]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    /// Broker URL (`amqp://` or `amqps://` for TLS); its password is never logged.
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    /// Other nodes of the same cluster (`url`'s TLS settings apply to them too): with
    /// `url`, the nodes the consumer tries in turn when its connection is lost.
    #[serde(
        default,
        deserialize_with = "secret_list",
        serialize_with = "redact_urls"
    )]
    pub failover_urls: Vec<SecretString>,
    /// Topic exchange the helpdesk publishes ticket events to.
    pub exchange: String,
    /// The bridge's durable queue, bound to `exchange` with `binding_keys`.
    pub queue: String,
    /// Routing keys binding `queue` to `exchange` (a list, or comma-separated).
    #[serde(deserialize_with = "string_list")]
    pub binding_keys: Vec<String>,
    /// Topic exchange the bridge publishes outcomes and Jelou's webhook events to.
    pub events_exchange: String,
    /// Unacknowledged deliveries at once per consumed queue (messages): the concurrency bound.
    pub prefetch: u16,
    /// Quorum or classic queues.
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of one message (a count) before the broker dead-letters it.
    pub delivery_limit: u32,
    /// Declare exchanges, queues and bindings at start; off: only check them passively.
    pub declare_topology: bool,
    /// Queues to consume (the shard queues); empty: just `queue`.
    #[serde(deserialize_with = "string_list")]
    pub consume_queues: Vec<String>,
    /// Largest inbound body accepted (bytes); a larger one is refused as invalid.
    pub max_message_bytes: usize,
    /// First wait before reconnecting to a lost broker (a duration).
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    /// Longest wait between reconnection attempts (a duration).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// How long a publish waits for the broker's confirm before it is an error (a duration).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// PEM file of an extra CA to trust for `amqps://`; empty: none.
    pub ca_file: String,
    /// PEM client certificate for `amqps://`; empty: none (goes with `client_key_file`).
    pub client_cert_file: String,
    /// PEM PKCS#8 private key of `client_cert_file`; empty: none.
    pub client_key_file: String,
    /// The sharded topology: a consistent-hash exchange between `exchange` and the
    /// `consume_queues`, hashing on the `shard_header` header. Empty: not declared.
    pub shard_exchange: String,
    /// The message header the shard exchange hashes on (the ticket id).
    pub shard_header: String,
    /// Replicas sharing `consume_queues` (a count): this one consumes queue `i` when
    /// `i % replica_count == replica_index % replica_count`.
    pub replica_count: u32,
    /// This replica's index among `replica_count` (from 0; higher ones are standbys).
    pub replica_index: u32,
}
impl AmqpSettings {
    /// The queues this process consumes: `consume_queues`, or just `queue`.
    pub fn consumed_queues(&self) -> Vec<String> {
        if self.consume_queues.is_empty() {
            vec![self.queue.clone()]
        } else {
            self.consume_queues.clone()
        }
    }

    /// The queues this process consumes: with several replicas, its share of
    /// [`Self::consumed_queues`]. Processes with the same `replica_index % replica_count`
    /// consume the same share; single active consumer makes one of them work and the others
    /// wait as standbys.
    pub fn own_queues(&self) -> Vec<String> {
        let count = self.replica_count.max(1) as usize;
        let index = self.replica_index as usize % count;
        self.consumed_queues()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % count == index)
            .map(|(_, q)| q)
            .collect()
    }

    /// Where dead letters are published: `<queue>.dlx`, bound to `<queue>.dead`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    /// The queue dead letters end in.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The broker URL with its password replaced, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redacted_url(self.url.expose_secret())
    }

    /// Every node of the cluster: `url`, then `failover_urls`.
    pub fn node_urls(&self) -> Vec<SecretString> {
        std::iter::once(&self.url)
            .chain(&self.failover_urls)
            .cloned()
            .collect()
    }

    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(self.url.expose_secret())
            .map_err(|e| ConfigError::new("amqp.url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(ConfigError::new("amqp.url", "scheme must be amqp or amqps"));
        }
        amqp_uri(&self.url).map_err(|e| ConfigError::new("amqp.url", e))?;
        for (i, other) in self.failover_urls.iter().enumerate() {
            // Which entry, never its text: it may hold a password.
            let key = "amqp.failover_urls";
            let url = url::Url::parse(other.expose_secret())
                .map_err(|e| ConfigError::new(key, format!("entry {}: not a URL: {e}", i + 1)))?;
            if !matches!(url.scheme(), "amqp" | "amqps") {
                return Err(ConfigError::new(
                    key,
                    format!("entry {}: scheme must be amqp or amqps", i + 1),
                ));
            }
            amqp_uri(other).map_err(|e| ConfigError::new(key, format!("entry {}: {e}", i + 1)))?;
        }
        for (key, value) in [
            ("amqp.exchange", &self.exchange),
            ("amqp.queue", &self.queue),
            ("amqp.events_exchange", &self.events_exchange),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        if self.prefetch == 0 {
            return Err(ConfigError::new("amqp.prefetch", "must be at least 1"));
        }
        if self.binding_keys.is_empty() {
            return Err(ConfigError::new(
                "amqp.binding_keys",
                "must name at least one key",
            ));
        }
        if self.client_cert_file.is_empty() != self.client_key_file.is_empty() {
            return Err(ConfigError::new(
                "amqp.client_key_file",
                "amqp.client_cert_file and amqp.client_key_file go together",
            ));
        }
        if self.reconnect_min_delay > self.reconnect_max_delay {
            return Err(ConfigError::new(
                "amqp.reconnect_min_delay",
                "must not exceed amqp.reconnect_max_delay",
            ));
        }
        self.validate_shards()?;
        for (key, path) in [
            ("amqp.ca_file", &self.ca_file),
            ("amqp.client_cert_file", &self.client_cert_file),
            ("amqp.client_key_file", &self.client_key_file),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                return Err(ConfigError::new(key, format!("file {path} does not exist")));
            }
        }
        Ok(())
    }

    /// The sharded topology and the replicas sharing it.
    fn validate_shards(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for q in &self.consume_queues {
            if q.trim().is_empty() || !seen.insert(q.as_str()) {
                return Err(ConfigError::new(
                    "amqp.consume_queues",
                    format!("{q:?} is empty or listed twice"),
                ));
            }
        }
        if !self.shard_exchange.is_empty() {
            if self.consume_queues.is_empty() {
                return Err(ConfigError::new(
                    "amqp.shard_exchange",
                    "needs amqp.consume_queues, the shard queues behind it",
                ));
            }
            if self.shard_exchange == self.exchange || self.shard_exchange == self.events_exchange {
                return Err(ConfigError::new(
                    "amqp.shard_exchange",
                    "must differ from amqp.exchange and amqp.events_exchange",
                ));
            }
            if self.shard_header.trim().is_empty() {
                return Err(ConfigError::new(
                    "amqp.shard_header",
                    "must name the header carrying the ticket id",
                ));
            }
        }
        let queues = self.consumed_queues().len();
        if self.replica_count == 0 || self.replica_count as usize > queues {
            return Err(ConfigError::new(
                "amqp.replica_count",
                format!("must be between 1 and the number of consumed queues ({queues})"),
            ));
        }
        Ok(())
    }
}

/// A node's URL as the AMQP client reads it (`frame_max` and the other query parameters
/// included): what validation checks when the configuration loads, and what the connection
/// opens. The reason never quotes the URL: it may hold a password.
pub fn amqp_uri(url: &SecretString) -> Result<lapin::uri::AMQPUri, String> {
    let raw = url.expose_secret();
    raw.parse::<lapin::uri::AMQPUri>().map_err(|e| {
        if e.contains(raw) {
            "not an AMQP URL: it needs a host (amqp://user:password@host:port/vhost)".to_string()
        } else {
            format!("not an AMQP URL: {e}")
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::vars;
    use crate::config::Settings;

    #[test]
    fn replicas_split_the_shard_queues() {
        let shards = "s0,s1,s2,s3,s4,s5";
        let load = |count: &str, index: &str| {
            Settings::load(
                &vars(&[
                    ("JELOU_BRIDGE__AMQP__CONSUME_QUEUES", shards),
                    ("JELOU_BRIDGE__AMQP__SHARD_EXCHANGE", "helpdesk.shards"),
                    ("JELOU_BRIDGE__AMQP__REPLICA_COUNT", count),
                    ("JELOU_BRIDGE__AMQP__REPLICA_INDEX", index),
                ]),
                true,
            )
        };
        let s = load("3", "1").unwrap();
        assert_eq!(s.amqp.shard_header, "x-ticket-id");
        assert_eq!(s.amqp.own_queues(), ["s1", "s4"]);
        assert_eq!(load("1", "0").unwrap().amqp.own_queues().len(), 6);
        // Every queue is some replica's, exactly once.
        let mut owned: Vec<String> = (0..4)
            .flat_map(|i| load("4", &i.to_string()).unwrap().amqp.own_queues())
            .collect();
        owned.sort();
        assert_eq!(owned, ["s0", "s1", "s2", "s3", "s4", "s5"]);
        // A second process with an index one count higher is the first one's standby.
        assert_eq!(load("3", "4").unwrap().amqp.own_queues(), ["s1", "s4"]);

        assert_eq!(load("7", "0").unwrap_err().key, "amqp.replica_count");
        assert_eq!(load("0", "0").unwrap_err().key, "amqp.replica_count");
        let defaults = Settings::load(&vars(&[]), true).unwrap();
        assert_eq!(defaults.amqp.own_queues(), ["jelou-bridge.tickets"]);
        let err = Settings::load(
            &vars(&[("JELOU_BRIDGE__AMQP__SHARD_EXCHANGE", "helpdesk.shards")]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "amqp.shard_exchange", "shards need their queues");
        let err = Settings::load(
            &vars(&[("JELOU_BRIDGE__AMQP__CONSUME_QUEUES", "s0,s1,s0")]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "amqp.consume_queues");
    }

    #[test]
    fn failover_urls_are_checked_without_echoing_them() {
        let defaults = Settings::load(&vars(&[]), true).unwrap();
        assert!(defaults.amqp.failover_urls.is_empty());
        assert_eq!(defaults.amqp.node_urls().len(), 1);
        let err = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__AMQP__FAILOVER_URLS",
                "amqp://u:p@ok:5672/%2f,http://u:s3cret@bad/",
            )]),
            true,
        )
        .unwrap_err();
        assert_eq!(err.key, "amqp.failover_urls", "{err}");
        assert!(err.to_string().contains("entry 2"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
