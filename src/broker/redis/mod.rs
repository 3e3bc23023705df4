//! The Redis broker: the same [`Broker`] contract as the memory broker,
//! shared by every router replica that points at one Redis (DESIGN §6,
//! REDIS.md §3).
//!
//! # Layout
//!
//! - [`keys`]: key names and hash tags (one slot per transaction or script).
//! - [`subs`]: durable subscriptions in the `{cfg}` hash, cached per
//!   replica, and the per-partition fences that changes bump.
//! - [`publish`]: routing at publish in one `MULTI`/`EXEC` (no script),
//!   the fence check and its compensation, history and replay.
//! - `purge`: deleting retained history by event time.
//! - `streams`: event streams (append with a version check, read, follow).
//! - [`deliver`]: consumers, ack/nack, ack timeouts, keep-alive, reclaim of
//!   dead consumers' deliveries, dead letters, trimming of acked entries.
//! - [`live`]: live fan-out and consumer wake-ups over sharded pub/sub.
//! - `scripts/*.lua`: the multi-step changes off the publish path (fetch,
//!   failure, keep-alive, redrive, janitor, trim).
//!
//! # What happens on a crash
//!
//! - A publish is answered only after its transaction ran: a replica that
//!   dies before has stored all of it or nothing (one Redis), and its
//!   client did not get `202`.
//! - A replica that dies loses nothing else: its consumers' deliveries stop
//!   being kept alive and are reclaimed after `reclaim_idle` as failed
//!   attempts (ack timeout).
//! - Redis restarting without persistence loses data; consumer groups are
//!   recreated on `NOGROUP`.

pub(crate) mod conn;
mod consumer;
mod deliver;
mod keys;
mod live;
mod membership;
mod publish;
mod purge;
mod streams;
mod subs;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::{RedisError, Script};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppendOptions, Appended, StreamPage, StreamRead};
use super::{
    Broker, BrokerError, BrokerStats, Capabilities, ConsumeOptions, Consumer, DeadLetter,
    DeadLetterQuery, DeadLetterSelection, GroupSpec, HistoryEntry, HistoryPurge, HistoryQuery,
    LiveStream, LiveSubscription, NackOptions, PublishOptions, Published, Result, SubscriptionInfo,
};
use crate::event::Event;

use conn::Conn;
use keys::Keys;

/// Configuration of the [`RedisBroker`].
#[derive(Debug, Clone, PartialEq)]
pub struct RedisBrokerConfig {
    /// `redis://[user:password@]host:port[/db]`, or several node URLs
    /// separated by commas for a Redis Cluster (any reachable subset of its
    /// nodes; the rest is discovered). Required.
    pub url: String,
    /// History partitions: the unit of per-key order in history and of
    /// spreading over Redis Cluster slots. Every replica of a cluster must
    /// use the same value. Default 16.
    pub partitions: u32,
    /// Prefix of every key; deployments (or tests) with different prefixes
    /// share nothing. Default `er`.
    pub key_prefix: String,
    /// Replicas heartbeat into the membership set every fifth of this; a
    /// replica without a heartbeat for two thirds of it is shown as gone.
    /// Default 15 s.
    pub membership_ttl: Duration,
    /// This replica's id in membership and consumer names. Empty
    /// (the default) generates one per process incarnation, so a restarted
    /// replica never inherits a dead one's deliveries.
    pub node_id: String,
    /// How long events stay in history (history streams are trimmed with
    /// `MINID ~` about once a second, so a little longer). Default 1 h;
    /// zero means no age limit.
    pub history_max_age: Duration,
    /// Most events kept per partition (`MAXLEN ~`). Default 100 000; zero
    /// means no length limit.
    pub history_max_len: usize,
    /// Most dead letters per subscription (`MAXLEN ~`, oldest evicted).
    /// Default 100 000; zero means unbounded.
    pub dead_letter_max: usize,
    /// Producer dedup window: an event whose id was published within this
    /// long is not stored again (its first stream position is returned),
    /// so a publisher that retries after a lost confirmation does not
    /// duplicate it. Costs one key per event for the window and a read
    /// before each publish transaction. Default zero: off.
    pub dedup_window: Duration,
    /// Redis replicas that must acknowledge a publish (`WAIT`) before it is
    /// answered; fewer within `wait_timeout` fails the publish with
    /// [`BrokerError::Unavailable`] (the event is stored on the master and
    /// may survive). Default 0: off.
    pub wait_replicas: u32,
    /// How long a publish waits for `wait_replicas`. Default 1 s.
    pub wait_timeout: Duration,
    /// Bound of every Redis call; a call that takes longer fails with
    /// [`BrokerError::Unavailable`] (publish never hangs). Default 2 s.
    pub command_timeout: Duration,
    /// Idle consumers poll this often in case a wake-up was lost (every
    /// publish wakes them through pub/sub). Default 100 ms.
    pub poll_interval: Duration,
    /// Replicas re-read the routing config this often. Default 1 s.
    pub config_poll: Duration,
    /// A delivery held this long without keep-alive belongs to a dead
    /// replica and is reclaimed as a failed attempt (ack timeout). Live
    /// consumers keep their deliveries alive every third of it. Default 30 s.
    pub reclaim_idle: Duration,
}

