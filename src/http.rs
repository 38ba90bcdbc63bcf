//! The HTTP side on `http.listen`: `/healthz`, `/readyz`, `/metrics` and the Jelou webhook.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::amqp::BrokerLink;
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

pub fn router(
    health: Arc<HealthState>,
    webhook: Arc<WebhookState>,
    max_body_bytes: usize,
) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    if webhook
        .secret
        .as_ref()
        .is_none_or(|s| secrecy::ExposeSecret::expose_secret(s).is_empty())
    {
        tracing::warn!(
            "webhook.signing_secret is not set: POST /webhooks/jelou answers 503 to every request"
        );
    }
    let hooks = Router::new()
        .route("/webhooks/jelou", post(webhook::handle))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(webhook);
    probes.merge(hooks)
}

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
