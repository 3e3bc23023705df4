//! W3C trace-context propagation and the spans of an event's life.
//!
//! An event carries its trace in `headers.traceparent`. The router continues
//! that trace, or starts one when the event has none, and writes its own
//! span's context back into the headers before the event is stored; every
//! later step — delivery on any replica, ack, nack, dead-letter — parents its
//! span on what it finds there. One event's life is therefore one trace:
//!
//! ```text
//! validate ─▶ receive ─┬─ route
//!                      ├─ store
//!                      └─ deliver (per attempt) ─┬─ ack
//!                                                └─ nack ─ dead_letter
//! ```
//!
//! # Cost
//! Several spans per event make this the hottest code of a traced router,
//! so a step is not a `tracing` span bridged to OpenTelemetry (that bridge
//! costs a registry lookup, an extension map, a builder and a channel send
//! per span, several times the work being traced). A step is an
//! [`EventSpan`]: ids from a thread-local generator, the sampling decision
//! taken before anything is built, and — only when sampled — a plain record
//! pushed into the [`Pipeline`]'s buffer when it ends. Parents are passed
//! explicitly (the event's headers, the delivery's remembered context) or,
//! inside an [`EventSpan::scope`], found in a thread-local.
//!
//! With a parent-based sampler (the default), a step whose parent is not
//! sampled makes no span and leaves the event's `traceparent` as it is: an
//! unsampled trace costs one sampler decision (at `validate`) and a few
//! header parses per event, and still propagates a valid `traceparent`.
//!
//! Each step also has a `tracing` span for log lines (DEBUG on the
//! per-event steps, so free at the default `info` level; INFO on the rare
//! ones) carrying `trace_id` when it is enabled.
//!
//! Without [`install`] (no exporter), nothing is written into events'
//! headers, and a `traceparent` a publisher sent passes through untouched.
//! A publisher's `tracestate` header is carried along untouched.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use parking_lot::Mutex;

use super::pipeline::{self, Attributes, Pipeline, SpanRecord};
use super::traceparent::{self, Parsed};
use crate::event::{Event, Headers, InlineTraceparent};

/// The W3C header carrying the parent span.
pub use crate::event::TRACEPARENT;
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";

static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Makes `pipeline` record every event span, once per process. Returns
/// `false` when one was already installed (which stays).
pub fn install(pipeline: Arc<Pipeline>) -> bool {
    let installed = PIPELINE.set(pipeline).is_ok();
    if installed {
        ENABLED.store(true, Ordering::Release);
    }
    installed
}

/// Switches span recording off and on again after [`install`], for
/// benchmarks that compare both in one process.
#[doc(hidden)]
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Release);
}

fn pipeline() -> Option<&'static Pipeline> {
    if ENABLED.load(Ordering::Acquire) {
        PIPELINE.get().map(Arc::as_ref)
    } else {
        None
    }
}

/// A position in a trace: what a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
    /// Whether it came from a header (another process, or the event).
    remote: bool,
}

impl StepContext {
    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        TraceId::from(self.trace_id)
    }

    /// The span id.
    pub fn span_id(&self) -> SpanId {
        SpanId::from(self.span_id)
    }

    /// Whether the trace is sampled.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    fn from_header(value: &str) -> Option<StepContext> {
        let p = traceparent::parse(value)?;
        Some(StepContext {
            trace_id: p.trace_id,
            span_id: p.span_id,
            sampled: p.sampled,
            remote: true,
        })
    }

    fn header(&self) -> InlineTraceparent {
        traceparent::format(Parsed {
            trace_id: self.trace_id,
            span_id: self.span_id,
            sampled: self.sampled,
        })
    }
}

/// The parent in an event's headers, if they hold a valid `traceparent`.
pub fn extract(headers: &Headers) -> Option<StepContext> {
    StepContext::from_header(headers.get(TRACEPARENT)?)
}

/// The parent in HTTP request headers, if they hold a valid `traceparent`.
pub fn extract_http(headers: &http::HeaderMap) -> Option<StepContext> {
    StepContext::from_header(headers.get(TRACEPARENT)?.to_str().ok()?)
}

