//! One consumer of a durable subscription on this replica.
//!
//! [`RedisConsumer::next`] fetches as many deliveries as the consumer has
//! free slots, in a spawned task that registers what it took before
//! returning: a caller that cancels `next` loses nothing, the next call
//! picks the result up.
//!
//! A fetch is one pipeline with no script: the subscription's count of
//! returned deliveries, its earliest retry, and one `XREADGROUP … COUNT n`
//! over the ten bands, highest first. Entries beyond `n` (several bands had
//! some) are handed to the `~returned` pseudo-consumer at once. When
//! returned deliveries wait or a retry is due, `fetch.lua` serves them
//! (the slow path: it promotes due retries and takes returned deliveries
//! first, keeping their place). When nothing is ready it waits for a local
//! wake-up (a publish on any replica, an ack, a nack), the next retry's due
//! time, or `poll_interval` (in case a wake-up was lost).
//!
//! Dropping the consumer returns its in-flight deliveries to the front of
//! their bands (ownership moves to a `~returned` pseudo-consumer that
//! fetches serve first), so they are redelivered at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::deliver::{dead_letter_unreadable, drop_expired, give_back, release};
use super::keys::RETURNED;
use super::keys::{BAND_GROUP, BANDS, SubKeys};
use super::subs::{self, Sub};
use super::{Shared, is_nogroup, now_ms};
use crate::broker::{BrokerError, ConsumerHandle, Result};
use crate::event::{Delivery, Event};
use crate::telemetry::trace::{self, StepContext};

/// A delivery a local consumer holds.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// Priority band 1..=10.
    pub(super) band: usize,
    /// Stream id in the band.
    pub(super) entry: String,
    /// When it times out.
    pub(super) deadline: Instant,
    /// The trace the event carried, for the span of an ack timeout.
    pub(super) trace: Option<StepContext>,
}

/// State of a consumer shared with the broker's maintenance loop.
pub(super) struct ConsumerState {
    pub(super) id: u64,
    /// Consumer name in the bands' PELs: `<node>/<id>`, unique per process
    /// incarnation.
    pub(super) pel_name: String,
    /// Name for logs.
    pub(super) display: String,
    /// Subscription name and key id.
    pub(super) sub_name: String,
    pub(super) sid: String,
    pub(super) max_in_flight: usize,
    /// The next fetch takes the slow path (`fetch.lua`).
    slow: std::sync::atomic::AtomicBool,
    /// Delivery id → held delivery.
    pub(super) held: Mutex<HashMap<String, Held>>,
    notify: Arc<Notify>,
}

impl ConsumerState {
    /// Free slots that make a busy consumer fetch again: a quarter of
    /// `max_in_flight` (at least one).
    pub(super) fn refill_at(&self) -> usize {
        (self.max_in_flight / 4).max(1)
    }

    pub(super) fn new(
        id: u64,
        pel_name: String,
        display: String,
        sub: &Sub,
        max_in_flight: usize,
        notify: Arc<Notify>,
    ) -> ConsumerState {
        ConsumerState {
            id,
            pel_name,
            display,
            sub_name: sub.name().to_string(),
            sid: sub.record.sid.clone(),
            max_in_flight,
            // The first fetch serves whatever was returned before.
            slow: std::sync::atomic::AtomicBool::new(true),
            held: Mutex::new(HashMap::new()),
            notify,
        }
    }
}

/// What one fetch produced.
struct Fetched {
    deliveries: Vec<Delivery>,
    /// Time until the next retry falls due, if one is scheduled.
    next_retry: Option<Duration>,
}

/// The [`ConsumerHandle`] of the Redis broker.
pub(super) struct RedisConsumer {
    shared: Arc<Shared>,
    state: Arc<ConsumerState>,
    fetch: Option<JoinHandle<Result<Fetched>>>,
}

impl RedisConsumer {
    pub(super) fn new(shared: Arc<Shared>, state: Arc<ConsumerState>) -> RedisConsumer {
        RedisConsumer {
            shared,
            state,
            fetch: None,
        }
    }

    fn current_sub(&self) -> Result<Arc<Sub>> {
        self.shared
            .subs
            .get(&self.state.sub_name)
            .filter(|s| s.record.sid == self.state.sid)
            .ok_or_else(|| BrokerError::UnknownSubscription(self.state.sub_name.clone()))
    }
}

