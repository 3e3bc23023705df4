//! One durable subscription of the memory broker: priority bands, in-flight
//! deliveries, the retry schedule and the dead-letter queue.
//!
//! Time-driven transitions (ack timeouts, due retries) are applied lazily by
//! [`GroupState::maintain`], which every access runs first; consumers that
//! wait sleep until [`GroupState::next_wake`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Counters;
use crate::broker::footprint::event_footprint;
use crate::broker::{
    Attempt, BrokerError, DeadLetter, DeadLetterSelection, GroupSpec, NackOptions, Result,
    SubscriptionInfo,
};
use crate::event::{Delivery, Event};

/// One band per priority, 1..=10.
const BANDS: usize = 10;

/// Bounds from the broker config that apply to each group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most stored (queued + in-flight + retrying) events; 0 = unbounded.
    pub(super) max_queued: usize,
    /// Most bytes of stored events (by footprint); 0 = unbounded.
    pub(super) max_queued_bytes: usize,
    /// Most dead letters; 0 = unbounded.
    pub(super) dead_letter_max: usize,
}

/// A durable subscription.
pub(super) struct Group {
    name: String,
    state: Mutex<GroupState>,
    /// Wakes waiting consumers: new events, freed slots, an earlier
    /// deadline, deletion, broker close.
    pub(super) notify: Notify,
}

/// An event waiting in a band or in the retry schedule.
#[derive(Debug)]
pub(super) struct Queued {
    event: Arc<Event>,
    /// The event's footprint, counted in [`GroupState::stored_bytes`]
    /// while it is stored.
    bytes: usize,
    /// Deliveries made so far; the next delivery's `attempt` is one more.
    delivered: u32,
    /// Failed attempts (nack, ack timeout), oldest first.
    failures: Vec<Attempt>,
}

impl Queued {
    fn new(event: Arc<Event>, bytes: usize) -> Queued {
        Queued {
            event,
            bytes,
            delivered: 0,
            failures: Vec::new(),
        }
    }

    fn band(&self) -> usize {
        self.event.priority.band()
    }
}

#[derive(Debug)]
struct InFlight {
    queued: Queued,
    consumer: u64,
    deadline: Instant,
}

#[derive(Debug)]
struct Dead {
    id: u64,
    queued: Queued,
    reason: String,
    at: Timestamp,
}

#[derive(Debug)]
struct ConsumerSlot {
    max_in_flight: usize,
    in_flight: usize,
}

#[derive(Debug, Default)]
struct GroupCounters {
    delivered: u64,
    acked: u64,
    retried: u64,
    dead_lettered: u64,
    expired: u64,
    /// Exhausted events dropped because the spec has no dead-letter queue.
    discarded: u64,
    /// Dead letters evicted by `dead_letter_max`.
    evicted: u64,
}

/// The mutable part of a [`Group`], behind its mutex.
pub(super) struct GroupState {
    spec: GroupSpec,
    limits: Limits,
    counters: Arc<Counters>,
    bands: [VecDeque<Queued>; BANDS],
    in_flight: HashMap<u64, InFlight>,
    /// (ack deadline, delivery id) of every in-flight delivery.
    deadlines: BTreeSet<(Instant, u64)>,
    /// (due time, id of the failed delivery) → event waiting for its backoff.
    retries: BTreeMap<(Instant, u64), Queued>,
    dead: VecDeque<Dead>,
    consumers: HashMap<u64, ConsumerSlot>,
    stats: GroupCounters,
    deleted: bool,
    /// Footprint of the stored (queued, in-flight, retrying) events.
    stored_bytes: usize,
}