thread_local! {
    /// The step whose [`EventSpan::scope`] is being polled on this thread.
    static CURRENT: Cell<Option<StepContext>> = const { Cell::new(None) };
}

fn current() -> Option<StepContext> {
    CURRENT.get()
}

/// A sampled step's span until it ends.
#[derive(Debug)]
struct Pending {
    pipeline: &'static Pipeline,
    name: &'static str,
    kind: SpanKind,
    parent: Option<StepContext>,
    /// Unix nanoseconds.
    start: u64,
    attributes: Attributes,
}

/// One step of an event's life: an OpenTelemetry span when the trace is
/// sampled (ended when this is dropped, or when its [`EventSpan::scope`]
/// future is), and a `tracing` span for log lines.
#[derive(Debug)]
pub struct EventSpan {
    pending: Option<Pending>,
    /// This step's context, or its parent's when the step made no span
    /// (unsampled, or tracing off).
    cx: Option<StepContext>,
    /// Whether `cx` is a new span of this step (so [`inject`] writes it).
    own: bool,
    /// Whether tracing is on (so [`EventSpan::scope`] sets the context).
    on: bool,
    log: tracing::Span,
}

impl EventSpan {
    /// Starts step `name` under `parent` (else the current step), with `log`
    /// as its log span; `start` back-dates it.
    fn start(
        name: &'static str,
        kind: SpanKind,
        parent: impl FnOnce() -> Option<StepContext>,
        start: Option<u64>,
        log: tracing::Span,
    ) -> EventSpan {
        let Some(pipeline) = pipeline() else {
            // Only log lines want the trace id then.
            let cx = if log.is_disabled() { None } else { parent() };
            return EventSpan::passed(cx, false, log);
        };
        let parent = parent().or_else(current);
        let sampler = pipeline.sampler();
        if let Some(p) = parent
            && !p.sampled
            && sampler.parent_based()
        {
            return EventSpan::passed(parent, true, log);
        }
        let trace_id = parent.map_or_else(pipeline::new_trace_id, |p| p.trace_id);
        let sampled = sampler.sampled(parent.map(|p| p.sampled), trace_id);
        let cx = StepContext {
            trace_id,
            span_id: pipeline::new_span_id(),
            sampled,
            remote: false,
        };
        record_trace_id(&log, Some(cx));
        let pending = sampled.then(|| Pending {
            pipeline,
            name,
            kind,
            parent,
            start: start.unwrap_or_else(|| pipeline.now()),
            attributes: Attributes::default(),
        });
        EventSpan {
            pending,
            cx: Some(cx),
            own: true,
            on: true,
            log,
        }
    }

    /// A step with no span of its own: `cx` is its parent's.
    fn passed(cx: Option<StepContext>, on: bool, log: tracing::Span) -> EventSpan {
        record_trace_id(&log, cx);
        EventSpan {
            pending: None,
            cx,
            own: false,
            on,
            log,
        }
    }

    /// A step that makes no span, only its log span.
    fn log_only(log: tracing::Span) -> EventSpan {
        EventSpan::passed(None, false, log)
    }

    /// Sets the attributes `add` adds, only when the span records.
    fn set_attributes(&mut self, add: impl FnOnce(&mut Attributes)) {
        if let Some(pending) = &mut self.pending {
            add(&mut pending.attributes);
        }
    }

    /// The trace context this step's children see, if any.
    pub fn span_context(&self) -> Option<StepContext> {
        self.cx
    }

    /// Whether this step's span is recorded and exported.
    pub fn is_recording(&self) -> bool {
        self.pending.is_some()
    }

    /// The `tracing` span for log lines of this step.
    pub fn log(&self) -> &tracing::Span {
        &self.log
    }

    /// Runs `future` as this step: the step is the current span (of log
    /// lines, and the parent of steps started inside it) while it is
    /// polled, and the step's span ends when the future is dropped.
    pub fn scope<F: Future + Unpin>(self, future: F) -> Scoped<F> {
        Scoped { span: self, future }
    }

