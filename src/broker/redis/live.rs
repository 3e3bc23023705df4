//! Live fan-out: every replica `SSUBSCRIBE`s to every partition's shard
//! channel and matches locally (REDIS.md §3.6).
//!
//! A message is `seq:epoch:stream id:event JSON`. Per partition the
//! listener remembers the last (epoch, seq, id) it delivered: a message
//! with a sequence gap (a lost message, a reconnect) is preceded by a
//! catch-up `XRANGE` of the ingest stream; duplicates are skipped; a new
//! epoch (Redis lost its data) resets the position. After a reconnect, and
//! whenever the channel has been quiet for a while, every partition is
//! compared with its `meta.seq` and caught up.
//!
//! The same messages wake the router of a partition this replica owns.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::publish::{entry_event, parse_id};
use super::{Shared, map_err};
use crate::broker::live::Pushed;
use crate::broker::{BrokerError, LiveQueue, LiveStream, LiveSubscription, Result};
use crate::event::Event;
use crate::selector::Selector;
use crate::topic::TopicTrie;

/// Catch-up reads at most this many entries per partition at once.
const CATCH_UP_MAX: usize = 1000;
/// Without any message for this long, partitions are checked for missed
/// messages and the connection is probed.
const QUIET: Duration = Duration::from_secs(2);

struct Entry {
    selector: Selector,
    queue: LiveQueue,
}

#[derive(Default)]
struct Inner {
    trie: TopicTrie<u64>,
    subs: HashMap<u64, Entry>,
    closed: bool,
}

/// This replica's live subscriptions.
#[derive(Default)]
pub(super) struct LiveIndex {
    inner: RwLock<Inner>,
}

/// Unregisters a live subscription when its stream is dropped.
struct Guard {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut inner = shared.live.inner.write();
            if let Some(entry) = inner.subs.remove(&self.id) {
                for pattern in entry.selector.patterns() {
                    inner.trie.remove(pattern, &self.id);
                }
            }
        }
    }
}

impl LiveIndex {
    /// Registers a subscription; events published from now on reach it.
    pub(super) fn subscribe(&self, shared: &Arc<Shared>, sub: LiveSubscription) -> LiveStream {
        let id = shared.next_id();
        let guard: Box<dyn Any + Send + Sync> = Box::new(Guard {
            shared: Arc::downgrade(shared),
            id,
        });
        let (queue, stream) = LiveQueue::new(sub.capacity, guard);
        let mut inner = self.inner.write();
        if inner.closed {
            queue.close();
            return stream;
        }
        for pattern in sub.selector.patterns() {
            inner.trie.insert(pattern, id);
        }
        inner.subs.insert(
            id,
            Entry {
                selector: sub.selector,
                queue,
            },
        );
        stream
    }

    /// Ends every stream (broker closed).
    pub(super) fn close_all(&self) {
        let mut inner = self.inner.write();
        inner.closed = true;
        for entry in inner.subs.values() {
            entry.queue.close();
        }
        inner.subs.clear();
        inner.trie = TopicTrie::new();
    }

    /// Open live subscriptions.
    pub(super) fn len(&self) -> usize {
        self.inner.read().subs.len()
    }

