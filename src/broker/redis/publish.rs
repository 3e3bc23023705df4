//! Publishing: routing at publish, in one transaction, and reading the
//! partitions' history back.
//!
//! An event's partition is the jump hash of its `key`, or of its topic when
//! it has none, so one key's events stay in order. The publishing replica
//! matches every event against its cached routing table (topic trie, then
//! filters) and writes, in one `MULTI`/`EXEC` with no script:
//!
//! - the event into its partition's history stream `er:h:{p}` (fields `ts`,
//!   `ev`; `MAXLEN ~` keeps it bounded, the maintenance loop trims by age);
//! - the event into the priority band of every matching durable
//!   subscription (field `ev`);
//! - `HINCRBY seq` of each partition touched (the published counter);
//! - one `SPUBLISH` per partition of the batch's events (live fan-out; a
//!   replica subscribes only while it has live subscribers, so this costs
//!   little when nobody listens) and one per subscription written to (the
//!   wake-up of consumers on other replicas);
//! - `GET` of each partition's fence.
//!
//! # The fence
//!
//! A subscription change bumps every partition's fence after its record is
//! written and before it returns (and, for a delete, before its keys are
//! dropped). The transaction reads the fence atomically with its writes.
//! When it differs from the generation the routing table was built at, the
//! publisher reloads the table (which is then at least as new as every
//! change that returned before the transaction ran) and compensates before
//! answering: it adds the event to subscriptions that match now and were
//! missed, removes it from those that no longer match, and drops the keys
//! of deleted subscriptions it wrote into (recreated by its `XADD`).
//! Hence a subscription whose creation returned before a publish began
//! gets the event, and one whose deletion returned before gets nothing.
//!
//! History is read back filtered on the events' `time`, never on stream
//! ids, which can run ahead of the wall clock after a failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Value;
use redis::streams::{StreamId, StreamRangeReply};
use tokio::sync::oneshot;

use super::Shared;
use super::keys::partition_of;
use super::subs::{self, Routes, Sub};
use crate::broker::{BrokerError, HistoryEntry, HistoryQuery, PublishOptions, Published, Result};
use crate::event::Event;

/// History reads return this many events when the query's limit is 0.
const DEFAULT_HISTORY_LIMIT: usize = 100;
/// History reads never return more than this many events.
const MAX_HISTORY_LIMIT: usize = 10_000;
/// Replays (limit 0) queue at most this many events.
const MAX_REPLAY: usize = 100_000;
/// Entries read per `XRANGE` page.
const PAGE: usize = 500;

/// The partition an event is stored in.
pub(super) fn partition(shared: &Shared, event: &Event) -> u32 {
    let key = event.key.as_deref().unwrap_or(&event.topic);
    partition_of(key, shared.keys.partitions())
}

/// One event of a publish, as planned.
struct Planned {
    partition: u32,
    json: String,
    /// The event's time (ms), kept beside it for history reads.
    ts: i64,
    band: usize,
    /// Subscriptions (indices into the table) it is written to.
    subs: Vec<usize>,
    /// Stored already within the dedup window: its first history id.
    duplicate_of: Option<String>,
    /// Expired before it could be routed: stored in history only.
    expired: bool,
}

/// Publishes waiting for a transaction (see [`publish_queued`]).
#[derive(Default)]
pub(super) struct Queue {
    waiting: Vec<Queued>,
    /// A writer is running and will take `waiting` next.
    flushing: bool,
}

/// One publish call's events and where its receipts go.
struct Queued {
    events: Vec<Event>,
    tx: oneshot::Sender<Result<Vec<Published>>>,
}

/// Events in one transaction at most, unless one call brings more.
const GROUP_EVENTS: usize = 1024;