impl RedisBrokerConfig {
    /// Default of [`Self::partitions`].
    pub const DEFAULT_PARTITIONS: u32 = 16;
    /// Default of [`Self::key_prefix`].
    pub const DEFAULT_KEY_PREFIX: &'static str = "er";
    /// Default of [`Self::membership_ttl`].
    pub const DEFAULT_MEMBERSHIP_TTL: Duration = Duration::from_secs(15);
    /// Default of [`Self::history_max_age`].
    pub const DEFAULT_HISTORY_MAX_AGE: Duration = Duration::from_secs(3600);
    /// Default of [`Self::history_max_len`].
    pub const DEFAULT_HISTORY_MAX_LEN: usize = 100_000;
    /// Default of [`Self::dead_letter_max`].
    pub const DEFAULT_DEAD_LETTER_MAX: usize = 100_000;
    /// Default of [`Self::command_timeout`].
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default of [`Self::poll_interval`].
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
    /// Default of [`Self::config_poll`].
    pub const DEFAULT_CONFIG_POLL: Duration = Duration::from_secs(1);
    /// Default of [`Self::reclaim_idle`].
    pub const DEFAULT_RECLAIM_IDLE: Duration = Duration::from_secs(30);
    /// Default of [`Self::wait_timeout`].
    pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> RedisBrokerConfig {
        RedisBrokerConfig {
            url: url.into(),
            partitions: Self::DEFAULT_PARTITIONS,
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_string(),
            membership_ttl: Self::DEFAULT_MEMBERSHIP_TTL,
            node_id: String::new(),
            history_max_age: Self::DEFAULT_HISTORY_MAX_AGE,
            history_max_len: Self::DEFAULT_HISTORY_MAX_LEN,
            dead_letter_max: Self::DEFAULT_DEAD_LETTER_MAX,
            dedup_window: Duration::ZERO,
            wait_replicas: 0,
            wait_timeout: Self::DEFAULT_WAIT_TIMEOUT,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            config_poll: Self::DEFAULT_CONFIG_POLL,
            reclaim_idle: Self::DEFAULT_RECLAIM_IDLE,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(BrokerError::Internal(format!(
                "invalid redis config: {what}"
            )))
        };
        if self.partitions == 0 || self.partitions > 1024 {
            return bad("partitions must be 1..=1024");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return bad("key_prefix must be non-empty and free of braces");
        }
        if self.membership_ttl < Duration::from_millis(100) {
            return bad("membership_ttl must be at least 100 ms");
        }
        if self.wait_replicas > 0 && self.wait_timeout.is_zero() {
            return bad("wait_timeout must be greater than zero when wait_replicas is set");
        }
        if self.command_timeout.is_zero() || self.poll_interval.is_zero() {
            return bad("command_timeout and poll_interval must be greater than zero");
        }
        if self.reclaim_idle < Duration::from_millis(30) || self.config_poll.is_zero() {
            return bad("reclaim_idle must be at least 30 ms and config_poll non-zero");
        }
        Ok(())
    }
}

/// Broker over Redis Streams, consumer groups and sharded pub/sub; any
/// number of router replicas can share one Redis.
///
/// Connect with [`RedisBroker::connect`]; it starts background tasks
/// (membership, the pub/sub listener, ack timeouts, keep-alive, trimming)
/// that stop on [`Broker::close`] or drop. Close gracefully to hand
/// in-flight deliveries back at once; a dropped broker's are reclaimed
/// after `reclaim_idle`.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), event_router::broker::BrokerError> {
/// use event_router::broker::{RedisBroker, RedisBrokerConfig};
///
/// let broker = RedisBroker::connect(RedisBrokerConfig::new("redis://127.0.0.1:6379/")).await?;
/// # Ok(()) }
/// ```
pub struct RedisBroker {
    shared: Arc<Shared>,
}

