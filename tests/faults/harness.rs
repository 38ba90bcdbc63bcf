//! What the fault scenarios share beyond the test kit: a [`Scenario`] (unique names, a
//! stand-in for Jelou, a store, the environment every bridge process of the scenario gets),
//! the helpdesk's side of the bus ([`Helpdesk`]), the ticket events they publish, what
//! Jelou must have been asked, and a stopped broker ([`BrokerStopped`]).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use jelou_bridge::jelou::mock::{MockJelou, MockOptions};
use jelou_bridge::jelou::Endpoint;
use lapin::options::ConfirmSelectOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde_json::{json, Value};
use testkit::{
    amqp_url, bridge_bin, calls_per_ticket, clean_bridge_command, clean_command, connect_any,
    depth_on, pg_url, rabbitmqctl, stand_in_options, start_stand_in, unique, BridgeProcess,
    Declared, StoreKind, TestStore, API_KEY, PROJECT,
};

use crate::observer::Observer;

/// The lock of the fault tests that stop a broker (the main one or a node of the private
/// cluster): held from the stop until the broker is back, so that no two of them overlap even
/// when the binary is run without `--test-threads=1`. An async lock: it is held across
/// awaits, and a test that fails while holding it does not poison it for the next ones.
pub async fn broker_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// One fault scenario: its names on the broker, its stand-in for Jelou, its store, and the
/// environment every bridge process it starts gets.
pub struct Scenario {
    pub name: String,
    pub queue: String,
    pub exchange: String,
    pub events_exchange: String,
    pub mock: MockJelou,
    pub dir: tempfile::TempDir,
    /// The broker nodes the test's own clients use: the main broker, or the cluster's nodes.
    pub urls: Vec<String>,
    /// The shard queues of the sharded topology ([`Scenario::shard`]); empty without it.
    pub shards: Vec<String>,
    env: Vec<(String, String)>,
    delays: Vec<String>,
    _store: TestStore,
}

impl Scenario {
    /// `settings` are `(KEY, value)` pairs for `JELOU_BRIDGE__KEY`, over the scenario's
    /// defaults (short retries and reconnects, a 2 s lease, 10 s of shutdown grace).
    pub async fn new(store: StoreKind, latency: Duration, settings: &[(&str, &str)]) -> Scenario {
        Self::on_broker(vec![amqp_url()], store, latency, settings).await
    }

    /// A scenario on the broker nodes `urls`: the bridge gets the first as `amqp.url` and the
    /// others as `amqp.failover_urls`; the test's clients move between them the same way.
    pub async fn on_broker(
        urls: Vec<String>,
        store: StoreKind,
        latency: Duration,
        settings: &[(&str, &str)],
    ) -> Scenario {
        let options = MockOptions {
            latency,
            ..MockOptions::default()
        };
        Self::with_mock_on(urls, store, options, settings).await
    }

    /// As [`Scenario::new`], with the stand-in's options (its API key is the scenario's).
    pub async fn with_mock(
        store: StoreKind,
        mock: MockOptions,
        settings: &[(&str, &str)],
    ) -> Scenario {
        Self::with_mock_on(vec![amqp_url()], store, mock, settings).await
    }