impl Group {
    pub(super) fn new(spec: GroupSpec, limits: Limits, counters: Arc<Counters>) -> Group {
        Group {
            name: spec.name.clone(),
            state: Mutex::new(GroupState {
                spec,
                limits,
                counters,
                bands: Default::default(),
                in_flight: HashMap::new(),
                deadlines: BTreeSet::new(),
                retries: BTreeMap::new(),
                dead: VecDeque::new(),
                consumers: HashMap::new(),
                stats: GroupCounters::default(),
                deleted: false,
                stored_bytes: 0,
            }),
            notify: Notify::new(),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Locks the state and applies due timeouts and retries, waking
    /// consumers when that made events available.
    fn lock_maintained(&self, now: Instant) -> parking_lot::MutexGuard<'_, GroupState> {
        let mut state = self.state.lock();
        if state.maintain(now) {
            self.notify.notify_waiters();
        }
        state
    }

    /// Fails with [`BrokerError::QueueFull`] unless `n` more events of
    /// `bytes` in all fit under `limits`.
    pub(super) fn check_room(&self, n: usize, bytes: usize, limits: Limits) -> Result<()> {
        let (stored, stored_bytes) = {
            let state = self.state.lock();
            (state.stored(), state.stored_bytes)
        };
        let full = |reason: String| {
            Err(BrokerError::QueueFull {
                subscription: self.name.clone(),
                reason,
            })
        };
        let max = limits.max_queued;
        if max > 0 && stored.saturating_add(n) > max {
            return full(format!(
                "{stored} of {max} events stored; its consumers are not keeping up"
            ));
        }
        let max = limits.max_queued_bytes;
        if max > 0 && stored_bytes.saturating_add(bytes) > max {
            return full(format!(
                "{stored_bytes} of {max} bytes stored and {bytes} more published; \
                 its consumers are not keeping up"
            ));
        }
        Ok(())
    }

    /// Appends events with their footprints to their bands (publish order
    /// within each band).
    pub(super) fn enqueue<'a>(&self, events: impl Iterator<Item = (&'a Arc<Event>, usize)>) {
        {
            let mut state = self.state.lock();
            if state.deleted {
                return;
            }
            for (event, bytes) in events {
                state.store(Queued::new(event.clone(), bytes));
            }
        }
        self.notify.notify_waiters();
    }

    /// Queues replayed events with fresh attempts, as many as fit; returns
    /// how many were queued.
    pub(super) fn replay(&self, events: impl Iterator<Item = Arc<Event>>) -> u64 {
        let queued = {
            let mut state = self.state.lock();
            if state.deleted {
                return 0;
            }
            let mut queued = 0;
            for event in events {
                let bytes = event_footprint(&event);
                if !state.fits(bytes) {
                    break;
                }
                state.store(Queued::new(event, bytes));
                queued += 1;
            }
            queued
        };
        self.notify.notify_waiters();
        queued
    }

    pub(super) fn update_spec(&self, spec: GroupSpec) {
        self.state.lock().spec = spec;
        self.notify.notify_waiters();
    }

    /// Drops everything; consumers then get `UnknownSubscription`.
    pub(super) fn delete(&self) {
        {
            let mut state = self.state.lock();
            state.deleted = true;
            state.bands = Default::default();
            state.in_flight.clear();
            state.deadlines.clear();
            state.retries.clear();
            state.dead.clear();
            state.stored_bytes = 0;
        }
        self.notify.notify_waiters();
    }

    pub(super) fn register_consumer(&self, id: u64, name: &str, max_in_flight: usize) {
        let slot = ConsumerSlot {
            max_in_flight,
            in_flight: 0,
        };
        self.state.lock().consumers.insert(id, slot);
        tracing::debug!(subscription = %self.name, consumer = name, "consumer joined");
    }

    /// Returns a departing consumer's in-flight deliveries to the front of
    /// their bands for immediate redelivery.
    pub(super) fn release_consumer(&self, id: u64) {
        let returned = self.state.lock().release_consumer(id);
        if returned > 0 {
            tracing::debug!(subscription = %self.name, returned, "consumer left; deliveries returned");
        }
        self.notify.notify_waiters();
    }

    /// One attempt of a consumer to take deliveries; never waits.
    ///
    /// # Errors
    /// [`BrokerError::UnknownSubscription`] once the group was deleted.
    pub(super) fn try_take(&self, consumer: u64, ids: &AtomicU64, now: Instant) -> Result<Take> {
        let mut state = self.state.lock();
        if state.deleted {
            return Err(BrokerError::UnknownSubscription(self.name.clone()));
        }
        state.maintain(now);
        let earliest = state.deadlines.first().map(|(at, _)| *at);
        let taken = state.take(consumer, ids, now);
        if taken.is_empty() {
            return Ok(Take::Wait(state.next_wake()));
        }
        // Other consumers may be sleeping past the deadline just created.
        if earliest.is_none_or(|at| now + state.spec.ack_timeout < at) {
            self.notify.notify_waiters();
        }
        Ok(Take::Deliveries(taken))
    }

    pub(super) fn ack(&self, delivery_id: &str, now: Instant) -> Result<()> {
        {
            let mut state = self.lock_maintained(now);
            let (id, flight) = state.take_in_flight(delivery_id)?;
            state.deadlines.remove(&(flight.deadline, id));
            state.release_slot(flight.consumer);
            state.unstore(&flight.queued);
            state.stats.acked += 1;
        }
        self.notify.notify_waiters();
        Ok(())
    }

    pub(super) fn nack(&self, delivery_id: &str, options: NackOptions, now: Instant) -> Result<()> {
        {
            let mut state = self.lock_maintained(now);
            let (id, flight) = state.take_in_flight(delivery_id)?;
            let reason = match options.reason {
                Some(reason) => format!("nack: {reason}"),
                None => "nack".to_string(),
            };
            state.fail(id, flight, reason, options.delay, now);
        }
        self.notify.notify_waiters();
        Ok(())
    }

    pub(super) fn info(&self, now: Instant) -> SubscriptionInfo {
        let state = self.lock_maintained(now);
        let stats = &state.stats;
        SubscriptionInfo {
            spec: state.spec.clone(),
            pending: state.pending() as u64,
            in_flight: state.in_flight.len() as u64,
            retrying: state.retries.len() as u64,
            dead_letters: state.dead.len() as u64,
            consumers: state.consumers.len() as u64,
            delivered: stats.delivered,
            acked: stats.acked,
            retried: stats.retried,
            dead_lettered: stats.dead_lettered,
            expired: stats.expired,
        }
    }

    pub(super) fn dead_letters(&self, limit: usize, now: Instant) -> Vec<DeadLetter> {
        let state = self.lock_maintained(now);
        state
            .dead
            .iter()
            .take(limit)
            .map(|dead| DeadLetter {
                id: dead.id.to_string(),
                subscription: self.name.clone(),
                event: Event::clone(&dead.queued.event),
                reason: dead.reason.clone(),
                attempts: dead.queued.delivered,
                dead_lettered_at: dead.at,
                history: dead.queued.failures.clone(),
            })
            .collect()
    }

    /// Moves selected dead letters back into their bands with fresh
    /// attempts, as many as fit.
    pub(super) fn redrive(&self, selection: &DeadLetterSelection, now: Instant) -> u64 {
        let moved = {
            let mut state = self.lock_maintained(now);
            let selected = Selected::new(selection);
            let mut moved = 0;
            let mut kept = VecDeque::with_capacity(state.dead.len());
            while let Some(dead) = state.dead.pop_front() {
                if !selected.contains(dead.id) || !state.fits(dead.queued.bytes) {
                    kept.push_back(dead);
                    continue;
                }
                state.store(Queued::new(dead.queued.event, dead.queued.bytes));
                moved += 1;
            }
            state.dead = kept;
            moved
        };
        if moved > 0 {
            self.notify.notify_waiters();
        }
        moved
    }

    pub(super) fn purge(&self, selection: &DeadLetterSelection) -> u64 {
        let mut state = self.state.lock();
        let selected = Selected::new(selection);
        let before = state.dead.len();
        state.dead.retain(|dead| !selected.contains(dead.id));
        (before - state.dead.len()) as u64
    }
}

