//! The daemon assembled: [`Application::build`] opens the store, binds the HTTP listener and
//! builds the Jelou client; [`Application::run_until_stopped`] runs the consumer, the HTTP
//! server and the lease keeper until its shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::amqp::{consumer, BrokerLink};
use crate::bridge::Bridge;
use crate::config::Settings;
use crate::http::{self, HealthState};
use crate::jelou::mock::{MockJelou, MockOptions, WebhookTarget};
use crate::jelou::JelouClient;
use crate::store::Store;
use crate::telemetry;
use crate::webhook::WebhookState;

pub struct Application {
    settings: Arc<Settings>,
    listener: tokio::net::TcpListener,
    /// `admin.listen`, when set: health, readiness and metrics apart from the webhook.
    admin: Option<tokio::net::TcpListener>,
    store: Store,
    link: Arc<BrokerLink>,
    /// The in-process stand-in for Jelou in sandbox mode; kept alive as long as the app.
    sandbox: Option<MockJelou>,
}

impl Application {
    /// Builds everything that can fail before the daemon starts. `sandbox` starts an
    /// in-process stand-in for Jelou and points the bridge (and its webhooks) at it.
    pub async fn build(mut settings: Settings, sandbox: bool) -> anyhow::Result<Application> {
        let listener = tokio::net::TcpListener::bind(settings.http_listen()?)
            .await
            .map_err(|e| {
                anyhow::anyhow!("http.listen: cannot bind {}: {e}", settings.http.listen)
            })?;
        let admin = match settings.admin_listen()? {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("admin.listen: cannot bind {addr}: {e}"))?,
            ),
            None => None,
        };
        let http_addr = listener.local_addr()?;
        let sandbox = if sandbox {
            Some(start_sandbox(&mut settings, http_addr).await?)
        } else {
            None
        };
        let instance = format!(
            "{}-{}",
            hostname(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let store = Store::connect(&settings.store, instance).await?;
        Ok(Application {
            settings: Arc::new(settings),
            listener,
            admin,
            store,
            link: Arc::new(BrokerLink::default()),
            sandbox,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where health, readiness and metrics are served: `admin.listen` when set, else the
    /// webhook's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| self.http_addr())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The sandbox's stand-in, when running with `--sandbox`.
    pub fn sandbox(&self) -> Option<&MockJelou> {
        self.sandbox.as_ref()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = self.settings.clone();
        let jelou = JelouClient::new(&settings.jelou, settings.webhook.signing_secret.clone())?;
        let bridge = Arc::new(Bridge::new(
            settings.clone(),
            jelou,
            self.store.clone(),
            shutdown.clone(),
        ));
        info!(
            instance = self.store.instance(),
            http = %self.http_addr(),
            jelou = %settings.jelou.base_url,
            store = %crate::config::redacted_url(secrecy::ExposeSecret::expose_secret(&settings.store.url)),
            "jelou-bridge starting"
        );

        let health = Arc::new(HealthState {
            link: self.link.clone(),
            store: self.store.clone(),
            metrics: telemetry::metrics_handle(),
            jelou: bridge.jelou.gate(),
        });
        let webhook = Arc::new(WebhookState {
            secret: settings.webhook.signing_secret.clone(),
            store: self.store.clone(),
            link: self.link.clone(),
            events_exchange: settings.amqp.events_exchange.clone(),
            // A forward takes at most one publish confirm.
            claim_stale_after: settings.amqp.confirm_timeout * 2,
            body_timeout: settings.http.body_timeout,
            max_age: settings.webhook.max_age,
        });
        // The HTTP servers outlive the consumer's drain so probes answer during shutdown.
        let http_stop = CancellationToken::new();
        let limits = http::Limits::from(&settings.http);
        let admin_addr = self.admin_addr();
        let mut servers = tokio::task::JoinSet::new();
        match self.admin {
            Some(admin) => {
                info!(admin = %admin_addr, "health, readiness and metrics on admin.listen; http.listen serves only the webhook");
                servers.spawn(http::serve(
                    admin,
                    http::probes(health),
                    limits.clone(),
                    "admin",
                    http_stop.clone(),
                ));
                servers.spawn(http::serve(
                    self.listener,
                    http::webhook(webhook, settings.http.max_body_bytes),
                    limits,
                    "http",
                    http_stop.clone(),
                ));
            }
            None => {
                servers.spawn(http::serve(
                    self.listener,
                    http::router(health, webhook, settings.http.max_body_bytes),
                    limits,
                    "http",
                    http_stop.clone(),
                ));
            }
        }

        // Leases are renewed until the drain is over, not only until the first signal: work
        // still finishing after it must keep its tickets.
        let leases_stop = CancellationToken::new();
        let leases = tokio::spawn(keep_leases(
            self.store.clone(),
            settings.store.lease,
            leases_stop.clone(),
        ));
        let pruner = tokio::spawn(prune_webhooks(
            self.store.clone(),
            settings.webhook.max_age,
            shutdown.clone(),
        ));
        consumer::run(bridge, self.link.clone(), shutdown).await;
        let _ = pruner.await;
        leases_stop.cancel();
        let _ = leases.await;
        http_stop.cancel();
        while let Some(ended) = servers.join_next().await {
            if let Err(e) = ended {
                warn!(error = %e, "HTTP server task failed");
            }
        }
        self.store.close().await;
        info!("jelou-bridge stopped");
        Ok(())
    }
}

/// Renews this process's hold on the tickets it works on, a third of a lease at a time, on
/// the store's clock (measured again first).
async fn keep_leases(store: Store, lease: std::time::Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = store.sync_clock().await {
                    warn!(error = %e, "could not read the store's clock");
                }
                if let Err(e) = store.renew_leases().await {
                    warn!(error = %e, "could not renew ticket leases");
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Most webhook deliveries one prune deletes: it never holds the table for long, and a
/// backlog goes in a few ticks.
const PRUNE_BATCH: u32 = 5_000;

/// Keeps the webhooks' dedupe table to the replay window: a delivery is kept for twice
/// `webhook.max_age` (an event may be stamped up to `max_age` in the future, and is accepted
/// until `max_age` after its stamp), then deleted, a bounded batch per tick.
async fn prune_webhooks(store: Store, max_age: std::time::Duration, shutdown: CancellationToken) {
    let every = (max_age / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let pruned = tokio::select! {
            pruned = tokio::time::timeout(every.max(std::time::Duration::from_secs(30)), store.prune_webhooks(max_age * 2, PRUNE_BATCH)) => pruned,
            _ = shutdown.cancelled() => return,
        };
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                metrics::counter!("jelou_bridge_webhook_events_pruned_total").increment(n);
                tracing::debug!(
                    pruned = n,
                    "webhook dedupe entries past the replay window deleted"
                );
            }
            Ok(Err(e)) => warn!(error = %e, "could not prune the webhook dedupe table"),
            Err(_) => warn!("pruning the webhook dedupe table took too long; trying again later"),
        }
    }
}

/// Starts the stand-in for Jelou and points the settings at it; its webhooks come back to
/// this process, signed with the configured secret or a fresh one.
async fn start_sandbox(
    settings: &mut Settings,
    http_addr: SocketAddr,
) -> anyhow::Result<MockJelou> {
    let secret = match &settings.webhook.signing_secret {
        Some(s) => secrecy::ExposeSecret::expose_secret(s).to_string(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    settings.webhook.signing_secret = Some(SecretString::from(secret.clone()));
    let webhook_host = if http_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], http_addr.port()))
    } else {
        http_addr
    };
    let mock = MockJelou::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockOptions {
            start_path: settings.jelou.start_path.clone(),
            close_path: settings.jelou.close_path.clone(),
            conversation_path: settings.jelou.conversation_path.clone(),
            // The sandbox's customer answers every reply, so both directions show.
            echo_messages: true,
            webhook: Some(WebhookTarget {
                url: format!("http://{webhook_host}/webhooks/jelou"),
                secret,
            }),
            record_calls: false,
            ..MockOptions::default()
        },
    )
    .await?;
    settings.jelou.base_url = mock.base_url();
    settings.jelou.messages_url = mock.messages_url();
    if settings.jelou.project_id.is_none() {
        settings.jelou.project_id = Some("sandbox".into());
    }
    info!(jelou = %mock.base_url(), "sandbox: Jelou is an in-process stand-in");
    Ok(mock)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bridge".into())
}