    fn dispatch(&self, shared: &Shared, event: Event) {
        let inner = self.inner.read();
        if inner.subs.is_empty() || (event.ttl.is_some() && event.is_expired()) {
            return;
        }
        let mut ids = Vec::new();
        inner.trie.matches_into(&event.topic, &mut ids);
        if ids.is_empty() {
            return;
        }
        let event = Arc::new(event);
        let (mut delivered, mut dropped) = (0, 0);
        for id in ids {
            let Some(entry) = inner.subs.get(&id) else {
                continue;
            };
            if !entry.selector.matches_filter(&event) {
                continue;
            }
            match entry.queue.push(event.clone()) {
                Pushed::Queued => delivered += 1,
                Pushed::DroppedOldest => {
                    delivered += 1;
                    dropped += 1;
                }
                Pushed::Closed => {}
            }
        }
        shared
            .counters
            .delivered_live
            .fetch_add(delivered, Ordering::Relaxed);
        shared
            .counters
            .dropped
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Where the listener is in one partition.
#[derive(Debug, Clone, Default)]
struct Position {
    epoch: Option<String>,
    seq: i64,
    /// Last stream id seen ("" before any).
    id: String,
}

/// The listener's state.
struct Listener {
    shared: Weak<Shared>,
    channels: HashMap<String, u32>,
    positions: Vec<Position>,
    /// Kept so the connection stays open; pushes arrive on `rx`.
    _conn: MultiplexedConnection,
    rx: UnboundedReceiver<PushInfo>,
}

/// Subscribes to every partition channel and starts the listener.
///
/// # Errors
/// [`BrokerError::Unavailable`] if the subscription cannot be made.
pub(super) async fn start(shared: &Arc<Shared>) -> Result<()> {
    let (conn, rx) = subscribe(shared).await?;
    let channels = (0..shared.keys.partitions())
        .map(|p| (shared.keys.live(p), p))
        .collect();
    let mut listener = Listener {
        shared: Arc::downgrade(shared),
        channels,
        positions: vec![Position::default(); shared.keys.partitions() as usize],
        _conn: conn,
        rx,
    };
    listener.init_positions(shared).await?;
    let token = shared.token.clone();
    shared.tasks.spawn(async move { listener.run(token).await });
    Ok(())
}

/// A RESP3 connection subscribed to every partition channel.
async fn subscribe(
    shared: &Shared,
) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>)> {
    let info = shared
        .config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| BrokerError::Internal(format!("invalid redis url: {e}")))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings)).map_err(map_err)?;
    let (tx, rx) = unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_push_sender(tx)
        .set_connection_timeout(Some(shared.config.command_timeout))
        .set_response_timeout(Some(shared.config.command_timeout));
    let mut conn = shared
        .call(client.get_multiplexed_async_connection_with_config(&config))
        .await?;
    for p in 0..shared.keys.partitions() {
        // One channel per command: the connection matches one confirmation
        // to one request.
        shared
            .call(
                redis::cmd("SSUBSCRIBE")
                    .arg(shared.keys.live(p))
                    .query_async::<Value>(&mut conn),
            )
            .await?;
    }
    Ok((conn, rx))
}

