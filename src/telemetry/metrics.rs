//! Prometheus metrics: one process-wide [`Metrics`] registered under the
//! `event_router_` prefix, served at `GET /metrics`.
//!
//! Counters and histograms are updated where things happen (the router, the
//! instrumented broker, the memory broker's dead-letter and expiry paths);
//! gauges that describe state (pending, lag, dead-letter depth, connections,
//! Redis round trip, partition leases) are read from the broker when
//! `/metrics` is scraped.
//!
//! Labels are bounded: the only per-entity label is `subscription`, and after
//! [`MAX_SUBSCRIPTION_LABELS`] distinct names every further subscription is
//! counted under `other`. Topics and event ids never become labels.
//!
//! The answer is the classic Prometheus text format 0.0.4 (what
//! `promtool check metrics` lints) unless the scraper asks for OpenMetrics in
//! its `Accept` header.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::broker::{BrokerStats, SubscriptionInfo};

/// Most distinct `subscription` label values; later subscriptions are
/// counted under [`OTHER`].
pub const MAX_SUBSCRIPTION_LABELS: usize = 200;
/// The label value that overflowing subscriptions share.
pub const OTHER: &str = "other";
/// Content type of the classic text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of per-subscription series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The durable subscription, or `other` past the label cap.
    pub subscription: String,
}

/// Labels of `dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `route` (an EventRoute `drop` action), `overflow` (a live
    /// subscriber's queue was full, by count or bytes) or `history_bytes`
    /// (history evicted early to stay within its byte limit).
    pub reason: &'static str,
}

/// Labels of `connections`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `websocket` or `sse`.
    pub transport: &'static str,
}

type PerSubscription<M> = Family<SubscriptionLabels, M>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the router exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    published: Counter,
    delivered: PerSubscription<Counter>,
    acked: PerSubscription<Counter>,
    nacked: PerSubscription<Counter>,
    retried: PerSubscription<Counter>,
    dead_lettered: PerSubscription<Counter>,
    expired: PerSubscription<Counter>,
    dropped: Family<ReasonLabels, Counter>,
    publish_seconds: Histogram,
    deliver_seconds: PerSubscription<Histogram>,
    connections: Family<TransportLabels, Gauge>,
    live_subscriptions: Gauge,
    subscriptions: Gauge,
    pending: PerSubscription<Gauge>,
    in_flight: PerSubscription<Gauge>,
    lag_seconds: PerSubscription<FloatGauge>,
    dead_letters: PerSubscription<Gauge>,
    redis_round_trip_seconds: FloatGauge,
    replicas: Gauge,
    trace_spans_dropped: Counter,
    sink_circuit_state: PerSubscription<Gauge>,
    sink_circuit_opened: PerSubscription<Counter>,
    labels: Mutex<HashSet<String>>,
    last_delivery: Mutex<HashMap<String, Instant>>,
    pending_since: Mutex<HashMap<String, Instant>>,
    overflow_seen: Mutex<u64>,
    history_bytes_seen: Mutex<u64>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Names (without prefix and suffixes) of every exported metric, for the
