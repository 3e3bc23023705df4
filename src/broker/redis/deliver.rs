//! Durable delivery out of a subscription's priority bands: ack, nack, ack
//! timeouts, keep-alive, reclaim of dead consumers' deliveries, dead
//! letters and counters.
//!
//! A band entry holds `ev` (the event JSON), `dl` (deliveries made before
//! this entry was written), `nf` (failed attempts so far) and `hist` (the
//! failed attempts as JSON); a first attempt's entry holds only `ev`, the
//! others read as 0, 0 and `[]`. A delivery's attempt number is `dl` plus the
//! entry's delivery count in the band's PEL. A delivery id is
//! `<band>-<stream id>`, so any replica can ack or nack it.
//!
//! An ack is a plain `XACK` (concurrent acks of a subscription go out as
//! one pipeline); the acked entry stays in its band until a trim pass
//! (`trim.lua`, about once a second per subscription with local consumers)
//! cuts every band below its floor: the oldest entry still pending, or the
//! first not yet delivered, whichever comes first. Redis 7.0 has no
//! `XACKDEL`; an `XDEL` per ack cost more than the trim.
//!
//! Ack timeouts are enforced by the replica whose consumer holds the
//! delivery (it knows the deadline); held deliveries are kept alive
//! (owner-checked `XCLAIM … JUSTID`) every third of `reclaim_idle`, so a
//! delivery idle longer than `reclaim_idle` belongs to a dead replica and
//! any replica's janitor fails it as an ack timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use parking_lot::Mutex;
use redis::streams::{StreamPendingReply, StreamRangeReply};
use serde::Deserialize;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::consumer::{ConsumerState, RedisConsumer};
use super::keys::{BAND_GROUP, BANDS, RETURNED, SubKeys};
use super::publish::{entry_event, parse_id};
use super::subs::Sub;
use super::{Shared, now_ms};
use crate::broker::{
    Attempt, BrokerError, ConsumeOptions, Consumer, DeadLetter, DeadLetterQuery,
    DeadLetterSelection, NackOptions, Result, SubscriptionInfo,
};
use crate::event::Event;
use crate::telemetry::trace::StepContext;

/// This replica's consumers and per-subscription wake-ups.
#[derive(Default)]
pub(super) struct Local {
    consumers: Mutex<HashMap<u64, Arc<ConsumerState>>>,
    notifies: Mutex<HashMap<String, Arc<Notify>>>,
    /// Acks waiting to go out, per subscription key id (see [`ack`]).
    acks: Mutex<HashMap<String, AckQueue>>,
}

/// Acks of one subscription queued while another batch is in flight.
#[derive(Default)]
struct AckQueue {
    waiting: Vec<QueuedAck>,
    /// A flush task is running and will take `waiting`.
    flushing: bool,
}

/// One ack waiting to go out.
struct QueuedAck {
    band: usize,
    /// `<band>-<entry id>`, as parsed by [`parse_delivery`].
    delivery_id: String,
    /// Whether it was acked.
    tx: oneshot::Sender<Result<bool>>,
}

impl QueuedAck {
    /// The band entry's id.
    fn id(&self) -> &str {
        self.delivery_id
            .split_once('-')
            .map_or(self.delivery_id.as_str(), |(_, id)| id)
    }
}

/// Acks sent in one pipeline at most.
const ACK_BATCH: usize = 512;

/// Acked entries are trimmed from a subscription's bands this often.
const TRIM_EVERY: Duration = Duration::from_secs(1);

