//! The `Broker` trait: where events are stored and how they reach subscribers.
//!
//! Verbs are in our domain (publish, subscribe_live, consume, ack, nack,
//! dead_letters, redrive, purge, history) so that `router` and `server` never
//! learn which implementation runs. [`MemoryBroker`] is the embedded default;
//! the Redis broker implements the same contract across replicas, and
//! `tests/conformance` checks both against one suite.

pub mod event_stream;
pub mod footprint;
mod live;
mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{Delivery, Event};
use crate::selector::Selector;

pub use event_stream::{AppendOptions, Appended, StreamEntry, StreamPage, StreamRead};
pub use live::{DEFAULT_LIVE_QUEUE_MAX_BYTES, LiveItem, LiveQueue, LiveStream};
pub use memory::{MemoryBroker, MemoryBrokerConfig};
pub use redis::{RedisBroker, RedisBrokerConfig};

/// Result alias for broker calls.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// What can go wrong talking to a broker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached; the call did nothing and may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A durable subscription holds as many events (or bytes) as it may;
    /// nothing was stored. Retry once its consumers catch up.
    #[error("subscription {subscription:?} is full: {reason}")]
    QueueFull {
        /// The full subscription.
        subscription: String,
        /// Which bound was reached, with the figures.
        reason: String,
    },
    /// No durable subscription has this name.
    #[error("unknown subscription {0:?}")]
    UnknownSubscription(String),
    /// The delivery id is not in flight (already acked, or redelivered after its ack timeout).
    #[error("unknown or expired delivery {0:?}")]
    UnknownDelivery(String),
    /// The subscription spec is unacceptable.
    #[error("invalid subscription {name:?}: {reason}")]
    InvalidSubscription {
        /// The subscription name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An event stream append expected another version.
    #[error("event stream {stream:?} is at version {current}, the append expected {expected}")]
    VersionConflict {
        /// The stream.
        stream: String,
        /// The version the append expected.
        expected: u64,
        /// The stream's current version.
        current: u64,
    },
    /// An event stream name or event stream limit is unacceptable.
    #[error("invalid event stream {name:?}: {reason}")]
    InvalidStream {
        /// The stream name (cut to 200 characters).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The broker has been closed.
    #[error("broker is closed")]
    Closed,
    /// A bug or an unexpected reply from the backing store.
    #[error("internal broker error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// Stable snake_case label for errors and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::Unavailable(_) => "unavailable",
            BrokerError::QueueFull { .. } => "queue_full",
            BrokerError::UnknownSubscription(_) => "unknown_subscription",
            BrokerError::UnknownDelivery(_) => "unknown_delivery",
            BrokerError::InvalidSubscription { .. } => "invalid_subscription",
            BrokerError::VersionConflict { .. } => "version_conflict",
            BrokerError::InvalidStream { .. } => "invalid_stream",
            BrokerError::Closed => "closed",
            BrokerError::Internal(_) => "internal",
        }
    }
}

/// What an implementation can do; callers check instead of catching panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Events survive a process restart.
    pub persistent: bool,
    /// Several router processes can share this broker.
    pub clustered: bool,
    /// An ack costs a round trip to a shared store: transports settle acks
    /// that need no answer in the background, so that a consumer's acks
    /// overlap instead of queueing behind each other.
    pub acks_round_trip: bool,
    /// A publish costs a round trip to a shared store, and single
    /// publishes are queued in call order when first polled: transports
    /// may keep several of a connection's publishes under way at once.
    pub publish_round_trip: bool,
}

/// Per-call publish knobs.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// For `publish_batch`: all events are stored or none is.
    pub atomic: bool,
}

/// Where a published event was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The event id.
    pub id: String,
    /// Ingest partition (always 0 on the memory broker).
    pub partition: u32,
    /// History cursor of the stored event; pass it to [`HistoryQuery::after`].
    pub cursor: String,
}

/// A live (at-most-once) subscription request.
#[derive(Debug, Clone)]
pub struct LiveSubscription {
    /// What to receive.
    pub selector: Selector,
    /// Bound of the per-subscriber queue; when full the oldest event is
    /// dropped and an [`LiveItem::Overflow`] notice is queued. Minimum 1.
    pub capacity: usize,
    /// Byte bound of the same queue (by [`footprint::event_footprint`]),
    /// applied like `capacity`; 0 means no byte bound.
    pub max_bytes: usize,
}