    /// Runs `f` inside this step's log span and ends the step. Steps started
    /// inside `f` do not become its children.
    pub fn in_scope<R>(self, f: impl FnOnce() -> R) -> R {
        self.log.in_scope(f)
    }

    fn finish(&mut self) {
        // Read in place (a `Pending` is a few hundred bytes) and then let go.
        if let (Some(p), Some(cx)) = (&self.pending, self.cx) {
            p.pipeline.record(&SpanRecord {
                name: p.name,
                kind: p.kind.clone(),
                trace_id: cx.trace_id,
                span_id: cx.span_id,
                parent_id: p.parent.map_or(0, |p| p.span_id),
                parent_remote: p.parent.is_some_and(|p| p.remote),
                start: p.start,
                // The clock is re-anchored now and then: never before the start.
                end: p.pipeline.now().max(p.start),
                attributes: &p.attributes,
            });
        }
        self.pending = None;
    }
}

impl Drop for EventSpan {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The future of [`EventSpan::scope`].
#[derive(Debug)]
pub struct Scoped<F> {
    span: EventSpan,
    future: F,
}

impl<F: Future + Unpin> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.span.log.enter();
        match this.span.cx.filter(|_| this.span.on) {
            Some(step) => poll_with(&CURRENT, Some(step), &mut this.future, cx),
            None => Pin::new(&mut this.future).poll(cx),
        }
    }
}

/// Polls `future` with thread-local `cell` set to `value`, and puts the
/// cell's previous value back after (steps' scopes nest).
fn poll_with<T: Copy + 'static, F: Future + Unpin>(
    cell: &'static std::thread::LocalKey<Cell<T>>,
    value: T,
    future: &mut F,
    cx: &mut std::task::Context<'_>,
) -> Poll<F::Output> {
    let previous = cell.replace(value);
    let result = Pin::new(future).poll(cx);
    cell.set(previous);
    result
}

fn record_trace_id(log: &tracing::Span, cx: Option<StepContext>) {
    if let Some(cx) = cx
        && !log.is_disabled()
    {
        log.record("trace_id", tracing::field::display(cx.trace_id()));
    }
}

/// Writes `span`'s context as `traceparent` into `headers` (inline: no
/// allocation). Does nothing when the step made no span (tracing off, or
/// the trace is not sampled and the headers already hold the parent), so
/// headers are never filled with made-up ids.
pub fn inject(span: &EventSpan, headers: &mut Headers) {
    if let (true, Some(cx)) = (span.own, span.cx) {
        headers.set_traceparent(cx.header());
    }
}

/// The start of a `validate` step, taken before parsing; the span itself is
/// made by [`validated`] once the event's own `traceparent` is known.
#[derive(Debug, Clone, Copy)]
pub struct ValidateSpan(Option<u64>);

/// The `validate` span of a publish; its parent is set by [`validated`].
pub fn validate_span() -> ValidateSpan {
    ValidateSpan(pipeline().map(Pipeline::now))
}

/// Ends validation of `event`: the `validate` span joins the event's trace
/// (or the current one), or starts one, and is written into the headers so
/// that `receive` becomes its child.
pub fn validated(span: &ValidateSpan, event: &mut Event) {
    let Some(started) = span.0 else {
        return;
    };
    // No attributes: its child `receive` carries the event's.
    let step = EventSpan::start(
        "validate",
        SpanKind::Server,
        || extract(&event.headers),
        Some(started),
        tracing::Span::none(),
    );
    inject(&step, &mut event.headers);
}

/// The `receive` span of one publish: child of the event's `traceparent`
/// (or of the current span), and written back as the event's new
/// `traceparent` so that deliveries become its children.
pub fn receive_span(event: &mut Event) -> EventSpan {
    let log = tracing::debug_span!(
        "receive",
        topic = %event.topic,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
    );
    let mut span = EventSpan::start(
        "receive",
        SpanKind::Producer,
        || extract(&event.headers),
        None,
        log,
    );
    span.set_attributes(|a| {
        a.text("topic", &event.topic);
        a.text("event_id", &event.id);
    });
    inject(&span, &mut event.headers);
    span
}

