//! The broker from a test's side: connections that give up instead of hanging, queue depths,
//! the messages seen on it ([`Seen`]), and the deletion of what a test declared, also when the
//! test fails (quorum queues left behind wear the broker down).

use std::time::{Duration, Instant};

use jelou_bridge::amqp::topology::delay_queue;
use jelou_bridge::config::Settings;
use lapin::message::Delivery;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::names::amqp_url;

/// A connection to `url` named `name` (as the broker's management shows it), or an error
/// when it is not made within `timeout`: a broker that accepts TCP but never completes the
/// handshake would otherwise hang the caller.
pub async fn connect_to(url: &str, name: &str, timeout: Duration) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_string().into());
    match tokio::time::timeout(timeout, Connection::connect(url, properties)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => anyhow::bail!("the broker at {url} did not take a connection within {timeout:?}"),
    }
}

/// A connection to the tests' broker ([`amqp_url`]), or a failed test.
pub async fn connect() -> Connection {
    connect_to(&amqp_url(), "test", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| {
            panic!("{e:#} (RabbitMQ must be running on 127.0.0.1:5672; scripts/test.sh starts it)")
        })
}

/// A connection to the first of `urls` that answers within 10 s, or the last error: a
/// cluster's clients move to another node when theirs is gone.
pub async fn connect_any(urls: &[String]) -> anyhow::Result<Connection> {
    let mut last = anyhow::anyhow!("no broker node to connect to");
    for url in urls {
        match connect_to(url, "test", Duration::from_secs(10)).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Messages ready in `queue` (a passive declare).
pub async fn ready_messages(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Ready messages in `queue`, on the first of the broker nodes `urls` that answers; fails the
/// test when the queue does not exist.
pub async fn depth_on(urls: &[String], queue: &str) -> u32 {
    let conn = tokio::time::timeout(Duration::from_secs(30), connect_any(urls))
        .await
        .expect("a broker node answers within 30s")
        .expect("a broker node takes a connection");
    let ch = conn.create_channel().await.unwrap();
    let n = ready_messages(&ch, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"));
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "done".into())).await;
    n
}

/// Ready messages in `queue` on the tests' broker.
pub async fn depth(queue: &str) -> u32 {
    depth_on(&[amqp_url()], queue).await
}

/// Waits until `queue` holds `n` ready messages; fails the test after `timeout`.
pub async fn wait_depth(queue: &str, n: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = depth(queue).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {now} messages, not {n}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One message seen on the bus.
#[derive(Debug, Clone)]
pub struct Seen {
    pub routing_key: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    pub properties: BasicProperties,
}

impl Seen {
    /// What `delivery` carried.
    pub fn of(delivery: &Delivery) -> Seen {
        Seen {
            routing_key: delivery.routing_key.as_str().to_string(),
            body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
            properties: delivery.properties.clone(),
        }
    }

    /// A string header, read as the bridge reads it.
    pub fn header(&self, key: &str) -> Option<String> {
        jelou_bridge::amqp::header_str(self.properties.headers().as_ref(), key)
    }

    /// The body's `event` ("" when it has none).
    pub fn event(&self) -> &str {
        self.body["event"].as_str().unwrap_or_default()
    }

    /// The body's `ticketId` ("" when it has none).
    pub fn ticket(&self) -> &str {
        self.body["ticketId"].as_str().unwrap_or_default()
    }
}

/// Queues and exchanges to delete.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Declared {
    /// What the bridge declares for `settings`: its queues with their delay queues (those of
    /// `settings` and the defaults, which a bridge run as a child process may have used),
    /// the dead-letter queue and the exchanges.
    pub fn by_bridge(settings: &Settings) -> Declared {
        let a = &settings.amqp;
        let mut delays = settings.retry.delays.clone();
        delays.extend(Settings::defaults().retry.delays);
        delays.sort();
        delays.dedup();
        let mut queues = vec![a.dead_letter_queue()];
        for q in a.consumed_queues() {
            queues.extend(delays.iter().map(|d| delay_queue(&q, *d)));
            queues.push(q);
        }
        let mut exchanges = vec![
            a.exchange.clone(),
            a.events_exchange.clone(),
            a.dead_letter_exchange(),
        ];
        if !a.shard_exchange.is_empty() {
            exchanges.push(a.shard_exchange.clone());
        }
        Declared { queues, exchanges }
    }

    /// Deletes them on the first of `urls` that answers (best effort: a clean-up must not
    /// fail the test or the run), bounded to 20 s.
    pub async fn delete(&self, urls: &[String]) {
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            let Ok(conn) = connect_any(urls).await else {
                return;
            };
            if let Ok(channel) = conn.create_channel().await {
                for q in &self.queues {
                    let _ = channel
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for e in &self.exchanges {
                    let _ = channel
                        .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "cleaned up".into()).await;
        })
        .await;
    }

    /// [`Declared::delete`] from anywhere, also from a `drop` inside a runtime: it runs on a
    /// thread of its own.
    pub fn delete_blocking(self, urls: Vec<String>) {
        let _ = std::thread::spawn(move || {
            // (The timeout inside `delete` is made in this runtime: outside one, it panics.)
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(self.delete(&urls));
            Some(())
        })
        .join();
    }
}

/// Deletes what the bridge declared for its settings when dropped, also when the test
/// failed: for tests whose bridge runs as a child process (a `TestApp` cleans up after
/// itself).
pub struct TopologyGuard(pub Settings);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        Declared::by_bridge(&self.0).delete_blocking(vec![amqp_url()]);
    }
}

/// Runs `rabbitmqctl` on the local broker (through `sudo -n` when not root); fails the test
/// when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        std::process::Command::new("rabbitmqctl")
    } else {
        let mut c = std::process::Command::new("sudo");
        c.args(["-n", "rabbitmqctl"]);
        c
    };
    let out = cmd.args(args).output().expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