/// Exponential backoff with jitter for redeliveries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay before the first retry. Default 1 s.
    #[serde(with = "crate::duration::as_text")]
    pub initial: Duration,
    /// Upper bound of the delay. Default 60 s.
    #[serde(with = "crate::duration::as_text")]
    pub max: Duration,
    /// Growth factor per attempt. Default 2.
    pub multiplier: f64,
    /// Fraction of the delay randomised (0 = none, 1 = full jitter). Default 0.2.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before redelivery after failed attempt number `attempt`
    /// (1-based), with `random` in `[0, 1)` supplying the jitter.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        // Jitter shortens the delay by up to `jitter` of it, never lengthens
        // it past `max`.
        let secs = base * (1.0 - jitter * random.clamp(0.0, 1.0));
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// Default `max_attempts` of a durable subscription.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default ack timeout of a durable subscription.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-consumer `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 100;

/// A durable subscription (consumer group): what it selects and its delivery policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSpec {
    /// Unique name, `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Which events it stores.
    pub selector: Selector,
    /// Deliveries per event before it is dead-lettered. Default 5, minimum 1.
    pub max_attempts: u32,
    /// Time a consumer has to ack before redelivery. Default 30 s.
    #[serde(with = "crate::duration::as_text")]
    pub ack_timeout: Duration,
    /// Delay policy for nacked or timed-out deliveries.
    pub backoff: Backoff,
    /// Whether exhausted events go to the dead-letter queue (true) or are discarded.
    pub dead_letter: bool,
}

impl GroupSpec {
    /// A spec with default delivery policy.
    pub fn new(name: impl Into<String>, selector: Selector) -> Self {
        GroupSpec {
            name: name.into(),
            selector,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            backoff: Backoff::default(),
            dead_letter: true,
        }
    }

    /// Checks the name and policy.
    ///
    /// # Errors
    /// [`BrokerError::InvalidSubscription`] naming the problem.
    pub fn validate(&self) -> Result<()> {
        let fail = |reason: &str| {
            Err(BrokerError::InvalidSubscription {
                name: self.name.clone(),
                reason: reason.into(),
            })
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 200
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return fail("name must be 1-200 characters of [A-Za-z0-9_.-]");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1");
        }
        if self.ack_timeout.is_zero() {
            return fail("ack_timeout must be greater than zero");
        }
        if !(self.backoff.multiplier.is_finite() && self.backoff.jitter.is_finite()) {
            return fail("backoff multiplier and jitter must be finite numbers");
        }
        Ok(())
    }
}

/// Per-consumer knobs for [`Broker::consume`].
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Most deliveries this consumer holds un-acked at once. Default 100, minimum 1.
    pub max_in_flight: usize,
    /// A name for stats and logs; a unique one is generated when empty.
    pub name: String,
    /// Whether the consumer keeps each delivery's trace context and acks or
    /// nacks it inside [`crate::telemetry::trace::settle_under`] (as a
    /// WebSocket session does), so that the instrumented broker need not
    /// remember it. Default `false`.
    pub acks_carry_trace: bool,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            name: String::new(),
            acks_carry_trace: false,
        }
    }
}

/// How to nack a delivery.
#[derive(Debug, Clone, Default)]
pub struct NackOptions {
    /// Redeliver after this delay instead of the subscription's backoff.
    pub delay: Option<Duration>,
    /// Why processing failed; kept in the attempt history.
    pub reason: Option<String>,
}

/// One consumer of a durable subscription. Dropping it returns its in-flight
/// deliveries to the group for immediate redelivery to other consumers.
pub struct Consumer {
    inner: Box<dyn ConsumerHandle>,
}

impl Consumer {
    /// Wraps an implementation's handle.
    pub fn new(inner: Box<dyn ConsumerHandle>) -> Self {
        Consumer { inner }
    }

    /// Waits until at least one delivery is available and this consumer has
    /// a free in-flight slot, then returns up to the number of free slots.
    ///
    /// # Cancel safety
    /// Cancel safe: a delivery is handed out only when the future completes.
    ///
    /// # Errors
    /// [`BrokerError::UnknownSubscription`] if the subscription was deleted,
    /// [`BrokerError::Closed`] after [`Broker::close`].
    pub async fn next(&mut self) -> Result<Vec<Delivery>> {
        self.inner.next().await
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.inner.name())
            .finish()
    }
}

/// Implementation side of [`Consumer`]; release in-flight deliveries on `Drop`.
#[async_trait]
pub trait ConsumerHandle: Send {
    /// See [`Consumer::next`].
    async fn next(&mut self) -> Result<Vec<Delivery>>;
    /// See [`Consumer::name`].
    fn name(&self) -> &str;
}

/// One failed delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When the attempt failed.
    pub at: Timestamp,
    /// `nack: <reason>`, `ack timeout`, ...
    pub reason: String,
}

