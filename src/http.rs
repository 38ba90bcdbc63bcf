//! The HTTP side: the Jelou webhook on `http.listen`; `/healthz`, `/readyz` and `/metrics`
//! there too, or on `admin.listen` when it is set. Every listener is served with limits
//! ([`serve`]): the webhook port faces the internet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::amqp::BrokerLink;
use crate::config::HttpSettings;
use crate::jelou::gate::JelouGate;
use crate::store::Store;
use crate::webhook::{self, WebhookState};

pub struct HealthState {
    pub link: Arc<BrokerLink>,
    pub store: Store,
    pub metrics: PrometheusHandle,
    /// Jelou's gate and breaker, shown on /readyz and /metrics.
    pub jelou: Arc<JelouGate>,
}

/// The limits every listener applies, before any handler runs. (The webhook's body limits,
/// `http.max_body_bytes` and `http.body_timeout`, are its own: [`webhook::handle`].)
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_requests: usize,
}

impl From<&HttpSettings> for Limits {
    fn from(h: &HttpSettings) -> Self {
        Limits {
            header_timeout: h.header_timeout,
            max_connections: h.max_connections,
            max_requests: h.max_requests,
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn probes(health: Arc<HealthState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// `POST /webhooks/jelou`, its body capped at `max_body_bytes`.
pub fn webhook(webhook: Arc<WebhookState>, max_body_bytes: usize) -> Router {
    if webhook
        .secret
        .as_ref()
        .is_none_or(|s| secrecy::ExposeSecret::expose_secret(s).is_empty())
    {
        tracing::warn!(
            "webhook.signing_secret is not set: POST /webhooks/jelou answers 503 to every request"
        );
    }
    Router::new()
        .route("/webhooks/jelou", post(webhook::handle))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(webhook)
}

/// Both on one port (no `admin.listen`).
pub fn router(health: Arc<HealthState>, hooks: Arc<WebhookState>, max_body_bytes: usize) -> Router {
    probes(health).merge(webhook(hooks, max_body_bytes))
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets open requests finish.
///
/// Not `axum::serve`: it has no header timeout and no connection cap, and this port faces
/// the internet. hyper's header read timeout closes a connection that sends no complete
/// head (also an idle kept-alive one); a semaphore caps connections (one more gets a bare
/// 503 and is closed) and another caps requests in flight (503).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    name: &'static str,
    stop: CancellationToken,
) {
    let requests = Arc::new(Semaphore::new(limits.max_requests));
    let router = router.layer(axum::middleware::from_fn(move |req, next| {
        let requests = requests.clone();
        shed_load(requests, name, req, next)
    }));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!(listener = name, error = %e, "could not accept a connection");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            limit_hit(name, "max_connections");
            tracker.spawn(refuse_connection(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let header_timeout = limits.header_timeout;
        let stop = stop.clone();
        tracker.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    limit_hit(name, "header_timeout");
                    debug!(listener = name, %peer, "closed a connection that sent no complete request head in time");
                } else {
                    debug!(listener = name, %peer, error = %e, "connection ended with an error");
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    // A client still trickling its head is cut by the header timeout anyway; no later.
    let _ = tokio::time::timeout(limits.header_timeout, tracker.wait()).await;
}

/// Over `http.max_connections`: a bare 503, bounded in time, then closed.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = json!({"error": "overloaded", "detail": "too many connections"}).to_string();
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(busy.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Over `http.max_requests`: 503 at once rather than a queue that grows.
async fn shed_load(
    requests: Arc<Semaphore>,
    name: &'static str,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = requests.try_acquire_owned() else {
        limit_hit(name, "max_requests");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "overloaded", "detail": "too many requests at once"})),
        )
            .into_response();
    };
    next.run(req).await
}

/// A limit refused a connection or a request: counted each time, and logged at warn at most
/// once per [`LIMIT_LOG_EVERY`] (with how many were refused meanwhile): a flood of slow
/// clients must not flood the log too.
pub fn limit_hit(listener: &'static str, limit: &'static str) {
    metrics::counter!("jelou_bridge_http_limited_total", "listener" => listener, "limit" => limit)
        .increment(1);
    static SINCE_LOGGED: AtomicU64 = AtomicU64::new(0);
    static LAST_LOGGED_MS: AtomicU64 = AtomicU64::new(0);
    let refused = SINCE_LOGGED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_LOGGED_MS.load(Ordering::Relaxed);
    let due = now.saturating_sub(last) >= LIMIT_LOG_EVERY.as_millis() as u64;
    if due
        && LAST_LOGGED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        SINCE_LOGGED.store(0, Ordering::Relaxed);
        warn!(
            listener,
            limit, refused, "HTTP limit reached: connections closed or requests refused"
        );
    } else {
        debug!(listener, limit, "HTTP limit reached");
    }
}

/// How often a run of refused connections or requests is logged at warn.
pub const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// 200 only while the broker connection and the store both work. Jelou's gate and breaker
/// are shown but never make it 503: with Jelou held back or down the bridge still does
/// useful work (it parks deliveries), and restarting it or taking it out of service would
/// not bring Jelou back.
async fn readyz(State(state): State<Arc<HealthState>>) -> Response {
    let broker = state.link.is_connected();
    let store = match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2s".to_string()),
    };
    let gate = state.jelou.view();
    let jelou = json!({
        "gate": if gate.held_for.is_some() { "held" } else { "open" },
        "held_for_ms": gate.held_for.map_or(0, |d| d.as_millis() as u64),
        "breaker": gate.breaker.as_str(),
    });
    if broker && store.is_ok() {
        return (
            StatusCode::OK,
            Json(json!({"status": "ready", "jelou": jelou})),
        )
            .into_response();
    }
    let body = json!({
        "status": "not_ready",
        "broker": if broker { "ok" } else { "disconnected" },
        "store": store.err().unwrap_or_else(|| "ok".into()),
        "jelou": jelou,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<HealthState>>) -> Response {
    // The gate's gauges are time-dependent: brought up to date at each scrape.
    state.jelou.view();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}