#[async_trait]
impl ConsumerHandle for RedisConsumer {
    async fn next(&mut self) -> Result<Vec<Delivery>> {
        let poll = self.shared.config.poll_interval;
        let mut backoff = poll;
        loop {
            self.shared.check_open()?;
            let sub = self.current_sub()?;
            let notify = self.state.notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fetch.is_none() {
                let held = self.state.held.lock().len();
                let free = self.state.max_in_flight.saturating_sub(held);
                // Refill in chunks: a fetch per freed slot would cost a round
                // trip per delivery under load.
                if free > 0 && (held == 0 || free >= self.state.refill_at()) {
                    let task = fetch(self.shared.clone(), self.state.clone(), sub, free);
                    self.fetch = Some(tokio::spawn(task));
                }
            }
            let mut wait = poll;
            if let Some(handle) = self.fetch.as_mut() {
                let joined = handle.await;
                self.fetch = None;
                match joined {
                    Ok(Ok(fetched)) => {
                        backoff = poll;
                        if !fetched.deliveries.is_empty() {
                            return Ok(fetched.deliveries);
                        }
                        if let Some(due) = fetched.next_retry {
                            wait = wait.min(due);
                        }
                    }
                    Ok(Err(e @ (BrokerError::UnknownSubscription(_) | BrokerError::Closed))) => {
                        return Err(e);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(consumer = %self.state.display, error = %e, "fetch failed; retrying");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        wait = backoff;
                    }
                    Err(e) => return Err(BrokerError::Internal(format!("fetch task: {e}"))),
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.token.cancelled() => {}
            }
        }
    }

    fn name(&self) -> &str {
        &self.state.display
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        let fetch = self.fetch.take();
        let shared = self.shared.clone();
        let state = self.state.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(f) = fetch {
                        let _ = f.await;
                    }
                    release(&shared, &state).await;
                });
            }
            // No runtime (dropped outside Tokio): the deliveries are
            // reclaimed after `reclaim_idle`.
            Err(_) => shared.deliver.unregister(state.id),
        }
    }
}

async fn run_fetch(
    shared: &Shared,
    state: &ConsumerState,
    sub: &Sub,
    count: usize,
) -> Result<Value> {
    let mut inv = shared.scripts.fetch.prepare_invoke();
    inv.key(sub.keys.info()).key(sub.keys.retry());
    for band in sub.keys.bands() {
        inv.key(band);
    }
    inv.arg(&state.pel_name).arg(count).arg(RETURNED);
    let mut conn = shared.conn();
    shared.call(inv.invoke_async(&mut conn)).await
}

fn bad(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected fetch reply: {what}"))
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref(v).ok()
}

/// Takes up to `count` deliveries and registers them as held: the fast
/// path, falling back to `fetch.lua` when returned deliveries or due
/// retries wait.
async fn fetch(
    shared: Arc<Shared>,
    state: Arc<ConsumerState>,
    sub: Arc<Sub>,
    count: usize,
) -> Result<Fetched> {
    use std::sync::atomic::Ordering;
    if !state.slow.swap(false, Ordering::AcqRel) {
        let fast = match read_bands(&shared, &state, &sub, count).await {
            Err(e) if is_nogroup(&e) => {
                repair(&shared, &sub).await?;
                read_bands(&shared, &state, &sub, count).await?
            }
            other => other?,
        };
        if fast.slow_next {
            state.slow.store(true, Ordering::Release);
        }
        if !fast.fetched.deliveries.is_empty() || !fast.slow_next {
            return Ok(fast.fetched);
        }
        state.slow.store(false, Ordering::Release);
    }
    fetch_slow(shared, state, sub, count).await
}

/// Recreates a subscription's groups after data loss, unless it was deleted.
async fn repair(shared: &Shared, sub: &Sub) -> Result<()> {
    let mut conn = shared.conn();
    let exists: bool = shared
        .call(
            redis::cmd("EXISTS")
                .arg(sub.keys.info())
                .query_async(&mut conn),
        )
        .await?;
    if !exists {
        return Err(BrokerError::UnknownSubscription(sub.name().to_string()));
    }
    subs::init_keys(shared, sub.name(), &sub.keys).await?;
    Ok(())
}

/// What the fast path got.
struct Fast {
    fetched: Fetched,
    /// Returned deliveries wait, or a retry is due: take the slow path.
    slow_next: bool,
}

