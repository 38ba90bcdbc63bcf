//! A bridge running in the test's own process ([`TestApp`]) against a stand-in for Jelou,
//! with settings of its own: unique names, a fresh SQLite file, short retry delays.

use std::path::Path;
use std::time::{Duration, Instant};

use jelou_bridge::app::Application;
use jelou_bridge::config::Settings;
use jelou_bridge::jelou::mock::{MockJelou, MockOptions, WebhookTarget};
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Declared;
use crate::bus::Bus;
use crate::names::{amqp_url, unique, API_KEY, PROJECT, SIGNING_SECRET};
use crate::stand_in::{stand_in_options, start_stand_in};

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

/// Settings and stand-in for both directions of messages: the bridge and the stand-in share
/// [`SIGNING_SECRET`] (the stand-in checks send-message signatures with it).
pub fn signed(settings: &mut Settings, mock: &mut MockOptions) {
    settings.webhook.signing_secret = Some(SecretString::from(SIGNING_SECRET));
    mock.signing_secret = Some(SIGNING_SECRET.into());
}

/// A bridge running in this process against a stand-in for Jelou, with the helpdesk's side
/// of its bus. Dropping it stops the bridge and deletes its queues and exchanges.
pub struct TestApp {
    pub settings: Settings,
    pub mock: MockJelou,
    pub bus: Bus,
    /// Where the webhook answers.
    pub http: String,
    /// Where health, readiness and metrics answer: `admin.listen` when set, else `http`.
    pub admin: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    keep_topology: bool,
}

/// A stand-in and a bridge with the test defaults ([`test_settings`]).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

/// Starts a stand-in and a bridge; `customize` may change both before they start.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings, &mut MockOptions)) -> TestApp {
    // The binary's subscriber does not run here; trace context needs a trace layer.
    jelou_bridge::telemetry::init_trace_context_only();
    let mut mock_options = stand_in_options();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&unique("jbt"), "http://127.0.0.1:1", dir.path());
    customize(&mut settings, &mut mock_options);
    let mock = start_stand_in(mock_options).await;
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
    /// Waits until `/readyz` answers 200; fails the test after `timeout`.
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
        self.mock.set_webhook(Some(WebhookTarget {
            url: format!("{}/webhooks/jelou", self.http),
            secret: SIGNING_SECRET.into(),
        }));
    }

    /// The bridge's dead-letter queue.
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
    /// deletes them (a `TopologyGuard`).
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
            Declared::by_bridge(&self.settings).delete_blocking(vec![amqp_url()]);
        }
    }
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
