//! What the fault scenarios share: the real `jelou-bridge` binary as a child process
//! ([`BridgeProcess`]), a [`Scenario`] (unique names, a stand-in for Jelou, a store, the
//! environment every process of the scenario gets), the helpdesk's side of the bus
//! ([`Helpdesk`]), an [`Observer`] of the events exchange that survives broker restarts, and
//! per-ticket tallies of what came out ([`Tally`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jelou_bridge::jelou::mock::{MockJelou, MockOptions, RecordedCall};
use jelou_bridge::jelou::Endpoint;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{
    amqp_url, clean_bridge_command, ready_messages, scrape_metric, unique, PgDatabase, Seen,
    API_KEY, PROJECT,
};

/// A broker connection, or a failed test when the broker does not answer in time (a broker
/// that accepts TCP but never completes the handshake would otherwise hang the test).
pub async fn connect() -> Connection {
    tokio::time::timeout(Duration::from_secs(20), crate::support::connect())
        .await
        .expect("the broker completes a connection within 20s")
}

/// The lock of the fault tests that stop a broker (the main one or a node of the private
/// cluster): held from the stop until the broker is back, so that no two of them overlap even
/// when the binary is run without `--test-threads=1`. An async lock: it is held across
/// awaits, and a test that fails while holding it does not poison it for the next ones.
pub async fn broker_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A connection to the first of `urls` that answers within 10 s, or the last error: a
/// cluster's clients move to another node when theirs is gone.
pub async fn connect_any(urls: &[String]) -> lapin::Result<Connection> {
    let mut last = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
    for url in urls {
        match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(url, Default::default()),
        )
        .await
        {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = e,
            Err(_) => last = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        }
    }
    Err(last)
}

/// Where a scenario's ticket store lives.
pub enum StoreKind {
    Sqlite,
    Postgres,
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
    _pg: Option<PgDatabase>,
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
        let mock = MockJelou::start(
            "127.0.0.1:0".parse().unwrap(),
            MockOptions {
                api_key: Some(API_KEY.into()),
                ..mock
            },
        )
        .await
        .unwrap();
        let (store_url, pg) = match store {
            StoreKind::Sqlite => (
                format!("sqlite://{}", dir.path().join("store.db").display()),
                None,
            ),
            StoreKind::Postgres => {
                let pg = PgDatabase::create().await;
                (pg.url.clone(), Some(pg))
            }
        };
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
            ("STORE__URL", store_url),
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
            _pg: pg,
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
        let mut env = self.env.clone();
        env.push((
            "JELOU_BRIDGE__AMQP__REPLICA_INDEX".into(),
            index.to_string(),
        ));
        let bridge = BridgeProcess::spawn(&env, self.dir.path()).await;
        bridge.wait_ready(Duration::from_secs(30)).await;
        bridge
    }

    /// Whether the scenario runs on several nodes: its observer queue is then a quorum queue,
    /// which survives the loss of a node.
    pub fn clustered(&self) -> bool {
        self.urls.len() > 1
    }

    /// Ready messages in `queue`, on the scenario's broker.
    pub async fn depth(&self, queue: &str) -> u32 {
        let conn = tokio::time::timeout(Duration::from_secs(30), connect_any(&self.urls))
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

    /// Starts a bridge process of this scenario under `wrapper` and waits until it is ready.
    pub async fn start_bridge_under(&self, wrapper: &[&str]) -> BridgeProcess {
        let bridge = BridgeProcess::spawn_under(wrapper, &self.env, self.dir.path()).await;
        bridge.wait_ready(Duration::from_secs(30)).await;
        bridge
    }

    /// Starts a bridge process of this scenario and waits until it is ready.
    pub async fn start_bridge(&self) -> BridgeProcess {
        let bridge = BridgeProcess::spawn(&self.env, self.dir.path()).await;
        bridge.wait_ready(Duration::from_secs(30)).await;
        bridge
    }

    /// Starts the given `jelou-bridge` binary (the previous release's, say) as a bridge
    /// process of this scenario and waits until it is ready.
    pub async fn start_bridge_bin(&self, bin: &std::path::Path) -> BridgeProcess {
        let bridge = BridgeProcess::spawn_bin(bin, &self.env, self.dir.path()).await;
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
        let urls = self.urls.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conn = connect_any(&urls).await.ok()?;
                let ch = conn.create_channel().await.ok()?;
                for q in queues {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for ex in exchanges {
                    let _ = ch
                        .exchange_delete(ex.as_str().into(), Default::default())
                        .await;
                }
                conn.close(200, "done".into()).await.ok()
            })
        })
        .join();
    }
}

