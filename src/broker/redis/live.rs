//! Sharded pub/sub on one RESP3 connection per replica: live fan-out and
//! the wake-ups of durable consumers.
//!
//! - Live: a publish transaction `SPUBLISH`es its events (JSON, one per
//!   line) on each partition's channel. A replica subscribes to every
//!   partition's channel when its first live subscription arrives, and
//!   that subscription is returned only once Redis has confirmed them, so
//!   every event published after it reaches it. Matching happens locally.
//!   At most once: what is published while the connection is down is not
//!   recovered (durable subscriptions are the way not to miss anything).
//! - Wake-ups: a publish notifies each subscription it wrote into on the
//!   subscription's `wake` channel; a replica subscribes to it when a local
//!   consumer joins, and wakes its local consumers on every message. A lost
//!   wake-up costs at most `poll_interval` of latency.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{Shared, map_err};
use crate::broker::live::Pushed;
use crate::broker::{BrokerError, LiveQueue, LiveStream, LiveSubscription, Result};
use crate::event::Event;
use crate::selector::Selector;
use crate::topic::TopicTrie;

/// Without any message for this long, the connection is probed.
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
    /// Registers a subscription; events published from now on reach it
    /// (call [`ensure_partitions`] first).
    pub(super) fn subscribe(&self, shared: &Arc<Shared>, sub: LiveSubscription) -> LiveStream {
        let id = shared.next_id();
        let guard: Box<dyn Any + Send + Sync> = Box::new(Guard {
            shared: Arc::downgrade(shared),
            id,
        });
        let (queue, stream) = LiveQueue::with_max_bytes(sub.capacity, sub.max_bytes, guard);
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
        let bytes = crate::broker::footprint::event_footprint(&event);
        let event = Arc::new(event);
        let (mut delivered, mut dropped) = (0, 0);
        for id in ids {
            let Some(entry) = inner.subs.get(&id) else {
                continue;
            };
            if !entry.selector.matches_filter(&event) {
                continue;
            }
            match entry.queue.push_sized(event.clone(), bytes) {
                (Pushed::Queued, _) => delivered += 1,
                (Pushed::DroppedOldest, n) => {
                    delivered += 1;
                    dropped += n.max(1);
                }
                (Pushed::Closed, _) => {}
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

/// What a channel carries.
#[derive(Debug, Clone)]
enum Channel {
    /// A partition's live events.
    Live,
    /// A durable subscription's wake-ups, by its key id.
    Wake(String),
}

/// The pub/sub connection and the channels this replica wants.
#[derive(Default)]
pub(super) struct PubSub {
    /// A handle on the current connection (replaced on reconnect).
    conn: Mutex<Option<PubSubConn>>,
    channels: RwLock<HashMap<String, Channel>>,
    /// Serializes subscribing, so that a caller returns only once its
    /// channels are confirmed.
    subscribing: tokio::sync::Mutex<()>,
    /// Partition channels are subscribed.
    live_on: std::sync::atomic::AtomicBool,
    /// Asks the listener to reconnect now (a subscribe found the
    /// connection broken).
    reconnect_now: tokio::sync::Notify,
    /// Bumped after every reconnect that subscribed every wanted channel.
    generation: std::sync::atomic::AtomicU64,
    reconnected: tokio::sync::Notify,
}

/// Opens the pub/sub connection and starts the listener.
///
/// # Errors
/// [`BrokerError::Unavailable`] if Redis cannot be reached.
pub(super) async fn start(shared: &Arc<Shared>) -> Result<()> {
    let (conn, rx) = connect(shared).await?;
    *shared.pubsub.conn.lock() = Some(conn);
    let mut listener = Listener {
        shared: Arc::downgrade(shared),
        rx,
    };
    let token = shared.token.clone();
    shared.tasks.spawn(async move { listener.run(token).await });
    Ok(())
}

/// Subscribes to every partition's live channel (once per replica).
///
/// # Errors
/// [`BrokerError::Unavailable`] if Redis does not confirm in time.
pub(super) async fn ensure_partitions(shared: &Shared) -> Result<()> {
    if shared.pubsub.live_on.load(Ordering::Acquire) {
        return Ok(());
    }
    let _one = shared.pubsub.subscribing.lock().await;
    if shared.pubsub.live_on.load(Ordering::Acquire) {
        return Ok(());
    }
    let channels: Vec<String> = (0..shared.keys.partitions())
        .map(|p| shared.keys.live(p))
        .collect();
    {
        let mut map = shared.pubsub.channels.write();
        for c in &channels {
            map.insert(c.clone(), Channel::Live);
        }
    }
    subscribe_all(shared, &channels).await?;
    shared.pubsub.live_on.store(true, Ordering::Release);
    Ok(())
}

/// Subscribes to a durable subscription's wake channel (once per replica).
///
/// # Errors
/// [`BrokerError::Unavailable`] if Redis does not confirm in time.
pub(super) async fn ensure_wake(shared: &Shared, sid: &str, channel: String) -> Result<()> {
    if shared.pubsub.channels.read().contains_key(&channel) {
        return Ok(());
    }
    let _one = shared.pubsub.subscribing.lock().await;
    if shared.pubsub.channels.read().contains_key(&channel) {
        return Ok(());
    }
    // Wanted from now on, whatever happens below: a reconnect subscribes
    // to every wanted channel.
    shared
        .pubsub
        .channels
        .write()
        .insert(channel.clone(), Channel::Wake(sid.to_string()));
    subscribe_all(shared, std::slice::from_ref(&channel)).await
}

/// Subscribes to `channels`; when the connection is broken, has the
/// listener reconnect (which subscribes to every wanted channel, these
/// included) and waits for it, at most `command_timeout`.
async fn subscribe_all(shared: &Shared, channels: &[String]) -> Result<()> {
    let generation = shared.pubsub.generation.load(Ordering::Acquire);
    let Err(e) = subscribe_on_current(shared, channels).await else {
        return Ok(());
    };
    let reconnected = shared.pubsub.reconnected.notified();
    tokio::pin!(reconnected);
    reconnected.as_mut().enable();
    if shared.pubsub.generation.load(Ordering::Acquire) != generation {
        return Ok(());
    }
    shared.pubsub.reconnect_now.notify_one();
    match tokio::time::timeout(shared.config.command_timeout, reconnected).await {
        Ok(()) => Ok(()),
        Err(_) => Err(e),
    }
}

async fn subscribe_on_current(shared: &Shared, channels: &[String]) -> Result<()> {
    let Some(conn) = shared.pubsub.conn.lock().clone() else {
        return Err(BrokerError::Unavailable(
            "redis pub/sub connection is down".into(),
        ));
    };
    for channel in channels {
        // One channel per command: the connection matches one confirmation
        // to one request.
        match conn.clone() {
            PubSubConn::Single(mut c) => {
                shared
                    .call(
                        redis::cmd("SSUBSCRIBE")
                            .arg(channel)
                            .query_async::<Value>(&mut c),
                    )
                    .await?;
            }
            PubSubConn::Cluster(mut c) => shared.call(c.ssubscribe(channel)).await?,
        }
    }
    Ok(())
}

/// A RESP3 connection whose pushes go to the listener.
#[derive(Clone)]
enum PubSubConn {
    Single(MultiplexedConnection),
    /// Subscribes on the node that owns each channel's slot (and again
    /// after the cluster's topology changes).
    Cluster(redis::cluster_async::ClusterConnection),
}

/// The listener's state.
struct Listener {
    shared: Weak<Shared>,
    rx: UnboundedReceiver<PushInfo>,
}

/// A RESP3 connection whose pushes go to the returned receiver.
async fn connect(shared: &Shared) -> Result<(PubSubConn, UnboundedReceiver<PushInfo>)> {
    let nodes = super::conn::nodes(&shared.config.url);
    if nodes.len() > 1 {
        let (tx, rx) = unbounded_channel();
        let client = redis::cluster::ClusterClientBuilder::new(nodes)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(shared.config.command_timeout)
            .response_timeout(shared.config.command_timeout)
            .build()
            .map_err(|e| BrokerError::Internal(format!("invalid redis cluster urls: {e}")))?;
        let conn = shared.call(client.get_async_connection()).await?;
        return Ok((PubSubConn::Cluster(conn), rx));
    }
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
    let conn = shared
        .call(client.get_multiplexed_async_connection_with_config(&config))
        .await?;
    Ok((PubSubConn::Single(conn), rx))
}

impl Listener {
    async fn run(&mut self, token: tokio_util::sync::CancellationToken) {
        loop {
            // Held while waiting: the broker's drop cancels `token`.
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let push = tokio::select! {
                _ = token.cancelled() => return,
                _ = shared.pubsub.reconnect_now.notified() => {
                    drop(shared);
                    if !self.reconnect(&token).await {
                        return;
                    }
                    continue;
                }
                push = self.rx.recv() => push,
                _ = tokio::time::sleep(QUIET) => {
                    drop(shared);
                    if !self.probe().await && !self.reconnect(&token).await {
                        return;
                    }
                    continue;
                }
            };
            match push {
                Some(PushInfo {
                    kind: PushKind::SMessage,
                    data,
                }) => on_message(&shared, &data),
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

    /// Whether the connection still answers.
    async fn probe(&self) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return true;
        };
        let Some(conn) = shared.pubsub.conn.lock().clone() else {
            return false;
        };
        let ping = redis::cmd("PING");
        match conn {
            PubSubConn::Single(mut c) => shared.call(ping.query_async::<Value>(&mut c)).await,
            PubSubConn::Cluster(mut c) => shared.call(ping.query_async::<Value>(&mut c)).await,
        }
        .is_ok()
    }

    /// Reconnects with backoff and subscribes again to every wanted
    /// channel; wakes every local consumer (wake-ups may have been lost).
    /// Returns false when the broker is gone.
    async fn reconnect(&mut self, token: &tokio_util::sync::CancellationToken) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(shared) = self.shared.upgrade() else {
                return false;
            };
            match connect(&shared).await {
                Ok((conn, rx)) => {
                    *shared.pubsub.conn.lock() = Some(conn);
                    self.rx = rx;
                    let channels: Vec<String> =
                        shared.pubsub.channels.read().keys().cloned().collect();
                    match subscribe_on_current(&shared, &channels).await {
                        Ok(()) => {
                            shared.pubsub.generation.fetch_add(1, Ordering::AcqRel);
                            shared.pubsub.reconnected.notify_waiters();
                            shared.deliver.wake_all();
                            tracing::info!("redis pub/sub resubscribed");
                            return true;
                        }
                        Err(e) => tracing::debug!(error = %e, "pub/sub resubscribe failed"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "pub/sub reconnect failed"),
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

fn on_message(shared: &Shared, data: &[Value]) {
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.first(), data.get(1))
    else {
        return;
    };
    let Some(kind) = std::str::from_utf8(channel)
        .ok()
        .and_then(|c| shared.pubsub.channels.read().get(c).cloned())
    else {
        return;
    };
    match kind {
        Channel::Wake(sid) => shared.deliver.notify(&sid),
        Channel::Live => {
            if shared.live.len() == 0 {
                return;
            }
            for line in payload.split(|&b| b == b'\n') {
                match serde_json::from_slice::<Event>(line) {
                    Ok(event) => shared.live.dispatch(shared, event),
                    Err(e) => tracing::warn!(error = %e, "unreadable live message skipped"),
                }
            }
        }
    }
}
