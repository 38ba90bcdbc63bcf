//! Shared test harness: a real RabbitMQ on 127.0.0.1:5672 (override with `JB_TEST_AMQP_URL`),
//! a real HTTP stand-in for Jelou, and per-test unique exchange and queue names so tests run
//! in parallel.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jelou_bridge::app::Application;
use jelou_bridge::config::Settings;
use jelou_bridge::jelou::mock::{MockJelou, MockOptions};
use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::SecretString;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API_KEY: &str = "test-api-key-7f3a";
pub const PROJECT: &str = "proj-test";

pub fn amqp_url() -> String {
    std::env::var("JB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn pg_url() -> String {
    std::env::var("JB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A short unique name for this test's exchanges and queues. It carries this process's id
/// (`-p<pid>-`), so the clean-up of leftovers (examples/clean_test_queues.rs) can tell a
/// crashed run's queues from those of a run still going.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-p{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Settings for one test: unique names, a fresh SQLite file in `dir`, Jelou at `jelou`,
/// short retry delays so failure paths finish quickly.
pub fn test_settings(name: &str, jelou_base_url: &str, dir: &Path) -> Settings {
    let mut s = Settings::defaults();
    s.amqp.url = SecretString::from(amqp_url());
    s.amqp.exchange = format!("{name}.helpdesk");
    s.amqp.queue = format!("{name}.tickets");
    s.amqp.events_exchange = format!("{name}.events");
    s.jelou.base_url = jelou_base_url.to_string();
    s.jelou.project_id = Some(PROJECT.into());
    s.jelou.api_key = Some(SecretString::from(API_KEY.to_string()));
    s.retry.min_delay = Duration::from_millis(20);
    s.retry.max_delay = Duration::from_millis(200);
    s.retry.delays = vec![Duration::from_secs(1), Duration::from_secs(2)];
    s.store.url = SecretString::from(format!("sqlite://{}", dir.join("store.db").display()));
    s.store.unknown_ticket_wait = Duration::from_secs(1);
    s.http.listen = "127.0.0.1:0".into();
    // Webhook fixtures carry fixed timestamps; the replay window's tests set their own.
    s.webhook.max_age = Duration::from_secs(100 * 365 * 24 * 3600);
    s.shutdown.grace = Duration::from_secs(5);
    s
}

pub async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running on 127.0.0.1:5672 (scripts/test.sh starts it)")
}

/// One message seen on the bus.
#[derive(Debug, Clone)]
pub struct Seen {
    pub routing_key: String,
    pub body: Value,
    pub properties: BasicProperties,
}

impl Seen {
    pub fn header(&self, key: &str) -> Option<String> {
        match self.properties.headers().as_ref()?.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    pub fn event(&self) -> &str {
        self.body["event"].as_str().unwrap_or_default()
    }

    pub fn ticket(&self) -> &str {
        self.body["ticketId"].as_str().unwrap_or_default()
    }
}

/// The helpdesk's side of the bus for one test: publishes ticket events, watches every
/// message the bridge publishes.
pub struct Bus {
    pub conn: Connection,
    pub channel: Channel,
    pub exchange: String,
    pub events_exchange: String,
    consumer: lapin::Consumer,
}

impl Bus {
    /// Declares the test's exchanges (as the bridge will) and binds a private observer queue
    /// to every routing key of the events exchange.
    pub async fn new(settings: &Settings) -> Bus {
        let conn = connect().await;
        let channel = conn.create_channel().await.unwrap();
        let topic = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for ex in [&settings.amqp.exchange, &settings.amqp.events_exchange] {
            channel
                .exchange_declare(
                    ex.as_str().into(),
                    ExchangeKind::Topic,
                    topic,
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let (_, consumer) = jelou_bridge::amqp::private_consumer(
            &channel,
            Some((&settings.amqp.events_exchange, "#")),
            "observer",
        )
        .await
        .unwrap();
        Bus {
            conn,
            channel,
            exchange: settings.amqp.exchange.clone(),
            events_exchange: settings.amqp.events_exchange.clone(),
            consumer,
        }
    }

    /// Publishes a ticket event (persistent, JSON) and waits for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                Default::default(),
                body,
                props
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes a well-formed ticket event: a body its schema in `schemas/` refuses fails
    /// the test here, so the tests speak only the contract (bad input on purpose goes through
    /// [`Bus::publish_json_unchecked`]).
    pub async fn publish_json(&self, routing_key: &str, body: &Value) {
        let name = match body.get("event") {
            Some(Value::String(event)) => event.as_str(),
            _ => routing_key,
        };
        if INBOUND.contains(&name) {
            if let Err(e) = check_contract(name, body) {
                panic!("the test publishes a {name} off the contract: {e}\n{body:#}");
            }
        }
        self.publish_json_unchecked(routing_key, body).await;
    }

    /// Publishes a JSON body as it is, for tests of what the bridge does with bad input.
    pub async fn publish_json_unchecked(&self, routing_key: &str, body: &Value) {
        let id = uuid::Uuid::new_v4().to_string();
        self.publish(
            routing_key,
            body.to_string().as_bytes(),
            BasicProperties::default().with_message_id(id.into()),
        )
        .await;
    }

    /// The next message the bridge publishes, or None after `timeout`. A body its routing
    /// key's schema in `schemas/` refuses fails the test.
    pub async fn next(&mut self, timeout: Duration) -> Option<Seen> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        let seen = Seen {
            routing_key: delivery.routing_key.as_str().to_string(),
            body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
            properties: delivery.properties.clone(),
        };
        if let Err(e) = check_contract(&seen.routing_key, &seen.body) {
            panic!(
                "the bridge published a {} off the contract: {e}\n{:#}",
                seen.routing_key, seen.body
            );
        }
        Some(seen)
    }

    /// Waits for `n` messages, failing the test if they do not come in `timeout`.
    pub async fn expect(&mut self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(seen) => out.push(seen),
                None => panic!(
                    "expected {n} messages within {timeout:?}, got {}: {out:#?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Collects messages until `done` says so or `timeout` passes (the test then fails).
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(seen) => out.push(seen),
                None => panic!(
                    "condition not met within {timeout:?}; got {} messages",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts nothing more arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(extra) = self.next(quiet).await {
            panic!("unexpected message: {extra:#?}");
        }
    }

    /// Takes every message currently in `queue` (acking them).
    pub async fn drain_queue(&self, queue: &str) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(Seen {
                routing_key: msg.delivery.routing_key.as_str().to_string(),
                body: serde_json::from_slice(&msg.delivery.data).unwrap_or(Value::Null),
                properties: msg.delivery.properties.clone(),
            });
        }
        out
    }

    /// Number of messages ready in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        ready_messages(&self.channel, queue)
            .await
            .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"))
    }
}

/// The messages the helpdesk publishes (the others are the bridge's).
pub const INBOUND: &[&str] = &["ticket.opened", "ticket.resolved", "ticket.reply"];

/// Checks `body` against the committed schema of `message` (`schemas/<message>.schema.json`);
/// every violation, one per line. A message with no schema is itself a violation: the
/// contract names every routing key.
pub fn check_contract(message: &str, body: &Value) -> Result<(), String> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name()?.to_str()?.strip_suffix(".schema.json")?;
                let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let validator = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                Some((name.to_string(), validator))
            })
            .collect()
    });
    let Some(validator) = validators.get(message) else {
        return Err(format!("no schema for {message:?} in schemas/"));
    };
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} (at {:?})", e.instance_path().to_string()))
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("\n")),
    }
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

