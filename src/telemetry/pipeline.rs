//! The span pipeline: sampling, a bounded buffer of finished spans, and the
//! thread that exports them.
//!
//! An event's steps finish a span each, so this path is built for that
//! rate: a finished span is a plain [`SpanRecord`] pushed under a short
//! lock into one buffer; the export thread swaps the buffer out and hands
//! the records, in batches, to an [`Export`] (the OTLP exporter encodes
//! them straight into protobuf). When the buffer is full (the exporter is
//! slow or the collector down) spans are dropped and counted
//! ([`Pipeline::dropped`], logged at shutdown, and exported as
//! `event_router_trace_spans_dropped_total`): export never blocks event
//! flow.
//!
//! Configured by the standard variables: `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.

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
/// `OTEL_BSP_MAX_QUEUE_SIZE` default: most spans buffered; more are dropped.
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

/// One finished span, as the event path records it.
#[derive(Debug)]
pub struct SpanRecord {
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
    /// Start time.
    pub start: SystemTime,
    /// End time.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Attributes,
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
    /// Sends one batch of at most `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans;
    /// the error says why they were not delivered.
    ///
    /// # Errors
    /// Why the batch was lost (it is not retried).
    fn export(&mut self, spans: &[SpanRecord]) -> Result<(), String>;
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

/// The buffer shared by the event path and the export thread.
#[derive(Debug)]
struct Buffer {
    spans: Mutex<Vec<SpanRecord>>,
    max_queue: usize,
    max_batch: usize,
    dropped: AtomicU64,
    /// The process-wide metric of dropped spans, fed alongside `dropped`.
    dropped_metric: Counter,
    exported: AtomicU64,
    stop: AtomicBool,
    worker: Thread,
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
            spans: Mutex::new(Vec::with_capacity(config.max_batch)),
            max_queue: config.max_queue,
            max_batch: config.max_batch,
            dropped: AtomicU64::new(0),
            dropped_metric: super::metrics::metrics().trace_spans_dropped(),
            exported: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            worker: handle.thread().clone(),
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

    /// Buffers a finished span, or drops and counts it when the buffer is
    /// full. Never blocks on the exporter.
    pub fn record(&self, span: SpanRecord) {
        let b = &self.buffer;
        let len = {
            let mut spans = b.spans.lock();
            if spans.len() >= b.max_queue {
                drop(spans);
                b.dropped.fetch_add(1, Ordering::Relaxed);
                b.dropped_metric.inc();
                return;
            }
            spans.push(span);
            spans.len()
        };
        if len == b.max_batch {
            b.worker.unpark();
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
    let mut spare = Vec::with_capacity(buffer.max_batch);
    let mut failing = false;
    loop {
        let stopping = buffer.stop.load(Ordering::Acquire);
        if !stopping && buffer.spans.lock().len() < buffer.max_batch {
            std::thread::park_timeout(delay);
        }
        let mut batch = std::mem::replace(&mut *buffer.spans.lock(), spare);
        for chunk in batch.chunks(buffer.max_batch) {
            match exporter.export(chunk) {
                Ok(()) => {
                    buffer
                        .exported
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    failing = false;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "exporting spans failed; dropping them");
                    }
                    failing = true;
                }
            }
        }
        // `batch` keeps its capacity and becomes the next buffer, so that
        // recording (under the lock) never has to grow a fresh one.
        batch.clear();
        spare = batch;
        if stopping {
            return;
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
        fn export(&mut self, _: &[SpanRecord]) -> Result<(), String> {
            Ok(())
        }
    }

    fn span() -> SpanRecord {
        SpanRecord {
            name: "test",
            kind: SpanKind::Internal,
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_id: 0,
            parent_remote: false,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Attributes::default(),
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
        for _ in 0..5 {
            pipeline.record(span());
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