/// `cmd` with none of the test's own `JELOU_BRIDGE*` environment.
fn without_bridge_env(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("JELOU_BRIDGE") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The real `jelou-bridge run` as a child process; stderr (its JSON logs) goes to a file.
/// Dropping it kills the process.
pub struct BridgeProcess {
    child: Child,
    pub http: String,
    log: PathBuf,
}

impl BridgeProcess {
    /// Starts the binary on port 0 (it binds its own port: none is reserved and released
    /// here for another process to take) and reads the address it bound from its log.
    pub async fn spawn(env: &[(String, String)], dir: &std::path::Path) -> BridgeProcess {
        Self::spawn_cmd(clean_bridge_command(), env, dir).await
    }

    /// As [`BridgeProcess::spawn`], run under `wrapper` (say `faketime -f +30s`).
    pub async fn spawn_under(
        wrapper: &[&str],
        env: &[(String, String)],
        dir: &std::path::Path,
    ) -> BridgeProcess {
        let Some((program, args)) = wrapper.split_first() else {
            return Self::spawn(env, dir).await;
        };
        let mut cmd = without_bridge_env(Command::new(program));
        cmd.args(args).arg(clean_bridge_command().get_program());
        Self::spawn_cmd(cmd, env, dir).await
    }

    /// As [`BridgeProcess::spawn`], with another build of `jelou-bridge` (an earlier release).
    pub async fn spawn_bin(
        bin: &std::path::Path,
        env: &[(String, String)],
        dir: &std::path::Path,
    ) -> BridgeProcess {
        Self::spawn_cmd(without_bridge_env(Command::new(bin)), env, dir).await
    }

    async fn spawn_cmd(
        mut cmd: Command,
        env: &[(String, String)],
        dir: &std::path::Path,
    ) -> BridgeProcess {
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("bridge-{n}.log"));
        cmd.arg("run")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // Only what the scenario sets: no stray settings from the test's own environment.
        cmd.env_remove("RUST_LOG")
            .envs(env.iter().cloned())
            .env("JELOU_BRIDGE__HTTP__LISTEN", "127.0.0.1:0");
        let mut child = cmd.spawn().expect("the jelou-bridge binary starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let bound = text
                .lines()
                .filter(|l| l.contains("jelou-bridge starting"))
                .find_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    v["http"].as_str().map(str::to_string)
                });
            if let Some(addr) = bound {
                return BridgeProcess {
                    child,
                    http: format!("http://{addr}"),
                    log,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("jelou-bridge exited ({status}) before it started:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "jelou-bridge did not say where it listens within 30s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /readyz`'s status, or None when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        let client = reqwest::Client::new();
        client
            .get(format!("{}/readyz", self.http))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Waits until `/readyz` answers `status`; fails the test if the process exits first.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.readyz().await == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz did not answer {status} within {timeout:?}; log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_readyz(200, timeout).await
    }

    /// `kill -9`: no shutdown, no cleanup; the broker and the store see a crash.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// The exit status if the process has exited, else None.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit; fails the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bridge did not exit within {timeout:?}; log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The sum of a Prometheus counter over all its labels, from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        scrape_metric(&self.http, name, &[]).await
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The scenario's directory goes away with it: keep the log for the post-mortem.
            let kept = std::env::temp_dir().join(format!(
                "jb-faults-{}-{}",
                std::process::id(),
                self.log.file_name().unwrap().to_string_lossy()
            ));
            let _ = std::fs::copy(&self.log, &kept);
            eprintln!(
                "--- bridge at {}: full log in {}; its end: ---\n{}",
                self.http,
                kept.display(),
                self.log_tail(15)
            );
        }
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

/// Everything the bridge publishes on the scenario's events exchange, read from a durable
/// queue of the observer's own, with manual acks and reconnection: what was published before
/// a broker restart is still read after it.
pub struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Stops the reader when the observer is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl Observer {
    /// Binds its queue before returning, so nothing the bridge publishes later is missed.
    pub async fn start(scenario: &Scenario) -> Observer {
        let target = Observed {
            urls: scenario.urls.clone(),
            exchange: scenario.events_exchange.clone(),
            queue: format!("{}.observed", scenario.name),
            quorum: scenario.clustered(),
        };
        let first = observe(&target).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        tokio::spawn(read_forever(first, target, seen.clone(), stop.clone()));
        Observer {
            seen,
            _stop: stop.drop_guard(),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn tally(&self) -> Tally {
        Tally::of(&self.seen())
    }

    /// Waits until every ticket `T-0 … T-<n-1>` has a `conversation.started`, then checks
    /// that each one's results name one conversation and that nothing failed.
    pub async fn wait_all_started(&self, n: usize) -> Tally {
        let tally = self
            .wait_for("every ticket started", Duration::from_secs(90), |t| {
                t.all_started(n)
            })
            .await;
        tally.assert_one_conversation_each(n);
        tally
    }

    /// Waits until `done` holds for the tally; fails the test after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Tally) -> bool,
    ) -> Tally {
        let deadline = Instant::now() + timeout;
        loop {
            let tally = self.tally();
            if done(&tally) {
                return tally;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} ({} tickets with a result, {} failures: {:?}; \
                 first tickets below the highest one seen without a result: {:?})",
                tally.tickets.len(),
                tally.failures().len(),
                tally.failures().first(),
                (0..tally.highest())
                    .map(|i| format!("T-{i}"))
                    .filter(|t| !tally.tickets.contains_key(t))
                    .take(10)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

type Reader = (Connection, lapin::Consumer);

/// Where an [`Observer`] reads from.
struct Observed {
    urls: Vec<String>,
    exchange: String,
    queue: String,
    /// On a cluster: a quorum queue, replicated, so it outlives any one node.
    quorum: bool,
}

async fn observe(target: &Observed) -> lapin::Result<Reader> {
    let (exchange, queue) = (target.exchange.as_str(), target.queue.as_str());
    let conn = connect_any(&target.urls).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    if target.quorum {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "observer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

async fn read_forever(
    first: Reader,
    target: Observed,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
) {
    let mut reader = Some(first);
    while !stop.is_cancelled() {
        let (conn, mut consumer) = match reader.take() {
            Some(r) => r,
            None => match observe(&target).await {
                Ok(r) => r,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let mut alive = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = tokio::select! {
                n = consumer.next() => n,
                _ = alive.tick() => {
                    if conn.status().connected() { continue; }
                    break;
                }
                _ = stop.cancelled() => break,
            };
            let Some(Ok(delivery)) = next else { break };
            let message = Seen {
                routing_key: delivery.routing_key.as_str().to_string(),
                body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                properties: delivery.properties.clone(),
            };
            {
                let mut seen = seen.lock().unwrap();
                // The observer's own ack lost with a node comes back as a redelivery of what
                // it already read: not something the bridge published twice.
                let again = delivery.redelivered
                    && seen
                        .iter()
                        .any(|s| s.routing_key == message.routing_key && s.body == message.body);
                if !again {
                    seen.push(message);
                }
            }
            // lapin can leave an ack pending for ever when the connection dies under it (the
            // bridge bounds its acks for the same reason): bound the observer's too.
            let ack = delivery.acker.ack(BasicAckOptions::default());
            if tokio::time::timeout(Duration::from_secs(5), ack)
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            conn.close(200, "observer done".into()),
        )
        .await;
    }
}

/// What came out per ticket.
#[derive(Debug, Default, Clone)]
pub struct TicketResults {
    /// `conversationId` of every `conversation.started` (repeats included).
    pub started: Vec<String>,
    /// `conversationId` of every `conversation.closed`.
    pub closed: Vec<String>,
    pub failed: Vec<Value>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub tickets: HashMap<String, TicketResults>,
}

impl Tally {
    pub fn of(seen: &[Seen]) -> Tally {
        let mut tally = Tally::default();
        for s in seen {
            let r = tally.tickets.entry(s.ticket().to_string()).or_default();
            let conversation = s.body["conversationId"].as_str().unwrap_or_default();
            match s.routing_key.as_str() {
                "conversation.started" => r.started.push(conversation.to_string()),
                "conversation.closed" => r.closed.push(conversation.to_string()),
                "ticket.failed" => r.failed.push(s.body.clone()),
                _ => {}
            }
        }
        tally
    }

    /// The highest `<i>` of a `T-<i>` with a result.
    pub fn highest(&self) -> usize {
        self.tickets
            .keys()
            .filter_map(|t| t.strip_prefix("T-")?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Tickets `T-0 … T-<n-1>` all started.
    pub fn all_started(&self, n: usize) -> bool {
        self.count(n, |r| !r.started.is_empty()) == n
    }

    /// Tickets `T-0 … T-<n-1>` all closed.
    pub fn all_closed(&self, n: usize) -> bool {
        self.count(n, |r| !r.closed.is_empty()) == n
    }

    pub fn count(&self, n: usize, pred: impl Fn(&TicketResults) -> bool) -> usize {
        (0..n)
            .filter(|i| self.tickets.get(&format!("T-{i}")).is_some_and(&pred))
            .count()
    }

    pub fn failures(&self) -> Vec<Value> {
        self.tickets
            .values()
            .flat_map(|r| r.failed.iter().cloned())
            .collect()
    }

    /// Every ticket `T-0 … T-<n-1>` has results that all name one conversation, and nothing
    /// failed.
    pub fn assert_one_conversation_each(&self, n: usize) {
        assert!(
            self.failures().is_empty(),
            "failures: {:#?}",
            self.failures()
        );
        for i in 0..n {
            let t = format!("T-{i}");
            let r = self
                .tickets
                .get(&t)
                .unwrap_or_else(|| panic!("{t} has no result"));
            assert!(!r.started.is_empty(), "{t} has no conversation.started");
            let mut ids: Vec<&String> = r.started.iter().chain(&r.closed).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(
                ids.len(),
                1,
                "{t}: results name several conversations: {r:?}"
            );
            assert!(!ids[0].is_empty(), "{t}: no conversation id: {r:?}");
        }
    }
}

/// Calls the stand-in answered, per ticket (`metadata.ticketId` of starts; the user of
/// closes, `U-<i>` → `T-<i>`).
pub fn calls_per_ticket(
    mock: &MockJelou,
    endpoint: Endpoint,
) -> HashMap<String, Vec<RecordedCall>> {
    let mut out: HashMap<String, Vec<RecordedCall>> = HashMap::new();
    for call in mock.calls_to(endpoint) {
        let ticket = match endpoint {
            Endpoint::Start => call
                .body
                .pointer("/metadata/ticketId")
                .and_then(Value::as_str)
                .map(str::to_string),
            Endpoint::Close => call.body["userId"]
                .as_str()
                .map(|u| u.replacen("U-", "T-", 1)),
            Endpoint::Message | Endpoint::Conversation => None,
        };
        if let Some(t) = ticket {
            out.entry(t).or_default().push(call);
        }
    }
    out
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

/// Runs `rabbitmqctl` (through `sudo -n` when not root).
pub fn rabbitmqctl(args: &[&str]) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        Command::new("rabbitmqctl")
    } else {
        let mut c = Command::new("sudo");
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

/// Ready messages in `queue`.
pub async fn depth(queue: &str) -> u32 {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let n = ready_messages(&ch, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"));
    let _ = conn.close(200, "done".into()).await;
    n
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
