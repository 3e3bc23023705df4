//! The routing loop of one owned partition: ingest entries → the priority
//! bands of every matching durable subscription.
//!
//! The owner reads its partition with `XREADGROUP` (group `router`), checks
//! the config version in the same pipeline (so a subscription created
//! before an event was published is always in the index that routes it),
//! matches the topic trie and filters, runs one `route.lua` per matching
//! subscription for the whole batch (deduplicated by the subscription's
//! high-water mark for the partition, all subscriptions in flight at once),
//! and `XACK`s the batch in the script of its next read.
//!
//! Every read and claim runs in `ingest_read.lua`, which checks the lease
//! token first: a replica that lost its lease (stalled past `lease_ttl`,
//! SIGSTOP/SIGCONT) can read nothing more. On takeover the new owner first
//! claims the previous owner's pending entries (`XAUTOCLAIM … 0`, safe
//! because the lease fenced the old owner) and routes them before reading
//! new ones. A crash between routing and `XACK`
//! only leaves entries pending; the next owner routes them again and the
//! high-water mark drops the duplicates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::streams::{StreamId, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::keys::ROUTER_GROUP;
use super::publish::parse_id;
use super::{Shared, is_nogroup, subs};
use crate::broker::{BrokerError, Result};
use crate::event::Event;

/// Entries routed per batch.
const BATCH: usize = 100;

/// Creates the `router` group on every ingest partition (idempotent).
pub(super) async fn create_groups(shared: &Shared) -> Result<()> {
    for p in 0..shared.keys.partitions() {
        create_group(shared, p).await?;
    }
    Ok(())
}