/// The `receive` span of a batch; events without a trace of their own join it.
pub fn receive_batch_span(events: &mut [Event]) -> EventSpan {
    let log = tracing::debug_span!(
        "receive",
        batch = events.len(),
        trace_id = tracing::field::Empty
    );
    let mut span = EventSpan::start("receive", SpanKind::Producer, || None, None, log);
    let batch = i64::try_from(events.len()).unwrap_or(i64::MAX);
    span.set_attributes(|a| a.int("batch", batch));
    for event in events {
        if !event.headers.contains_key(TRACEPARENT) {
            inject(&span, &mut event.headers);
        }
    }
    span
}

/// The `route` span (EventRoutes applied), a child of the current span.
pub fn route_span() -> EventSpan {
    EventSpan::start(
        "route",
        SpanKind::Internal,
        || None,
        None,
        tracing::debug_span!("route"),
    )
}

/// The `store` span (the broker's publish), a child of the current span.
pub fn store_span(events: usize) -> EventSpan {
    let log = tracing::debug_span!("store", events);
    let mut span = EventSpan::start("store", SpanKind::Internal, || None, None, log);
    if events > 1 {
        let events = i64::try_from(events).unwrap_or(i64::MAX);
        span.set_attributes(|a| a.int("events", events));
    }
    span
}

/// The `deliver` span of one durable delivery, child of the context in the
/// event's headers; the delivered copy's `traceparent` is replaced by this
/// span so that the consumer's own work joins the trace under it.
pub fn deliver_span(
    subscription: &str,
    delivery_id: &str,
    attempt: u32,
    event: &mut Event,
) -> EventSpan {
    let log = tracing::debug_span!(
        "deliver",
        subscription,
        delivery_id,
        attempt,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
    );
    let mut span = EventSpan::start(
        "deliver",
        SpanKind::Consumer,
        || extract(&event.headers),
        None,
        log,
    );
    span.set_attributes(|a| {
        a.text("subscription", subscription);
        a.text("delivery_id", delivery_id);
        a.int("attempt", i64::from(attempt));
        a.text("event_id", &event.id);
    });
    inject(&span, &mut event.headers);
    span
}

/// The `ack` span, child of the delivery's span. Without a known parent
/// (the delivery was not sampled, or was made before a restart or by
/// another replica) it makes no OpenTelemetry span: a lone `ack` says
/// nothing about an event's path.
pub fn ack_span(subscription: &str, delivery_id: &str, parent: Option<StepContext>) -> EventSpan {
    let log = tracing::debug_span!(
        "ack",
        subscription,
        delivery_id,
        trace_id = tracing::field::Empty
    );
    let Some(parent) = parent else {
        return EventSpan::log_only(log);
    };
    // No attributes: its parent `deliver` names the delivery.
    EventSpan::start("ack", SpanKind::Internal, || Some(parent), None, log)
}

/// The `nack` (retry) span, child of the delivery's span; without a known
/// parent, as [`ack_span`].
pub fn nack_span(
    subscription: &str,
    delivery_id: &str,
    reason: Option<&str>,
    parent: Option<StepContext>,
) -> EventSpan {
    let log = tracing::info_span!(
        "nack",
        subscription,
        delivery_id,
        reason = reason.unwrap_or(""),
        trace_id = tracing::field::Empty
    );
    let Some(parent) = parent else {
        return EventSpan::log_only(log);
    };
    let mut span = EventSpan::start("nack", SpanKind::Internal, || Some(parent), None, log);
    span.set_attributes(|a| {
        a.text("delivery_id", delivery_id);
        a.text("reason", reason.unwrap_or(""));
    });
    span
}

/// The `dead_letter` span of `subscription` under `parent`, ended at once,
/// with the `event dead-lettered` log line carrying its trace id.
fn dead_letter(
    subscription: &str,
    event_id: Option<&str>,
    reason: &str,
    parent: impl FnOnce() -> Option<StepContext>,
) {
    super::metrics::metrics().dead_lettered(subscription);
    let parent = current().or_else(parent);
    let remote = parent.as_ref().map(StepContext::trace_id);
    let mut span = EventSpan::start(
        "dead_letter",
        SpanKind::Internal,
        || parent,
        None,
        tracing::Span::none(),
    );
    span.set_attributes(|a| {
        a.text("subscription", subscription);
        a.text("reason", reason);
        if let Some(id) = event_id {
            a.text("event_id", id);
        }
    });
    let trace_id = span.cx.map(|cx| cx.trace_id()).or(remote);
    tracing::info!(
        subscription,
        event_id,
        reason,
        trace_id = trace_id.map(tracing::field::display),
        "event dead-lettered"
    );
}

