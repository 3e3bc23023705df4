//! The embedded in-memory broker: the default when no Redis is configured.
//!
//! Everything lives in this process: a routing index per kind of subscription
//! (a [`TopicTrie`] of live subscriptions, another of durable ones), one
//! [`Group`] per durable subscription with its priority bands, in-flight
//! deliveries, retry schedule and dead letters, and a global [`History`]
//! ring. There are no background tasks: timeouts and retries are applied
//! lazily whenever a group is touched, and waiting consumers sleep until the
//! group's next deadline.
//!
//! Time: deadlines and retry due times use [`tokio::time::Instant`], so tests
//! can pause and advance the clock; wall-clock [`Timestamp`]s are used only
//! for fields that are shown to people (dead-letter and attempt times) and
//! for event TTLs, which are relative to the event's own `time`.

mod consumer;
mod group;
mod history;
mod streams;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::footprint::event_footprint;
use super::live::Pushed;
use super::{AppendOptions, Appended, StreamPage, StreamRead};
use super::{
    Broker, BrokerError, BrokerStats, Capabilities, ConsumeOptions, Consumer, DeadLetter,
    DeadLetterQuery, DeadLetterSelection, Discarded, GroupSpec, HistoryEntry, HistoryPurge,
    HistoryQuery, LiveQueue, LiveStream, LiveSubscription, NackOptions, PublishOptions, Published,
    Result, SubscriptionInfo,
};
use crate::event::Event;
use crate::selector::Selector;
use crate::topic::TopicTrie;

use consumer::MemoryConsumer;
use group::{Group, Limits};
use history::{History, Retention};

/// Configuration of the [`MemoryBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBrokerConfig {
    /// Most events kept in retained history, across all topics; the oldest
    /// is evicted first. Default [`Self::DEFAULT_HISTORY_MAX_EVENTS`]
    /// (100 000 events). Zero keeps no history (`history` and `replay` then
    /// find nothing).
    pub history_max_events: usize,
    /// How long an event stays in history after it was published. Default
    /// [`Self::DEFAULT_HISTORY_MAX_AGE`] (1 h). Zero means no age limit:
    /// only `history_max_events` bounds history.
    pub history_max_age: Duration,
    /// Most events one durable subscription holds (queued, in flight or
    /// waiting to retry; dead letters are bounded separately). A publish
    /// that would take a matching subscription past it fails with
    /// [`BrokerError::Unavailable`] and stores nothing, so a stalled
    /// subscription pushes back on publishers instead of losing events or
    /// growing without bound. Default
    /// [`Self::DEFAULT_MAX_QUEUED_PER_SUBSCRIPTION`] (1 000 000 events).
    /// Zero means unbounded.
    pub max_queued_per_subscription: usize,
    /// Most dead letters kept per subscription; beyond it the oldest is
    /// evicted with a warning. Default [`Self::DEFAULT_DEAD_LETTER_MAX`]
    /// (100 000 entries). Zero means unbounded.
    pub dead_letter_max: usize,
    /// Most bytes of events (by [`event_footprint`]) kept in history; the
    /// oldest are evicted first and counted
    /// ([`Broker::discarded`]). Default [`Self::DEFAULT_HISTORY_MAX_BYTES`]
    /// (256 MiB). Zero means no byte bound (only `history_max_events` and
    /// `history_max_age`).
    pub history_max_bytes: usize,
    /// Most bytes of events (by [`event_footprint`]) one durable
    /// subscription holds (queued, in flight or retrying). A publish that
    /// would take a matching subscription past it fails with
    /// [`BrokerError::QueueFull`] and stores nothing; stored events are
    /// never dropped to make room. Default
    /// [`Self::DEFAULT_MAX_QUEUED_BYTES_PER_SUBSCRIPTION`] (64 MiB). Zero
    /// means no byte bound.
    pub max_queued_bytes_per_subscription: usize,
}