/// Outcome of [`Group::try_take`].
pub(super) enum Take {
    /// Deliveries now in flight to the consumer.
    Deliveries(Vec<Delivery>),
    /// Nothing for this consumer now; try again when notified or at this
    /// instant (the next ack deadline or retry), if any.
    Wait(Option<Instant>),
}

/// Which dead-letter ids a [`DeadLetterSelection`] names.
enum Selected {
    All,
    Ids(HashSet<u64>),
}

impl Selected {
    fn new(selection: &DeadLetterSelection) -> Selected {
        match &selection.ids {
            None => Selected::All,
            // Ids that are not ours select nothing.
            Some(ids) => Selected::Ids(ids.iter().filter_map(|id| id.parse().ok()).collect()),
        }
    }

    fn contains(&self, id: u64) -> bool {
        match self {
            Selected::All => true,
            Selected::Ids(ids) => ids.contains(&id),
        }
    }
}

impl GroupState {
    fn pending(&self) -> usize {
        self.bands.iter().map(VecDeque::len).sum()
    }

    /// Events held for delivery: queued, in flight and retrying.
    fn stored(&self) -> usize {
        self.pending() + self.in_flight.len() + self.retries.len()
    }

    /// Whether one more event of `bytes` fits under the limits.
    fn fits(&self, bytes: usize) -> bool {
        let max = self.limits.max_queued;
        let max_bytes = self.limits.max_queued_bytes;
        (max == 0 || self.stored() < max)
            && (max_bytes == 0 || self.stored_bytes.saturating_add(bytes) <= max_bytes)
    }