/// Whether stream id `a` is after `b` (`b` empty: nothing seen yet).
fn newer_id(a: &str, b: &str) -> bool {
    match (parse_id(a), parse_id(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Splits `seq:epoch:id:json`.
fn parse_message(payload: &[u8]) -> Option<(i64, &str, &str, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, ':');
    let seq = parts.next()?.parse().ok()?;
    Some((seq, parts.next()?, parts.next()?, parts.next()?))
}

impl Listener {
    async fn init_positions(&mut self, shared: &Shared) -> Result<()> {
        for p in 0..shared.keys.partitions() {
            let mut conn = shared.conn();
            let (epoch, last): (Option<String>, StreamRangeReply) = shared
                .call(
                    redis::pipe()
                        .cmd("HGET")
                        .arg(shared.keys.meta(p))
                        .arg("epoch")
                        .cmd("XREVRANGE")
                        .arg(shared.keys.ingest(p))
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut conn),
                )
                .await?;
            let pos = &mut self.positions[p as usize];
            pos.epoch = epoch;
            if let Some(entry) = last.ids.first() {
                pos.id = entry.id.clone();
                pos.seq = entry.get::<i64>("seq").unwrap_or(0);
            }
        }
        Ok(())
    }

    async fn run(&mut self, token: tokio_util::sync::CancellationToken) {
        loop {
            let push = tokio::select! {
                _ = token.cancelled() => return,
                push = self.rx.recv() => push,
                _ = tokio::time::sleep(QUIET) => {
                    self.quiet().await;
                    continue;
                }
            };
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            match push {
                Some(PushInfo {
                    kind: PushKind::SMessage,
                    data,
                }) => {
                    self.on_message(&shared, &data).await;
                }
                Some(PushInfo {
                    kind: PushKind::Disconnection,
                    ..
                })
                | None => {
                    drop(shared);
                    if !self.reconnect(&token).await {
                        return;
                    }
                }
                Some(_) => {}
            }
        }
    }

    async fn on_message(&mut self, shared: &Shared, data: &[Value]) {
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (data.first(), data.get(1))
        else {
            return;
        };
        let Some(&p) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.channels.get(c))
        else {
            return;
        };
        shared.partition_wake[p as usize].notify_one();
        let Some((seq, epoch, id, json)) = parse_message(payload) else {
            return;
        };
        let pos = &mut self.positions[p as usize];
        if pos.epoch.as_deref().is_some_and(|e| e != epoch) {
            tracing::warn!(
                partition = p,
                "partition epoch changed (redis lost data); live position reset"
            );
            *pos = Position::default();
        }
        if seq <= pos.seq && newer_id(id, &pos.id) {
            // Same epoch, older sequence, newer entry: Redis came back from
            // an AOF that missed its last writes (`appendfsync everysec`).
            // Follow the new sequence instead of dropping everything until
            // it catches up with the old one.
            tracing::warn!(
                partition = p,
                "partition sequence went back (redis restarted without its last writes)"
            );
            *pos = Position {
                epoch: Some(epoch.to_string()),
                seq: seq - 1,
                id: String::new(),
            };
        }
        if seq > self.positions[p as usize].seq + 1 {
            self.catch_up(shared, p).await;
        }
        let pos = &mut self.positions[p as usize];
        if seq <= pos.seq {
            return;
        }
        *pos = Position {
            epoch: Some(epoch.to_string()),
            seq,
            id: id.to_string(),
        };
        // Every message also wakes the partition's router; only parse the
        // event when someone here listens live.
        if shared.live.len() == 0 {
            return;
        }
        if let Ok(event) = serde_json::from_str::<Event>(json) {
            shared.live.dispatch(shared, event);
        }
    }

    /// Delivers entries of partition `p` after the last position.
    async fn catch_up(&mut self, shared: &Shared, p: u32) {
        let pos = self.positions[p as usize].clone();
        let start = if pos.id.is_empty() {
            "-".to_string()
        } else {
            format!("({}", pos.id)
        };
        let mut conn = shared.conn();
        let page: Result<StreamRangeReply> = shared
            .call(
                redis::cmd("XRANGE")
                    .arg(shared.keys.ingest(p))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(CATCH_UP_MAX)
                    .query_async(&mut conn),
            )
            .await;
        let Ok(page) = page else { return };
        for entry in &page.ids {
            let seq = entry.get::<i64>("seq").unwrap_or(0);
            let pos = &mut self.positions[p as usize];
            if seq <= pos.seq {
                continue;
            }
            pos.seq = seq;
            pos.id = entry.id.clone();
            if let Some(event) = entry_event(entry) {
                shared.live.dispatch(shared, event);
            }
        }
    }

    /// No message for a while: catch up partitions whose `seq` moved on
    /// without us (messages lost silently).
    async fn quiet(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut pipe = redis::pipe();
        for p in 0..shared.keys.partitions() {
            pipe.cmd("HGET").arg(shared.keys.meta(p)).arg("seq");
        }
        let mut conn = shared.conn();
        let Ok(seqs) = shared
            .call(pipe.query_async::<Vec<Option<i64>>>(&mut conn))
            .await
        else {
            return;
        };
        for (p, seq) in seqs.into_iter().enumerate() {
            if seq.unwrap_or(0) > self.positions[p].seq {
                self.catch_up(&shared, p as u32).await;
            }
        }
    }

    /// Reconnects with backoff, then catches up every partition. Returns
    /// false when the broker is gone.
    async fn reconnect(&mut self, token: &tokio_util::sync::CancellationToken) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(shared) = self.shared.upgrade() else {
                return false;
            };
            match subscribe(&shared).await {
                Ok((conn, rx)) => {
                    self._conn = conn;
                    self.rx = rx;
                    for p in 0..shared.keys.partitions() {
                        self.catch_up(&shared, p).await;
                    }
                    tracing::info!("live fan-out resubscribed");
                    return true;
                }
                Err(e) => tracing::debug!(error = %e, "live resubscribe failed"),
            }
            drop(shared);
            tokio::select! {
                _ = token.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