/// The fast path: one pipeline, no script.
async fn read_bands(
    shared: &Shared,
    state: &ConsumerState,
    sub: &Sub,
    count: usize,
) -> Result<Fast> {
    let keys = &sub.keys;
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(BAND_GROUP)
        .arg(&state.pel_name)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS");
    for band in (1..=BANDS).rev() {
        read.arg(keys.band(band));
    }
    for _ in 0..BANDS {
        read.arg(">");
    }
    let mut pipe = redis::pipe();
    pipe.cmd("HGET").arg(keys.info()).arg("returned");
    pipe.cmd("ZRANGE")
        .arg(keys.retry())
        .arg(0)
        .arg(0)
        .arg("WITHSCORES");
    pipe.add_command(read);
    let mut conn = shared.conn();
    let (returned, next, read): (Option<i64>, Vec<(String, f64)>, Value) =
        shared.call(pipe.query_async(&mut conn)).await?;
    let now = now_ms();
    let next_due = next.first().map(|(_, due)| *due as i64);
    let slow_next = returned.unwrap_or(0) > 0 || next_due.is_some_and(|due| due <= now);
    let next_retry = next_due.map(|due| Duration::from_millis((due - now).max(0) as u64));
    // Highest band first, as listed; at most `count` in all.
    let mut entries = band_entries(keys, read)?;
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut slow_next = slow_next;
    if entries.len() > count {
        let excess: Vec<(usize, String)> = entries
            .drain(count..)
            .map(|(band, e)| (band, e.id))
            .collect();
        let excess: Vec<(usize, &str)> = excess.iter().map(|(b, id)| (*b, id.as_str())).collect();
        give_back(shared, &sub.keys, &state.pel_name, &excess).await?;
        slow_next = true;
    }
    if !entries.is_empty() {
        // Off the delivery's path (a round trip less before the consumer
        // gets its events); the counter is for status, and commands on the
        // shared connection keep their order.
        let mut conn = shared.conn();
        let count = redis::cmd("HINCRBY")
            .arg(keys.info())
            .arg("delivered")
            .arg(entries.len())
            .clone();
        tokio::spawn(async move {
            if let Err(e) = count.query_async::<i64>(&mut conn).await {
                tracing::debug!(error = %e, "delivered counter not updated");
            }
        });
    }
    let mut deliveries = Vec::with_capacity(entries.len());
    let deadline = Instant::now() + sub.spec().ack_timeout;
    for (band, entry) in entries {
        let fields = Fields::of_pairs(&entry.fields);
        if let Some(d) = take(shared, state, sub, band, entry.id, 1, fields, deadline).await? {
            deliveries.push(d);
        }
    }
    Ok(Fast {
        fetched: Fetched {
            deliveries,
            next_retry,
        },
        slow_next,
    })
}

/// One entry of an `XREADGROUP` reply, taken from the reply as it is
/// (converting it through `StreamReadReply` copied every field into a map
/// of its own).
struct Entry {
    id: String,
    /// The flat `[field, value, ...]` list (or a map, over RESP3).
    fields: Value,
}

/// The entries of an `XREADGROUP` reply over the bands, with their band.
fn band_entries(keys: &SubKeys, reply: Value) -> Result<Vec<(usize, Entry)>> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => {
                    let mut kv = kv.into_iter();
                    Ok((
                        kv.next().unwrap_or(Value::Nil),
                        kv.next().unwrap_or(Value::Nil),
                    ))
                }
                _ => Err(bad("stream")),
            })
            .collect::<Result<_>>()?,
        Value::Map(streams) => streams,
        _ => return Err(bad("read reply")),
    };
    let mut out = Vec::new();
    for (key, ids) in streams {
        let Some(band) =
            bytes(&key).and_then(|k| (1..=BANDS).find(|&b| keys.band(b).as_bytes() == k))
        else {
            continue;
        };
        let Value::Array(ids) = ids else {
            continue;
        };
        for entry in ids {
            let Value::Array(pair) = entry else {
                return Err(bad("entry"));
            };
            let mut pair = pair.into_iter();
            let id = pair
                .next()
                .as_ref()
                .and_then(text)
                .ok_or_else(|| bad("id"))?;
            let fields = pair.next().unwrap_or(Value::Nil);
            out.push((band, Entry { id, fields }));
        }
    }
    Ok(out)
}

