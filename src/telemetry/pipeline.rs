//! The span pipeline: sampling, a bounded buffer of finished spans, and the
//! thread that exports them.
//!
//! An event's steps finish a span each, so this path is built for that
//! rate: a finished span ([`SpanRecord`], timed by the [`SpanClock`]) is
//! encoded at once as OTLP protobuf into a buffer of the thread that ended
//! it, under that buffer's own lock, so recording threads never wait on
//! each other and nothing is copied twice. The export thread takes the
//! threads' buffers (when one holds a batch, or every
//! `OTEL_BSP_SCHEDULE_DELAY`) and hands the bytes, in batches, to an
//! [`Export`] (the OTLP exporter wraps them in a request and sends it).
//! When a thread's buffer is full (the exporter is slow or the collector
//! down) its spans are dropped and counted ([`Pipeline::dropped`], logged
//! at shutdown, and exported as `event_router_trace_spans_dropped_total`):
//! export never blocks event flow.
//!
//! Configured by the standard variables: `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE` (here: per recording thread),
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanKind;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use rand::{Rng, SeedableRng};

/// `OTEL_BSP_SCHEDULE_DELAY` default: longest wait before buffered spans
/// are exported.
pub const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_millis(5000);
/// `OTEL_BSP_MAX_QUEUE_SIZE` default: most spans buffered by one recording
/// thread; more are dropped.
pub const DEFAULT_MAX_QUEUE: usize = 2048;
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` default: most spans in one export call,
/// and the buffer length that wakes the export thread early.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this fraction of trace ids (0.0–1.0).
    Ratio(f64),
    /// `parentbased_*`: a span with a parent follows the parent's sampled
    /// flag; a root span asks the inner sampler.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name;
    /// `parentbased_always_on` when unset or unknown.
    pub fn from_env() -> Sampler {
        let name = super::env("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let ratio = || {
            super::env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(1.0)
        };
        let parent = |inner| Sampler::ParentBased(Box::new(inner));
        match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio()),
            "parentbased_always_off" => parent(Sampler::AlwaysOff),
            "parentbased_traceidratio" => parent(Sampler::Ratio(ratio())),
            _ => parent(Sampler::AlwaysOn),
        }
    }

    /// Whether a span of `trace_id` is sampled; `parent_sampled` is the
    /// parent's flag when the span has a parent.
    pub fn sampled(&self, parent_sampled: Option<bool>, trace_id: u128) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            // As the OpenTelemetry SDK: the trace id's low 63 bits against
            // the ratio, so every replica decides the same for a trace.
            Sampler::Ratio(ratio) => {
                let bound = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
                ((trace_id as u64) >> 1) < bound
            }
            Sampler::ParentBased(root) => match parent_sampled {
                Some(sampled) => sampled,
                None => root.sampled(None, trace_id),
            },
        }
    }

    /// Whether a child's decision is its parent's flag.
    pub fn parent_based(&self) -> bool {
        matches!(self, Sampler::ParentBased(_))
    }
}

thread_local! {
    static RNG: RefCell<rand::rngs::SmallRng> = RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
}

/// A random, non-zero span id (a thread-local generator: no syscall, no lock).
pub fn new_span_id() -> u64 {
    RNG.with(|r| r.borrow_mut().random::<u64>()).max(1)
}

/// A random, non-zero trace id.
pub fn new_trace_id() -> u128 {
    RNG.with(|r| r.borrow_mut().random::<u128>()).max(1)
}

/// Nanoseconds since the Unix epoch of `time` (0 before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How often the export thread re-anchors the span clock to the system
/// clock.
const ANCHOR_EVERY: Duration = Duration::from_secs(1);

/// The clock of span timestamps: Unix nanoseconds read from the CPU's
/// time-stamp counter (`quanta`; the monotonic clock where there is no
/// usable counter), a few nanoseconds a reading where the system clock
/// costs tens in a virtual machine, and an event's steps read it six times.
///
/// The counter's nanoseconds are tied to the system clock by an offset the
/// export thread renews every [`ANCHOR_EVERY`], so span times follow the
/// system clock (NTP steps and slews included) within a second's drift of
/// the counter's calibration, a few microseconds at most.
#[derive(Debug)]
pub struct SpanClock {
    clock: quanta::Clock,
    /// The counter reading nanoseconds are counted from.
    origin: u64,
    /// Unix nanoseconds at the origin, as of the last anchoring.
    offset: AtomicU64,
}

impl SpanClock {
    /// A clock anchored to the system clock now (calibrating the counter
    /// first, once per process: up to 200 ms).
    pub fn new() -> SpanClock {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        let span_clock = SpanClock {
            clock,
            origin,
            offset: AtomicU64::new(0),
        };
        span_clock.anchor();
        span_clock
    }

    /// Now, in nanoseconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        self.offset
            .load(Ordering::Relaxed)
            .wrapping_add(self.since_origin())
    }

    fn since_origin(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }

    /// Ties the counter to the system clock as it reads now.
    pub fn anchor(&self) {
        let system = unix_nanos(SystemTime::now());
        self.offset
            .store(system.wrapping_sub(self.since_origin()), Ordering::Relaxed);
    }
}

impl Default for SpanClock {
    fn default() -> SpanClock {
        SpanClock::new()
    }
}

/// One finished span, as the event path records it.
#[derive(Debug)]
pub struct SpanRecord<'a> {
    /// Span name.
    pub name: &'static str,
    /// Span kind.
    pub kind: SpanKind,
    /// Trace id.
    pub trace_id: u128,
    /// This span's id.
    pub span_id: u64,
    /// The parent's id, 0 for a root.
    pub parent_id: u64,
    /// Whether the parent came from another process (a header).
    pub parent_remote: bool,
    /// Start time, in nanoseconds since the Unix epoch.
    pub start: u64,
    /// End time, in nanoseconds since the Unix epoch.
    pub end: u64,
    /// Attributes.
    pub attributes: &'a Attributes,
}

/// Most attributes a span records (an event step records at most four).
pub const MAX_ATTRIBUTES: usize = 4;

/// Longest string attribute kept inline; longer ones are allocated.
const INLINE_TEXT: usize = 46;
#[cfg(test)]
pub(crate) const INLINE_TEXT_FOR_TESTS: usize = INLINE_TEXT;

/// A string attribute value, inline when short (ids and names nearly
/// always are), so that recording a span allocates nothing that the export
/// thread then has to free.
#[derive(Clone)]
pub struct Text(TextRepr);

#[derive(Clone)]
enum TextRepr {
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    Heap(Box<str>),
}

impl Text {
    /// A copy of `text`.
    pub fn new(text: &str) -> Text {
        if text.len() > INLINE_TEXT {
            return Text(TextRepr::Heap(text.into()));
        }
        let mut bytes = [0; INLINE_TEXT];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Text(TextRepr::Inline {
            len: text.len() as u8,
            bytes,
        })
    }

    /// The text's UTF-8 bytes (what the encoder copies, without checking
    /// them again).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            TextRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            TextRepr::Heap(text) => text.as_bytes(),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // A copy of a whole `&str`: always UTF-8.
            TextRepr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            TextRepr::Heap(text) => text,
        }
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A span attribute's value.
#[derive(Debug, Clone)]
pub enum AttributeValue {
    /// An integer.
    Int(i64),
    /// A string.
    Text(Text),
}

/// A span's attributes: at most [`MAX_ATTRIBUTES`], held in place.
#[derive(Debug, Clone)]
pub struct Attributes {
    len: usize,
    items: [(&'static str, AttributeValue); MAX_ATTRIBUTES],
}

impl Default for Attributes {
    fn default() -> Attributes {
        Attributes {
            len: 0,
            items: std::array::from_fn(|_| ("", AttributeValue::Int(0))),
        }
    }
}

impl Attributes {
    /// Adds attribute `key`; past [`MAX_ATTRIBUTES`] it is not kept.
    pub fn push(&mut self, key: &'static str, value: AttributeValue) {
        debug_assert!(self.len < MAX_ATTRIBUTES, "too many attributes: {key}");
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, value);
            self.len += 1;
        }
    }

    /// Adds string attribute `key`.
    pub fn text(&mut self, key: &'static str, value: &str) {
        self.push(key, AttributeValue::Text(Text::new(value)));
    }

    /// Adds integer attribute `key`.
    pub fn int(&mut self, key: &'static str, value: i64) {
        self.push(key, AttributeValue::Int(value));
    }

    /// The attributes, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &AttributeValue)> {
        self.items[..self.len].iter().map(|(k, v)| (*k, v))
    }
}

/// Where the export thread sends finished spans.
pub trait Export: Send + 'static {
    /// Sends one batch of `count` spans (at most
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), given as the `ScopeSpans.spans`
    /// fields [`super::otlp::encode_span`] wrote, in pieces to be sent one
    /// after the other; the error says why they were not delivered.
    ///
    /// # Errors
    /// Why the batch was lost (it is not retried).
    fn export(&mut self, spans: &[&[u8]], count: usize) -> Result<(), String>;
}

/// How the pipeline buffers and exports.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Which traces are recorded.
    pub sampler: Sampler,
    /// Longest wait before buffered spans are exported.
    pub schedule_delay: Duration,
    /// Most spans buffered; more are dropped (and counted).
    pub max_queue: usize,
    /// Most spans per export call.
    pub max_batch: usize,
}

impl PipelineConfig {
    /// The configuration the standard `OTEL_*` variables describe.
    pub fn from_env() -> PipelineConfig {
        let number = |name| super::env(name).and_then(|v| v.trim().parse::<u64>().ok());
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE")
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_QUEUE);
        PipelineConfig {
            sampler: Sampler::from_env(),
            schedule_delay: number("OTEL_BSP_SCHEDULE_DELAY")
                .map_or(DEFAULT_SCHEDULE_DELAY, Duration::from_millis),
            max_queue,
            max_batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MAX_BATCH)
                .min(max_queue),
        }
    }
}

/// The spans one thread has recorded and the export thread not yet taken.
#[derive(Debug, Default)]
struct Chunk {
    /// Encoded `ScopeSpans.spans` fields.
    bytes: Vec<u8>,
    spans: usize,
}

/// A recording thread's buffer: locked by that thread for each span and by
/// the export thread when it takes the spans, so recording threads never
/// wait on each other.
#[derive(Debug, Default)]
struct Local {
    chunk: Mutex<Chunk>,
}

thread_local! {
    /// This thread's buffer, and the id of the pipeline it belongs to.
    static LOCAL: RefCell<Option<(u64, Arc<Local>)>> = const { RefCell::new(None) };
}

/// Ids of pipelines, so that a thread's buffer is never fed to another.
static PIPELINE_IDS: AtomicU64 = AtomicU64::new(1);

/// What the event path and the export thread share.
#[derive(Debug)]
struct Buffer {
    id: u64,
    /// Every recording thread's buffer (dropped by the export thread once
    /// its thread has ended and it is empty).
    locals: Mutex<Vec<Arc<Local>>>,
    max_queue: usize,
    max_batch: usize,
    /// Set when a thread's buffer reaches `max_batch` spans.
    ready: AtomicBool,
    dropped: AtomicU64,
    /// The process-wide metric of dropped spans, fed alongside `dropped`.
    dropped_metric: Counter,
    exported: AtomicU64,
    stop: AtomicBool,
    worker: Thread,
    clock: SpanClock,
}

/// A running pipeline: [`Pipeline::record`] from the event path, an export
/// thread behind. Stop it with [`Pipeline::shutdown`] to export what is
/// buffered.
#[derive(Debug)]
pub struct Pipeline {
    sampler: Sampler,
    buffer: Arc<Buffer>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the export thread over `exporter`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start<E: Export>(mut exporter: E, config: PipelineConfig) -> std::io::Result<Pipeline> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Buffer>>();
        let delay = config.schedule_delay;
        let handle = std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || {
                if let Ok(buffer) = rx.recv() {
                    export_loop(&mut exporter, &buffer, delay);
                }
            })?;
        let buffer = Arc::new(Buffer {
            id: PIPELINE_IDS.fetch_add(1, Ordering::Relaxed),
            locals: Mutex::new(Vec::new()),
            max_queue: config.max_queue,
            max_batch: config.max_batch,
            ready: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            dropped_metric: super::metrics::metrics().trace_spans_dropped(),
            exported: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            worker: handle.thread().clone(),
            clock: SpanClock::new(),
        });
        // The thread was just spawned and waits for this.
        let _ = tx.send(buffer.clone());
        Ok(Pipeline {
            sampler: config.sampler,
            buffer,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// The sampler spans are recorded under.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Now, in the Unix nanoseconds of span timestamps.
    pub fn now(&self) -> u64 {
        self.buffer.clock.now()
    }

    /// Encodes a finished span into this thread's buffer, or drops and
    /// counts it when that buffer is full (`OTEL_BSP_MAX_QUEUE_SIZE`
    /// spans). Never blocks on the exporter.
    pub fn record(&self, span: &SpanRecord<'_>) {
        let b = &self.buffer;
        // `try_with`: a span ending while this thread's locals are torn
        // down (a task dropped at thread exit) is dropped, not a panic.
        let held = LOCAL.try_with(|slot| {
            let mut slot = slot.borrow_mut();
            let local = match &*slot {
                Some((id, local)) if *id == b.id => local,
                _ => {
                    let local = Arc::new(Local::default());
                    b.locals.lock().push(local.clone());
                    &slot.insert((b.id, local)).1
                }
            };
            let mut chunk = local.chunk.lock();
            if chunk.spans >= b.max_queue {
                return None;
            }
            super::otlp::encode_span(&mut chunk.bytes, span);
            chunk.spans += 1;
            Some(chunk.spans)
        });
        let held = held.ok().flatten();
        match held {
            None => {
                b.dropped.fetch_add(1, Ordering::Relaxed);
                b.dropped_metric.inc();
            }
            Some(n) if n == b.max_batch => {
                b.ready.store(true, Ordering::Release);
                b.worker.unpark();
            }
            Some(_) => {}
        }
    }

    /// Spans dropped because the buffer was full (by this pipeline; the
    /// metric `event_router_trace_spans_dropped_total` counts those of
    /// every pipeline in the process).
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped.load(Ordering::Relaxed)
    }

    /// Spans handed to the exporter.
    pub fn exported(&self) -> u64 {
        self.buffer.exported.load(Ordering::Relaxed)
    }

    /// Exports what is buffered and stops the export thread; blocks until
    /// it is done (each export call is bounded by the exporter's timeout).
    pub fn shutdown(&self) {
        self.buffer.stop.store(true, Ordering::Release);
        self.buffer.worker.unpark();
        if let Some(handle) = self.handle.lock().take() {
            let _ = handle.join();
        }
    }
}

fn export_loop<E: Export>(exporter: &mut E, buffer: &Buffer, delay: Duration) {
    // Emptied chunks, swapped into the threads' buffers so that recording
    // never grows a fresh one.
    let mut spare: Vec<Chunk> = Vec::new();
    let mut taken: Vec<Chunk> = Vec::new();
    let mut failing = false;
    let mut anchored = std::time::Instant::now();
    let mut swept = std::time::Instant::now();
    loop {
        if anchored.elapsed() >= ANCHOR_EVERY {
            buffer.clock.anchor();
            anchored = std::time::Instant::now();
        }
        let stopping = buffer.stop.load(Ordering::Acquire);
        if !stopping && !buffer.ready.swap(false, Ordering::AcqRel) {
            std::thread::park_timeout(delay.saturating_sub(swept.elapsed()));
            buffer.ready.store(false, Ordering::Release);
        }
        // Woken because a thread's buffer holds a batch: only buffers that
        // do are taken, so that requests carry whole batches; every
        // schedule delay (and at shutdown) every buffer is.
        let least = if stopping || swept.elapsed() >= delay {
            swept = std::time::Instant::now();
            1
        } else {
            buffer.max_batch
        };
        {
            // Taken under the list's lock, exported after it: a thread
            // recording its first span never waits on a collector.
            let mut locals = buffer.locals.lock();
            for local in locals.iter() {
                let mut chunk = local.chunk.lock();
                if chunk.spans >= least {
                    let empty = spare.pop().unwrap_or_default();
                    taken.push(std::mem::replace(&mut *chunk, empty));
                }
            }
            // A buffer only the list holds belongs to an ended thread.
            locals.retain(|local| Arc::strong_count(local) > 1 || local.chunk.lock().spans > 0);
        }
        // Requests of `max_batch` spans, across threads' buffers: as few
        // as the spans need.
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut count = 0;
        for chunk in &taken {
            let mut rest = &chunk.bytes[..];
            let mut left = chunk.spans;
            while left > 0 {
                let n = left.min(buffer.max_batch - count);
                let end = if n == left {
                    rest.len()
                } else {
                    super::otlp::spans_end(rest, n)
                };
                pieces.push(&rest[..end]);
                count += n;
                rest = &rest[end..];
                left -= n;
                if count == buffer.max_batch {
                    send(exporter, buffer, &pieces, count, &mut failing);
                    pieces.clear();
                    count = 0;
                }
            }
        }
        if count > 0 {
            send(exporter, buffer, &pieces, count, &mut failing);
        }
        drop(pieces);
        for mut chunk in taken.drain(..) {
            chunk.bytes.clear();
            chunk.spans = 0;
            spare.push(chunk);
        }
        if stopping {
            return;
        }
    }
}

/// Hands one batch to the exporter; logs the first of a run of failures.
fn send<E: Export>(
    exporter: &mut E,
    buffer: &Buffer,
    pieces: &[&[u8]],
    count: usize,
    failing: &mut bool,
) {
    match exporter.export(pieces, count) {
        Ok(()) => {
            buffer.exported.fetch_add(count as u64, Ordering::Relaxed);
            *failing = false;
        }
        Err(error) => {
            if !*failing {
                tracing::warn!(%error, "exporting spans failed; dropping them");
            }
            *failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts every export.
    #[derive(Debug)]
    struct Accept;

    impl Export for Accept {
        fn export(&mut self, _: &[&[u8]], _: usize) -> Result<(), String> {
            Ok(())
        }
    }

    /// One exported batch: its bytes and span count.
    type Batch = (Vec<u8>, usize);

    /// Keeps every batch.
    #[derive(Debug, Clone, Default)]
    struct Keep(Arc<Mutex<Vec<Batch>>>);

    impl Export for Keep {
        fn export(&mut self, spans: &[&[u8]], count: usize) -> Result<(), String> {
            self.0.lock().push((spans.concat(), count));
            Ok(())
        }
    }

    fn span(attributes: &Attributes) -> SpanRecord<'_> {
        SpanRecord {
            name: "test",
            kind: SpanKind::Internal,
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_id: 0,
            parent_remote: false,
            start: unix_nanos(SystemTime::now()),
            end: unix_nanos(SystemTime::now()),
            attributes,
        }
    }

    #[test]
    fn spans_past_a_full_buffer_are_dropped_and_counted_in_the_metric() {
        let metric = super::super::metrics::metrics().trace_spans_dropped();
        let before = metric.get();
        // The export thread is neither woken (the batch size is never
        // reached) nor scheduled (a minute away) while spans are recorded.
        let config = PipelineConfig {
            sampler: Sampler::AlwaysOn,
            schedule_delay: Duration::from_secs(60),
            max_queue: 2,
            max_batch: 3,
        };
        let pipeline = Pipeline::start(Accept, config).unwrap();
        let none = Attributes::default();
        for _ in 0..5 {
            pipeline.record(&span(&none));
        }
        assert_eq!(pipeline.dropped(), 3);
        // Other tests' pipelines may drop spans too: the metric is global.
        assert!(metric.get() >= before + 3, "{} -> {}", before, metric.get());
        let text = super::super::metrics::metrics().encode_text();
        assert!(
            text.contains("\nevent_router_trace_spans_dropped_total "),
            "{text}"
        );
        pipeline.shutdown();
        assert_eq!((pipeline.exported(), pipeline.dropped()), (2, 3));
    }

    #[test]
    fn spans_of_many_threads_are_exported_in_batches_that_decode() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;

        let kept = Keep::default();
        let config = PipelineConfig {
            sampler: Sampler::AlwaysOn,
            schedule_delay: Duration::from_millis(20),
            max_queue: 1000,
            max_batch: 64,
        };
        let pipeline = Arc::new(Pipeline::start(kept.clone(), config).unwrap());
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let pipeline = pipeline.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut attributes = Attributes::default();
                        attributes.int("thread", t);
                        attributes.int("i", i);
                        // Past two length bytes' worth: a long attribute.
                        if i % 10 == 0 {
                            attributes.text("long", &"x".repeat(20_000));
                        }
                        pipeline.record(&span(&attributes));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        pipeline.shutdown();
        assert_eq!((pipeline.exported(), pipeline.dropped()), (300, 0));
        // Ended threads' buffers are let go once emptied.
        assert!(pipeline.buffer.locals.lock().is_empty());
        let encoder = super::super::otlp::Encoder::new(
            &opentelemetry_sdk::Resource::builder_empty().build(),
            "event-router",
        );
        let mut seen = std::collections::BTreeSet::new();
        for (bytes, count) in kept.0.lock().iter() {
            assert!((1..=64).contains(count), "batch of {count}");
            let mut request = Vec::new();
            encoder.request(&[bytes], &mut request);
            let decoded = ExportTraceServiceRequest::decode(&request[..]).unwrap();
            let spans = &decoded.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), *count);
            for s in spans {
                let int = |k: &str| {
                    s.attributes.iter().find(|a| a.key == k).and_then(|a| {
                        match a.value.as_ref()?.value.as_ref()? {
                            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(
                                i,
                            ) => Some(*i),
                            _ => None,
                        }
                    })
                };
                assert!(seen.insert((int("thread").unwrap(), int("i").unwrap())));
            }
        }
        assert_eq!(seen.len(), 300);
    }

    #[test]
    fn the_span_clock_reads_the_system_clock_and_never_goes_back() {
        let clock = SpanClock::new();
        let mut last = clock.now();
        for _ in 0..1000 {
            let now = clock.now();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
        clock.anchor();
        let system = unix_nanos(SystemTime::now());
        let ours = clock.now();
        assert!(ours.abs_diff(system) < 50_000_000, "{ours} vs {system}");
    }

    #[test]
    fn ratio_sampling_is_decided_by_the_trace_id_and_parent_based_follows_the_parent() {
        let half = Sampler::Ratio(0.5);
        assert!(half.sampled(None, 0));
        assert!(!half.sampled(None, u128::from(u64::MAX)));
        assert!(!Sampler::Ratio(0.0).sampled(None, 2));
        assert!(Sampler::Ratio(1.0).sampled(None, u128::from(u64::MAX)));
        let parent = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert!(parent.sampled(Some(true), 7));
        assert!(!parent.sampled(None, 7));
        assert!(Sampler::AlwaysOn.sampled(Some(false), 7));
    }
}