impl Local {
    /// The wake-up of a subscription's local consumers.
    pub(super) fn sub_notify(&self, sid: &str) -> Arc<Notify> {
        self.notifies
            .lock()
            .entry(sid.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Wakes a subscription's local consumers (new entries, freed slots).
    pub(super) fn notify(&self, sid: &str) {
        if let Some(n) = self.notifies.lock().get(sid) {
            n.notify_waiters();
        }
    }

    /// Wakes every local consumer (config change, close).
    pub(super) fn wake_all(&self) {
        for n in self.notifies.lock().values() {
            n.notify_waiters();
        }
    }

    pub(super) fn register(&self, state: Arc<ConsumerState>) {
        self.consumers.lock().insert(state.id, state);
    }

    pub(super) fn unregister(&self, id: u64) {
        self.consumers.lock().remove(&id);
    }

    fn snapshot(&self) -> Vec<Arc<ConsumerState>> {
        self.consumers.lock().values().cloned().collect()
    }

    /// Returns every local consumer's deliveries to their groups.
    pub(super) async fn release_all(&self, shared: &Shared) {
        for state in self.snapshot() {
            release(shared, &state).await;
        }
    }

    /// Forgets a delivery held by a local consumer (acked or failed here).
    /// `None` when no local consumer held it; else whether local consumers
    /// should be woken: the holder now has enough free slots to fetch again
    /// ([`ConsumerState::refill_at`]) or holds nothing.
    fn forget(&self, sid: &str, delivery_id: &str) -> Option<bool> {
        self.consumers
            .lock()
            .values()
            .filter(|c| c.sid == sid)
            .find_map(|c| {
                let mut held = c.held.lock();
                held.remove(delivery_id).map(|_| {
                    let free = c.max_in_flight.saturating_sub(held.len());
                    free == c.refill_at() || held.is_empty()
                })
            })
    }

    /// A locally held delivery whose ack deadline has passed.
    fn overdue(&self, sid: &str, delivery_id: &str) -> Option<Arc<ConsumerState>> {
        let now = Instant::now();
        self.consumers
            .lock()
            .values()
            .filter(|c| c.sid == sid)
            .find(|c| {
                c.held
                    .lock()
                    .get(delivery_id)
                    .is_some_and(|h| h.deadline <= now)
            })
            .cloned()
    }
}

/// Parses `<band>-<stream id>`.
pub(super) fn parse_delivery(delivery_id: &str) -> Result<(usize, &str)> {
    let unknown = || BrokerError::UnknownDelivery(delivery_id.to_string());
    let (band, id) = delivery_id.split_once('-').ok_or_else(unknown)?;
    let band: usize = band.parse().map_err(|_| unknown())?;
    if !(1..=BANDS).contains(&band) || parse_id(id).is_none() {
        return Err(unknown());
    }
    Ok((band, id))
}

/// Joins a subscription as a consumer.
pub(super) async fn consume(
    shared: &Arc<Shared>,
    sub: Arc<Sub>,
    options: ConsumeOptions,
) -> Result<Consumer> {
    // Wake-ups from publishes on other replicas; subscribed before the
    // first fetch so that nothing stored after it goes unnoticed.
    super::live::ensure_wake(shared, &sub.record.sid, sub.keys.wake()).await?;
    let id = shared.next_id();
    let display = if options.name.is_empty() {
        format!("consumer-{id}")
    } else {
        options.name
    };
    let state = Arc::new(ConsumerState::new(
        id,
        format!("{}/{id}", shared.node_id),
        display,
        &sub,
        options.max_in_flight.max(1),
        shared.deliver.sub_notify(&sub.record.sid),
    ));
    heartbeat(shared, &sub, &state.pel_name).await?;
    shared.deliver.register(state.clone());
    Ok(Consumer::new(Box::new(RedisConsumer::new(
        shared.clone(),
        state,
    ))))
}

async fn heartbeat(shared: &Shared, sub: &Sub, pel_name: &str) -> Result<()> {
    let mut conn = shared.conn();
    shared
        .call(
            redis::cmd("HSET")
                .arg(sub.keys.consumers())
                .arg(pel_name)
                .arg(now_ms())
                .query_async::<i64>(&mut conn),
        )
        .await?;
    Ok(())
}

/// Runs `hold.lua` on entries `(band, id)` pending to `owner`: they move
/// to `to`, or with `to` empty only have their idle time reset. Returns
/// the delivery ids that `owner` no longer held.
async fn hold<'a>(
    shared: &Shared,
    keys: &SubKeys,
    owner: &str,
    to: &str,
    entries: impl IntoIterator<Item = (usize, &'a str)>,
) -> Result<Vec<String>> {
    let mut inv = shared.scripts.hold.prepare_invoke();
    for band in keys.bands() {
        inv.key(band);
    }
    inv.arg(owner).arg(to);
    for (band, id) in entries {
        inv.arg(band).arg(id);
    }
    let mut conn = shared.conn();
    shared.call(inv.invoke_async(&mut conn)).await
}

/// Hands entries pending to `owner` to the `~returned` pseudo-consumer,
/// whose deliveries the slow fetch path serves first, and counts them in
/// the subscription's `returned` (so that fetches take that path).
pub(super) async fn give_back(
    shared: &Shared,
    keys: &SubKeys,
    owner: &str,
    entries: &[(usize, &str)],
) -> Result<()> {
    let gone = hold(shared, keys, owner, RETURNED, entries.iter().copied()).await?;
    let returned = entries.len().saturating_sub(gone.len());
    if returned > 0 {
        let mut conn = shared.conn();
        shared
            .call(
                redis::cmd("HINCRBY")
                    .arg(keys.info())
                    .arg("returned")
                    .arg(returned)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
    }
    Ok(())
}

/// Returns a consumer's held deliveries to the front of their bands and
/// removes it from the subscription's consumer list.
pub(super) async fn release(shared: &Shared, state: &ConsumerState) {
    let held: Vec<(String, super::consumer::Held)> = state.held.lock().drain().collect();
    let mut conn = shared.conn();
    if !held.is_empty() {
        let keys = shared.keys.sub(&state.sid);
        let entries: Vec<(usize, &str)> = held
            .iter()
            .map(|(_, h)| (h.band, h.entry.as_str()))
            .collect();
        if let Err(e) = give_back(shared, &keys, &state.pel_name, &entries).await {
            tracing::warn!(consumer = %state.display, error = %e,
                "returning deliveries failed; they are reclaimed after reclaim_idle");
        }
    }
    let _ = shared
        .call(
            redis::cmd("HDEL")
                .arg(shared.keys.sub(&state.sid).consumers())
                .arg(&state.pel_name)
                .query_async::<i64>(&mut conn),
        )
        .await;
    shared.deliver.unregister(state.id);
    shared.deliver.notify(&state.sid);
}

/// Acknowledges a delivery from any replica.
pub(super) async fn ack(shared: &Arc<Shared>, sub: &Arc<Sub>, delivery_id: &str) -> Result<()> {
    let (band, _) = parse_delivery(delivery_id)?;
    let sid = &sub.record.sid;
    if let Some(holder) = shared.deliver.overdue(sid, delivery_id) {
        // Same answer as the memory broker: past its deadline, a delivery
        // is timed out, whether or not the maintenance tick has run.
        expire_one(shared, &holder, delivery_id).await;
        return Err(BrokerError::UnknownDelivery(delivery_id.to_string()));
    }
    // Concurrent acks of one subscription share one round trip: the first
    // starts a flush task, the others join its queue.
    let (tx, rx) = oneshot::channel();
    let start = {
        let mut queues = shared.deliver.acks.lock();
        let queue = queues.entry(sid.clone()).or_default();
        queue.waiting.push(QueuedAck {
            band,
            delivery_id: delivery_id.to_string(),
            tx,
        });
        !std::mem::replace(&mut queue.flushing, true)
    };
    if start {
        tokio::spawn(flush_acks(shared.clone(), sub.clone()));
    }
    let done = rx
        .await
        .map_err(|_| BrokerError::Internal("ack batch dropped".into()))??;
    if done {
        Ok(())
    } else {
        Err(BrokerError::UnknownDelivery(delivery_id.to_string()))
    }
}

/// Sends the queued acks of `sub` in batches until its queue is empty.
///
/// One `XACK` per band carries every distinct id of the batch (a command
/// per id cost Redis about a microsecond each, and the router an encoded
/// command and a reply each). `XACK` answers with a count, not per id:
/// when it acked every id, each ack succeeded; when it acked fewer (an id
/// acked already, or dropped meanwhile), an ack counts as done if a local
/// consumer held its delivery, and as an unknown delivery otherwise. Held
/// deliveries are forgotten here, in batch order, so that of two acks of
/// one delivery only the first is done.
async fn flush_acks(shared: Arc<Shared>, sub: Arc<Sub>) {
    let sid = &sub.record.sid;
    loop {
        let batch: Vec<QueuedAck> = {
            let mut queues = shared.deliver.acks.lock();
            let Some(queue) = queues.get_mut(sid) else {
                return;
            };
            if queue.waiting.is_empty() {
                queues.remove(sid);
                return;
            }
            let n = queue.waiting.len().min(ACK_BATCH);
            queue.waiting.drain(..n).collect()
        };
        // Distinct ids per band, in order; a repeated id is acked once.
        let mut bands: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        let mut repeated = vec![false; batch.len()];
        {
            let mut seen = HashSet::with_capacity(batch.len());
            for (i, ack) in batch.iter().enumerate() {
                if seen.insert((ack.band, ack.id())) {
                    bands.entry(ack.band).or_default().push(ack.id());
                } else {
                    repeated[i] = true;
                }
            }
        }
        let mut pipe = redis::pipe();
        for (band, ids) in &bands {
            pipe.cmd("XACK")
                .arg(sub.keys.band(*band))
                .arg(BAND_GROUP)
                .arg(ids);
        }
        let mut conn = shared.conn();
        let outcome: Result<Vec<usize>> = shared.call(pipe.query_async(&mut conn)).await;
        let counts = match outcome {
            Ok(counts) if counts.len() == bands.len() => counts,
            Ok(_) => {
                let e = BrokerError::Internal(
                    "ack pipeline returned the wrong number of results".into(),
                );
                for ack in batch {
                    let _ = ack.tx.send(Err(e.clone()));
                }
                continue;
            }
            Err(e) => {
                for ack in batch {
                    let _ = ack.tx.send(Err(e.clone()));
                }
                continue;
            }
        };
        let whole: HashMap<usize, bool> = bands
            .iter()
            .zip(&counts)
            .map(|((band, ids), n)| (*band, *n == ids.len()))
            .collect();
        let acked: usize = counts.iter().sum();
        drop(bands);
        let mut wake = false;
        for (ack, repeated) in batch.into_iter().zip(repeated) {
            let forgot = shared.deliver.forget(sid, &ack.delivery_id);
            wake |= forgot.unwrap_or(true);
            let done = !repeated && (whole.get(&ack.band) == Some(&true) || forgot.is_some());
            let _ = ack.tx.send(Ok(done));
        }
        if wake {
            shared.deliver.notify(sid);
        }
        // After the XACKs, and only when something was acked: a blind
        // HINCRBY would recreate the `info` of a subscription deleted
        // meanwhile. Awaited before the next batch, so that counters read
        // after an ack include it; acks arriving meanwhile make the next
        // batch bigger.
        if acked > 0 {
            let _ = shared
                .call(
                    redis::cmd("HINCRBY")
                        .arg(sub.keys.info())
                        .arg("acked")
                        .arg(acked)
                        .query_async::<i64>(&mut conn),
                )
                .await;
        }
    }
}

/// Drops a delivered event whose TTL passed (counted as expired).
pub(super) async fn drop_expired(shared: &Shared, sub: &Sub, band: usize, id: &str) -> Result<()> {
    let mut conn = shared.conn();
    let mut inv = shared.scripts.ack.prepare_invoke();
    inv.key(sub.keys.info())
        .key(sub.keys.band(band))
        .arg(id)
        .arg("expired");
    shared.call(inv.invoke_async::<i64>(&mut conn)).await?;
    shared.counters.expired.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::metrics::metrics().expired(sub.name(), 1);
    Ok(())
}

/// A failure to record: why, and the delay override.
struct Failure<'a> {
    reason: &'a str,
    delay: Option<Duration>,
    /// Only if the delivery is still pending to this consumer...
    owner: &'a str,
    /// ...and has been idle at least this long.
    min_idle: Duration,
    /// The event's trace, for a dead-letter span outside any other span.
    trace: Option<StepContext>,
    /// Dead-letter at once, whatever the attempts (an entry that cannot
    /// be delivered at all).
    now: bool,
}

/// Runs `fail.lua`; returns whether the delivery was pending (and is now
/// retrying, dead-lettered or discarded).
async fn fail(shared: &Shared, sub: &Sub, band: usize, id: &str, f: Failure<'_>) -> Result<bool> {
    let spec = sub.spec();
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let mut inv = shared.scripts.fail.prepare_invoke();
    inv.key(sub.keys.info())
        .key(sub.keys.band(band))
        .key(sub.keys.retry())
        .key(sub.keys.dlq())
        .arg(id)
        .arg(band)
        .arg(f.reason)
        .arg(f.delay.map_or(-1, millis))
        .arg(if f.now { 1 } else { spec.max_attempts })
        .arg(if spec.dead_letter || f.now { "1" } else { "0" })
        .arg(shared.config.dead_letter_max)
        .arg(millis(spec.backoff.initial))
        .arg(millis(spec.backoff.max))
        .arg(spec.backoff.multiplier)
        .arg(spec.backoff.jitter)
        .arg(rand::random::<f64>())
        .arg(f.owner)
        .arg(millis(f.min_idle));
    let mut conn = shared.conn();
    let outcome: i64 = shared.call(inv.invoke_async(&mut conn)).await?;
    if outcome == 2 {
        crate::telemetry::trace::dead_lettered_entry(sub.name(), f.reason, f.trace);
    }
    Ok(outcome != 0)
}

/// Dead-letters a band entry that a consumer just read but that cannot be
/// delivered (its event does not parse): loud, never a silent drop.
pub(super) async fn dead_letter_unreadable(
    shared: &Shared,
    sub: &Sub,
    band: usize,
    id: &str,
    reason: &str,
) -> Result<()> {
    tracing::error!(subscription = %sub.name(), entry = %id, %reason,
        "stored event cannot be delivered; dead-lettered");
    let failure = Failure {
        reason,
        delay: None,
        owner: "",
        min_idle: Duration::ZERO,
        trace: None,
        now: true,
    };
    fail(shared, sub, band, id, failure).await?;
    Ok(())
}

/// Rejects a delivery from any replica.
pub(super) async fn nack(
    shared: &Shared,
    sub: &Sub,
    delivery_id: &str,
    options: NackOptions,
) -> Result<()> {
    let (band, id) = parse_delivery(delivery_id)?;
    let sid = &sub.record.sid;
    if let Some(holder) = shared.deliver.overdue(sid, delivery_id) {
        expire_one(shared, &holder, delivery_id).await;
        return Err(BrokerError::UnknownDelivery(delivery_id.to_string()));
    }
    let reason = match &options.reason {
        Some(r) => format!("nack: {r}"),
        None => "nack".to_string(),
    };
    let failure = Failure {
        reason: &reason,
        delay: options.delay,
        owner: "",
        min_idle: Duration::ZERO,
        // The `nack` span is current: the dead letter is its child.
        trace: None,
        now: false,
    };
    let pending = fail(shared, sub, band, id, failure).await?;
    shared.deliver.forget(sid, delivery_id);
    // A nack can queue a retry: wake every local consumer.
    shared.deliver.notify(sid);
    if pending {
        Ok(())
    } else {
        Err(BrokerError::UnknownDelivery(delivery_id.to_string()))
    }
}

/// Times out one locally held delivery.
async fn expire_one(shared: &Shared, state: &ConsumerState, delivery_id: &str) {
    let Some(held) = state.held.lock().remove(delivery_id) else {
        return;
    };
    let Some(sub) = shared.subs.by_sid(&state.sid) else {
        return;
    };
    let failure = Failure {
        reason: "ack timeout",
        delay: None,
        owner: &state.pel_name,
        min_idle: Duration::ZERO,
        trace: held.trace,
        now: false,
    };
    if let Err(e) = fail(shared, &sub, held.band, &held.entry, failure).await {
        tracing::warn!(subscription = %sub.name(), error = %e,
            "ack timeout not recorded; the delivery is reclaimed later");
    }
    shared.deliver.notify(&state.sid);
}

/// Starts the per-replica maintenance loop: ack timeouts, keep-alive,
/// janitor.
pub(super) fn start_maintenance(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let token = shared.token.clone();
    let tick = (shared.config.poll_interval / 2).max(Duration::from_millis(10));
    let keepalive_every = shared.config.reclaim_idle / 3;
    let janitor_every = shared.config.reclaim_idle / 2;
    shared.tasks.spawn(async move {
        let mut last_keepalive = Instant::now();
        let mut last_janitor = Instant::now();
        let mut last_trim = Instant::now();
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            expire_overdue(&shared).await;
            if last_keepalive.elapsed() >= keepalive_every {
                last_keepalive = Instant::now();
                keep_alive(&shared).await;
            }
            if last_trim.elapsed() >= TRIM_EVERY {
                last_trim = Instant::now();
                trim_local(&shared).await;
                trim_history(&shared).await;
            }
            if last_janitor.elapsed() >= janitor_every {
                last_janitor = Instant::now();
                if let Err(e) = janitor(&shared).await {
                    tracing::debug!(error = %e, "janitor pass failed");
                }
            }
        }
    });
}

async fn expire_overdue(shared: &Shared) {
    let now = Instant::now();
    for state in shared.deliver.snapshot() {
        let overdue: Vec<String> = state
            .held
            .lock()
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for delivery_id in overdue {
            expire_one(shared, &state, &delivery_id).await;
            if shared.failing() {
                // Redis is not answering: each further call would wait out
                // `command_timeout` too. The rest stay held (and overdue)
                // for the next tick.
                return;
            }
        }
    }
}

/// Resets the idle time of held deliveries (owner-checked) and drops the
/// ones that are no longer ours (acked elsewhere, reclaimed after a stall).
async fn keep_alive(shared: &Shared) {
    for state in shared.deliver.snapshot() {
        let Some(sub) = shared.subs.by_sid(&state.sid) else {
            continue;
        };
        let _ = heartbeat(shared, &sub, &state.pel_name).await;
        let held: Vec<(usize, String)> = state
            .held
            .lock()
            .values()
            .map(|h| (h.band, h.entry.clone()))
            .collect();
        if held.is_empty() {
            continue;
        }
        let entries = held.iter().map(|(band, entry)| (*band, entry.as_str()));
        match hold(shared, &sub.keys, &state.pel_name, "", entries).await {
            Ok(gone) if !gone.is_empty() => {
                let mut map = state.held.lock();
                for delivery_id in &gone {
                    map.remove(delivery_id);
                }
                drop(map);
                shared.deliver.notify(&state.sid);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "keep-alive failed"),
        }
    }
}

/// Cuts acked entries out of the bands of every subscription that has a
/// consumer on this replica (others are trimmed by the janitor pass).
async fn trim_local(shared: &Shared) {
    let mut sids: Vec<String> = shared
        .deliver
        .snapshot()
        .iter()
        .map(|c| c.sid.clone())
        .collect();
    sids.sort_unstable();
    sids.dedup();
    for sid in sids {
        if let Some(sub) = shared.subs.by_sid(&sid)
            && let Err(e) = trim(shared, &sub).await
        {
            tracing::debug!(subscription = %sub.name(), error = %e, "trim failed");
        }
    }
}

/// Cuts the acked entries of one subscription's bands (`trim.lua`).
pub(super) async fn trim(shared: &Shared, sub: &Sub) -> Result<()> {
    let mut inv = shared.scripts.trim.prepare_invoke();
    for band in sub.keys.bands() {
        inv.key(band);
    }
    let mut conn = shared.conn();
    shared.call(inv.invoke_async::<i64>(&mut conn)).await?;
    Ok(())
}

/// Trims every partition's history by age (`MINID ~`); the length cap is
/// applied by each publish's `XADD`.
async fn trim_history(shared: &Shared) {
    let age = shared.config.history_max_age;
    if age.is_zero() {
        return;
    }
    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let minid = now_ms().saturating_sub(age).max(1);
    let trims = (0..shared.keys.partitions())
        .map(|p| {
            redis::cmd("XTRIM")
                .arg(shared.keys.history(p))
                .arg("MINID")
                .arg("~")
                .arg(minid)
                .clone()
        })
        .collect();
    if let Err(e) = shared.each(trims).await {
        tracing::debug!(error = %e, "history age trim failed");
    }
}

/// Fails deliveries idle longer than `reclaim_idle` (their consumer's
/// replica is dead) as ack timeouts.
async fn janitor(shared: &Shared) -> Result<()> {
    let min_idle = shared.config.reclaim_idle;
    let idle_ms = i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX);
    for sub in shared.subs.all() {
        for band in 1..=BANDS {
            let mut conn = shared.conn();
            let pending: redis::streams::StreamPendingCountReply = match shared
                .call(
                    redis::cmd("XPENDING")
                        .arg(sub.keys.band(band))
                        .arg(BAND_GROUP)
                        .arg("IDLE")
                        .arg(idle_ms)
                        .arg("-")
                        .arg("+")
                        .arg(100)
                        .query_async(&mut conn),
                )
                .await
            {
                Ok(p) => p,
                // Not answering: the other bands would wait it out too.
                Err(e @ BrokerError::Unavailable(_)) => return Err(e),
                Err(_) => continue,
            };
            for p in pending.ids.iter().filter(|p| p.consumer != RETURNED) {
                let failure = Failure {
                    reason: "ack timeout",
                    delay: None,
                    owner: &p.consumer,
                    min_idle,
                    // This replica never read the event: a dead letter
                    // here starts a trace of its own.
                    trace: None,
                    now: false,
                };
                if fail(shared, &sub, band, &p.id, failure).await? {
                    tracing::info!(subscription = %sub.name(), consumer = %p.consumer,
                        "delivery of a dead consumer reclaimed");
                }
            }
        }
        forget_dead_consumers(shared, &sub).await?;
        trim(shared, &sub).await?;
    }
    Ok(())
}