impl MemoryBrokerConfig {
    /// Default of [`Self::history_max_events`].
    pub const DEFAULT_HISTORY_MAX_EVENTS: usize = 100_000;
    /// Default of [`Self::history_max_age`].
    pub const DEFAULT_HISTORY_MAX_AGE: Duration = Duration::from_secs(3600);
    /// Default of [`Self::max_queued_per_subscription`].
    pub const DEFAULT_MAX_QUEUED_PER_SUBSCRIPTION: usize = 1_000_000;
    /// Default of [`Self::dead_letter_max`].
    pub const DEFAULT_DEAD_LETTER_MAX: usize = 100_000;
    /// Default of [`Self::history_max_bytes`]: 256 MiB, a quarter of a
    /// 1 GiB pod, whatever the event sizes.
    pub const DEFAULT_HISTORY_MAX_BYTES: usize = 256 * 1024 * 1024;
    /// Default of [`Self::max_queued_bytes_per_subscription`]: 64 MiB, so a
    /// handful of stalled subscriptions fit a 1 GiB pod beside history.
    pub const DEFAULT_MAX_QUEUED_BYTES_PER_SUBSCRIPTION: usize = 64 * 1024 * 1024;
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        MemoryBrokerConfig {
            history_max_events: Self::DEFAULT_HISTORY_MAX_EVENTS,
            history_max_age: Self::DEFAULT_HISTORY_MAX_AGE,
            max_queued_per_subscription: Self::DEFAULT_MAX_QUEUED_PER_SUBSCRIPTION,
            dead_letter_max: Self::DEFAULT_DEAD_LETTER_MAX,
            history_max_bytes: Self::DEFAULT_HISTORY_MAX_BYTES,
            max_queued_bytes_per_subscription: Self::DEFAULT_MAX_QUEUED_BYTES_PER_SUBSCRIPTION,
        }
    }
}

/// History reads return this many events when the query's limit is 0.
const DEFAULT_HISTORY_LIMIT: usize = 100;
/// History reads never return more than this many events.
const MAX_HISTORY_LIMIT: usize = 10_000;

/// The embedded broker: live fan-out, durable subscriptions, dead letters and
/// history in this process's memory.
///
/// What it cannot do: it serves one process only (`clustered: false`), and
/// nothing survives a restart (`persistent: false`) — queued events, dead
/// letters and history are lost when the process exits. Memory is bounded by
/// [`MemoryBrokerConfig`]. Use the Redis broker for either.
///
/// Dropping the broker closes it, as [`Broker::close`] does.
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use event_router::broker::{Broker, MemoryBroker, MemoryBrokerConfig};
///
/// let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
/// ```
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

/// State shared by the broker, its consumers and live-stream guards.
struct Shared {
    config: MemoryBrokerConfig,
    closed: AtomicBool,
    live: RwLock<LiveIndex>,
    groups: RwLock<GroupIndex>,
    history: Mutex<History>,
    streams: streams::EventStreams,
    counters: Arc<Counters>,
    /// Source of live subscription, group, consumer, delivery and
    /// dead-letter ids; never reused, so a stale id cannot name a new thing.
    next_id: AtomicU64,
}

/// Broker-wide counters, also bumped by groups.
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    delivered_live: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct LiveIndex {
    trie: TopicTrie<u64>,
    subs: HashMap<u64, LiveEntry>,
}

struct LiveEntry {
    selector: Selector,
    queue: LiveQueue,
}

#[derive(Default)]
struct GroupIndex {
    trie: TopicTrie<u64>,
    by_id: HashMap<u64, GroupEntry>,
    by_name: HashMap<String, u64>,
}

struct GroupEntry {
    /// A copy of the spec's selector, so routing needs no group lock.
    selector: Selector,
    group: Arc<Group>,
}

impl GroupIndex {
    fn get(&self, name: &str) -> Option<&GroupEntry> {
        self.by_name.get(name).and_then(|id| self.by_id.get(id))
    }
}

/// Per-thread scratch space for routing, so that publishing does not
/// allocate for trie matches.
#[derive(Default)]
struct Scratch {
    keys: Vec<u64>,
    /// (group id, index of the event in the batch), one per stored copy.
    routes: Vec<(u64, usize)>,
    /// Footprint of each event of the batch.
    sizes: Vec<usize>,
}