/// Records that `event` was moved to `subscription`'s dead-letter queue:
/// counts it and emits a `dead_letter` span — a child of the current span
/// (the `nack` that exhausted the attempts) or, when there is none (an ack
/// timeout), of the event's trace. Brokers call this where they dead-letter.
pub fn dead_lettered(subscription: &str, event: &Event, reason: &str) {
    dead_letter(subscription, Some(&event.id), reason, || {
        extract(&event.headers)
    });
}

/// As [`dead_lettered`], for a broker that dead-letters inside its store
/// without holding the event (Redis): the span is a child of the current
/// span (the `nack`) or, when there is none (an ack timeout), of `trace`,
/// the context the event carried when it was delivered; it carries no
/// event id.
pub fn dead_lettered_entry(subscription: &str, reason: &str, trace: Option<StepContext>) {
    dead_letter(subscription, None, reason, || trace);
}

/// The span of a push sink's HTTP POST of one delivery, child of the
/// delivery's trace; call [`inject_http`] with it to send `traceparent` along.
pub fn push_span(subscription: &str, url: &str, event: &Event) -> EventSpan {
    let log = tracing::info_span!(
        "push",
        subscription,
        url,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
    );
    let mut span = EventSpan::start(
        "push",
        SpanKind::Client,
        || extract(&event.headers),
        None,
        log,
    );
    span.set_attributes(|a| {
        a.text("subscription", subscription);
        a.text("url", url);
        a.text("event_id", &event.id);
    });
    span
}

/// The `request` span of one HTTP request, child of the request's
/// `traceparent` header (else a root); `log` is its log span.
pub fn request_span(
    headers: &http::HeaderMap,
    method: &http::Method,
    path: &str,
    log: tracing::Span,
) -> EventSpan {
    let mut span = EventSpan::start(
        "request",
        SpanKind::Server,
        || extract_http(headers),
        None,
        log,
    );
    span.set_attributes(|a| {
        a.text("http.request.method", method.as_str());
        a.text("url.path", path);
    });
    span
}

/// The `redrive` span of a dead-letter redrive, a child of the current span.
pub fn redrive_span(subscription: &str) -> EventSpan {
    let log = tracing::info_span!("redrive", subscription);
    let mut span = EventSpan::start("redrive", SpanKind::Internal, || None, None, log);
    span.set_attributes(|a| a.text("subscription", subscription));
    span
}

/// Writes `span`'s context as `traceparent`/`tracestate` HTTP headers
/// (replacing any), so that the receiver of an outgoing request (a push
/// sink's POST) continues the trace under `span`. Does nothing when the
/// step made no span.
pub fn inject_http(span: &EventSpan, headers: &mut http::HeaderMap) {
    if let (true, Some(cx)) = (span.own, span.cx)
        && let Ok(value) = http::HeaderValue::from_bytes(&cx.header())
    {
        headers.insert(TRACEPARENT, value);
    }
}

thread_local! {
    /// The delivery context of the [`settle_under`] being polled here.
    static SETTLING: Cell<Option<Option<StepContext>>> = const { Cell::new(None) };
}

/// The delivery's span context as a caller that keeps it (a WebSocket
/// session, from the delivered event's `traceparent`) knows it: that
/// caller consumes with `ConsumeOptions::acks_carry_trace`, and its acks
/// and nacks run inside [`settle_under`] with it. Read only while spans
/// are recorded.
pub fn delivery_context(event: &Event) -> Option<StepContext> {
    pipeline()?;
    extract(&event.headers)
}