/// Stores and routes the events of one publish call (a single publish or
/// a batch that need not be atomic), in one transaction with the calls
/// of other connections that arrive while a transaction is in flight
/// (group commit).
///
/// A connection that waits for each publish before it sends the next is
/// held to one round trip per call, and a transaction per call paid its
/// fixed commands (`MULTI`, `EXEC`, the fence `GET`, the meta `HINCRBY`s,
/// the wake-up `SPUBLISH`es) each time. The first call to find no
/// writer running starts one, which writes what is queued and then, while
/// more arrived meanwhile, the next group. No call waits for company: an
/// idle router writes each alone, at once. Calls are written in the order
/// they were queued: a connection that queues its calls in frame order
/// (the WebSocket session does) has its events stored in that order.
///
/// A group is stored whole or not at all on one Redis, as a batch is;
/// every call of a failed group gets the error.
pub(super) async fn publish_queued(
    shared: &Arc<Shared>,
    events: Vec<Event>,
) -> Result<Vec<Published>> {
    shared.check_open()?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let (tx, rx) = oneshot::channel();
    let lead = {
        let mut queue = shared.publishes.lock();
        queue.waiting.push(Queued { events, tx });
        !std::mem::replace(&mut queue.flushing, true)
    };
    if lead {
        // A task of its own: a publisher that goes away (a dropped HTTP
        // request) must not leave the queue without a writer.
        let shared = shared.clone();
        tokio::spawn(async move { while write_group(&shared).await {} });
    }
    rx.await
        .map_err(|_| BrokerError::Internal("publish group dropped".into()))?
}