/// Routes kept allocated in a thread's scratch space between publishes.
const SCRATCH_KEEP: usize = 4096;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Unregisters a live subscription when its [`LiveStream`] is dropped.
struct LiveGuard {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut live = shared.live.write();
            if let Some(entry) = live.subs.remove(&self.id) {
                for pattern in entry.selector.patterns() {
                    live.trie.remove(pattern, &self.id);
                }
            }
        }
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new(config: MemoryBrokerConfig) -> MemoryBroker {
        MemoryBroker {
            shared: Arc::new(Shared {
                config,
                closed: AtomicBool::new(false),
                live: RwLock::default(),
                groups: RwLock::default(),
                history: Mutex::new(History::default()),
                streams: streams::EventStreams::default(),
                counters: Arc::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MemoryBrokerConfig {
        &self.shared.config
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(MemoryBrokerConfig::default())
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.is_closed())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_queued: self.config.max_queued_per_subscription,
            max_queued_bytes: self.config.max_queued_bytes_per_subscription,
            dead_letter_max: self.config.dead_letter_max,
        }
    }

    fn retention(&self) -> Retention {
        Retention {
            max_events: self.config.history_max_events,
            max_bytes: self.config.history_max_bytes,
            max_age: self.config.history_max_age,
        }
    }

    fn group(&self, name: &str) -> Result<Arc<Group>> {
        self.groups
            .read()
            .get(name)
            .map(|entry| entry.group.clone())
            .ok_or_else(|| BrokerError::UnknownSubscription(name.to_string()))
    }

    /// Routes and stores `events` in order; returns the history sequence
    /// number of the first (the others follow contiguously).
    ///
    /// All or nothing: when a matching subscription has no room (events or
    /// bytes) for its share of the batch, nothing is stored anywhere.
    fn store(&self, events: &[Arc<Event>]) -> Result<u64> {
        self.check_open()?;
        let now = Instant::now();
        let wall = Timestamp::now();
        let expired = |event: &Event| event.ttl.is_some() && event.is_expired_at(wall);
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.sizes.clear();
            scratch
                .sizes
                .extend(events.iter().map(|e| event_footprint(e)));
            let groups = self.groups.read();
            scratch.routes.clear();
            for (i, event) in events.iter().enumerate() {
                if expired(event) || groups.by_id.is_empty() {
                    continue;
                }
                scratch.keys.clear();
                groups.trie.matches_into(&event.topic, &mut scratch.keys);
                for &id in &scratch.keys {
                    if let Some(entry) = groups.by_id.get(&id)
                        && entry.selector.matches_filter(event)
                    {
                        scratch.routes.push((id, i));
                    }
                }
            }
            // Sorting by group keeps each group's events in batch order.
            if events.len() > 1 {
                scratch.routes.sort_unstable();
            }
            let limits = self.limits();
            if limits.max_queued > 0 || limits.max_queued_bytes > 0 {
                for run in scratch.routes.chunk_by(|a, b| a.0 == b.0) {
                    if let Some(entry) = groups.by_id.get(&run[0].0) {
                        let bytes = run.iter().map(|&(_, i)| scratch.sizes[i]).sum();
                        entry.group.check_room(run.len(), bytes, limits)?;
                    }
                }
            }
            let first_seq =
                self.history
                    .lock()
                    .append(events, &scratch.sizes, now, self.retention());
            for run in scratch.routes.chunk_by(|a, b| a.0 == b.0) {
                if let Some(entry) = groups.by_id.get(&run[0].0) {
                    entry
                        .group
                        .enqueue(run.iter().map(|&(_, i)| (&events[i], scratch.sizes[i])));
                }
            }
            drop(groups);
            self.fan_out_live(events, &scratch.sizes, &expired, &mut scratch.keys);
            let expired_count = events.iter().filter(|e| expired(e)).count();
            // Give back what one huge batch made the scratch space grow to.
            if scratch.routes.capacity() > SCRATCH_KEEP {
                scratch.routes = Vec::new();
            }
            if scratch.sizes.capacity() > SCRATCH_KEEP {
                scratch.sizes = Vec::new();
            }
            Counters::add(&self.counters.published, events.len() as u64);
            Counters::add(&self.counters.expired, expired_count as u64);
            Ok(first_seq)
        })
    }

    fn fan_out_live(
        &self,
        events: &[Arc<Event>],
        sizes: &[usize],
        expired: &dyn Fn(&Event) -> bool,
        keys: &mut Vec<u64>,
    ) {
        let live = self.live.read();
        if live.subs.is_empty() {
            return;
        }
        let (mut delivered, mut dropped) = (0, 0);
        for (event, &bytes) in events.iter().zip(sizes) {
            if expired(event) {
                continue;
            }
            keys.clear();
            live.trie.matches_into(&event.topic, keys);
            for id in keys.iter() {
                let Some(sub) = live.subs.get(id) else {
                    continue;
                };
                if !sub.selector.matches_filter(event) {
                    continue;
                }
                match sub.queue.push_sized(event.clone(), bytes) {
                    (Pushed::Queued, _) => delivered += 1,
                    (Pushed::DroppedOldest, n) => {
                        delivered += 1;
                        dropped += n;
                    }
                    (Pushed::Closed, _) => {}
                }
            }
        }
        Counters::add(&self.counters.delivered_live, delivered);
        Counters::add(&self.counters.dropped, dropped);
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.streams.close();
        {
            let mut live = self.live.write();
            for entry in live.subs.values() {
                entry.queue.close();
            }
            *live = LiveIndex::default();
        }
        for entry in self.groups.read().by_id.values() {
            entry.group.notify.notify_waiters();
        }
    }
}