    /// Queues a newly stored event at the back of its band.
    fn store(&mut self, queued: Queued) {
        self.stored_bytes += queued.bytes;
        self.bands[queued.band()].push_back(queued);
    }

    /// Accounts for an event that is no longer stored (acked, expired,
    /// dead-lettered or discarded).
    fn unstore(&mut self, queued: &Queued) {
        self.stored_bytes = self.stored_bytes.saturating_sub(queued.bytes);
    }

    /// Applies ack timeouts and moves due retries back into their bands.
    /// Returns whether events became available.
    pub(super) fn maintain(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(flight) = self.in_flight.remove(&id) {
                self.fail(id, flight, "ack timeout".to_string(), None, now);
                changed = true;
            }
        }
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let queued = entry.remove();
            self.bands[queued.band()].push_back(queued);
            changed = true;
        }
        changed
    }

    /// When the next ack deadline or retry falls due.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(at, _)| *at);
        let retry = self.retries.first_key_value().map(|((at, _), _)| *at);
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hands `consumer` as many deliveries as it has free slots, highest
    /// band first, dropping expired events on the way.
    fn take(&mut self, consumer: u64, ids: &AtomicU64, now: Instant) -> Vec<Delivery> {
        let Some(slot) = self.consumers.get_mut(&consumer) else {
            return Vec::new();
        };
        let free = slot.max_in_flight.saturating_sub(slot.in_flight);
        if free == 0 || self.bands.iter().all(VecDeque::is_empty) {
            return Vec::new();
        }
        let wall = Timestamp::now();
        let deadline = now + self.spec.ack_timeout;
        let mut out = Vec::new();
        let mut expired = 0;
        'bands: for band in self.bands.iter_mut().rev() {
            while out.len() < free {
                let Some(mut queued) = band.pop_front() else {
                    continue 'bands;
                };
                if queued.event.is_expired_at(wall) {
                    expired += 1;
                    self.stored_bytes = self.stored_bytes.saturating_sub(queued.bytes);
                    continue;
                }
                let id = ids.fetch_add(1, Ordering::Relaxed);
                queued.delivered += 1;
                out.push(Delivery {
                    subscription: self.spec.name.clone(),
                    delivery_id: id.to_string(),
                    attempt: queued.delivered,
                    event: Event::clone(&queued.event),
                });
                let flight = InFlight {
                    queued,
                    consumer,
                    deadline,
                };
                self.in_flight.insert(id, flight);
                self.deadlines.insert((deadline, id));
            }
            break;
        }
        slot.in_flight += out.len();
        self.stats.delivered += out.len() as u64;
        self.stats.expired += expired;
        crate::telemetry::metrics::metrics().expired(&self.spec.name, expired);
        Counters::add(&self.counters.expired, expired);
        out
    }

    fn take_in_flight(&mut self, delivery_id: &str) -> Result<(u64, InFlight)> {
        delivery_id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.in_flight.remove(&id).map(|flight| (id, flight)))
            .ok_or_else(|| BrokerError::UnknownDelivery(delivery_id.to_string()))
    }

    fn release_slot(&mut self, consumer: u64) {
        if let Some(slot) = self.consumers.get_mut(&consumer) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }

    /// Records a failed attempt, then schedules a retry or dead-letters.
    /// `flight` must already be out of `in_flight`.
    fn fail(
        &mut self,
        id: u64,
        flight: InFlight,
        reason: String,
        delay: Option<Duration>,
        now: Instant,
    ) {
        self.deadlines.remove(&(flight.deadline, id));
        self.release_slot(flight.consumer);
        self.stats.retried += 1;
        let mut queued = flight.queued;
        queued.failures.push(Attempt {
            attempt: queued.delivered,
            at: Timestamp::now(),
            reason: reason.clone(),
        });
        let failures = u32::try_from(queued.failures.len()).unwrap_or(u32::MAX);
        if failures >= self.spec.max_attempts {
            self.dead_letter(queued, reason);
            return;
        }
        let delay =
            delay.unwrap_or_else(|| self.spec.backoff.delay(failures, rand::random::<f64>()));
        if delay.is_zero() {
            self.bands[queued.band()].push_back(queued);
        } else {
            self.retries.insert((now + delay, id), queued);
        }
    }

    fn dead_letter(&mut self, queued: Queued, reason: String) {
        // Dead letters are bounded by `dead_letter_max`, not by the bytes
        // of the queue they left.
        self.unstore(&queued);
        if !self.spec.dead_letter {
            self.stats.discarded += 1;
            tracing::debug!(
                subscription = %self.spec.name,
                event_id = %queued.event.id,
                %reason,
                "attempts exhausted; event discarded (dead_letter is off)"
            );
            return;
        }
        let max = self.limits.dead_letter_max;
        if max > 0
            && self.dead.len() >= max
            && let Some(evicted) = self.dead.pop_front()
        {
            self.stats.evicted += 1;
            tracing::warn!(
                subscription = %self.spec.name,
                event_id = %evicted.queued.event.id,
                evicted_total = self.stats.evicted,
                "dead-letter queue full ({max}); oldest entry evicted"
            );
        }
        self.stats.dead_lettered += 1;
        crate::telemetry::trace::dead_lettered(&self.spec.name, &queued.event, &reason);
        self.dead.push_back(Dead {
            // Unique within the group: the counter only grows.
            id: self.stats.dead_lettered,
            queued,
            reason,
            at: Timestamp::now(),
        });
    }

    fn release_consumer(&mut self, consumer: u64) -> usize {
        let mut mine: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.consumer == consumer)
            .map(|(id, _)| *id)
            .collect();
        // Newest first, so that after pushing each to the front the oldest
        // delivery leads its band again.
        mine.sort_unstable_by(|a, b| b.cmp(a));
        for id in &mine {
            if let Some(flight) = self.in_flight.remove(id) {
                self.deadlines.remove(&(flight.deadline, *id));
                self.bands[flight.queued.band()].push_front(flight.queued);
            }
        }
        self.consumers.remove(&consumer);
        mine.len()
    }
}

#[cfg(test)]
impl Group {
    /// Queues an event without the publish-time checks (TTL, room).
    pub(super) fn enqueue_unchecked(&self, event: Event) {
        let event = Arc::new(event);
        let bytes = event_footprint(&event);
        self.enqueue(std::iter::once((&event, bytes)));
    }

    pub(super) fn discarded_and_evicted(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.stats.discarded, state.stats.evicted)
    }
}