/// The fields of a band entry that a delivery needs, borrowed from the
/// reply (the event is parsed from the reply's bytes, not from a copy).
#[derive(Default, Clone, Copy)]
struct Fields<'a> {
    /// The event's JSON.
    ev: Option<&'a [u8]>,
    /// Deliveries before it was dead-lettered and redriven.
    dl: Option<&'a Value>,
}

impl<'a> Fields<'a> {
    /// From an entry's flat `[field, value, ...]` list (or a map).
    fn of_pairs(v: &'a Value) -> Fields<'a> {
        let mut fields = Fields::default();
        let mut set = |k: &Value, v: &'a Value| match bytes(k) {
            Some(b"ev") => fields.ev = bytes(v),
            Some(b"dl") => fields.dl = Some(v),
            _ => {}
        };
        match v {
            Value::Array(items) => {
                for pair in items.chunks_exact(2) {
                    set(&pair[0], &pair[1]);
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    set(k, v);
                }
            }
            _ => {}
        }
        fields
    }
}

/// The bytes of a string reply.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Registers one read entry as held and makes its delivery; `None` when
/// it was expired or unreadable (dealt with here).
#[allow(clippy::too_many_arguments)]
async fn take(
    shared: &Shared,
    state: &ConsumerState,
    sub: &Sub,
    band: usize,
    id: String,
    delivered: u32,
    fields: Fields<'_>,
    deadline: Instant,
) -> Result<Option<Delivery>> {
    let event = match fields.ev.map(serde_json::from_slice::<Event>) {
        Some(Ok(event)) => event,
        Some(Err(e)) => {
            let reason = format!("unreadable event: {e}");
            dead_letter_unreadable(shared, sub, band, &id, &reason).await?;
            return Ok(None);
        }
        None => {
            dead_letter_unreadable(shared, sub, band, &id, "entry holds no event").await?;
            return Ok(None);
        }
    };
    if event.ttl.is_some() && event.is_expired() {
        drop_expired(shared, sub, band, &id).await?;
        return Ok(None);
    }
    let before: u32 = fields
        .dl
        .and_then(|d| redis::from_redis_value_ref(d).ok())
        .unwrap_or(0);
    let delivery_id = format!("{band}-{id}");
    state.held.lock().insert(
        delivery_id.clone(),
        Held {
            band,
            entry: id,
            deadline,
            trace: trace::extract(&event.headers),
        },
    );
    Ok(Some(Delivery {
        subscription: sub.name().to_string(),
        delivery_id,
        attempt: before + delivered,
        event,
    }))
}

/// The slow path: `fetch.lua` promotes due retries and serves returned
/// deliveries first.
async fn fetch_slow(
    shared: Arc<Shared>,
    state: Arc<ConsumerState>,
    sub: Arc<Sub>,
    count: usize,
) -> Result<Fetched> {
    let reply = match run_fetch(&shared, &state, &sub, count).await {
        Err(e) if is_nogroup(&e) => {
            subs::init_keys(&shared, sub.name(), &sub.keys).await?;
            run_fetch(&shared, &state, &sub, count).await?
        }
        other => other?,
    };
    let parts = match reply {
        Value::Int(-1) => return Err(BrokerError::UnknownSubscription(sub.name().to_string())),
        Value::Array(parts) if parts.len() == 3 => parts,
        _ => return Err(bad("shape")),
    };
    let Value::Array(entries) = &parts[0] else {
        return Err(bad("entries"));
    };
    let now_ms: i64 = redis::from_redis_value_ref(&parts[2]).map_err(|_| bad("time"))?;
    let next_retry = text(&parts[1])
        .and_then(|s| s.parse::<f64>().ok())
        .map(|due| Duration::from_millis((due as i64 - now_ms).max(0) as u64));
    let deadline = Instant::now() + sub.spec().ack_timeout;
    let mut deliveries = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(e) = entry else {
            return Err(bad("entry"));
        };
        let band: usize = e
            .first()
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .ok_or_else(|| bad("band"))?;
        let id = e.get(1).and_then(text).ok_or_else(|| bad("id"))?;
        let delivered: u32 = e
            .get(2)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or(1);
        let fields = e.get(3).map(Fields::of_pairs).unwrap_or_default();
        if let Some(d) = take(&shared, &state, &sub, band, id, delivered, fields, deadline).await? {
            deliveries.push(d);
        }
    }
    Ok(Fetched {
        deliveries,
        next_retry,
    })
}
