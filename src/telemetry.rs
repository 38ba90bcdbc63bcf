//! Logs (`tracing`: JSON in production, readable on a terminal), traces (W3C trace context
//! on every delivery, Jelou call and published message; OTLP export when
//! `telemetry.otlp_endpoint` is set) and the Prometheus recorder.
//!
//! Trace ids come from the OpenTelemetry SDK through `tracing-opentelemetry`, always, export
//! or not: the ids the bridge puts on the bus and on Jelou calls must not depend on whether
//! anyone collects the spans, nor on the log level: the bridge's own spans are always on.
//!
//! Each layer keeps its own filter (logs: `log.level`; traces: the bridge's spans and events at
//! `info`), and a global filter in front (`Recorded`) is exactly their union. Without it, an
//! event or a `log` record that every layer's filter turned down (rustls's and sqlx's, below
//! `log.level`) left tracing-subscriber's per-thread filter state set, and the next event on
//! that thread was dropped: the "jelou-bridge starting" line went missing at
//! `log.level = "warn,…"`. The global filter turns such an event down first, which resets
//! that state.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::subscriber::Interest;
use tracing::{span, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterFn, LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// Longest wait for the last spans to reach the collector at exit.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(String),
}

/// Owns the tracer provider: dropping it without [`Tracing::shutdown`] may lose the last
/// spans of a run.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Sends the spans still buffered (bounded by a timeout), then stops exporting.
    pub fn shutdown(self) {
        // The batch exporter blocks on its own thread; a bounded wait here.
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "could not send the last spans to the collector");
        }
    }
}

/// The tracer provider: spans get ids (sampling follows the inbound `traceparent`, else
/// keeps everything), and go to `telemetry.otlp_endpoint` over OTLP/HTTP (protobuf) in
/// batches when it is set.
pub fn tracer_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let mut builder = provider_builder(&settings.service_name);
    if let Some(endpoint) = settings.traces_url() {
        use opentelemetry_otlp::WithExportConfig;
        // The exporter's own blocking client, built on a thread of its own (a blocking
        // client must not be made or dropped on the async runtime); it sends from the batch
        // processor's thread, never from the runtime's.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            // Checked by the configuration: carries no credentials (they go in
            // OTEL_EXPORTER_OTLP_HEADERS), so its errors may quote it.
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// What every tracer provider of the bridge shares: the resource, and the SDK's default
/// sampler (parent-based: a helpdesk's unsampled trace stays unsampled).
fn provider_builder(service_name: &str) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.namespace", "jelou-bridge"),
        ])
        .build();
    SdkTracerProvider::builder().with_resource(resource)
}

/// The layer that turns the bridge's spans into OpenTelemetry spans. Its own filter keeps it
/// to the bridge's spans and events, at `info` and above, whatever `log.level` says; without
/// export, to its spans alone (see [`Traced`]).
///
/// A span's busy and idle times, thread and code location are attributes of the exported
/// span, nothing else: when `exported` is false (no `telemetry.otlp_endpoint`) they are not
/// gathered. The busy and idle times alone read the clock at every enter and exit of a span,
/// that is at every poll of a delivery's future.
fn trace_layer<S>(provider: &SdkTracerProvider, exported: bool) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("jelou-bridge"))
        // No OpenTelemetry context made current at every enter of a span (a clone and a
        // thread-local push at every poll of a delivery): the bridge reads a span's context
        // from the span itself, and a new span's parent is the current tracing span.
        .with_context_activation(false)
        .with_tracked_inactivity(exported)
        .with_threads(exported)
        .with_location(exported)
        .with_filter(Traced::new(exported).filter())
}

/// What the trace layer records: the bridge's own spans and events at `info` and above. Its
/// events become events of the exported spans; when nothing is exported only the spans are
/// recorded (their ids go on the bus, on Jelou calls and into the store), since an event
/// would be formatted into a span that nobody reads.
#[derive(Clone)]
struct Traced {
    targets: Targets,
    events: bool,
}

impl Traced {
    fn new(exported: bool) -> Traced {
        Traced {
            targets: Targets::new().with_target("jelou_bridge", LevelFilter::INFO),
            events: exported,
        }
    }

    fn wants(&self, meta: &Metadata<'_>) -> bool {
        (self.events || meta.is_span()) && self.targets.would_enable(meta.target(), meta.level())
    }

    /// As a filter (a layer's own, or the global one), decided once per callsite.
    fn filter(self) -> FilterFn<impl Fn(&Metadata<'_>) -> bool + Clone> {
        filter_fn(move |meta| self.wants(meta)).with_max_level_hint(LevelFilter::INFO)
    }
}

/// What `log.level` (or `RUST_LOG`) asks the logs for.
fn log_filter(log: &LogSettings) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The global filter: the union of the layers' own filters, so that what every layer would
/// turn down is turned down before any of them looks (see the module's note).
struct Recorded {
    /// The log layer's filter, built a second time from the same `log.level`.
    logs: EnvFilter,
    /// The trace layer's filter.
    traces: Traced,
}

impl Recorded {
    fn traced(&self, meta: &Metadata<'_>) -> bool {
        self.traces.wants(meta)
    }
}

impl<S> Layer<S> for Recorded
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Always asked, so that span directives in `log.level` (`[delivery]=debug`) know the
        // callsite.
        let logs = Layer::<S>::register_callsite(&self.logs, meta);
        if self.traced(meta) {
            Interest::always()
        } else {
            logs
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        self.traced(meta) || Layer::<S>::enabled(&self.logs, meta, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Layer::<S>::max_level_hint(&self.logs).map(|level| level.max(LevelFilter::INFO))
    }

    // `log.level` may name spans (`[delivery]=debug`): the filter follows them.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.logs.on_new_span(attrs, id, cx)
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.logs.on_record(id, values, cx)
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.logs.on_enter(id, cx)
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.logs.on_exit(id, cx)
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.logs.on_close(id, cx)
    }
}

/// Installs the global subscriber (logs and the trace layer) and returns the tracer
/// provider to shut down at exit; a second call (tests) installs nothing.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Result<Tracing, TelemetryError> {
    let provider = tracer_provider(telemetry)?;
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(log_filter(log))
            .boxed()
    } else {
        fmt.compact().with_filter(log_filter(log)).boxed()
    };
    let exported = telemetry.traces_url().is_some();
    let recorded = Recorded {
        logs: log_filter(log),
        traces: Traced::new(exported),
    };
    let _ = tracing_subscriber::registry()
        .with(recorded)
        .with(fmt)
        .with(trace_layer(&provider, exported))
        .try_init();
    Ok(Tracing { provider })
}

/// Installs, when no subscriber is set yet, one that keeps trace context and writes no logs:
/// for embedding the bridge as a library (the integration tests do), where the binary's
/// [`init`] does not run. The provider lives as long as the process.
pub fn init_trace_context_only() {
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| provider_builder("jelou-bridge").build());
    // A global filter in front, for the reason the module says.
    let _ = tracing_subscriber::registry()
        .with(Traced::new(false).filter())
        .with(trace_layer(provider, false))
        .try_init();
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