/// Resolves a history query's limit: 0 means the default, and the result is
/// capped.
fn history_limit(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_HISTORY_LIMIT,
        n => n.min(MAX_HISTORY_LIMIT),
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            clustered: false,
            acks_round_trip: false,
            publish_round_trip: false,
        }
    }

    /// Stores and routes the event under the index read locks; never waits.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when a matching subscription is full
    /// (see [`MemoryBrokerConfig::max_queued_per_subscription`]); nothing was
    /// stored. [`BrokerError::Closed`] after `close`.
    async fn publish(&self, event: Event, _options: PublishOptions) -> Result<Published> {
        let event = Arc::new(event);
        let seq = self.shared.store(std::slice::from_ref(&event))?;
        Ok(Published {
            id: event.id.clone(),
            partition: 0,
            cursor: seq.to_string(),
        })
    }

    /// Always all or nothing, whatever `options.atomic` says.
    async fn publish_batch(
        &self,
        events: Vec<Event>,
        _options: PublishOptions,
    ) -> Result<Vec<Published>> {
        if events.is_empty() {
            self.shared.check_open()?;
            return Ok(Vec::new());
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        let first = self.shared.store(&events)?;
        Ok(events
            .iter()
            .zip(first..)
            .map(|(event, seq)| Published {
                id: event.id.clone(),
                partition: 0,
                cursor: seq.to_string(),
            })
            .collect())
    }

    async fn subscribe_live(&self, subscription: LiveSubscription) -> Result<LiveStream> {
        let id = self.shared.next_id();
        let guard = LiveGuard {
            shared: Arc::downgrade(&self.shared),
            id,
        };
        let (queue, stream) = LiveQueue::with_max_bytes(
            subscription.capacity,
            subscription.max_bytes,
            Box::new(guard),
        );
        let mut live = self.shared.live.write();
        // Checked under the lock so that `close` cannot miss this subscription.
        self.shared.check_open()?;
        for pattern in subscription.selector.patterns() {
            live.trie.insert(pattern, id);
        }
        let entry = LiveEntry {
            selector: subscription.selector,
            queue,
        };
        live.subs.insert(id, entry);
        drop(live);
        Ok(stream)
    }

    /// Updating an existing subscription keeps its queued, in-flight and
    /// dead-lettered events; in-flight deliveries keep their old ack deadline.
    async fn ensure_subscription(&self, spec: GroupSpec) -> Result<()> {
        spec.validate()?;
        self.shared.check_open()?;
        let mut index = self.shared.groups.write();
        let index = &mut *index;
        if let Some(&id) = index.by_name.get(&spec.name)
            && let Some(entry) = index.by_id.get_mut(&id)
        {
            for pattern in entry.selector.patterns() {
                index.trie.remove(pattern, &id);
            }
            for pattern in spec.selector.patterns() {
                index.trie.insert(pattern, id);
            }
            entry.selector = spec.selector.clone();
            entry.group.update_spec(spec);
            return Ok(());
        }
        let id = self.shared.next_id();
        for pattern in spec.selector.patterns() {
            index.trie.insert(pattern, id);
        }
        index.by_name.insert(spec.name.clone(), id);
        let entry = GroupEntry {
            selector: spec.selector.clone(),
            group: Arc::new(Group::new(
                spec,
                self.shared.limits(),
                self.shared.counters.clone(),
            )),
        };
        index.by_id.insert(id, entry);
        Ok(())
    }

    /// Waiting consumers of the deleted subscription get
    /// [`BrokerError::UnknownSubscription`].
    async fn delete_subscription(&self, name: &str) -> Result<bool> {
        self.shared.check_open()?;
        let entry = {
            let mut index = self.shared.groups.write();
            let Some(id) = index.by_name.remove(name) else {
                return Ok(false);
            };
            let Some(entry) = index.by_id.remove(&id) else {
                return Ok(false);
            };
            for pattern in entry.selector.patterns() {
                index.trie.remove(pattern, &id);
            }
            entry
        };
        entry.group.delete();
        Ok(true)
    }

    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo> {
        Ok(self.shared.group(name)?.info(Instant::now()))
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        let groups: BTreeMap<String, Arc<Group>> = self
            .shared
            .groups
            .read()
            .by_id
            .values()
            .map(|entry| (entry.group.name().to_string(), entry.group.clone()))
            .collect();
        let now = Instant::now();
        Ok(groups.values().map(|group| group.info(now)).collect())
    }

    async fn consume(&self, subscription: &str, options: ConsumeOptions) -> Result<Consumer> {
        self.shared.check_open()?;
        let group = self.shared.group(subscription)?;
        let id = self.shared.next_id();
        let name = if options.name.is_empty() {
            format!("consumer-{id}")
        } else {
            options.name
        };
        group.register_consumer(id, &name, options.max_in_flight.max(1));
        let consumer = MemoryConsumer::new(self.shared.clone(), group, id, name);
        Ok(Consumer::new(Box::new(consumer)))
    }

    async fn ack(&self, subscription: &str, delivery_id: &str) -> Result<()> {
        self.shared.check_open()?;
        self.shared
            .group(subscription)?
            .ack(delivery_id, Instant::now())
    }

    async fn nack(
        &self,
        subscription: &str,
        delivery_id: &str,
        options: NackOptions,
    ) -> Result<()> {
        self.shared.check_open()?;
        self.shared
            .group(subscription)?
            .nack(delivery_id, options, Instant::now())
    }

    /// A `limit` of 0 means the default of 100.
    async fn dead_letters(
        &self,
        subscription: &str,
        query: DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>> {
        let limit = if query.limit == 0 {
            DeadLetterQuery::default().limit
        } else {
            query.limit
        };
        Ok(self
            .shared
            .group(subscription)?
            .dead_letters(limit, Instant::now()))
    }

    /// Moves as many as fit under
    /// [`MemoryBrokerConfig::max_queued_per_subscription`]; the rest stay
    /// dead-lettered.
    async fn redrive(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64> {
        self.shared.check_open()?;
        Ok(self
            .shared
            .group(subscription)?
            .redrive(&selection, Instant::now()))
    }

    async fn purge(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64> {
        self.shared.check_open()?;
        Ok(self.shared.group(subscription)?.purge(&selection))
    }

    /// An `after` cursor that is not one of ours reads from the start of
    /// retained history.
    async fn history(&self, query: HistoryQuery) -> Result<Vec<HistoryEntry>> {
        let limit = history_limit(query.limit);
        let found = self.shared.history.lock().query(
            &query,
            limit,
            Instant::now(),
            self.shared.config.history_max_age,
        );
        Ok(found
            .into_iter()
            .map(|(seq, event)| HistoryEntry {
                cursor: seq.to_string(),
                event: Event::clone(&event),
            })
            .collect())
    }

    /// A `limit` of 0 replays every matching retained event (not just the
    /// default page of 100); at most as many as fit under
    /// [`MemoryBrokerConfig::max_queued_per_subscription`] are queued.
    async fn replay(&self, subscription: &str, query: HistoryQuery) -> Result<u64> {
        self.shared.check_open()?;
        let group = self.shared.group(subscription)?;
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        let found = self.shared.history.lock().query(
            &query,
            limit,
            Instant::now(),
            self.shared.config.history_max_age,
        );
        Ok(group.replay(found.into_iter().map(|(_, event)| event)))
    }

    async fn purge_history(&self, purge: HistoryPurge) -> Result<u64> {
        self.shared.check_open()?;
        Ok(self.shared.history.lock().purge(&purge))
    }

    async fn stats(&self) -> Result<BrokerStats> {
        let counters = &self.shared.counters;
        let history_len = {
            let mut history = self.shared.history.lock();
            history.evict(Instant::now(), self.shared.retention());
            history.len() as u64
        };
        Ok(BrokerStats {
            kind: "memory",
            node: None,
            published: counters.published.load(Ordering::Relaxed),
            delivered_live: counters.delivered_live.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            expired: counters.expired.load(Ordering::Relaxed),
            live_subscriptions: self.shared.live.read().subs.len() as u64,
            subscriptions: self.shared.groups.read().by_id.len() as u64,
            history_len,
            round_trip_seconds: None,
            replicas: None,
        })
    }

    /// Bounded by [`streams::EVENT_STREAMS_MAX_BYTES`] across all streams.
    async fn append(&self, stream: &str, event: Event, options: AppendOptions) -> Result<Appended> {
        self.shared.streams.append(stream, event, options)
    }

    async fn read_stream(&self, stream: &str, read: StreamRead) -> Result<StreamPage> {
        self.shared.check_open()?;
        self.shared.streams.read(stream, read)
    }

    async fn wait_stream(
        &self,
        stream: &str,
        after_version: u64,
        timeout: Duration,
    ) -> Result<u64> {
        self.shared
            .streams
            .wait(stream, after_version, timeout)
            .await
    }

    async fn ready(&self) -> bool {
        !self.shared.is_closed()
    }

    fn discarded(&self) -> Discarded {
        Discarded {
            history_bytes: self.shared.history.lock().evicted_for_bytes(),
        }
    }

    async fn close(&self) {
        self.shared.close();
    }
}

#[cfg(test)]
mod tests;