/// Runs `future`, an ack or nack of one delivery, with `parent` as the
/// parent of its span (the `deliver` span's context the caller kept, or
/// `None`: then the step makes no span). The instrumented broker then
/// looks nothing up in its in-flight table.
pub fn settle_under<F: Future + Unpin>(parent: Option<StepContext>, future: F) -> Settling<F> {
    Settling { parent, future }
}

/// The future of [`settle_under`].
#[derive(Debug)]
pub struct Settling<F> {
    parent: Option<StepContext>,
    future: F,
}

impl<F: Future + Unpin> Future for Settling<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        poll_with(&SETTLING, Some(this.parent), &mut this.future, cx)
    }
}

/// Inside [`settle_under`]: the delivery context it was given.
pub fn settling() -> Option<Option<StepContext>> {
    SETTLING.get()
}

/// Most deliveries whose span is remembered for their ack or nack; past it
/// a shard of the table is cleared (later acks of those deliveries then
/// make no span).
const MAX_TRACKED_DELIVERIES: usize = 100_000;

/// Independently locked parts of the table, so that workers acking and
/// delivering at once seldom wait on each other.
const SHARDS: usize = 8;

/// A delivery span's trace and span id (its other flags are known: it is
/// sampled, and local).
type Held = (u128, u64);

type Shard = HashMap<u64, Held, foldhash::fast::FixedState>;

/// A shard on cache lines of its own, so that locking one does not take
/// its neighbour's line from the other core.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// Remembers each in-flight sampled delivery's span context so that its ack
/// or nack span becomes a child of its `deliver` span.
///
/// A delivery is keyed by a 64-bit hash of its subscription and delivery
/// id, so that remembering one allocates nothing. Two deliveries in flight
/// at once with the same hash (odds about 1 in 10^9 at the table's full
/// size) would swap their ack spans' parents; nothing else depends on it.
#[derive(Debug)]
pub struct InFlightSpans {
    hasher: foldhash::quality::FixedState,
    shards: [Padded; SHARDS],
    /// Whether any context was ever held: until then (tracing off, or
    /// nothing sampled) an ack neither hashes nor locks. Written once, so
    /// reading it costs no cache traffic between cores.
    used: AtomicBool,
}

impl Default for InFlightSpans {
    fn default() -> InFlightSpans {
        InFlightSpans {
            hasher: foldhash::quality::FixedState::default(),
            shards: std::array::from_fn(|_| Padded::default()),
            used: AtomicBool::new(false),
        }
    }
}

impl InFlightSpans {
    fn key(&self, subscription: &str, delivery_id: &str) -> (u64, &Mutex<Shard>) {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one((subscription, delivery_id));
        (key, &self.shards[(key >> 58) as usize % SHARDS].0)
    }

    /// Remembers `span` for `(subscription, delivery_id)` when it records.
    pub fn insert(&self, subscription: &str, delivery_id: &str, span: &EventSpan) {
        let (true, Some(cx)) = (span.is_recording(), span.cx) else {
            return;
        };
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        let (key, shard) = self.key(subscription, delivery_id);
        let mut shard = shard.lock();
        if shard.len() >= MAX_TRACKED_DELIVERIES / SHARDS {
            shard.clear();
        }
        shard.insert(key, (cx.trace_id, cx.span_id));
    }

    /// Forgets and returns the context of a delivery.
    pub fn take(&self, subscription: &str, delivery_id: &str) -> Option<StepContext> {
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let (key, shard) = self.key(subscription, delivery_id);
        let (trace_id, span_id) = shard.lock().remove(&key)?;
        Some(StepContext {
            trace_id,
            span_id,
            sampled: true,
            remote: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_extracted_and_junk_is_ignored() {
        let mut h = Headers::new();
        h.insert(
            TRACEPARENT.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        );
        let cx = extract(&h).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        h.insert(TRACEPARENT.to_string(), "00-abc-def-01".to_string());
        assert!(extract(&h).is_none());
        assert!(extract(&Headers::new()).is_none());
    }

    #[test]
    fn without_an_exporter_headers_are_left_alone() {
        let mut event = Event::new("a.b", serde_json::Value::Null).unwrap();
        let span = receive_span(&mut event);
        drop(span);
        assert!(event.headers.is_empty());
    }
}
