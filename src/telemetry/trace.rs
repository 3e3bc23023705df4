//! W3C trace-context propagation and the spans of an event's life.
//!
//! An event carries its trace in `headers.traceparent` (and
//! `headers.tracestate`). The router continues that trace, or starts one when
//! the event has none, and writes its own span's context back into the
//! headers before the event is stored; every later step — delivery on any
//! replica, ack, nack, dead-letter — parents its span on what it finds there.
//! One event's life is therefore one trace:
//!
//! ```text
//! validate ─▶ receive ─┬─ route
//!                      ├─ store
//!                      └─ deliver (per attempt) ─┬─ ack
//!                                                └─ nack ─ dead_letter
//! ```
//!
//! Spans are ordinary `tracing` spans at INFO with target `event_router::…`;
//! they become OpenTelemetry spans only when [`super::init`] installed an
//! exporter. Without one, nothing is written into events' headers, and a
//! `traceparent` a publisher sent passes through untouched.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use parking_lot::Mutex;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::Event;

/// The W3C header carrying the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";

struct HeaderMapRef<'a>(&'a BTreeMap<String, String>);

impl Extractor for HeaderMapRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeaderMapMut<'a>(&'a mut BTreeMap<String, String>);

impl Injector for HeaderMapMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is no state: drop it rather than store "".
        if value.is_empty() {
            self.0.remove(key);
        } else {
            self.0.insert(key.to_string(), value);
        }
    }
}

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether `value` has the W3C shape `vv-<32 hex>-<16 hex>-ff[-...]`
/// (the SDK's parser alone accepts short ids such as `abc`).
fn well_formed(value: &str) -> bool {
    let mut parts = value.trim().split('-');
    let lens = [2, 32, 16, 2];
    lens.iter().all(|len| {
        parts
            .next()
            .is_some_and(|p| p.len() == *len && p.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// The remote parent in string headers (an event's `headers`), if they
/// hold a valid `traceparent`.
pub fn extract(headers: &BTreeMap<String, String>) -> Option<Context> {
    if !well_formed(headers.get(TRACEPARENT)?) {
        return None;
    }
    let cx =
        TraceContextPropagator::new().extract_with_context(&Context::new(), &HeaderMapRef(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The remote parent in HTTP request headers, if they hold a valid `traceparent`.
pub fn extract_http(headers: &http::HeaderMap) -> Option<Context> {
    if !well_formed(headers.get(TRACEPARENT)?.to_str().ok()?) {
        return None;
    }
    let cx =
        TraceContextPropagator::new().extract_with_context(&Context::new(), &HttpHeaders(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Writes `span`'s context as `traceparent`/`tracestate` into `headers`.
/// Does nothing when `span` is not exported (no OpenTelemetry layer, or not
/// sampled-and-recorded), so headers are never filled with made-up ids.
pub fn inject(span: &Span, headers: &mut BTreeMap<String, String>) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderMapMut(headers));
}

/// Makes `parent` (when given) the parent of `span`, and records the trace
/// id in the span's `trace_id` field so that log lines carry it. Call before
/// the span is first entered.
pub fn attach(span: &Span, parent: Option<Context>) {
    if span.is_disabled() {
        return;
    }
    let remote = parent
        .as_ref()
        .map(|cx| cx.span().span_context().trace_id());
    if let Some(parent) = parent {
        // Fails only without an OpenTelemetry layer; the span is then a
        // plain `tracing` span and the id comes from the remote parent.
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().clone();
    let trace_id = if own.is_valid() {
        Some(own.trace_id())
    } else {
        remote
    };
    if let Some(id) = trace_id {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// The `validate` span of a publish; its parent is set by [`validated`].
pub fn validate_span() -> Span {
    tracing::info_span!(
        "validate",
        otel.kind = "server",
        event_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    )
}

/// Ends validation of `event`: the `validate` span joins the event's trace,
/// or — when the event has none — starts one and stores it in the headers.
pub fn validated(span: &Span, event: &mut Event) {
    match extract(&event.headers) {
        Some(parent) => attach(span, Some(parent)),
        None => {
            attach(span, None);
            inject(span, &mut event.headers);
        }
    }
    span.record("event_id", event.id.as_str());
}

/// The `receive` span of one publish: child of the event's `traceparent`
/// (or of the current span), and written back as the event's new
/// `traceparent` so that deliveries become its children.
pub fn receive_span(event: &mut Event) -> Span {
    let span = tracing::info_span!(
        "receive",
        otel.kind = "producer",
        topic = %event.topic,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
    );
    attach(&span, extract(&event.headers));
    inject(&span, &mut event.headers);
    span
}

/// The `receive` span of a batch; events without a trace of their own join it.
pub fn receive_batch_span(events: &mut [Event]) -> Span {
    let span = tracing::info_span!(
        "receive",
        otel.kind = "producer",
        batch = events.len(),
        trace_id = tracing::field::Empty,
    );
    attach(&span, None);
    for event in events {
        if !event.headers.contains_key(TRACEPARENT) {
            inject(&span, &mut event.headers);
        }
    }
    span
}

/// The `route` span (EventRoutes applied), a child of the current span.
pub fn route_span() -> Span {
    tracing::info_span!("route")
}

/// The `store` span (the broker's publish), a child of the current span.
pub fn store_span(events: usize) -> Span {
    tracing::info_span!("store", events)
}

/// The `deliver` span of one durable delivery, child of the context in the
/// event's headers; the delivered copy's `traceparent` is replaced by this
/// span so that the consumer's own work joins the trace under it.
pub fn deliver_span(
    subscription: &str,
    delivery_id: &str,
    attempt: u32,
    event: &mut Event,
) -> Span {
    let span = tracing::info_span!(
        "deliver",
        otel.kind = "consumer",
        subscription,
        delivery_id,
        attempt,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
    );
    attach(&span, extract(&event.headers));
    inject(&span, &mut event.headers);
    span
}

/// The `ack` span, child of the delivery's span when it is known.
pub fn ack_span(subscription: &str, delivery_id: &str, parent: Option<Context>) -> Span {
    let span = tracing::info_span!(
        "ack",
        subscription,
        delivery_id,
        trace_id = tracing::field::Empty
    );
    attach(&span, parent);
    span
}

/// The `nack` (retry) span, child of the delivery's span when it is known.
pub fn nack_span(
    subscription: &str,
    delivery_id: &str,
    reason: Option<&str>,
    parent: Option<Context>,
) -> Span {
    let span = tracing::info_span!(
        "nack",
        subscription,
        delivery_id,
        reason = reason.unwrap_or(""),
        trace_id = tracing::field::Empty
    );
    attach(&span, parent);
    span
}

/// Records that `event` was moved to `subscription`'s dead-letter queue:
/// counts it and emits a `dead_letter` span — a child of the current span
/// (the `nack` that exhausted the attempts) or, when there is none (an ack
/// timeout), of the event's trace. Brokers call this where they dead-letter.
pub fn dead_lettered(subscription: &str, event: &Event, reason: &str) {
    super::metrics::metrics().dead_lettered(subscription);
    let parent = if Span::current().is_none() {
        extract(&event.headers)
    } else {
        None
    };
    let span = tracing::info_span!(
        "dead_letter",
        subscription,
        event_id = %event.id,
        reason,
        trace_id = tracing::field::Empty,
    );
    attach(&span, parent);
    span.in_scope(
        || tracing::info!(subscription, event_id = %event.id, reason, "event dead-lettered"),
    );
}

/// As [`dead_lettered`], for a broker that dead-letters inside its store
/// without holding the event (Redis): the span is a child of the current
/// span (the `nack`), and carries no event id.
pub fn dead_lettered_entry(subscription: &str, reason: &str) {
    super::metrics::metrics().dead_lettered(subscription);
    let span = tracing::info_span!(
        "dead_letter",
        subscription,
        reason,
        trace_id = tracing::field::Empty,
    );
    attach(&span, None);
    span.in_scope(|| tracing::info!(subscription, reason, "event dead-lettered"));
}

/// The span of a push sink's HTTP POST of one delivery, child of the
/// delivery's trace; call [`inject`] with it to send `traceparent` along.
pub fn push_span(subscription: &str, url: &str, event: &Event) -> Span {
    let span = tracing::info_span!(
        "push",
        otel.kind = "client",
        subscription,
        url,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
    );
    attach(&span, extract(&event.headers));
    span
}

/// Writes `span`'s context as `traceparent`/`tracestate` HTTP headers
/// (replacing any), so that the receiver of an outgoing request (a push
/// sink's POST) continues the trace under `span`. Does nothing when the
/// span is not exported.
pub fn inject_http(span: &Span, headers: &mut http::HeaderMap) {
    let mut map = BTreeMap::new();
    inject(span, &mut map);
    for (name, value) in map {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name),
            http::HeaderValue::try_from(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// Most deliveries whose span is remembered for their ack or nack; past it
/// the table is cleared (later acks then start their own span tree).
const MAX_TRACKED_DELIVERIES: usize = 100_000;

/// Remembers each in-flight delivery's span context so that its ack or nack
/// span becomes a child of its `deliver` span.
#[derive(Debug, Default)]
pub struct InFlightSpans {
    spans: Mutex<HashMap<(String, String), Context>>,
}

impl InFlightSpans {
    /// Remembers `span` for `(subscription, delivery_id)`.
    pub fn insert(&self, subscription: &str, delivery_id: &str, span: &Span) {
        if span.is_disabled() {
            return;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        let mut spans = self.spans.lock();
        if spans.len() >= MAX_TRACKED_DELIVERIES {
            spans.clear();
        }
        spans.insert((subscription.to_string(), delivery_id.to_string()), cx);
    }

    /// Forgets and returns the context of a delivery.
    pub fn take(&self, subscription: &str, delivery_id: &str) -> Option<Context> {
        let mut spans = self.spans.lock();
        if spans.is_empty() {
            return None;
        }
        spans.remove(&(subscription.to_string(), delivery_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_extracted_and_junk_is_ignored() {
        let mut h = BTreeMap::new();
        h.insert(
            TRACEPARENT.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        );
        let cx = extract(&h).unwrap();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        h.insert(TRACEPARENT.to_string(), "00-abc-def-01".to_string());
        assert!(extract(&h).is_none());
        assert!(extract(&BTreeMap::new()).is_none());
    }

    #[test]
    fn without_an_exporter_headers_are_left_alone() {
        let mut event = Event::new("a.b", serde_json::Value::Null).unwrap();
        let span = receive_span(&mut event);
        drop(span);
        assert!(event.headers.is_empty());
    }
}