/// Deletes consumers of `sub` that are dead (no heartbeat for
/// `reclaim_idle`) and hold nothing from the bands' groups (`janitor.lua`).
async fn forget_dead_consumers(shared: &Shared, sub: &Sub) -> Result<()> {
    let idle = i64::try_from(shared.config.reclaim_idle.as_millis()).unwrap_or(i64::MAX);
    let mut inv = shared.scripts.janitor.prepare_invoke();
    inv.key(sub.keys.consumers());
    for band in sub.keys.bands() {
        inv.key(band);
    }
    inv.arg(now_ms().saturating_sub(idle))
        .arg(idle)
        .arg(RETURNED);
    let mut conn = shared.conn();
    let removed: i64 = shared.call(inv.invoke_async(&mut conn)).await?;
    if removed > 0 {
        tracing::debug!(subscription = %sub.name(), removed, "dead consumers forgotten");
    }
    Ok(())
}

/// Spec and counters of a subscription.
pub(super) async fn info(shared: &Shared, sub: &Sub) -> Result<SubscriptionInfo> {
    let keys = &sub.keys;
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL").arg(keys.info());
    pipe.cmd("ZCARD").arg(keys.retry());
    pipe.cmd("XLEN").arg(keys.dlq());
    pipe.cmd("HGETALL").arg(keys.consumers());
    for band in keys.bands() {
        pipe.cmd("XINFO").arg("GROUPS").arg(&band);
    }
    let mut conn = shared.conn();
    type Head = (HashMap<String, String>, u64, u64, HashMap<String, i64>);
    let (head, groups): (Head, Vec<Option<redis::streams::StreamInfoGroupsReply>>) = {
        let values: Vec<redis::Value> = shared.call(pipe.query_async(&mut conn)).await?;
        let mut it = values.into_iter();
        let parse_err = |e: redis::ParsingError| BrokerError::Internal(format!("info reply: {e}"));
        let mut next = || it.next().unwrap_or(redis::Value::Nil);
        let counters = redis::from_redis_value(next()).map_err(parse_err)?;
        let retry = redis::from_redis_value(next()).map_err(parse_err)?;
        let dlq = redis::from_redis_value(next()).map_err(parse_err)?;
        let consumers = redis::from_redis_value(next()).map_err(parse_err)?;
        // A missing band (data loss) reads as an error: nothing stored.
        let groups = (0..BANDS)
            .map(|_| redis::from_redis_value(next()).ok())
            .collect();
        ((counters, retry, dlq, consumers), groups)
    };
    let (counters, retrying, dead_letters, consumers) = head;
    let mut in_flight = 0u64;
    let mut returned = 0u64;
    for band in keys.bands() {
        let reply: Result<StreamPendingReply> = shared
            .call(
                redis::cmd("XPENDING")
                    .arg(&band)
                    .arg(BAND_GROUP)
                    .query_async(&mut conn),
            )
            .await;
        if let Ok(StreamPendingReply::Data(data)) = reply {
            in_flight += data.count as u64;
            returned += data
                .consumers
                .iter()
                .filter(|c| c.name == RETURNED)
                .map(|c| c.pending as u64)
                .sum::<u64>();
        }
    }
    let in_flight = in_flight.saturating_sub(returned);
    let mut undelivered = 0u64;
    for (band, reply) in keys.bands().iter().zip(&groups) {
        let group = reply
            .as_ref()
            .and_then(|r| r.groups.iter().find(|g| g.name == BAND_GROUP));
        undelivered += match group.and_then(|g| g.lag) {
            Some(lag) => lag as u64,
            None => count_after(shared, band, group.map(|g| g.last_delivered_id.as_str())).await?,
        };
    }
    let alive_after = now_ms() - i64::try_from(shared.config.reclaim_idle.as_millis()).unwrap_or(0);
    let get = |k: &str| counters.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(SubscriptionInfo {
        spec: sub.spec().clone(),
        pending: undelivered + returned,
        in_flight,
        retrying,
        dead_letters,
        consumers: consumers.values().filter(|&&at| at >= alive_after).count() as u64,
        delivered: get("delivered"),
        acked: get("acked"),
        retried: get("retried"),
        dead_lettered: get("dead_lettered"),
        expired: get("expired"),
    })
}

