//! Logs (`tracing`: JSON in production, readable on a terminal) and the Prometheus recorder.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "jelou_bridge_ticket_events_total",
        "Ticket events consumed, by event and outcome (started, closed, failed, parked, requeued)."
    );
    describe_counter!(
        "jelou_bridge_jelou_requests_total",
        "Calls to Jelou, by endpoint and status class."
    );
    describe_histogram!(
        "jelou_bridge_jelou_request_duration_seconds",
        Unit::Seconds,
        "Latency of calls to Jelou, by endpoint."
    );
    describe_counter!(
        "jelou_bridge_jelou_retries_total",
        "In-process retries of Jelou calls, by endpoint."
    );
    describe_counter!(
        "jelou_bridge_parked_total",
        "Messages parked in a delay queue, by action."
    );
    describe_counter!(
        "jelou_bridge_dead_letters_total",
        "Messages dead-lettered, by reason."
    );
    describe_counter!(
        "jelou_bridge_duplicates_absorbed_total",
        "Redelivered or duplicated events answered from the store without calling Jelou."
    );
    describe_gauge!(
        "jelou_bridge_inflight_deliveries",
        "Deliveries being handled now."
    );
    describe_gauge!(
        "jelou_bridge_broker_connected",
        "1 while the broker connection is up."
    );
    describe_counter!(
        "jelou_bridge_webhook_requests_total",
        "Jelou webhook requests, by event and verdict."
    );
}