/// State shared by the broker handle, its background tasks and consumers.
pub(super) struct Shared {
    config: RedisBrokerConfig,
    keys: Keys,
    node_id: String,
    /// Replaced when a cluster connection stays unavailable (see
    /// [`Shared::call`]).
    conn: parking_lot::RwLock<Conn>,
    /// With `wait_replicas`, publish transactions (which end in `WAIT`) go
    /// over a connection of their own: `WAIT` holds the connection it is
    /// sent on until the replicas answer, and on the shared multiplexed
    /// connection every other command to that node (fetches, acks,
    /// health) queued behind it. A replica that stopped acknowledging
    /// (resyncing after a failover) held each publish for the whole
    /// `wait_timeout`, and the queue behind grew until every call timed
    /// out, for good.
    publish_conn: Option<parking_lot::RwLock<Conn>>,
    /// When a call last succeeded (ms since the Unix epoch), and whether a
    /// reconnect is under way.
    last_ok_ms: AtomicI64,
    /// When a call last failed (ms since the Unix epoch).
    last_err_ms: AtomicI64,
    /// When a call last failed as unavailable (a timeout, a refused
    /// connection), and when the run of such failures without a pause of
    /// two command timeouts began (0: none).
    last_unavailable_ms: AtomicI64,
    unavailable_since_ms: AtomicI64,
    reconnecting: AtomicBool,
    scripts: Scripts,
    subs: subs::Registry,
    live: live::LiveIndex,
    pubsub: live::PubSub,
    deliver: deliver::Local,
    /// Publishes waiting for a transaction (group commit).
    publishes: parking_lot::Mutex<publish::Queue>,
    token: CancellationToken,
    tasks: TaskTracker,
    closed: AtomicBool,
    counters: Counters,
    next_id: AtomicU64,
}

/// Per-replica counters (live fan-out is local to each replica).
#[derive(Debug, Default)]
struct Counters {
    delivered_live: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
}

/// Every Lua script, loaded once; `Script` re-sends its body on `NOSCRIPT`
/// (after a Redis restart or failover).
struct Scripts {
    fetch: Script,
    ack: Script,
    fail: Script,
    hold: Script,
    sub_init: Script,
    cfg_put: Script,
    redrive: Script,
    enqueue: Script,
    janitor: Script,
    trim: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            fetch: Script::new(include_str!("scripts/fetch.lua")),
            ack: Script::new(include_str!("scripts/ack.lua")),
            fail: Script::new(include_str!("scripts/fail.lua")),
            hold: Script::new(include_str!("scripts/hold.lua")),
            sub_init: Script::new(include_str!("scripts/sub_init.lua")),
            cfg_put: Script::new(include_str!("scripts/cfg_put.lua")),
            redrive: Script::new(include_str!("scripts/redrive.lua")),
            enqueue: Script::new(include_str!("scripts/enqueue.lua")),
            janitor: Script::new(include_str!("scripts/janitor.lua")),
            trim: Script::new(include_str!("scripts/trim.lua")),
        }
    }
}

/// Maps a Redis error to the broker's: connection trouble and a server that
/// cannot take writes are `Unavailable` (retry later), the rest `Internal`.
pub(super) fn map_err(e: RedisError) -> BrokerError {
    const TRANSIENT: [&str; 8] = [
        "OOM",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "READONLY",
        "NOREPLICAS",
    ];
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code().is_some_and(|c| TRANSIENT.contains(&c));
    if transient {
        BrokerError::Unavailable(format!("redis: {e}"))
    } else {
        BrokerError::Internal(format!("redis: {e}"))
    }
}

/// Whether a Redis error says a consumer group is missing (data loss).
pub(super) fn is_nogroup(e: &BrokerError) -> bool {
    matches!(e, BrokerError::Internal(m) if m.contains("NOGROUP"))
}