/// An event that exhausted its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Id of this dead-letter entry (for redrive/purge of one entry).
    pub id: String,
    /// The subscription it was dead-lettered from.
    pub subscription: String,
    /// The event as published.
    pub event: Event,
    /// Why it was dead-lettered (the last failure).
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_lettered_at: Timestamp,
    /// Every failed attempt, oldest first.
    pub history: Vec<Attempt>,
}

/// Which dead letters to list.
#[derive(Debug, Clone)]
pub struct DeadLetterQuery {
    /// Most entries to return, oldest first. Default 100.
    pub limit: usize,
}

impl Default for DeadLetterQuery {
    fn default() -> Self {
        DeadLetterQuery { limit: 100 }
    }
}

/// Which dead letters to redrive or purge.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSelection {
    /// Only these entry ids; all entries when `None`.
    pub ids: Option<Vec<String>>,
}

/// A read of retained history.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only events this selector matches; all events when `None`.
    pub selector: Option<Selector>,
    /// Events whose `time` is at or after this.
    pub from: Option<Timestamp>,
    /// Events whose `time` is before this.
    pub to: Option<Timestamp>,
    /// Only events stored after this cursor (SSE `Last-Event-ID` resume).
    pub after: Option<String>,
    /// Most events to return, oldest first. 0 means the default of 100.
    pub limit: usize,
}

/// Which retained events to delete from history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPurge {
    /// Events whose `time` is before this.
    pub before: Timestamp,
    /// Only events this selector matches; all events when `None`.
    pub selector: Option<Selector>,
}

/// An event from history with its cursor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Position in history; opaque, ordered within one broker.
    pub cursor: String,
    /// The event.
    pub event: Event,
}

/// Counters and gauges of one durable subscription.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionInfo {
    /// The spec it runs with.
    pub spec: GroupSpec,
    /// Events waiting to be delivered (all priority bands).
    pub pending: u64,
    /// Deliveries handed out and not yet acked.
    pub in_flight: u64,
    /// Events waiting for their backoff to expire.
    pub retrying: u64,
    /// Entries in the dead-letter queue.
    pub dead_letters: u64,
    /// Connected consumers.
    pub consumers: u64,
    /// Deliveries made (including redeliveries).
    pub delivered: u64,
    /// Deliveries acked.
    pub acked: u64,
    /// Deliveries nacked or timed out.
    pub retried: u64,
    /// Events moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Events dropped because their TTL passed before delivery.
    pub expired: u64,
}

/// Broker-wide counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerStats {
    /// Which implementation answers: `memory` or `redis`.
    pub kind: &'static str,
    /// This replica's node id (clustered brokers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Events accepted by `publish`.
    pub published: u64,
    /// Live deliveries queued to subscribers.
    pub delivered_live: u64,
    /// Live events dropped by subscriber queue overflow.
    pub dropped: u64,
    /// Events not delivered because their TTL had passed.
    pub expired: u64,
    /// Open live subscriptions.
    pub live_subscriptions: u64,
    /// Durable subscriptions.
    pub subscriptions: u64,
    /// Events in retained history.
    pub history_len: u64,
    /// Round trip of this stats read to the backing store, in seconds
    /// (clustered brokers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_seconds: Option<f64>,
    /// Node ids of the replicas sharing the backing store whose membership
    /// heartbeat is recent, sorted (clustered brokers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<String>>,
}

/// Events a broker discarded to stay within its byte limits
/// ([`Broker::discarded`]); each field only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Discarded {
    /// Retained-history entries evicted before their age or count limit
    /// because history held its byte limit.
    pub history_bytes: u64,
}