/// The sum of the samples of Prometheus metric `name` on `{http}/metrics` whose labels
/// contain one of `labels` (every sample when `labels` is empty).
pub async fn scrape_metric(http: &str, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter(|l| labels.is_empty() || labels.iter().any(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A bridge running in this process against a stand-in for Jelou.
/// The key the tests' webhooks and send-message calls are signed with.
pub const SIGNING_SECRET: &str = "whsec-test-5d1c";

/// Settings and stand-in for both directions of messages: the bridge and the stand-in share
/// [`SIGNING_SECRET`] (the stand-in checks send-message signatures with it).
pub fn signed(settings: &mut Settings, mock: &mut MockOptions) {
    settings.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
    mock.signing_secret = Some(SIGNING_SECRET.into());
}

pub struct TestApp {
    pub settings: Settings,
    pub mock: MockJelou,
    pub bus: Bus,
    pub http: String,
    /// Where health, readiness and metrics answer: `admin.listen` when set, else `http`.
    pub admin: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    keep_topology: bool,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

/// Starts a stand-in and a bridge; `customize` may change both before they start.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings, &mut MockOptions)) -> TestApp {
    // The binary's subscriber does not run here; trace context needs a trace layer.
    jelou_bridge::telemetry::init_trace_context_only();
    let mut mock_options = MockOptions {
        api_key: Some(API_KEY.into()),
        ..MockOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let name = unique("jbt");
    let mut settings = test_settings(&name, "http://127.0.0.1:1", dir.path());
    customize(&mut settings, &mut mock_options);
    let mock = MockJelou::start("127.0.0.1:0".parse().unwrap(), mock_options)
        .await
        .unwrap();
    settings.jelou.base_url = mock.base_url();
    settings.jelou.messages_url = mock.messages_url();
    let bus = Bus::new(&settings).await;
    let app = Application::build(settings.clone(), false)
        .await
        .expect("app builds");
    let http = format!("http://{}", app.http_addr());
    let admin = format!("http://{}", app.admin_addr());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let test_app = TestApp {
        settings,
        mock,
        bus,
        http,
        admin,
        dir,
        shutdown,
        handle: Some(handle),
        keep_topology: false,
    };
    test_app.wait_ready(Duration::from_secs(20)).await;
    test_app
}

impl TestApp {
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.admin)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bridge not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Points the stand-in's webhooks (signed with [`SIGNING_SECRET`]) at this bridge.
    pub fn connect_webhooks(&self) {
        self.mock
            .set_webhook(Some(jelou_bridge::jelou::mock::WebhookTarget {
                url: format!("{}/webhooks/jelou", self.http),
                secret: SIGNING_SECRET.into(),
            }));
    }

    pub fn dead_queue(&self) -> String {
        self.settings.amqp.dead_letter_queue()
    }

    /// Stops the bridge gracefully and waits for it; dropping the app then deletes the test's
    /// queues and exchanges.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    /// Stops the bridge but leaves its queues and exchanges for the test to use; the test
    /// deletes them with [`delete_topology`].
    pub async fn stop_keeping_topology(mut self) {
        self.keep_topology = true;
        self.stop().await;
    }
}

impl Drop for TestApp {
    /// Also on a failed test: quorum queues hold broker resources, and hundreds left behind
    /// wear the broker down.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.keep_topology {
            delete_topology_blocking(&self.settings);
        }
    }
}

/// [`delete_topology`] from anywhere, also from a `drop` inside a runtime: it runs on a
/// thread of its own.
pub fn delete_topology_blocking(settings: &Settings) {
    let settings = settings.clone();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        // Bounded: a broker that takes the connection and never answers must not hang a test.
        // (The timeout is made inside the runtime: outside it, it panics.)
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                if let Ok(conn) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                {
                    if let Ok(channel) = conn.create_channel().await {
                        delete_topology(&channel, &settings).await;
                    }
                    let _ = conn.close(200, "cleaned up".into()).await;
                }
            })
            .await;
        });
    })
    .join();
}