/// Entries of a band after `last` (all when `None`), when Redis cannot
/// tell the group's lag (entries deleted after its position). Counted up to
/// a bound: this is for status, not for delivery.
async fn count_after(shared: &Shared, band: &str, last: Option<&str>) -> Result<u64> {
    const MAX_COUNT: usize = 100_000;
    let start = last.map_or_else(|| "-".to_string(), |id| format!("({id}"));
    let mut conn = shared.conn();
    let page: StreamRangeReply = shared
        .call(
            redis::cmd("XRANGE")
                .arg(band)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(MAX_COUNT)
                .query_async(&mut conn),
        )
        .await?;
    Ok(page.ids.len() as u64)
}

#[derive(Deserialize)]
struct HistItem {
    attempt: u32,
    at_ms: i64,
    reason: String,
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Lists dead letters, oldest first.
pub(super) async fn dead_letters(
    shared: &Shared,
    sub: &Sub,
    query: DeadLetterQuery,
) -> Result<Vec<DeadLetter>> {
    let limit = if query.limit == 0 { 100 } else { query.limit };
    let mut conn = shared.conn();
    let page: StreamRangeReply = shared
        .call(
            redis::cmd("XRANGE")
                .arg(sub.keys.dlq())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn),
        )
        .await?;
    let mut out = Vec::with_capacity(page.ids.len());
    for entry in &page.ids {
        let Some(event) = entry_event(entry).or_else(|| unreadable_event(entry)) else {
            continue;
        };
        let hist: String = entry.get("hist").unwrap_or_else(|| "[]".into());
        let history = serde_json::from_str::<Vec<HistItem>>(&hist)
            .unwrap_or_default()
            .into_iter()
            .map(|h| Attempt {
                attempt: h.attempt,
                at: ts(h.at_ms),
                reason: h.reason,
            })
            .collect();
        out.push(DeadLetter {
            id: entry.id.clone(),
            subscription: sub.name().to_string(),
            event,
            reason: entry.get("reason").unwrap_or_default(),
            attempts: entry.get("att").unwrap_or(0),
            dead_lettered_at: ts(entry.get("at").unwrap_or(0)),
            history,
        });
    }
    Ok(out)
}