/// Writes one group of queued calls; whether more are queued (the writer
/// goes on with them). Clears `flushing` when none are.
async fn write_group(shared: &Shared) -> bool {
    let group: Vec<Queued> = {
        let mut queue = shared.publishes.lock();
        let mut events = 0;
        let n = queue
            .waiting
            .iter()
            .take_while(|q| {
                let take = events == 0 || events + q.events.len() <= GROUP_EVENTS;
                events += q.events.len();
                take
            })
            .count();
        if n == 0 {
            queue.flushing = false;
            return false;
        }
        queue.waiting.drain(..n).collect()
    };
    let mut sizes = Vec::with_capacity(group.len());
    let mut senders = Vec::with_capacity(group.len());
    let mut events = Vec::new();
    for q in group {
        sizes.push(q.events.len());
        senders.push(q.tx);
        events.extend(q.events);
    }
    let total = events.len();
    // Bounded as a caller's own publish was (a caller that gave up used
    // to cancel it): a call that never answers must not hold every later
    // publish behind it. A few calls, each within `command_timeout`, and
    // the optional `WAIT`.
    let limit = shared.config.command_timeout * 4 + shared.config.wait_timeout;
    let outcome = tokio::time::timeout(limit, publish(shared, events, &PublishOptions::default()))
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::Unavailable(format!(
                "publish did not finish within {limit:?}; it may or may not be stored"
            )))
        });
    match outcome {
        Ok(published) if published.len() == total => {
            let mut published = published.into_iter();
            for (tx, n) in senders.into_iter().zip(sizes) {
                let _ = tx.send(Ok(published.by_ref().take(n).collect()));
            }
        }
        Ok(_) => {
            let e = BrokerError::Internal("publish returned the wrong number of results".into());
            for tx in senders {
                let _ = tx.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for tx in senders {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
    let mut queue = shared.publishes.lock();
    if queue.waiting.is_empty() {
        queue.flushing = false;
        false
    } else {
        true
    }
}

/// Stores and routes `events` (see `Broker::publish_batch`: with or without
/// `atomic`, one transaction holds the whole batch).
pub(super) async fn publish(
    shared: &Shared,
    events: Vec<Event>,
    options: &PublishOptions,
) -> Result<Vec<Published>> {
    shared.check_open()?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let routes = shared.subs.routes();
    let atomic_partition =
        (options.atomic && events.len() > 1).then(|| partition(shared, &events[0]));
    let now = jiff::Timestamp::now();
    let mut planned = Vec::with_capacity(events.len());
    let mut matched = Vec::new();
    for event in &events {
        let json = serde_json::to_string(event)
            .map_err(|e| BrokerError::Internal(format!("encode event: {e}")))?;
        let expired = event.ttl.is_some() && event.is_expired_at(now);
        if expired {
            matched.clear();
        } else {
            routes.matching(event, &mut matched);
        }
        planned.push(Planned {
            partition: atomic_partition.unwrap_or_else(|| partition(shared, event)),
            json,
            ts: event.time.as_millisecond(),
            band: usize::from(event.priority.get()),
            subs: matched.clone(),
            duplicate_of: None,
            expired,
        });
    }
    if !shared.config.dedup_window.is_zero() {
        find_duplicates(shared, &events, &mut planned).await?;
    }
    let written = transact(shared, &routes, &events, &planned).await?;
    if written.fences_moved {
        compensate(shared, &routes, &events, &planned, &written).await?;
    }
    if !shared.config.dedup_window.is_zero() {
        remember(shared, &events, &planned, &written.history).await?;
    }
    let expired = planned.iter().filter(|p| p.expired).count() as u64;
    if expired > 0 {
        shared
            .counters
            .expired
            .fetch_add(expired, Ordering::Relaxed);
    }
    Ok(events
        .iter()
        .zip(&planned)
        .zip(written.history)
        .map(|((event, plan), id)| Published {
            id: event.id.clone(),
            partition: plan.partition,
            cursor: format!("{}-{id}", plan.partition),
        })
        .collect())
}

/// What a publish transaction wrote.
struct Written {
    /// History id of every event (the first id of a duplicate).
    history: Vec<String>,
    /// Band entry id per (event index, subscription index); filled only
    /// when `fences_moved` (a compensation needs them).
    bands: HashMap<(usize, usize), String>,
    /// A partition's fence differs from the routing table's.
    fences_moved: bool,
}

/// What a reply inside a transaction's `EXEC` is for.
#[derive(Clone, Copy)]
enum Want {
    /// Nothing to read.
    Skip,
    /// The history id of event `e`.
    History(usize),
    /// The band entry id of event `e` in subscription `i`.
    Band(usize, usize),
    /// The fence of partition `p`.
    Fence(u32),
}

/// One `MULTI`/`EXEC` (and `WAIT`) sent as one pipeline.
struct Txn {
    pipe: redis::Pipeline,
    wants: Vec<Want>,
}

impl Txn {
    fn new() -> Txn {
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI").ignore();
        Txn {
            pipe,
            wants: Vec::new(),
        }
    }

    /// Queues `cmd`; its reply in `EXEC` means `want`.
    fn add(&mut self, cmd: redis::Cmd, want: Want) {
        // `QUEUED`: nothing to read before `EXEC`.
        self.pipe.add_command(cmd).ignore();
        self.wants.push(want);
    }

    /// Closes the transaction, with `WAIT` for `replicas` after it.
    fn finish(
        mut self,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> (redis::Pipeline, Vec<Want>) {
        self.pipe.cmd("EXEC");
        if replicas > 0 {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            self.pipe.cmd("WAIT").arg(replicas).arg(ms);
        }
        (self.pipe, self.wants)
    }
}

/// Which transaction a command goes to: everything in one on a standalone
/// Redis; one per slot on a cluster (a partition's, or a subscription's).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    All,
    Partition(u32),
    Sub(usize),
}

/// Runs the publish transactions (and `WAIT`, when configured).
async fn transact(
    shared: &Shared,
    routes: &Routes,
    events: &[Event],
    planned: &[Planned],
) -> Result<Written> {
    let keys = &shared.keys;
    let cluster = shared.conn().is_cluster();
    let partition_slot = |p: u32| {
        if cluster {
            Slot::Partition(p)
        } else {
            Slot::All
        }
    };
    let sub_slot = |i: usize| if cluster { Slot::Sub(i) } else { Slot::All };
    let cap = shared.config.history_max_len;
    // Transactions in order of first use, so replies map back simply.
    let mut txns: Vec<(Slot, Txn)> = Vec::new();
    fn txn(txns: &mut Vec<(Slot, Txn)>, slot: Slot) -> &mut Txn {
        let at = match txns.iter().position(|(s, _)| *s == slot) {
            Some(at) => at,
            None => {
                txns.push((slot, Txn::new()));
                txns.len() - 1
            }
        };
        &mut txns[at].1
    }
    // Per partition touched: events stored, and the live message.
    let mut partitions: Vec<(u32, u64, String)> = Vec::new();
    // Subscriptions written to, with how many events.
    let mut woken: Vec<(usize, u64)> = Vec::new();
    for (e, plan) in planned.iter().enumerate() {
        if plan.duplicate_of.is_some() {
            continue;
        }
        let mut xadd = redis::cmd("XADD");
        xadd.arg(keys.history(plan.partition));
        if cap > 0 {
            xadd.arg("MAXLEN").arg("~").arg(cap);
        }
        xadd.arg("*")
            .arg("ts")
            .arg(plan.ts)
            .arg("ev")
            .arg(&plan.json);
        txn(&mut txns, partition_slot(plan.partition)).add(xadd, Want::History(e));
        if !shared.config.dedup_window.is_zero() && !cluster {
            // In the transaction, so that a retry after a crash between
            // `EXEC` and the answer finds it; `remember` then stores the
            // history id for the retry's answer. Not on a cluster: there
            // the partition's transaction may succeed while a
            // subscription's fails, and the retry must store it again.
            let window = u64::try_from(shared.config.dedup_window.as_millis()).unwrap_or(u64::MAX);
            let set = redis::cmd("SET")
                .arg(keys.dedup(plan.partition, &events[e].id))
                .arg("")
                .arg("PX")
                .arg(window)
                .clone();
            txn(&mut txns, partition_slot(plan.partition)).add(set, Want::Skip);
        }
        for &i in &plan.subs {
            let mut band = redis::cmd("XADD");
            band.arg(routes.subs[i].keys.band(plan.band))
                .arg("*")
                .arg("ev")
                .arg(&plan.json);
            txn(&mut txns, sub_slot(i)).add(band, Want::Band(e, i));
            match woken.iter_mut().find(|(j, _)| *j == i) {
                Some((_, n)) => *n += 1,
                None => woken.push((i, 1)),
            }
        }
        match partitions.iter_mut().find(|(p, ..)| *p == plan.partition) {
            Some((_, n, live)) => {
                *n += 1;
                live.push('\n');
                live.push_str(&plan.json);
            }
            None => partitions.push((plan.partition, 1, plan.json.clone())),
        }
    }
    for (p, n, live) in &partitions {
        let t = txn(&mut txns, partition_slot(*p));
        t.add(
            redis::cmd("HINCRBY")
                .arg(keys.meta(*p))
                .arg("seq")
                .arg(*n)
                .clone(),
            Want::Skip,
        );
        t.add(
            redis::cmd("SPUBLISH").arg(keys.live(*p)).arg(live).clone(),
            Want::Skip,
        );
        t.add(
            redis::cmd("GET").arg(keys.fence(*p)).clone(),
            Want::Fence(*p),
        );
    }
    for &(i, n) in &woken {
        let sub = &routes.subs[i].keys;
        let t = txn(&mut txns, sub_slot(i));
        t.add(
            redis::cmd("HINCRBY")
                .arg(sub.info())
                .arg("routed")
                .arg(n)
                .clone(),
            Want::Skip,
        );
        t.add(
            redis::cmd("SPUBLISH").arg(sub.wake()).arg("").clone(),
            Want::Skip,
        );
    }
    let wait = shared.config.wait_replicas;
    let runs = txns.into_iter().map(|(_, t)| {
        let (pipe, wants) = t.finish(wait, shared.config.wait_timeout);
        async move {
            let mut conn = shared.publish_conn();
            let replies: Vec<Value> = shared
                .call_within(shared.publish_call_limit(), pipe.query_async(&mut conn))
                .await?;
            Ok::<_, BrokerError>((replies, wants))
        }
    });
    let done = futures::future::try_join_all(runs).await?;
    let bad = |what: &str| BrokerError::Internal(format!("publish transaction: unexpected {what}"));
    let mut written = Written {
        history: vec![String::new(); planned.len()],
        bands: HashMap::new(),
        fences_moved: false,
    };
    let mut short_of_replicas = None;
    let mut execs = Vec::with_capacity(done.len());
    for (replies, wants) in done {
        let mut replies = replies.into_iter();
        let Some(Value::Array(exec)) = replies.next() else {
            return Err(bad("EXEC reply"));
        };
        if wait > 0 {
            let acked: i64 = replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .ok_or_else(|| bad("WAIT reply"))?;
            if acked < i64::from(wait) {
                short_of_replicas = Some(acked);
            }
        }
        if exec.len() != wants.len() {
            return Err(bad("number of replies"));
        }
        execs.push((exec, wants));
    }
    // Fences first: band entry ids are only kept for a compensation.
    for (exec, wants) in &execs {
        for (value, want) in exec.iter().zip(wants) {
            if let Want::Fence(p) = want {
                let fence: Option<i64> =
                    redis::from_redis_value_ref(value).map_err(|_| bad("fence"))?;
                if routes.fences.get(*p as usize).copied().unwrap_or(0) != fence.unwrap_or(0) {
                    written.fences_moved = true;
                }
            }
        }
    }
    for (exec, wants) in execs {
        for (value, want) in exec.into_iter().zip(wants) {
            match want {
                Want::History(e) => {
                    written.history[e] =
                        redis::from_redis_value(value).map_err(|_| bad("history id"))?;
                }
                Want::Band(e, i) if written.fences_moved => {
                    let id = redis::from_redis_value(value).map_err(|_| bad("band id"))?;
                    written.bands.insert((e, i), id);
                }
                Want::Band(..) | Want::Skip | Want::Fence(_) => {}
            }
        }
    }
    for (e, plan) in planned.iter().enumerate() {
        if let Some(first) = &plan.duplicate_of {
            // `#n`: the same id earlier in this batch.
            written.history[e] = match first
                .strip_prefix('#')
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => written
                    .history
                    .get(n)
                    .cloned()
                    .ok_or_else(|| bad("duplicate"))?,
                None => first.clone(),
            };
        }
    }
    for &(i, _) in &woken {
        shared.deliver.notify(&routes.subs[i].record.sid);
    }
    if let Some(acked) = short_of_replicas {
        return Err(BrokerError::Unavailable(format!(
            "stored, but only {acked} of {wait} redis replicas acknowledged it within {:?}; \
             it may be lost if the master fails",
            shared.config.wait_timeout
        )));
    }
    Ok(written)
}

/// The routing config changed under the transaction: reload, and bring the
/// events' placement in line with the new table (see the module doc).
async fn compensate(
    shared: &Shared,
    old: &Routes,
    events: &[Event],
    planned: &[Planned],
    written: &Written,
) -> Result<()> {
    let new = subs::reload(shared).await?;
    let mut cmds: Vec<redis::Cmd> = Vec::new();
    let mut dropped: Vec<Arc<Sub>> = Vec::new();
    let mut woken: Vec<Arc<Sub>> = Vec::new();
    let mut matched = Vec::new();
    for (e, (event, plan)) in events.iter().zip(planned).enumerate() {
        if plan.duplicate_of.is_some() || plan.expired {
            continue;
        }
        new.matching(event, &mut matched);
        // Written under the old table but not wanted by the new one.
        for &i in &plan.subs {
            let sub = &old.subs[i];
            let wanted = matched
                .iter()
                .any(|&j| new.subs[j].record.sid == sub.record.sid);
            if wanted {
                continue;
            }
            if new.by_sid(&sub.record.sid).is_some() {
                if let Some(id) = written.bands.get(&(e, i)) {
                    cmds.push(
                        redis::cmd("XDEL")
                            .arg(sub.keys.band(plan.band))
                            .arg(id)
                            .clone(),
                    );
                    cmds.push(
                        redis::cmd("HINCRBY")
                            .arg(sub.keys.info())
                            .arg("routed")
                            .arg(-1)
                            .clone(),
                    );
                }
            } else if !dropped.iter().any(|d| d.record.sid == sub.record.sid) {
                dropped.push(sub.clone());
            }
        }
        // Wanted by the new table but not written.
        for &j in &matched {
            let sub = &new.subs[j];
            let done = plan
                .subs
                .iter()
                .any(|&i| old.subs[i].record.sid == sub.record.sid);
            if !done {
                cmds.push(
                    redis::cmd("XADD")
                        .arg(sub.keys.band(plan.band))
                        .arg("*")
                        .arg("ev")
                        .arg(&plan.json)
                        .clone(),
                );
                cmds.push(
                    redis::cmd("HINCRBY")
                        .arg(sub.keys.info())
                        .arg("routed")
                        .arg(1)
                        .clone(),
                );
                if !woken.iter().any(|w| w.record.sid == sub.record.sid) {
                    woken.push(sub.clone());
                }
            }
        }
    }
    for sub in &woken {
        cmds.push(redis::cmd("SPUBLISH").arg(sub.keys.wake()).arg("").clone());
    }
    shared.each(cmds).await?;
    for sub in &dropped {
        subs::drop_keys(shared, &sub.keys).await?;
    }
    for sub in &woken {
        shared.deliver.notify(&sub.record.sid);
    }
    tracing::debug!(
        added = woken.len(),
        dropped = dropped.len(),
        "publish raced a subscription change; placement corrected"
    );
    Ok(())
}

/// Marks events whose id was published within the dedup window.
async fn find_duplicates(shared: &Shared, events: &[Event], planned: &mut [Planned]) -> Result<()> {
    let gets = events
        .iter()
        .zip(planned.iter())
        .map(|(event, plan)| {
            redis::cmd("GET")
                .arg(shared.keys.dedup(plan.partition, &event.id))
                .clone()
        })
        .collect();
    let known: Vec<Option<String>> =
        redis::from_redis_value(Value::Array(shared.each(gets).await?))
            .map_err(|e| BrokerError::Internal(format!("dedup reply: {e}")))?;
    let mut first_in_batch: HashMap<&str, usize> = HashMap::new();
    for (i, (event, known)) in events.iter().zip(known).enumerate() {
        match known {
            Some(id) => planned[i].duplicate_of = Some(id),
            None => {
                if let Some(&first) = first_in_batch.get(event.id.as_str()) {
                    // Stored by this batch already: resolved in `remember`.
                    planned[i].duplicate_of = Some(format!("#{first}"));
                } else {
                    first_in_batch.insert(&event.id, i);
                }
            }
        }
    }
    Ok(())
}

/// Records the history id of every newly stored event for the dedup window.
async fn remember(
    shared: &Shared,
    events: &[Event],
    planned: &[Planned],
    history: &[String],
) -> Result<()> {
    let window = u64::try_from(shared.config.dedup_window.as_millis()).unwrap_or(u64::MAX);
    let sets = events
        .iter()
        .zip(planned)
        .zip(history)
        .filter(|((_, plan), _)| plan.duplicate_of.is_none())
        .map(|((event, plan), id)| {
            redis::cmd("SET")
                .arg(shared.keys.dedup(plan.partition, &event.id))
                .arg(id)
                .arg("PX")
                .arg(window)
                .clone()
        })
        .collect();
    shared.each(sets).await?;
    Ok(())
}

/// A stream id as a comparable pair.
pub(super) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Order of history across partitions: stream time, then the event's own
/// time (entries of different partitions can share a stream id), then
/// stream sequence and partition.
type SortKey = (u64, i64, u64, u32);

/// The sort key of a history cursor `<partition>-<ms>-<seq>`; the entry is
/// read for its event time (0 if it was trimmed).
async fn cursor_key(shared: &Shared, cursor: &str) -> Result<Option<SortKey>> {
    let Some((p, id)) = cursor.split_once('-') else {
        return Ok(None);
    };
    let (Some((ms, seq)), Ok(p)) = (parse_id(id), p.parse::<u32>()) else {
        return Ok(None);
    };
    if p >= shared.keys.partitions() {
        return Ok(None);
    }
    let mut conn = shared.conn();
    let found: StreamRangeReply = shared
        .call(
            redis::cmd("XRANGE")
                .arg(shared.keys.history(p))
                .arg(id)
                .arg(id)
                .query_async(&mut conn),
        )
        .await?;
    let ts = found
        .ids
        .first()
        .and_then(|e| e.get::<i64>("ts"))
        .unwrap_or(0);
    Ok(Some((ms, ts, seq, p)))
}

/// The event stored in a history (or band) entry.
pub(super) fn entry_event(entry: &StreamId) -> Option<Event> {
    let json: String = entry.get("ev")?;
    serde_json::from_str(&json).ok()
}

/// Reads retained history, oldest first; `replay` lifts the default page
/// limit (0 = everything, up to a safety cap).
pub(super) async fn history(
    shared: &Shared,
    query: &HistoryQuery,
    replay: bool,
) -> Result<Vec<HistoryEntry>> {
    let limit = match (query.limit, replay) {
        (0, true) => MAX_REPLAY,
        (0, false) => DEFAULT_HISTORY_LIMIT,
        (n, true) => n.min(MAX_REPLAY),
        (n, false) => n.min(MAX_HISTORY_LIMIT),
    };
    let after = match query.after.as_deref() {
        Some(cursor) => cursor_key(shared, cursor).await?,
        None => None,
    };
    let mut found: Vec<(SortKey, HistoryEntry)> = Vec::new();
    for p in 0..shared.keys.partitions() {
        found.extend(scan_partition(shared, p, query, after, limit).await?);
    }
    found.sort_by_key(|a| a.0);
    found.truncate(limit);
    Ok(found.into_iter().map(|(_, h)| h).collect())
}

async fn scan_partition(
    shared: &Shared,
    p: u32,
    query: &HistoryQuery,
    after: Option<SortKey>,
    limit: usize,
) -> Result<Vec<(SortKey, HistoryEntry)>> {
    let key = shared.keys.history(p);
    let mut start = match after {
        // Entries of the same millisecond in other partitions may sort
        // after the cursor (by event time), so start at its millisecond.
        Some((ms, ..)) => format!("{ms}-0"),
        None => "-".to_string(),
    };
    let mut out = Vec::new();
    // Bounded: retention caps the stream, and each page moves `start` on.
    for _ in 0..10_000 {
        let mut conn = shared.conn();
        let page: StreamRangeReply = shared
            .call(
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut conn),
            )
            .await?;
        let n = page.ids.len();
        for entry in &page.ids {
            let Some((ms, seq)) = parse_id(&entry.id) else {
                continue;
            };
            let ts = entry.get::<i64>("ts").unwrap_or(0);
            let sort = (ms, ts, seq, p);
            if after.is_some_and(|a| sort <= a) {
                continue;
            }
            let Some(event) = entry_event(entry) else {
                continue;
            };
            if query.from.is_some_and(|from| event.time < from)
                || query.to.is_some_and(|to| event.time >= to)
                || query.selector.as_ref().is_some_and(|s| !s.matches(&event))
            {
                continue;
            }
            out.push((
                sort,
                HistoryEntry {
                    cursor: format!("{p}-{}", entry.id),
                    event,
                },
            ));
            if out.len() >= limit {
                return Ok(out);
            }
        }
        match page.ids.last() {
            Some(last) if n >= PAGE => start = format!("({}", last.id),
            _ => break,
        }
    }
    Ok(out)
}

/// Cluster-wide (events published since each partition's epoch, events in
/// history).
pub(super) async fn totals(shared: &Arc<Shared>) -> Result<(u64, u64)> {
    let mut cmds = Vec::new();
    for p in 0..shared.keys.partitions() {
        cmds.push(
            redis::cmd("HGET")
                .arg(shared.keys.meta(p))
                .arg("seq")
                .clone(),
        );
        cmds.push(redis::cmd("XLEN").arg(shared.keys.history(p)).clone());
    }
    let values: Vec<Option<u64>> = redis::from_redis_value(Value::Array(shared.each(cmds).await?))
        .map_err(|e| BrokerError::Internal(format!("totals reply: {e}")))?;
    let (mut published, mut len) = (0, 0);
    for pair in values.chunks(2) {
        published += pair[0].unwrap_or(0);
        len += pair.get(1).copied().flatten().unwrap_or(0);
    }
    Ok((published, len))
}