/// dashboard check and the docs.
pub const METRIC_NAMES: &[&str] = &[
    "event_router_published_total",
    "event_router_delivered_total",
    "event_router_acked_total",
    "event_router_nacked_total",
    "event_router_retried_total",
    "event_router_dead_lettered_total",
    "event_router_expired_total",
    "event_router_dropped_total",
    "event_router_publish_duration_seconds",
    "event_router_publish_to_deliver_seconds",
    "event_router_connections",
    "event_router_live_subscriptions",
    "event_router_subscriptions",
    "event_router_subscription_pending",
    "event_router_subscription_in_flight",
    "event_router_subscription_lag_seconds",
    "event_router_dead_letter_queue_depth",
    "event_router_redis_round_trip_seconds",
    "event_router_replicas",
    "event_router_trace_spans_dropped_total",
    "event_router_sink_circuit_state",
    "event_router_sink_circuit_opened_total",
];

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("event_router");
        let m = Metrics {
            registry: Registry::default(),
            published: Counter::default(),
            delivered: Family::default(),
            acked: Family::default(),
            nacked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            expired: Family::default(),
            dropped: Family::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            deliver_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 20))
            }),
            connections: Family::default(),
            live_subscriptions: Gauge::default(),
            subscriptions: Gauge::default(),
            pending: Family::default(),
            in_flight: Family::default(),
            lag_seconds: Family::default(),
            dead_letters: Family::default(),
            redis_round_trip_seconds: FloatGauge::default(),
            replicas: Gauge::default(),
            trace_spans_dropped: Counter::default(),
            sink_circuit_state: Family::default(),
            sink_circuit_opened: Family::default(),
            labels: Mutex::default(),
            last_delivery: Mutex::default(),
            pending_since: Mutex::default(),
            overflow_seen: Mutex::default(),
            history_bytes_seen: Mutex::default(),
        };
        let r = &mut registry;
        r.register(
            "published",
            "Events stored by publish (route copies included)",
            m.published.clone(),
        );
        r.register(
            "delivered",
            "Durable deliveries handed to consumers, redeliveries included",
            Declared(m.delivered.clone()),
        );
        r.register(
            "acked",
            "Durable deliveries acked",
            Declared(m.acked.clone()),
        );
        r.register(
            "nacked",
            "Durable deliveries nacked",
            Declared(m.nacked.clone()),
        );
        r.register(
            "retried",
            "Redeliveries (after a nack or an ack timeout)",
            Declared(m.retried.clone()),
        );
        r.register(
            "dead_lettered",
            "Events moved to a dead-letter queue after their last attempt",
            Declared(m.dead_lettered.clone()),
        );
        r.register(
            "expired",
            "Events discarded because their TTL passed before delivery",
            Declared(m.expired.clone()),
        );
        r.register(
            "dropped",
            "Events dropped by an EventRoute (reason=route), a full live queue (reason=overflow) or history's byte limit (reason=history_bytes)",
            Declared(m.dropped.clone()),
        );
        r.register_with_unit(
            "publish_duration",
            "Time the broker took to store a publish (one event or a batch)",
            Unit::Seconds,
            m.publish_seconds.clone(),
        );
        r.register_with_unit(
            "publish_to_deliver",
            "Time from an event's time to its durable delivery",
            Unit::Seconds,
            Declared(m.deliver_seconds.clone()),
        );
        r.register(
            "connections",
            "Open client connections by transport",
            Declared(m.connections.clone()),
        );
        r.register(
            "live_subscriptions",
            "Open live (at-most-once) subscriptions",
            m.live_subscriptions.clone(),
        );
        r.register(
            "subscriptions",
            "Durable subscriptions",
            m.subscriptions.clone(),
        );
        r.register(
            "subscription_pending",
            "Events waiting for delivery, retries included",
            Declared(m.pending.clone()),
        );
        r.register(
            "subscription_in_flight",
            "Deliveries handed out and not yet acked",
            Declared(m.in_flight.clone()),
        );
        r.register_with_unit(
            "subscription_lag",
            "How long a subscription with pending events has gone without a delivery; 0 when nothing is pending",
            Unit::Seconds,
            Declared(m.lag_seconds.clone()),
        );
        r.register(
            "dead_letter_queue_depth",
            "Entries in a subscription's dead-letter queue",
            Declared(m.dead_letters.clone()),
        );
        r.register_with_unit(
            "redis_round_trip",
            "Last measured round trip to Redis (0 on the memory broker)",
            Unit::Seconds,
            m.redis_round_trip_seconds.clone(),
        );
        r.register(
            "replicas",
            "Router replicas sharing this Redis whose heartbeat is recent (Redis only)",
            m.replicas.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Finished spans dropped because the span export buffer was full (the exporter or collector is too slow)",
            m.trace_spans_dropped.clone(),
        );
        r.register(
            "sink_circuit_state",
            "Circuit breaker of a push sink: 0 closed, 1 open (deliveries wait), 2 half-open (probing)",
            Declared(m.sink_circuit_state.clone()),
        );
        r.register(
            "sink_circuit_opened",
            "Times a push sink's circuit breaker opened",
            Declared(m.sink_circuit_opened.clone()),
        );
        Metrics { registry, ..m }
    }

    /// The label for `subscription`, folding names past the cap into `other`.
    pub fn subscription(&self, subscription: &str) -> SubscriptionLabels {
        let mut labels = self.labels.lock();
        let subscription = if labels.contains(subscription) {
            subscription.to_string()
        } else if labels.len() < MAX_SUBSCRIPTION_LABELS {
            labels.insert(subscription.to_string());
            subscription.to_string()
        } else {
            OTHER.to_string()
        };
        SubscriptionLabels { subscription }
    }

    /// Records a push sink's breaker state (and that it just opened).
    pub fn sink_circuit(&self, subscription: &str, state: i64, opened: bool) {
        let labels = self.subscription(subscription);
        self.sink_circuit_state.get_or_create(&labels).set(state);
        let opened_total = self.sink_circuit_opened.get_or_create(&labels);
        if opened {
            opened_total.inc();
        }
    }

    /// Counts `n` stored events.
    pub fn published(&self, n: u64) {
        self.published.inc_by(n);
    }

    /// Records the duration of one publish call.
    pub fn publish_duration(&self, started: Instant) {
        self.publish_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a durable delivery; `attempt > 1` is also a retry.
    /// `since_event` is the time from the event's `time` to now.
    pub fn delivered(&self, subscription: &str, attempt: u32, since_event: Option<f64>) {
        let label = self.subscription(subscription);
        self.delivered.get_or_create(&label).inc();
        if attempt > 1 {
            self.retried.get_or_create(&label).inc();
        }
        if let Some(seconds) = since_event {
            self.deliver_seconds.get_or_create(&label).observe(seconds);
        }
        self.last_delivery
            .lock()
            .insert(label.subscription, Instant::now());
    }

    /// Counts an ack.
    pub fn acked(&self, subscription: &str) {
        self.acked
            .get_or_create(&self.subscription(subscription))
            .inc();
    }

    /// Counts a nack.
    pub fn nacked(&self, subscription: &str) {
        self.nacked
            .get_or_create(&self.subscription(subscription))
            .inc();
    }

    /// Counts a dead-lettered event.
    pub fn dead_lettered(&self, subscription: &str) {
        self.dead_lettered
            .get_or_create(&self.subscription(subscription))
            .inc();
    }

    /// Counts `n` events expired before delivery.
    pub fn expired(&self, subscription: &str, n: u64) {
        if n > 0 {
            self.expired
                .get_or_create(&self.subscription(subscription))
                .inc_by(n);
        }
    }

    /// Counts an event dropped for `reason` (`route` or `overflow`).
    pub fn dropped(&self, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    /// The counter of spans the export buffer dropped, for the span
    /// pipeline to increment where it drops them.
    pub(crate) fn trace_spans_dropped(&self) -> Counter {
        self.trace_spans_dropped.clone()
    }

    /// Replaces the state gauges with a fresh read of the broker and the
    /// connection counts.
    pub fn refresh(
        &self,
        stats: Option<&BrokerStats>,
        subscriptions: &[SubscriptionInfo],
        websocket: u64,
        sse: u64,
    ) {
        for (transport, n) in [("websocket", websocket), ("sse", sse)] {
            self.connections
                .get_or_create(&TransportLabels { transport })
                .set(clamp(n));
        }
        if let Some(stats) = stats {
            self.refresh_broker(stats);
        }
        self.subscriptions.set(clamp(subscriptions.len() as u64));
        for family in [&self.pending, &self.in_flight, &self.dead_letters] {
            family.clear();
        }
        self.lag_seconds.clear();
        let now = Instant::now();
        let mut totals: HashMap<SubscriptionLabels, (u64, u64, u64)> = HashMap::new();
        for info in subscriptions {
            let label = self.subscription(&info.spec.name);
            let t = totals.entry(label).or_default();
            t.0 += info.pending + info.retrying;
            t.1 += info.in_flight;
            t.2 += info.dead_letters;
        }
        let mut pending_since = self.pending_since.lock();
        let last_delivery = self.last_delivery.lock();
        pending_since.retain(|name, _| {
            totals.contains_key(&SubscriptionLabels {
                subscription: name.clone(),
            })
        });
        for (label, (pending, in_flight, dead)) in &totals {
            self.pending.get_or_create(label).set(clamp(*pending));
            self.in_flight.get_or_create(label).set(clamp(*in_flight));
            self.dead_letters.get_or_create(label).set(clamp(*dead));
            let lag = if *pending == 0 {
                pending_since.remove(&label.subscription);
                0.0
            } else {
                let since = *pending_since
                    .entry(label.subscription.clone())
                    .or_insert(now);
                let progress = last_delivery
                    .get(&label.subscription)
                    .map_or(since, |d| (*d).max(since));
                now.saturating_duration_since(progress).as_secs_f64()
            };
            self.lag_seconds.get_or_create(label).set(lag);
        }
    }

    /// Counts what the broker discarded to stay within its byte limits
    /// since the last refresh.
    pub fn refresh_discarded(&self, discarded: crate::broker::Discarded) {
        let mut seen = self.history_bytes_seen.lock();
        if discarded.history_bytes > *seen {
            self.dropped("history_bytes", discarded.history_bytes - *seen);
        }
        *seen = discarded.history_bytes;
    }

    fn refresh_broker(&self, stats: &BrokerStats) {
        self.live_subscriptions.set(clamp(stats.live_subscriptions));
        let mut seen = self.overflow_seen.lock();
        if stats.dropped > *seen {
            self.dropped("overflow", stats.dropped - *seen);
        }
        *seen = stats.dropped;
        // Clustered brokers report these through their stats; read them by
        // name so that the memory broker (which has none) needs no fields.
        let value = serde_json::to_value(stats).unwrap_or_default();
        let rtt = value
            .get("round_trip_seconds")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        self.redis_round_trip_seconds.set(rtt);
        let replicas = value
            .get("replicas")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        self.replicas.set(clamp(replicas as u64));
    }

    /// The registry encoded as OpenMetrics text.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry encoded as the classic Prometheus text format 0.0.4.
    pub fn encode_text(&self) -> String {
        to_classic_text(&self.encode_openmetrics())
    }
}

/// A family whose `# HELP`/`# TYPE` lines are written even before its
/// first series exists, so that every metric is declared from the start
/// (dashboards and alerts can rely on the names).
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Converts OpenMetrics text into the classic text format: counter
/// families are named with their `_total` suffix, `# UNIT` and `# EOF` lines
/// go, and `_created` samples (not part of the classic format) are dropped.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut counters = HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# EOF") || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => {
                let _ = writeln!(out, "{line}");
            }
            None => {
                let sample_name = line.split(['{', ' ']).next().unwrap_or("");
                if !line.starts_with('#') && sample_name.ends_with("_created") {
                    continue;
                }
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_the_classic_format() {
        let om = "# HELP x_published Events.\n# TYPE x_published counter\n\
                  x_published_total 3\nx_published_created 1.5\n\
                  # HELP x_lag_seconds Lag.\n# TYPE x_lag_seconds gauge\n# UNIT x_lag_seconds seconds\n\
                  x_lag_seconds 0.5\n# EOF\n";
        let text = to_classic_text(om);
        assert_eq!(
            text,
            "# HELP x_published_total Events.\n# TYPE x_published_total counter\n\
             x_published_total 3\n\
             # HELP x_lag_seconds Lag.\n# TYPE x_lag_seconds gauge\nx_lag_seconds 0.5\n"
        );
    }

    #[test]
    fn subscription_labels_fold_into_other_past_the_cap() {
        let m = Metrics::new();
        for i in 0..MAX_SUBSCRIPTION_LABELS {
            assert_eq!(
                m.subscription(&format!("s{i}")).subscription,
                format!("s{i}")
            );
        }
        assert_eq!(m.subscription("one-too-many").subscription, OTHER);
        assert_eq!(m.subscription("s0").subscription, "s0");
    }

    #[test]
    fn every_declared_metric_is_encoded() {
        let text = metrics().encode_text();
        for name in METRIC_NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }
}