    async fn with_mock_on(
        urls: Vec<String>,
        store: StoreKind,
        mock: MockOptions,
        settings: &[(&str, &str)],
    ) -> Scenario {
        let name = unique("jbt-fault");
        let dir = tempfile::tempdir().unwrap();
        let mock = start_stand_in(MockOptions {
            api_key: stand_in_options().api_key,
            ..mock
        })
        .await;
        let store = TestStore::create(store, dir.path(), &pg_url())
            .await
            .expect("the scenario's store");
        let queue = format!("{name}.tickets");
        let exchange = format!("{name}.helpdesk");
        let events_exchange = format!("{name}.events");
        let mut env: BTreeMap<String, String> = [
            ("AMQP__URL", urls[0].clone()),
            ("AMQP__FAILOVER_URLS", urls[1..].join(",")),
            ("AMQP__EXCHANGE", exchange.clone()),
            ("AMQP__QUEUE", queue.clone()),
            ("AMQP__EVENTS_EXCHANGE", events_exchange.clone()),
            ("AMQP__RECONNECT_MIN_DELAY", "100ms".into()),
            ("AMQP__RECONNECT_MAX_DELAY", "1s".into()),
            ("JELOU__BASE_URL", mock.base_url()),
            ("JELOU__PROJECT_ID", PROJECT.into()),
            ("JELOU__API_KEY", API_KEY.into()),
            ("RETRY__MIN_DELAY", "20ms".into()),
            ("RETRY__MAX_DELAY", "200ms".into()),
            ("RETRY__DELAYS", "1s,2s".into()),
            ("STORE__URL", store.url.clone()),
            ("STORE__LEASE", "2s".into()),
            ("SHUTDOWN__GRACE", "10s".into()),
            ("LOG__FORMAT", "json".into()),
            ("LOG__LEVEL", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in settings {
            env.insert(k.to_string(), v.to_string());
        }
        let delays = env["RETRY__DELAYS"]
            .split(',')
            .map(|d| d.trim().to_string())
            .collect();
        Scenario {
            name,
            queue,
            exchange,
            events_exchange,
            mock,
            dir,
            urls,
            shards: Vec::new(),
            env: env
                .into_iter()
                .map(|(k, v)| (format!("JELOU_BRIDGE__{k}"), v))
                .collect(),
            delays,
            _store: store,
        }
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The scenario's store, opened from this process (to read what the bridge recorded).
    pub async fn store(&self) -> jelou_bridge::store::Store {
        let url = self
            .env
            .iter()
            .find(|(k, _)| k == "JELOU_BRIDGE__STORE__URL")
            .map(|(_, v)| v.clone())
            .unwrap();
        let mut settings = jelou_bridge::config::Settings::defaults().store;
        settings.url = secrecy::SecretString::from(url);
        jelou_bridge::store::Store::connect(&settings, "fault-test".into())
            .await
            .unwrap()
    }

    pub fn delay_queue(&self, delay: &str) -> String {
        format!("{}.delay.{delay}", self.queue)
    }

    /// Turns the scenario into the sharded topology of docs/scaling.md's recipe: a
    /// consistent-hash exchange on `x-ticket-id` in front of `shards` single-active-consumer
    /// queues, shared by `replicas` processes ([`Scenario::start_replica`]).
    pub fn shard(&mut self, shards: usize, replicas: usize) {
        self.shards = (0..shards)
            .map(|i| format!("{}.shard-{i}", self.queue))
            .collect();
        for (key, value) in [
            ("AMQP__SHARD_EXCHANGE", self.shard_exchange()),
            ("AMQP__CONSUME_QUEUES", self.shards.join(",")),
            ("AMQP__REPLICA_COUNT", replicas.to_string()),
        ] {
            self.env.push((format!("JELOU_BRIDGE__{key}"), value));
        }
    }

    pub fn shard_exchange(&self) -> String {
        format!("{}.shards", self.name)
    }

    /// Starts replica `index` of the sharded topology and waits until it is ready.
    pub async fn start_replica(&self, index: usize) -> BridgeProcess {
        let mut cmd = clean_bridge_command();
        cmd.env("JELOU_BRIDGE__AMQP__REPLICA_INDEX", index.to_string());
        self.launch(cmd).await
    }

    /// Whether the scenario runs on several nodes: its observer queue is then a quorum queue,
    /// which survives the loss of a node.
    pub fn clustered(&self) -> bool {
        self.urls.len() > 1
    }

    /// Ready messages in `queue`, on the scenario's broker.
    pub async fn depth(&self, queue: &str) -> u32 {
        depth_on(&self.urls, queue).await
    }

    /// Starts a bridge process of this scenario under `wrapper` (say `faketime -f +30s`) and
    /// waits until it is ready.
    pub async fn start_bridge_under(&self, wrapper: &[&str]) -> BridgeProcess {
        let Some((program, args)) = wrapper.split_first() else {
            return self.start_bridge().await;
        };
        let mut cmd = clean_command(program);
        cmd.args(args).arg(bridge_bin());
        self.launch(cmd).await
    }

    /// Starts a bridge process of this scenario and waits until it is ready.
    pub async fn start_bridge(&self) -> BridgeProcess {
        self.launch(clean_bridge_command()).await
    }

    /// Starts the given `jelou-bridge` binary (the previous release's, say) as a bridge
    /// process of this scenario and waits until it is ready.
    pub async fn start_bridge_bin(&self, bin: &std::path::Path) -> BridgeProcess {
        self.launch(clean_command(bin)).await
    }

    /// `<cmd> run` with the scenario's environment, once it is ready.
    async fn launch(&self, mut cmd: Command) -> BridgeProcess {
        cmd.arg("run").envs(self.env.iter().cloned());
        let bridge = BridgeProcess::start(cmd, self.dir.path())
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        bridge.wait_ready(Duration::from_secs(30)).await;
        bridge
    }

    /// The scenario's environment (`JELOU_BRIDGE__…`), for a command run against it.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }
}

impl Drop for Scenario {
    /// Deletes what the scenario declared on the broker, also when the test failed: a broker
    /// restart recovers every quorum queue it holds, so leftovers slow the next one down.
    fn drop(&mut self) {
        let mut queues = vec![
            self.queue.clone(),
            self.dead_queue(),
            format!("{}.observed", self.name),
        ];
        queues.extend(self.delays.iter().map(|d| self.delay_queue(d)));
        for shard in &self.shards {
            queues.push(shard.clone());
            queues.extend(self.delays.iter().map(|d| format!("{shard}.delay.{d}")));
        }
        let mut exchanges = vec![
            self.exchange.clone(),
            self.events_exchange.clone(),
            format!("{}.dlx", self.queue),
        ];
        if !self.shards.is_empty() {
            exchanges.push(self.shard_exchange());
        }
        Declared { queues, exchanges }.delete_blocking(self.urls.clone());
    }
}

/// The helpdesk's side: publishes ticket events with publisher confirms.
pub struct Helpdesk {
    conn: Connection,
    channel: Channel,
    exchange: String,
}

impl Helpdesk {
    pub async fn connect(scenario: &Scenario) -> Helpdesk {
        let conn = tokio::time::timeout(Duration::from_secs(30), connect_any(&scenario.urls))
            .await
            .expect("a broker node answers within 30s")
            .expect("a broker node takes a connection");
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Helpdesk {
            conn,
            channel,
            exchange: scenario.exchange.clone(),
        }
    }

    /// Publishes `(routing key, body, message id)` in order, persistent, and waits for every
    /// confirm.
    pub async fn publish_all(
        &self,
        messages: impl IntoIterator<Item = (&'static str, Value, String)>,
    ) {
        let mut confirms = Vec::new();
        for (key, body, message_id) in messages {
            // As docs/scaling.md asks of the helpdesk: the ticket id in `x-ticket-id` too, which
            // the sharded topology hashes (the other topologies ignore it).
            let mut headers = FieldTable::default();
            if let Some(ticket) = body["ticketId"].as_str() {
                headers.insert(
                    "x-ticket-id".into(),
                    lapin::types::AMQPValue::LongString(ticket.into()),
                );
            }
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message_id.into())
                .with_headers(headers);
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    key.into(),
                    Default::default(),
                    body.to_string().as_bytes(),
                    props,
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(
                matches!(confirm.await.unwrap(), Confirmation::Ack(None)),
                "the broker took the ticket event"
            );
        }
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// Publishes `ticket.opened` for `T-0 … T-<n-1>` at once and returns when at least `done` of
/// them have a `conversation.started`: the bridge is then in the middle of a burst.
pub async fn burst_under_way(scenario: &Scenario, observer: &Observer, n: usize, done: usize) {
    let helpdesk = Helpdesk::connect(scenario).await;
    helpdesk.publish_all((0..n).map(opened)).await;
    helpdesk.close().await;
    observer
        .wait_for("the burst under way", Duration::from_secs(60), |t| {
            t.count(n, |r| !r.started.is_empty()) >= done
        })
        .await;
}

/// `ticket.opened` for ticket `T-<i>` (each ticket its own Jelou user).
pub fn opened(i: usize) -> (&'static str, Value, String) {
    (
        "ticket.opened",
        json!({"ticketId": format!("T-{i}"), "userId": format!("U-{i}"), "botId": "BOT",
               "initialMessage": "Hola"}),
        format!("open-{i}"),
    )
}

/// `ticket.opened` for `T-0 … T-<n-1>`, each ticket's `ticket.resolved` published `lag`
/// opens after its own open: open 0, …, open lag, resolve 0, open lag+1, resolve 1, …
pub fn opened_then_resolved(n: usize, lag: usize) -> Vec<(&'static str, Value, String)> {
    let mut events = Vec::new();
    for i in 0..n + lag {
        if i < n {
            events.push(opened(i));
        }
        if i >= lag {
            events.push(resolved(i - lag));
        }
    }
    events
}

/// `ticket.resolved` for ticket `T-<i>`, naming only the ticket: the bridge must know the rest.
pub fn resolved(i: usize) -> (&'static str, Value, String) {
    (
        "ticket.resolved",
        json!({"ticketId": format!("T-{i}"), "closingMessage": "Resuelto"}),
        format!("resolve-{i}"),
    )
}

/// Jelou got exactly one start call for each of the tickets `T-0 … T-<n-1>`, and no other.
pub fn assert_one_start_call_each(mock: &MockJelou, n: usize) {
    let starts = calls_per_ticket(mock, Endpoint::Start);
    let repeated: Vec<_> = starts.iter().filter(|(_, c)| c.len() != 1).collect();
    assert!(repeated.is_empty(), "started more than once: {repeated:?}");
    assert_eq!(starts.len(), n, "start calls for {} tickets", starts.len());
}

/// Each ticket `T-0 … T-<n-1>` was started once with success and then closed by exactly one
/// close call, made after the start was answered. The stand-in answers a close only for a
/// conversation it started, so its 200 also says the start came first.
pub fn assert_one_close_call_each_after_its_start(mock: &MockJelou, n: usize) {
    let starts = calls_per_ticket(mock, Endpoint::Start);
    let closes = calls_per_ticket(mock, Endpoint::Close);
    for i in 0..n {
        let t = format!("T-{i}");
        let started: Vec<_> = starts[&t].iter().filter(|c| c.status == 200).collect();
        assert_eq!(started.len(), 1, "{t}: one successful start call");
        let closed = closes
            .get(&t)
            .unwrap_or_else(|| panic!("{t}: no close call"));
        assert_eq!(closed.len(), 1, "{t}: one close call");
        assert_eq!(closed[0].status, 200, "{t}: the close was answered 200");
        assert!(
            closed[0].at >= started[0].at,
            "{t}: closed before its start was answered"
        );
    }
}

/// Nothing in the scenario's dead-letter queue.
pub async fn assert_nothing_dead_lettered(scenario: &Scenario) {
    assert_eq!(
        scenario.depth(&scenario.dead_queue()).await,
        0,
        "nothing dead-lettered"
    );
}

/// The broker stopped (`rabbitmqctl stop_app`); brought back even when the test fails
/// half-way.
pub struct BrokerStopped;

impl BrokerStopped {
    pub fn stop() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]);
        BrokerStopped
    }

    pub fn start(self) {
        std::mem::forget(self);
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
    }
}