/// What a dead letter whose stored event does not parse shows instead:
/// an event of type [`UNREADABLE_TOPIC`] whose payload holds the stored
/// text as `raw`, so that it can be listed, inspected and purged.
fn unreadable_event(entry: &redis::streams::StreamId) -> Option<Event> {
    let raw: String = entry.get("ev")?;
    Event::new(UNREADABLE_TOPIC, serde_json::json!({ "raw": raw })).ok()
}

/// Type of the stand-in event of an unreadable dead letter.
const UNREADABLE_TOPIC: &str = "router.unreadable";

/// Valid stream ids of a selection (`None` = all).
fn selected_ids(selection: &DeadLetterSelection) -> Option<Vec<&str>> {
    selection.ids.as_ref().map(|ids| {
        ids.iter()
            .map(String::as_str)
            .filter(|id| parse_id(id).is_some())
            .collect()
    })
}

/// Moves dead letters back into their bands with fresh attempts.
pub(super) async fn redrive(
    shared: &Shared,
    sub: &Sub,
    selection: DeadLetterSelection,
) -> Result<u64> {
    let ids = selected_ids(&selection);
    if ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(0);
    }
    let mut total = 0u64;
    // "All" moves at most 10 000 per script call; loop until drained.
    for _ in 0..1_000 {
        let mut inv = shared.scripts.redrive.prepare_invoke();
        inv.key(sub.keys.dlq());
        for band in sub.keys.bands() {
            inv.key(band);
        }
        if let Some(ids) = &ids {
            for id in ids {
                inv.arg(*id);
            }
        }
        let mut conn = shared.conn();
        let moved: u64 = shared.call(inv.invoke_async(&mut conn)).await?;
        total += moved;
        if ids.is_some() || moved < 10_000 {
            break;
        }
    }
    if total > 0 {
        shared.deliver.notify(&sub.record.sid);
    }
    Ok(total)
}