/// Checks a few times per `command_timeout` whether the cluster connection
/// must be rebuilt ([`Shared::maybe_reconnect`]). A task of its own: the
/// maintenance loop, which did this, can spend many command timeouts in
/// one pass while Redis does not answer, and a connection that never
/// recovered then waited minutes for its rebuild.
fn start_reconnect_watch(shared: &Arc<Shared>) {
    if !shared.conn.read().is_cluster() {
        return;
    }
    let weak = Arc::downgrade(shared);
    let token = shared.token.clone();
    let tick = (shared.config.command_timeout / 4).max(Duration::from_millis(50));
    shared.tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            shared.maybe_reconnect();
        }
    });
}

/// Milliseconds since the Unix epoch on this host.
pub(super) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Shared {
    /// Runs one Redis call, bounded by `command_timeout`.
    pub(super) async fn call<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        self.call_within(self.config.command_timeout, fut).await
    }

    /// Runs one Redis call, bounded by `limit`.
    pub(super) async fn call_within<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => {
                self.last_ok_ms.store(now_ms(), Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                let e = map_err(e);
                self.note_failure(matches!(e, BrokerError::Unavailable(_)));
                Err(e)
            }
            Err(_) => {
                self.note_failure(true);
                Err(BrokerError::Unavailable(format!(
                    "redis did not answer within {limit:?}"
                )))
            }
        }
    }

    fn note_failure(&self, unavailable: bool) {
        let now = now_ms();
        self.last_err_ms.store(now, Ordering::Relaxed);
        if unavailable {
            let last = self.last_unavailable_ms.swap(now, Ordering::Relaxed);
            if now - last > self.pause_ms() {
                self.unavailable_since_ms.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Two command timeouts (ms): a pause this long between unavailable
    /// calls ends a run of them.
    fn pause_ms(&self) -> i64 {
        i64::try_from(self.config.command_timeout.as_millis() * 2).unwrap_or(i64::MAX)
    }

    /// Runs commands of possibly different slots (see [`Conn::query_each`]),
    /// bounded by `command_timeout`.
    async fn each(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<redis::Value>> {
        let mut conn = self.conn();
        self.call(conn.query_each(cmds)).await
    }

    /// A handle on the shared multiplexed connection.
    fn conn(&self) -> Conn {
        self.conn.read().clone()
    }

    /// The connection publish transactions go over (see `publish_conn`).
    fn publish_conn(&self) -> Conn {
        match &self.publish_conn {
            Some(conn) => conn.read().clone(),
            None => self.conn(),
        }
    }

    /// The bound on one publish transaction's call: `command_timeout`,
    /// plus `wait_timeout` when it ends in `WAIT`.
    fn publish_call_limit(&self) -> Duration {
        if self.config.wait_replicas > 0 {
            self.config.command_timeout + self.config.wait_timeout
        } else {
            self.config.command_timeout
        }
    }

    /// A cluster connection whose calls have failed as unavailable for
    /// three times `command_timeout` (every call, or only some: those of
    /// one slot) is rebuilt from the configured node URLs. After a master
    /// failover, redis-rs' cluster connection was seen to time out every
    /// call for the failed-over slots for good, while the other slots
    /// answered.
    pub(super) fn maybe_reconnect(self: &Arc<Self>) {
        let now = now_ms();
        let last_ok = self.last_ok_ms.load(Ordering::Relaxed);
        let limit = i64::try_from(self.config.command_timeout.as_millis() * 3).unwrap_or(i64::MAX);
        let all_failing =
            self.last_err_ms.load(Ordering::Relaxed) > last_ok && now - last_ok >= limit;
        let last_unavailable = self.last_unavailable_ms.load(Ordering::Relaxed);
        let since = self.unavailable_since_ms.load(Ordering::Relaxed);
        let some_failing = since > 0
            && now - last_unavailable <= self.pause_ms()
            && last_unavailable - since >= limit;
        if !(all_failing || some_failing) || !self.conn.read().is_cluster() || self.is_closed() {
            return;
        }
        let what = if all_failing {
            format!("every call failing for {} ms", now - last_ok)
        } else {
            format!("some calls failing for {} ms", last_unavailable - since)
        };
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let publish = match &shared.publish_conn {
                Some(_) => Some(
                    Conn::connect(&shared.config.url, shared.publish_call_limit())
                        .await
                        .map(Some),
                ),
                None => None,
            };
            let conn = match publish.unwrap_or(Ok(None)) {
                Ok(publish) => Conn::connect(&shared.config.url, shared.config.command_timeout)
                    .await
                    .map(|conn| (conn, publish)),
                Err(e) => Err(e),
            };
            match conn {
                Ok((conn, publish)) => {
                    *shared.conn.write() = conn;
                    if let (Some(slot), Some(publish)) = (&shared.publish_conn, publish) {
                        *slot.write() = publish;
                    }
                    // A new run must last as long again before the next
                    // rebuild.
                    shared
                        .unavailable_since_ms
                        .store(now_ms(), Ordering::Relaxed);
                    shared.last_ok_ms.store(now_ms(), Ordering::Relaxed);
                    tracing::warn!("redis cluster connection rebuilt ({what})");
                }
                Err(e) => tracing::warn!(error = %e, "redis cluster reconnect failed"),
            }
            shared.reconnecting.store(false, Ordering::Release);
        });
    }

    /// Whether the last call failed.
    pub(super) fn failing(&self) -> bool {
        self.last_err_ms.load(Ordering::Relaxed) > self.last_ok_ms.load(Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Stops background tasks and live streams; returns consumers'
    /// deliveries and leaves the membership when `graceful`.
    async fn shutdown(self: &Arc<Self>, graceful: bool) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.token.cancel();
        self.live.close_all();
        self.deliver.wake_all();
        if graceful {
            self.deliver.release_all(self).await;
            membership::leave(self).await;
        }
        self.tasks.close();
        let _ = tokio::time::timeout(self.config.command_timeout, self.tasks.wait()).await;
    }
}

impl RedisBroker {
    /// Connects, checks the key layout, loads the routing config, opens the
    /// pub/sub listener and starts the background tasks.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when Redis cannot be reached within
    /// `command_timeout`; [`BrokerError::Internal`] for an invalid config
    /// or a Redis that holds data of the first (ingest/lease) layout under
    /// the same key prefix.
    pub async fn connect(config: RedisBrokerConfig) -> Result<RedisBroker> {
        config.validate()?;
        let conn = Conn::connect(&config.url, config.command_timeout).await?;
        let publish_conn = if config.wait_replicas > 0 {
            let limit = config.command_timeout + config.wait_timeout;
            Some(parking_lot::RwLock::new(
                Conn::connect(&config.url, limit).await?,
            ))
        } else {
            None
        };
        let node_id = if config.node_id.is_empty() {
            format!(
                "{}-{}",
                hostname(),
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        } else {
            config.node_id.clone()
        };
        let keys = Keys::new(&config.key_prefix, config.partitions);
        let shared = Arc::new(Shared {
            keys,
            node_id,
            conn: parking_lot::RwLock::new(conn),
            publish_conn,
            last_ok_ms: AtomicI64::new(now_ms()),
            last_err_ms: AtomicI64::new(0),
            last_unavailable_ms: AtomicI64::new(0),
            unavailable_since_ms: AtomicI64::new(0),
            reconnecting: AtomicBool::new(false),
            scripts: Scripts::new(),
            subs: subs::Registry::default(),
            live: live::LiveIndex::default(),
            pubsub: live::PubSub::default(),
            deliver: deliver::Local::default(),
            publishes: parking_lot::Mutex::default(),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            config,
        });
        check_layout(&shared).await?;
        subs::reload(&shared).await?;
        live::start(&shared).await?;
        membership::start(&shared);
        subs::start_watch(&shared);
        deliver::start_maintenance(&shared);
        start_reconnect_watch(&shared);
        tracing::info!(node = %shared.node_id, prefix = %shared.config.key_prefix, "redis broker connected");
        Ok(RedisBroker { shared })
    }

    /// This replica's node id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RedisBrokerConfig {
        &self.shared.config
    }
}

/// The key layout this code writes (`er:{cfg}:layout`).
const LAYOUT: &str = "2";

/// Refuses data of the first layout under the same prefix (its ingest
/// streams and leases mean nothing here, and its subscriptions would never
/// be fed), then marks the prefix as this layout.
async fn check_layout(shared: &Shared) -> Result<()> {
    let keys = &shared.keys;
    let found = shared
        .each(vec![
            redis::cmd("GET").arg(keys.layout()).clone(),
            redis::cmd("EXISTS").arg(keys.cfg_subs()).clone(),
            redis::cmd("EXISTS").arg(keys.v1_ingest(0)).clone(),
        ])
        .await?;
    let (layout, subs, ingest): (Option<String>, bool, bool) =
        redis::from_redis_value(redis::Value::Array(found))
            .map_err(|e| BrokerError::Internal(format!("layout reply: {e}")))?;
    let mut conn = shared.conn();
    match layout.as_deref() {
        Some(LAYOUT) => return Ok(()),
        Some(other) => {
            return Err(BrokerError::Internal(format!(
                "redis holds key layout {other:?} under prefix {:?}, this router writes layout {LAYOUT}; \
                 use another --redis-key-prefix or a newer router",
                shared.config.key_prefix
            )));
        }
        None if subs || ingest => {
            return Err(BrokerError::Internal(format!(
                "redis holds data of the first key layout (ingest streams and partition leases) under \
                 prefix {:?}; this router routes at publish and cannot use it. Delete those keys \
                 (for example `redis-cli --scan --pattern '{}:*' | xargs redis-cli del`) or start \
                 with another --redis-key-prefix",
                shared.config.key_prefix, shared.config.key_prefix
            )));
        }
        None => {}
    }
    shared
        .call(
            redis::cmd("SET")
                .arg(keys.layout())
                .arg(LAYOUT)
                .arg("NX")
                .query_async::<Option<String>>(&mut conn),
        )
        .await?;
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "router".to_string())
}

impl Drop for RedisBroker {
    /// Stops background tasks without releasing leases or returning
    /// deliveries (that needs Redis calls): like a crash, other replicas
    /// take over after `reclaim_idle`. Call
    /// [`Broker::close`] for a clean hand-over.
    fn drop(&mut self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            self.shared.token.cancel();
            self.shared.live.close_all();
            self.shared.deliver.wake_all();
        }
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node_id", &self.shared.node_id)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: true,
            clustered: true,
            acks_round_trip: true,
            publish_round_trip: true,
        }
    }

    /// One `MULTI`/`EXEC`: the event into its partition's history and into
    /// every matching durable subscription, checked against the config
    /// fence (see [`publish`]). Once it returns the event is routed.
    /// Concurrent publishes share transactions (group commit, see
    /// `publish::publish_queued`).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] within `command_timeout` when Redis is
    /// down; the event may or may not have been stored (retry with the same
    /// id under a `dedup_window` to be safe).
    async fn publish(&self, event: Event, _options: PublishOptions) -> Result<Published> {
        let mut out = publish::publish_queued(&self.shared, vec![event]).await?;
        out.pop()
            .ok_or_else(|| BrokerError::Internal("publish returned nothing".into()))
    }

    /// The whole batch is one transaction on one Redis: all or nothing,
    /// whatever `options.atomic` says; one that need not be atomic may
    /// share it with other publishes (group commit, see
    /// `publish::publish_queued`). With `options.atomic`, every event
    /// goes to the first event's partition, at the cost of per-key order
    /// against other publishes of the same keys.
    async fn publish_batch(
        &self,
        events: Vec<Event>,
        options: PublishOptions,
    ) -> Result<Vec<Published>> {
        if options.atomic {
            publish::publish(&self.shared, events, &options).await
        } else {
            publish::publish_queued(&self.shared, events).await
        }
    }

    /// Matching happens on this replica against every partition's live
    /// channel, which it subscribes to (and waits for) on its first live
    /// subscription. At most once: messages published while the pub/sub
    /// connection is down are not recovered.
    async fn subscribe_live(&self, subscription: LiveSubscription) -> Result<LiveStream> {
        self.shared.check_open()?;
        live::ensure_partitions(&self.shared).await?;
        Ok(self.shared.live.subscribe(&self.shared, subscription))
    }

    async fn ensure_subscription(&self, spec: GroupSpec) -> Result<()> {
        self.shared.check_open()?;
        subs::ensure(&self.shared, spec).await
    }

    async fn delete_subscription(&self, name: &str) -> Result<bool> {
        self.shared.check_open()?;
        subs::delete(&self.shared, name).await
    }

    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo> {
        let sub = subs::lookup(&self.shared, name).await?;
        deliver::info(&self.shared, &sub).await
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        subs::reload(&self.shared).await?;
        let mut out = Vec::new();
        for sub in self.shared.subs.all() {
            match deliver::info(&self.shared, &sub).await {
                Ok(info) => out.push(info),
                Err(BrokerError::UnknownSubscription(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    async fn consume(&self, subscription: &str, options: ConsumeOptions) -> Result<Consumer> {
        self.shared.check_open()?;
        let sub = subs::lookup(&self.shared, subscription).await?;
        deliver::consume(&self.shared, sub, options).await
    }

    /// `XACK` of the delivery's band entry (batched with concurrent acks);
    /// acked entries are trimmed later. Works from any replica.
    async fn ack(&self, subscription: &str, delivery_id: &str) -> Result<()> {
        self.shared.check_open()?;
        let sub = subs::lookup(&self.shared, subscription).await?;
        deliver::ack(&self.shared, &sub, delivery_id).await
    }

    async fn nack(
        &self,
        subscription: &str,
        delivery_id: &str,
        options: NackOptions,
    ) -> Result<()> {
        self.shared.check_open()?;
        let sub = subs::lookup(&self.shared, subscription).await?;
        deliver::nack(&self.shared, &sub, delivery_id, options).await
    }

    async fn dead_letters(
        &self,
        subscription: &str,
        query: DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>> {
        let sub = subs::lookup(&self.shared, subscription).await?;
        deliver::dead_letters(&self.shared, &sub, query).await
    }

    async fn redrive(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64> {
        self.shared.check_open()?;
        let sub = subs::lookup(&self.shared, subscription).await?;
        deliver::redrive(&self.shared, &sub, selection).await
    }

    async fn purge(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64> {
        self.shared.check_open()?;
        let sub = subs::lookup(&self.shared, subscription).await?;
        deliver::purge(&self.shared, &sub, selection).await
    }

    /// Reads the history streams, filtering on the events' `time` (stream ids
    /// can be skewed), merged in storage order. Cursors are
    /// `<partition>-<stream id>`.
    async fn history(&self, query: HistoryQuery) -> Result<Vec<HistoryEntry>> {
        publish::history(&self.shared, &query, false).await
    }

    /// A `limit` of 0 replays every matching retained event.
    async fn replay(&self, subscription: &str, query: HistoryQuery) -> Result<u64> {
        self.shared.check_open()?;
        let sub = subs::lookup(&self.shared, subscription).await?;
        let found = publish::history(&self.shared, &query, true).await?;
        deliver::enqueue(&self.shared, &sub, found.into_iter().map(|h| h.event)).await
    }

    async fn purge_history(&self, purge: HistoryPurge) -> Result<u64> {
        self.shared.check_open()?;
        purge::purge_history(&self.shared, &purge).await
    }

    /// `published` and `history_len` are cluster-wide (read from Redis);
    /// live counters are this replica's.
    async fn stats(&self) -> Result<BrokerStats> {
        let started = std::time::Instant::now();
        let mut conn = self.shared.conn();
        self.shared
            .call(redis::cmd("PING").query_async::<String>(&mut conn))
            .await?;
        let round_trip_seconds = started.elapsed().as_secs_f64();
        let (published, history_len) = publish::totals(&self.shared).await?;
        let c = &self.shared.counters;
        Ok(BrokerStats {
            kind: "redis",
            node: Some(self.shared.node_id.clone()),
            published,
            delivered_live: c.delivered_live.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            live_subscriptions: self.shared.live.len() as u64,
            subscriptions: self.shared.subs.all().len() as u64,
            history_len,
            round_trip_seconds: Some(round_trip_seconds),
            replicas: Some(membership::live(&self.shared).await?),
        })
    }

    /// One Lua script checks the version and adds the entry.
    async fn append(&self, stream: &str, event: Event, options: AppendOptions) -> Result<Appended> {
        streams::append(&self.shared, stream, event, options).await
    }

    async fn read_stream(&self, stream: &str, read: StreamRead) -> Result<StreamPage> {
        streams::read(&self.shared, stream, read).await
    }

    /// Polls every `poll_interval`.
    async fn wait_stream(
        &self,
        stream: &str,
        after_version: u64,
        timeout: Duration,
    ) -> Result<u64> {
        streams::wait(&self.shared, stream, after_version, timeout).await
    }

    /// Open and answering `PING` within `command_timeout`.
    async fn ready(&self) -> bool {
        if self.shared.is_closed() {
            return false;
        }
        let mut conn = self.shared.conn();
        self.shared
            .call(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .is_ok()
    }

    /// Returns consumers' in-flight deliveries to their groups, leaves the
    /// membership, ends live streams and stops background tasks.
    async fn close(&self) {
        self.shared.shutdown(true).await;
    }
}