/// Deletes the topology of its settings when dropped, also when the test failed: for tests
/// whose bridge runs as a child process (a [`TestApp`] cleans up after itself).
pub struct TopologyGuard(pub Settings);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        delete_topology_blocking(&self.0);
    }
}

/// Deletes what the bridge declared for `settings` (best effort: a test's clean-up must not
/// fail it).
pub async fn delete_topology(channel: &Channel, settings: &Settings) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let a = &settings.amqp;
    // A bridge run as a child process may have declared the default delay queues instead.
    let mut delays = settings.retry.delays.clone();
    delays.extend(Settings::defaults().retry.delays);
    delays.sort();
    delays.dedup();
    let mut queues = vec![a.dead_letter_queue()];
    for q in a.consumed_queues() {
        for d in &delays {
            queues.push(jelou_bridge::amqp::topology::delay_queue(&q, *d));
        }
        queues.push(q);
    }
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let mut exchanges = vec![
        a.exchange.clone(),
        a.events_exchange.clone(),
        a.dead_letter_exchange(),
    ];
    if !a.shard_exchange.is_empty() {
        exchanges.push(a.shard_exchange.clone());
    }
    for e in exchanges {
        let _ = channel
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Counts start calls per ticket id recorded by a stand-in.
pub fn start_calls_per_ticket(mock: &MockJelou) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for call in mock.calls_to(jelou_bridge::jelou::Endpoint::Start) {
        if let Some(t) = call
            .body
            .pointer("/metadata/ticketId")
            .and_then(Value::as_str)
        {
            *out.entry(t.to_string()).or_default() += 1;
        }
    }
    out
}