async fn create_group(shared: &Shared, p: u32) -> Result<()> {
    let mut conn = shared.conn();
    let created: Result<String> = shared
        .call(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(shared.keys.ingest(p))
                .arg(ROUTER_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn),
        )
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(BrokerError::Internal(m)) if m.contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Routes partition `p` while holding its lease `lease` (token), until
/// `token` is cancelled (lease lost or released) or a read finds that the
/// lease has moved on.
pub(super) async fn run(shared: Arc<Shared>, p: u32, lease: String, token: CancellationToken) {
    let mut backoff = shared.config.poll_interval;
    // Take over a previous owner's pending entries, then drain entries
    // pending to us ("0"), then read new ones (">"). Any error starts over.
    let mut claimed = false;
    let mut pending_phase = true;
    let idle_poll = shared.config.poll_interval * 5;
    // Ids of the last routed batch, acked by the next read.
    let mut routed: Vec<String> = Vec::new();
    loop {
        if token.is_cancelled() {
            return;
        }
        let outcome = if claimed {
            let from = if pending_phase { "0" } else { ">" };
            step(&shared, p, &lease, from, &mut routed).await
        } else {
            match claim_pending(&shared, p, &lease).await {
                Ok(true) => {
                    claimed = true;
                    continue;
                }
                Ok(false) => Ok(usize::MAX),
                Err(e) => Err(e),
            }
        };
        let wait = match outcome {
            Ok(usize::MAX) => {
                tracing::info!(partition = p, "partition lease moved on; routing stopped");
                return;
            }
            Ok(0) if pending_phase => {
                pending_phase = false;
                continue;
            }
            Ok(0) => idle_poll,
            Ok(_) => {
                backoff = shared.config.poll_interval;
                continue;
            }
            Err(e) => {
                if is_nogroup(&e) {
                    let _ = create_group(&shared, p).await;
                } else {
                    tracing::warn!(partition = p, error = %e, "routing failed; retrying");
                }
                claimed = false;
                pending_phase = true;
                // Still pending: routed again (and deduplicated) after the
                // claim.
                routed.clear();
                backoff = (backoff * 2).min(Duration::from_secs(2));
                backoff
            }
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = shared.partition_wake[p as usize].notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs `ingest_read.lua`: acks `routed` and reads (`from` = `>` or `0`),
/// or claims (`claim` from `cursor`), as the lease holder. With
/// `version`, the config version is read in the same pipeline, after the
/// entries.
async fn read(
    shared: &Shared,
    p: u32,
    lease: &str,
    (from, cursor): (&str, &str),
    routed: &[String],
    version: bool,
) -> Result<Option<(redis::Value, i64)>> {
    let mut inv = shared.scripts.ingest_read.prepare_invoke();
    inv.key(shared.keys.lease(p))
        .key(shared.keys.ingest(p))
        .arg(lease)
        .arg(&shared.node_id)
        .arg(BATCH)
        .arg(from)
        .arg(cursor)
        .arg(routed);
    let mut pipe = redis::pipe();
    pipe.invoke_script(&inv);
    if version {
        pipe.cmd("GET").arg(shared.keys.cfg_version());
    }
    let mut conn = shared.conn();
    let query = async {
        match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
            // A pipeline does not load scripts (Redis restarted): load it
            // and run the pipeline again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                inv.load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await
            }
            other => other,
        }
    };
    let mut values = shared.call(query).await?;
    let version = match values.get(1) {
        Some(v) => redis::from_redis_value_ref::<Option<i64>>(v)
            .ok()
            .flatten()
            .unwrap_or(0),
        None => 0,
    };
    if values.is_empty() {
        return Err(BrokerError::Internal("empty ingest read reply".into()));
    }
    let value = values.swap_remove(0);
    Ok(match value {
        redis::Value::Int(-1) => None,
        other => Some((other, version)),
    })
}

/// Takes over entries that a previous owner read but did not ack; returns
/// false if the lease is no longer ours.
async fn claim_pending(shared: &Shared, p: u32, lease: &str) -> Result<bool> {
    let mut cursor = "0-0".to_string();
    for _ in 0..10_000 {
        let Some((reply, _)) = read(shared, p, lease, ("claim", &cursor), &[], false).await? else {
            return Ok(false);
        };
        cursor = redis::from_redis_value(reply)
            .map_err(|e| BrokerError::Internal(format!("claim reply: {e}")))?;
        if cursor == "0-0" {
            break;
        }
    }
    Ok(true)
}

/// Acks the previous batch (`routed`), reads and routes one batch, and
/// leaves its ids in `routed`; returns how many entries it read, or
/// `usize::MAX` if the lease is no longer ours.
///
/// The ack of a batch rides on the next read (one round trip less per
/// batch): a batch is acked one read later, and the loop reads again at
/// once after a non-empty batch. A crash in between leaves the batch
/// pending, and the next owner's routing of it is dropped by the
/// high-water marks.
async fn step(
    shared: &Shared,
    p: u32,
    lease: &str,
    from: &str,
    routed: &mut Vec<String>,
) -> Result<usize> {
    // The version is read after the entries, so the index is at least as
    // new as every subscription created before they were published.
    let Some((reply, version)) = read(shared, p, lease, (from, ""), routed, true).await? else {
        return Ok(usize::MAX);
    };
    routed.clear();
    let reply: Option<StreamReadReply> = redis::from_redis_value(reply)
        .map_err(|e| BrokerError::Internal(format!("ingest read reply: {e}")))?;
    let entries: Vec<StreamId> = reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default();
    if entries.is_empty() {
        return Ok(0);
    }
    if version != shared.subs.routes().version {
        subs::reload(shared).await?;
    }
    route_batch(shared, p, &entries).await?;
    routed.extend(entries.iter().map(|e| e.id.clone()));
    Ok(entries.len())
}

/// What routing needs of an ingest entry. The event JSON is only parsed
/// when a filter or a TTL needs it: the topic and priority are fields of
/// their own.
struct Entry<'a> {
    id: &'a str,
    topic: String,
    priority: u8,
    json: String,
    event: Option<Event>,
}

impl<'a> Entry<'a> {
    fn read(entry: &'a StreamId) -> Option<Entry<'a>> {
        let json: String = entry.get("ev")?;
        let fields = entry
            .get::<String>("topic")
            .zip(entry.get::<u8>("prio"))
            .filter(|(_, prio)| (1..=10).contains(prio));
        let (topic, priority, event) = match fields {
            // Serialized events carry `"ttl":` only when they have one.
            Some((topic, prio)) if !json.contains("\"ttl\":") => (topic, prio, None),
            _ => {
                let event: Event = serde_json::from_str(&json).ok()?;
                (event.topic.clone(), event.priority.get(), Some(event))
            }
        };
        Some(Entry {
            id: &entry.id,
            topic,
            priority,
            json,
            event,
        })
    }

    /// The event, parsed on first use; `None` if unreadable.
    fn event(&mut self) -> Option<&Event> {
        if self.event.is_none() {
            self.event = serde_json::from_str(&self.json).ok();
        }
        self.event.as_ref()
    }
}

/// Copies a batch into every matching subscription, one script per
/// subscription (all in flight at once), in ingest order.
async fn route_batch(shared: &Shared, p: u32, entries: &[StreamId]) -> Result<()> {
    let routes = shared.subs.routes();
    if routes.subs.is_empty() {
        return Ok(());
    }
    let now = jiff::Timestamp::now();
    // Subscription index → indices into `read`, in order.
    let mut per_sub: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut read: Vec<Entry<'_>> = Vec::with_capacity(entries.len());
    let mut matched = Vec::new();
    for entry in entries {
        let Some(mut e) = Entry::read(entry) else {
            tracing::warn!(partition = p, id = %entry.id, "unreadable ingest entry skipped");
            continue;
        };
        if e.event
            .as_ref()
            .is_some_and(|ev| ev.ttl.is_some() && ev.is_expired_at(now))
        {
            shared.counters.expired.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        matched.clear();
        routes.trie.matches_into(&e.topic, &mut matched);
        let mut any = false;
        for &i in &matched {
            let selector = &routes.subs[i].spec().selector;
            let pass = selector.filter().is_none()
                || e.event().is_some_and(|ev| selector.matches_filter(ev));
            if pass {
                per_sub.entry(i).or_default().push(read.len());
                any = true;
            }
        }
        if any {
            read.push(e);
        }
    }
    let scripts = per_sub.into_iter().map(|(i, batch)| {
        let sub = &routes.subs[i];
        let mut inv = shared.scripts.route.prepare_invoke();
        inv.key(sub.keys.info()).key(sub.keys.hwm());
        for band in sub.keys.bands() {
            inv.key(band);
        }
        inv.arg(p);
        for &k in &batch {
            let e = &read[k];
            inv.arg(e.id).arg(e.priority).arg(&e.json);
        }
        async move {
            let mut conn = shared.conn();
            let added: i64 = shared.call(inv.invoke_async(&mut conn)).await?;
            if added > 0 {
                shared.deliver.notify(&sub.record.sid);
            }
            Ok::<(), BrokerError>(())
        }
    });
    futures::future::try_join_all(scripts).await?;
    Ok(())
}

/// Waits (at most `command_timeout`) until every entry stored in the ingest
/// partitions before this call has been routed, so that a read right after
/// a publish (`subscription` counters, a new consumer's first fetch) sees
/// it. Gives up silently when a partition has no live owner.
pub(super) async fn barrier(shared: &Shared) -> Result<()> {
    let partitions = shared.keys.partitions();
    let mut pipe = redis::pipe();
    for p in 0..partitions {
        pipe.cmd("XREVRANGE")
            .arg(shared.keys.ingest(p))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let mut conn = shared.conn();
    let tails: Vec<redis::streams::StreamRangeReply> =
        shared.call(pipe.query_async(&mut conn)).await?;
    let mut waiting: Vec<(u32, (u64, u64))> = tails
        .iter()
        .enumerate()
        .filter_map(|(p, t)| Some((p as u32, parse_id(&t.ids.first()?.id)?)))
        .collect();
    let deadline = tokio::time::Instant::now() + shared.config.command_timeout;
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let mut pipe = redis::pipe();
        for (p, _) in &waiting {
            pipe.cmd("XINFO").arg("GROUPS").arg(shared.keys.ingest(*p));
            pipe.cmd("XPENDING")
                .arg(shared.keys.ingest(*p))
                .arg(ROUTER_GROUP);
        }
        let replies: Vec<redis::Value> = match shared.call(pipe.query_async(&mut conn)).await {
            Ok(replies) => replies,
            // The group is being recreated after a Redis restart: its
            // entries are not routed yet.
            Err(e) if is_nogroup(&e) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut still = Vec::new();
        for ((p, tail), pair) in waiting.iter().zip(replies.chunks(2)) {
            let groups: Option<redis::streams::StreamInfoGroupsReply> =
                redis::from_redis_value_ref(&pair[0]).ok();
            let delivered = groups
                .and_then(|g| g.groups.into_iter().find(|g| g.name == ROUTER_GROUP))
                .and_then(|g| parse_id(&g.last_delivered_id));
            let pending: Option<redis::streams::StreamPendingReply> = pair
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            let first_pending = match pending {
                Some(redis::streams::StreamPendingReply::Data(d)) => parse_id(&d.start_id),
                _ => None,
            };
            let read = delivered.is_some_and(|d| d >= *tail);
            let acked = first_pending.is_none_or(|f| f > *tail);
            if !(read && acked) {
                still.push((*p, *tail));
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// The last entry id of every partition now (`0-0` when empty): a new
/// subscription's starting high-water marks, so that it gets exactly the
/// events published after it was created.
pub(super) async fn tails(shared: &Shared) -> Result<Vec<String>> {
    let mut pipe = redis::pipe();
    for p in 0..shared.keys.partitions() {
        pipe.cmd("XREVRANGE")
            .arg(shared.keys.ingest(p))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let mut conn = shared.conn();
    let tails: Vec<redis::streams::StreamRangeReply> =
        shared.call(pipe.query_async(&mut conn)).await?;
    Ok(tails
        .into_iter()
        .map(|t| {
            t.ids
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_string(), |e| e.id)
        })
        .collect())
}
