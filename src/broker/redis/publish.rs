//! Publishing into ingest partitions, and reading them back as history.
//!
//! An event's partition is the jump hash of its `key`, or of its topic when
//! it has none, so one key's events stay in order. Each ingest entry holds
//! `eid, topic, key, prio, ts, seq, ev` (`ev` is the whole event as JSON).
//! History is the ingest streams themselves, trimmed by age (`MINID ~`) and
//! length (`MAXLEN ~`); it is filtered on the events' `time`, never on
//! stream ids, which can run ahead of the wall clock after a failover.

use std::sync::Arc;

use redis::streams::{StreamId, StreamRangeReply};

use super::keys::partition_of;
use super::{Shared, now_ms};
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

/// Stores `events` (see `Broker::publish_batch` for grouping and atomicity).
pub(super) async fn publish(
    shared: &Shared,
    events: Vec<Event>,
    options: &PublishOptions,
) -> Result<Vec<Published>> {
    shared.check_open()?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // (partition, indices of its events in input order), in order of first
    // appearance.
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    if options.atomic && events.len() > 1 {
        groups.push((partition(shared, &events[0]), (0..events.len()).collect()));
    } else {
        for (i, event) in events.iter().enumerate() {
            let p = partition(shared, event);
            match groups.iter_mut().find(|(gp, _)| *gp == p) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((p, vec![i])),
            }
        }
    }
    // One script per partition, all in flight at once (pipelined on the
    // shared connection); each partition's events stay in order.
    let stores = groups
        .iter()
        .map(|(p, idx)| store(shared, *p, idx.iter().map(|&i| &events[i])));
    let stored = futures::future::try_join_all(stores).await?;
    let mut out: Vec<Option<Published>> = vec![None; events.len()];
    for ((p, idx), stored) in groups.into_iter().zip(stored) {
        for (&i, (id, _seq)) in idx.iter().zip(stored) {
            out[i] = Some(Published {
                id: events[i].id.clone(),
                partition: p,
                cursor: format!("{p}-{id}"),
            });
        }
    }
    out.into_iter()
        .map(|p| {
            p.ok_or_else(|| BrokerError::Internal("publish script returned too few ids".into()))
        })
        .collect()
}

/// Runs the publish script for events of one partition; returns their
/// (stream id, seq).
async fn store<'a>(
    shared: &Shared,
    partition: u32,
    events: impl Iterator<Item = &'a Event>,
) -> Result<Vec<(String, i64)>> {
    let keys = &shared.keys;
    let mut inv = shared.scripts.publish.prepare_invoke();
    inv.key(keys.ingest(partition))
        .key(keys.meta(partition))
        .key(keys.live(partition));
    let minid = if shared.config.history_max_age.is_zero() {
        "0".to_string()
    } else {
        let age = i64::try_from(shared.config.history_max_age.as_millis()).unwrap_or(i64::MAX);
        now_ms().saturating_sub(age).max(1).to_string()
    };
    let epoch = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let events: Vec<&Event> = events.collect();
    let window = u64::try_from(shared.config.dedup_window.as_millis()).unwrap_or(u64::MAX);
    if window > 0 {
        for event in &events {
            inv.key(keys.dedup(partition, &event.id));
        }
    }
    inv.arg(epoch)
        .arg(minid)
        .arg(shared.config.history_max_len)
        .arg(events.len())
        .arg(window);
    for event in &events {
        let json = serde_json::to_string(event)
            .map_err(|e| BrokerError::Internal(format!("encode event: {e}")))?;
        inv.arg(&event.id)
            .arg(&event.topic)
            .arg(event.key.as_deref().unwrap_or(""))
            .arg(event.priority.get())
            .arg(event.time.as_millisecond())
            .arg(json);
    }
    let mut conn = shared.conn();
    let flat: Vec<redis::Value> = shared.call(inv.invoke_async(&mut conn)).await?;
    let mut out = Vec::with_capacity(events.len());
    for pair in flat.chunks(2) {
        let id: String = redis::from_redis_value_ref(&pair[0])
            .map_err(|e| BrokerError::Internal(format!("publish reply: {e}")))?;
        let seq: i64 = pair
            .get(1)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or(0);
        out.push((id, seq));
    }
    Ok(out)
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
                .arg(shared.keys.ingest(p))
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

/// The event stored in an ingest (or band) entry.
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
    let key = shared.keys.ingest(p);
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
    let mut pipe = redis::pipe();
    for p in 0..shared.keys.partitions() {
        pipe.cmd("HGET").arg(shared.keys.meta(p)).arg("seq");
        pipe.cmd("XLEN").arg(shared.keys.ingest(p));
    }
    let mut conn = shared.conn();
    let values: Vec<Option<u64>> = shared.call(pipe.query_async(&mut conn)).await?;
    let (mut published, mut len) = (0, 0);
    for pair in values.chunks(2) {
        published += pair[0].unwrap_or(0);
        len += pair.get(1).copied().flatten().unwrap_or(0);
    }
    Ok((published, len))
}