/// The binary under test with nothing of the test's own `JELOU_BRIDGE_*` environment: only
/// what the test sets reaches it.
pub fn clean_bridge_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(bridge_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("JELOU_BRIDGE") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The binary configured through the environment only, as an operator would run it: the
/// broker, exchanges, queue and store of `settings`, no `RUST_LOG`, killed when dropped.
pub fn bridge_command(settings: &Settings) -> tokio::process::Command {
    use secrecy::ExposeSecret;
    let mut cmd = tokio::process::Command::from(clean_bridge_command());
    cmd.env_remove("RUST_LOG")
        .env("JELOU_BRIDGE__AMQP__URL", settings.amqp.url.expose_secret())
        .env("JELOU_BRIDGE__AMQP__EXCHANGE", &settings.amqp.exchange)
        .env("JELOU_BRIDGE__AMQP__QUEUE", &settings.amqp.queue)
        .env(
            "JELOU_BRIDGE__AMQP__EVENTS_EXCHANGE",
            &settings.amqp.events_exchange,
        )
        .env(
            "JELOU_BRIDGE__STORE__URL",
            settings.store.url.expose_secret(),
        )
        .kill_on_drop(true);
    cmd
}

/// The release or debug binary under test.
pub fn bridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jelou-bridge"))
}

/// A PostgreSQL database of one test's own (`jbt_<unique>` on the server of `JB_TEST_PG_URL`),
/// dropped when this value is dropped, also when the test fails.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection as _;
        let name = format!("jbt_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&pg_url()).await.expect(
            "PostgreSQL must be running on 127.0.0.1:5432 (scripts/ensure-services.sh --postgres)",
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let mut url = url::Url::parse(&pg_url()).unwrap();
        url.set_path(&name);
        PgDatabase {
            url: url.to_string(),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code: a short-lived runtime on its own thread does the
        // DROP, forcing out any connection a pool still holds.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut admin = sqlx::PgConnection::connect(&pg_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// The samples of one metric in Prometheus text, by their labels.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((labels, value.parse().unwrap()));
    }
    out
}

/// The sum of `name` over the series that have all of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

pub async fn scrape(http: &str) -> String {
    let resp = reqwest::get(format!("{http}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.unwrap()
}

/// Posts `event` to the bridge's webhook signed with `secret`, as Jelou does; the status and
/// the JSON answer.
pub async fn post_webhook(http: &str, secret: &str, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let resp = reqwest::Client::new()
        .post(format!("{http}/webhooks/jelou"))
        .header(
            "x-jelou-signature",
            jelou_bridge::webhook::sign(secret.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Opens `ticket` for `user` (bot `B-1`) through the bus; its conversation id. Messages of
/// other kinds (the stand-in's webhooks coming back as `jelou.*`) are skipped.
pub async fn open_ticket(app: &mut TestApp, ticket: &str, user: &str) -> String {
    app.bus
        .publish_json(
            "ticket.opened",
            &serde_json::json!({"ticketId": ticket, "userId": user, "botId": "B-1"}),
        )
        .await;
    let seen = app
        .bus
        .collect_until(Duration::from_secs(15), |s| {
            s.iter().any(|m| !m.routing_key.starts_with("jelou."))
        })
        .await;
    let started = seen
        .into_iter()
        .find(|m| !m.routing_key.starts_with("jelou."))
        .unwrap();
    assert_eq!(started.routing_key, "conversation.started", "{started:#?}");
    assert_eq!(started.ticket(), ticket);
    started.body["conversationId"].as_str().unwrap().to_string()
}

/// Waits until `GET {http}/readyz` answers 200 (a bridge running as a child process); fails
/// the test after `timeout`.
pub async fn wait_until_ready(http: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while client
        .get(format!("{http}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "bridge not ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls the stand-in's start or close endpoint as something outside the bridge would (a
/// conversation opened before the bridge was installed, an operator's tool): the answer's
/// `data`, after checking it was a 200.
pub async fn jelou_outside_the_bridge(
    mock: &MockJelou,
    endpoint: jelou_bridge::jelou::Endpoint,
    bot: &str,
    user: &str,
) -> Value {
    let options = MockOptions::default();
    let path = match endpoint {
        jelou_bridge::jelou::Endpoint::Start => options.start_path,
        jelou_bridge::jelou::Endpoint::Close => options.close_path,
        other => panic!("no {other:?} call from outside the bridge"),
    };
    let response = reqwest::Client::new()
        .post(format!(
            "{}{}",
            mock.base_url(),
            path.replace("{projectId}", PROJECT)
        ))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({"botId": bot, "userId": user}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{endpoint:?} outside the bridge");
    let mut body: Value = response.json().await.unwrap();
    body["data"].take()
}