/// Storage and delivery of events. Object safe: use as `Arc<dyn Broker>`.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// What this implementation can do.
    fn capabilities(&self) -> Capabilities;

    /// Stores `event`, fans it out to matching live subscriptions and durable
    /// subscriptions, and appends it to history.
    ///
    /// Once this returns `Ok`, the event is in every matching durable
    /// subscription (or, for a clustered broker, durably queued for routing
    /// into them) and will not be lost by a crash of this process. Events from
    /// one publisher on one partition key keep their order. An event whose
    /// TTL has passed is accepted and counted as expired, never delivered.
    async fn publish(&self, event: Event, options: PublishOptions) -> Result<Published>;

    /// Publishes several events in order. With `options.atomic`, either all
    /// are stored or none is.
    async fn publish_batch(
        &self,
        events: Vec<Event>,
        options: PublishOptions,
    ) -> Result<Vec<Published>>;

    /// Starts an at-most-once live subscription: every matching event
    /// published after this returns. Dropping the stream unsubscribes.
    async fn subscribe_live(&self, subscription: LiveSubscription) -> Result<LiveStream>;

    /// Creates a durable subscription or updates its spec (idempotent).
    /// Events published from then on that match are stored until acked.
    async fn ensure_subscription(&self, spec: GroupSpec) -> Result<()>;

    /// Deletes a durable subscription with its queued events and dead letters.
    /// Returns whether it existed.
    async fn delete_subscription(&self, name: &str) -> Result<bool>;

    /// One durable subscription's spec and counters.
    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo>;

    /// All durable subscriptions, by name.
    async fn subscriptions(&self) -> Result<Vec<SubscriptionInfo>>;

    /// Joins a durable subscription as a competing consumer. Events go to one
    /// consumer each, highest priority first, then oldest first.
    async fn consume(&self, subscription: &str, options: ConsumeOptions) -> Result<Consumer>;

    /// Acknowledges a delivery: the event is done and removed.
    async fn ack(&self, subscription: &str, delivery_id: &str) -> Result<()>;

    /// Rejects a delivery: it is redelivered after `options.delay` or the
    /// backoff, or dead-lettered once `max_attempts` is reached.
    async fn nack(&self, subscription: &str, delivery_id: &str, options: NackOptions)
    -> Result<()>;

    /// Lists dead letters, oldest first.
    async fn dead_letters(
        &self,
        subscription: &str,
        query: DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>>;

    /// Moves dead letters back into the subscription with fresh attempts.
    /// Returns how many were moved.
    async fn redrive(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64>;

    /// Deletes dead letters. Returns how many were deleted.
    async fn purge(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64>;

    /// Reads retained history, oldest first.
    async fn history(&self, query: HistoryQuery) -> Result<Vec<HistoryEntry>>;

    /// Copies events from history into a durable subscription for
    /// redelivery (the subscription's selector is not applied again).
    /// Returns how many were queued.
    async fn replay(&self, subscription: &str, query: HistoryQuery) -> Result<u64>;

    /// Deletes retained events whose `time` is before `purge.before` (and
    /// that its selector matches) from history; durable subscriptions'
    /// queues and dead letters keep theirs. Returns how many were deleted.
    /// Events published meanwhile are never deleted unless they match.
    async fn purge_history(&self, purge: HistoryPurge) -> Result<u64>;

    /// Broker-wide counters.
    async fn stats(&self) -> Result<BrokerStats>;

    /// Appends `event` to the event stream `stream` (created on first
    /// append) at the next version, if the stream is at
    /// `options.expected_version` (when given). Atomic: of concurrent
    /// appends expecting the same version exactly one succeeds. Appending
    /// does not publish: subscriptions and history never see the event.
    /// Persistent brokers keep streams (not trimmed) across restarts.
    ///
    /// # Errors
    /// [`BrokerError::VersionConflict`] naming the current version;
    /// [`BrokerError::InvalidStream`] for a bad name or a full store.
    async fn append(&self, stream: &str, event: Event, options: AppendOptions) -> Result<Appended>;

    /// Reads an event stream from `read.from_version` on, oldest first. A
    /// stream never appended to reads as empty at version 0.
    async fn read_stream(&self, stream: &str, read: StreamRead) -> Result<StreamPage>;

    /// Waits until `stream` is past `after_version` or `timeout` passed;
    /// returns the version then. Used by [`event_stream::follow`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    async fn wait_stream(&self, stream: &str, after_version: u64, timeout: Duration)
    -> Result<u64>;

    /// Events this broker discarded to stay within its byte limits, since
    /// it started. Default: none (brokers without such limits).
    fn discarded(&self) -> Discarded {
        Discarded::default()
    }

    /// Whether the broker can serve requests now (for `/ready`).
    async fn ready(&self) -> bool;

    /// Stops the broker: live streams end, consumers get [`BrokerError::Closed`].
    async fn close(&self);
}

/// A shared broker handle.
pub type SharedBroker = Arc<dyn Broker>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_max() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=6).map(|a| b.delay(a, 0.5).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff {
            jitter: 0.5,
            ..Backoff::default()
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(500));
        assert!(b.delay(100, 0.99) <= b.max);
    }

    #[test]
    fn spec_validation_names_the_problem() {
        let mut spec = GroupSpec::new("ok-name", Selector::all());
        spec.validate().unwrap();
        spec.max_attempts = 0;
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
        spec = GroupSpec::new("bad name", Selector::all());
        assert!(spec.validate().unwrap_err().to_string().contains("name"));
    }
}
