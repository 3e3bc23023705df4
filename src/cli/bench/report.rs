//! The report of a `bench` run: its fields (also the `--json` document)
//! and how it reads on a terminal.

use hdrhistogram::Histogram;
use serde::Serialize;

/// The report `bench` prints (and emits as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the load went: a `ws://` URL, or `in-process`.
    pub target: String,
    /// Whether the router was started by `bench` itself.
    pub embedded: bool,
    /// `live` or `durable`.
    pub mode: &'static str,
    /// The durable group, if any.
    pub group: Option<String>,
    /// Events to publish.
    pub events: u64,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Events per publish call.
    pub batch: usize,
    /// Open-loop rate in events/s, or `null` for closed loop.
    pub rate: Option<f64>,
    /// Approximate payload size in bytes.
    pub payload_bytes: usize,
    /// Events the router confirmed.
    pub published: u64,
    /// Deliveries expected: events × subscribers (live) or events (durable).
    pub expected: u64,
    /// Distinct deliveries that arrived (each event counted once per live
    /// subscriber, once per durable group).
    pub delivered: u64,
    /// Every delivery that arrived, repeats included.
    pub received: u64,
    /// `received - delivered`.
    pub duplicates: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Deliveries the router or the client dropped because a subscriber
    /// fell behind (included in `lost`).
    pub dropped: u64,
    /// Failed publish calls and subscriptions ended by an error.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Events of other runs seen on the topic (ignored).
    pub foreign: u64,
    /// Whether --timeout passed before everything arrived.
    pub timed_out: bool,
    /// Seconds from the first scheduled send to the last publish confirmation.
    pub publish_seconds: f64,
    /// Seconds from the first scheduled send to the last delivery.
    pub elapsed_seconds: f64,
    /// Confirmed events per second.
    pub publish_rate: f64,
    /// Distinct deliveries per second.
    pub delivery_rate: f64,
    /// End-to-end latency of the distinct deliveries, in milliseconds.
    pub latency_ms: Latency,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Deliveries measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    pub(super) fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                count: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The human-readable report.
pub(super) fn render(r: &Report) -> String {
    let load = match r.rate {
        Some(rate) => format!("open loop at {rate:.0} events/s"),
        None => "closed loop".to_string(),
    };
    let mode = match &r.group {
        Some(group) => format!("durable group {group}"),
        None => "live".to_string(),
    };
    let l = &r.latency_ms;
    [
        format!(
            "event-router bench: {} events, {} publisher(s) -> {} subscriber(s) ({mode}), batch {}, {load}, payload ~{} B",
            r.events, r.publishers, r.subscribers, r.batch, r.payload_bytes
        ),
        format!(
            "target:     {}{}",
            r.target,
            if r.embedded { " (embedded)" } else { "" }
        ),
        format!(
            "published:  {} in {:.3} s = {:.0} events/s",
            r.published, r.publish_seconds, r.publish_rate
        ),
        format!(
            "delivered:  {}/{} in {:.3} s = {:.0} events/s",
            r.delivered, r.expected, r.elapsed_seconds, r.delivery_rate
        ),
        format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n={})",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean, l.count
        ),
        format!(
            "problems:   lost {}  duplicates {}  dropped {}  errors {}{}",
            r.lost,
            r.duplicates,
            r.dropped,
            r.errors,
            if r.timed_out { "  (timed out)" } else { "" }
        ),
    ]
    .join("\n")
}
