//! W3C trace context (`traceparent`, `tracestate`) across the bridge's boundaries: read from
//! an inbound delivery's AMQP headers, written on every message the bridge publishes and on
//! every Jelou call, and kept in the store so Jelou's webhooks about a ticket join its trace.
//!
//! The context written is always the one of a `tracing` span (the delivery's, or the Jelou
//! call's), which the trace layer of [`crate::telemetry`] gives OpenTelemetry ids.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
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
    with_span_context(span, |sc| {
        let (parent, state) = header_values(sc);
        set_str(&mut fresh, TRACEPARENT, &parent);
        if let Some(state) = state {
            set_str(&mut fresh, TRACESTATE, &state);
        }
    });
    *table = fresh;
}

/// Writes `span`'s trace context on an HTTP request's headers.
pub fn inject_http(span: &tracing::Span, headers: &mut HeaderMap) {
    with_span_context(span, |sc| {
        let (parent, state) = header_values(sc);
        let parent = HeaderValue::try_from(parent).expect("a traceparent is visible ASCII");
        headers.insert(HeaderName::from_static(TRACEPARENT), parent);
        if let Some(Ok(state)) = state.map(HeaderValue::try_from) {
            headers.insert(HeaderName::from_static(TRACESTATE), state);
        }
    });
}

/// `span`'s `traceparent`, when it has a trace (what the store keeps per ticket).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    with_span_context(span, traceparent_value)
}

/// `span`'s trace id (32 hex digits), when it has a trace.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    with_span_context(span, trace_id_hex)
}

/// A span context's trace id as 32 lower-case hex digits.
fn trace_id_hex(sc: &SpanContext) -> String {
    hex::encode(sc.trace_id().to_bytes())
}

/// The `traceparent` and, when there is any, the `tracestate` of a valid span context.
fn header_values(sc: &SpanContext) -> (String, Option<String>) {
    let state = sc.trace_state().header();
    (traceparent_value(sc), (!state.is_empty()).then_some(state))
}

/// `f` of `span`'s OpenTelemetry span context, when it is valid (the span has a trace).
fn with_span_context<T>(span: &tracing::Span, f: impl FnOnce(&SpanContext) -> T) -> Option<T> {
    with_valid(&span.context(), f)
}

/// `f` of the span context of `cx`, when it is valid.
fn with_valid<T>(cx: &Context, f: impl FnOnce(&SpanContext) -> T) -> Option<T> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| f(sc))
}

/// The `traceparent` value of a valid span context, exactly as the SDK's
/// `TraceContextPropagator` writes it (`00-<trace id>-<span id>-<sampled flag>`, lower-case
/// hex), without its `format!`: the trace id's `Display` writes a 128-bit integer a digit at a
/// time, and this runs three or four times a ticket.
fn traceparent_value(sc: &SpanContext) -> String {
    const LEN: usize = 2 + 1 + 32 + 1 + 16 + 1 + 2;
    let mut out = [b'-'; LEN];
    out[..2].copy_from_slice(b"00");
    let flags = [(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()];
    let parts = [
        (&sc.trace_id().to_bytes()[..], 3..35),
        (&sc.span_id().to_bytes()[..], 36..52),
        (&flags[..], 53..LEN),
    ];
    for (bytes, at) in parts {
        hex::encode_to_slice(bytes, &mut out[at]).expect("each part's slot fits its hex");
    }
    String::from_utf8(out.to_vec()).expect("hex digits and dashes are ASCII")
}

/// The trace id (32 hex digits) of a `traceparent` value, when it is well formed.
pub fn trace_id(traceparent: &str) -> Option<String> {
    with_valid(&from_traceparent(traceparent), trace_id_hex)
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

struct Single<'a>(&'a str);

impl Extractor for Single<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
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

    /// What the bridge writes is what the SDK's propagator would write, byte for byte.
    #[test]
    fn the_traceparent_written_is_the_propagators() {
        use opentelemetry::propagation::Injector;
        use opentelemetry::trace::{SpanId, TraceId, TraceState};
        use std::collections::HashMap;

        struct Written(HashMap<String, String>);
        impl Injector for Written {
            fn set(&mut self, key: &str, value: String) {
                self.0.insert(key.to_string(), value);
            }
        }
        let state = TraceState::from_key_value([("vendor", "x"), ("other", "y")]).unwrap();
        let cases = [
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                TraceFlags::SAMPLED,
            ),
            (1, 1, TraceFlags::default()),
            (u128::MAX, u64::MAX, TraceFlags::new(0xff)),
        ];
        for (trace, span, flags) in cases {
            for state in [TraceState::NONE, state.clone()] {
                let sc =
                    SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, true, state);
                let mut sdk = Written(HashMap::new());
                TraceContextPropagator::new().inject_context(
                    &Context::new().with_remote_span_context(sc.clone()),
                    &mut sdk,
                );
                assert_eq!(Some(&traceparent_value(&sc)), sdk.0.get(TRACEPARENT));
                assert_eq!(Some(&sc.trace_state().header()), sdk.0.get(TRACESTATE));
            }
        }
    }
}
