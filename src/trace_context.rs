//! W3C trace context (`traceparent`, `tracestate`) across the bridge's boundaries: read from
//! an inbound delivery's AMQP headers, written on every message the bridge publishes and on
//! every Jelou call, and kept in the store so Jelou's webhooks about a ticket join its trace.
//!
//! The context written is always the one of a `tracing` span (the delivery's, or the Jelou
//! call's), which the trace layer of [`crate::telemetry`] gives OpenTelemetry ids.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::amqp::set_str;

/// The W3C header naming the trace and the span a message or call comes from.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendors' trace state, when there is any.
pub const TRACESTATE: &str = "tracestate";

/// The context the helpdesk (or an earlier pass of the bridge) put on a delivery; empty when
/// it carried none, or none that parses.
pub fn from_amqp(headers: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&AmqpHeaders(headers))
}

/// The context of a stored `traceparent` (see [`traceparent`]); empty when it does not parse.
pub fn from_traceparent(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&Single(traceparent))
}

/// Makes `span` continue `parent` (a no-op for an empty context, or for a span no trace
/// layer records). Must run before the span is first entered.
pub fn continue_trace(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s trace context on an AMQP header table, replacing whatever trace context
/// the table had (a parked or dead-lettered message keeps its other headers).
pub fn inject_amqp(span: &tracing::Span, table: &mut FieldTable) {
    let mut inner = table.inner().clone();
    inner.remove(&ShortString::from(TRACEPARENT));
    inner.remove(&ShortString::from(TRACESTATE));
    let mut fresh = FieldTable::from(inner);
    TraceContextPropagator::new().inject_context(&span.context(), &mut AmqpInjector(&mut fresh));
    *table = fresh;
}

/// Writes `span`'s trace context on an HTTP request's headers.
pub fn inject_http(span: &tracing::Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HttpInjector(headers));
}

/// `span`'s `traceparent`, when it has a trace (what the store keeps per ticket).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut one = Captured(None);
    TraceContextPropagator::new().inject_context(&span.context(), &mut one);
    one.0
}

/// `span`'s trace id (32 hex digits), when it has a trace.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id (32 hex digits) of a `traceparent` value, when it is well formed.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let cx = from_traceparent(traceparent);
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct AmqpHeaders<'a>(Option<&'a FieldTable>);

impl Extractor for AmqpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Header values are owned by the table as bytes; the propagator wants `&str`.
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|t| t.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

struct AmqpInjector<'a>(&'a mut FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none: leave it out.
        if !value.is_empty() {
            set_str(self.0, key, &value);
        }
    }
}

struct HttpInjector<'a>(&'a mut HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct Single<'a>(&'a str);

impl Extractor for Single<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct Captured(Option<String>);

impl Injector for Captured {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_from_headers_and_its_trace_id_named() {
        let mut table = FieldTable::default();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        set_str(&mut table, TRACEPARENT, tp);
        set_str(&mut table, TRACESTATE, "vendor=x");
        let cx = from_amqp(Some(&table));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "vendor=x");
        assert_eq!(
            trace_id(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-garbage"), None);
        assert!(!from_amqp(None).span().span_context().is_valid());
    }
}