/// Deletes dead letters.
pub(super) async fn purge(
    shared: &Shared,
    sub: &Sub,
    selection: DeadLetterSelection,
) -> Result<u64> {
    let mut conn = shared.conn();
    match selected_ids(&selection) {
        Some(ids) if ids.is_empty() => Ok(0),
        Some(ids) => {
            shared
                .call(
                    redis::cmd("XDEL")
                        .arg(sub.keys.dlq())
                        .arg(ids)
                        .query_async(&mut conn),
                )
                .await
        }
        None => {
            shared
                .call(
                    redis::cmd("XTRIM")
                        .arg(sub.keys.dlq())
                        .arg("MAXLEN")
                        .arg(0)
                        .query_async(&mut conn),
                )
                .await
        }
    }
}

/// Queues events into a subscription with fresh attempts (replay).
pub(super) async fn enqueue(
    shared: &Shared,
    sub: &Sub,
    events: impl Iterator<Item = Event>,
) -> Result<u64> {
    let events: Vec<Event> = events.collect();
    let mut total = 0u64;
    for chunk in events.chunks(500) {
        let mut inv = shared.scripts.enqueue.prepare_invoke();
        inv.key(sub.keys.info());
        for band in sub.keys.bands() {
            inv.key(band);
        }
        for event in chunk {
            let json = serde_json::to_string(event)
                .map_err(|e| BrokerError::Internal(format!("encode event: {e}")))?;
            inv.arg(event.priority.get()).arg(json);
        }
        let mut conn = shared.conn();
        let n: i64 = shared.call(inv.invoke_async(&mut conn)).await?;
        if n < 0 {
            return Err(BrokerError::UnknownSubscription(sub.name().to_string()));
        }
        total += n as u64;
    }
    if total > 0 {
        shared.deliver.notify(&sub.record.sid);
    }
    Ok(total)
}
