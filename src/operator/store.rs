//! The routing config in Redis: every admitted `Subscription` and
//! `EventRoute` document, written by the operator and by `apply -f`, read
//! by every `serve --redis` replica.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `er:{cfg}:resources` | hash | `Kind/namespace/name` → the document as JSON |
//! | `er:{cfg}:resources:ver` | string | version, incremented on every change |
//! | `er:{cfg}:resources:changed` | channel | the new version, published on every change |
//!
//! One script changes the hash, bumps the version and publishes it, so a
//! reader that sees a version sees the documents of that version or a
//! later one. Replicas ([`ConfigWatcher`]) reload on a message and also
//! poll the version, so a lost pub/sub message only delays a reload by one
//! poll interval. Durable subscriptions themselves (queues, dead letters)
//! stay the broker's business: this module only stores the documents.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::redis::conn::{Conn, nodes};
use futures::StreamExt;
use redis::Script;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Router;
use crate::resources::{self, API_VERSION, Resource};

/// How often a replica re-reads the config version when no message came.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// Bound of one Redis call of the store.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

const PUT: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local ver = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[2] == '' then
  if not old then return {0, ver} end
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  if old == ARGV[2] then return {0, ver} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
ver = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ver)
if not old then return {1, ver} end
return {2, ver}
";

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or did not answer in time.
    #[error("redis config store: {0}")]
    Redis(String),
    /// A stored document does not parse.
    #[error("stored document {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The hash field.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Redis(e.to_string())
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The document was not there before.
    Created,
    /// The document changed.
    Configured,
    /// Nothing changed (same document, or deleting one that is absent).
    Unchanged,
    /// The document was removed.
    Deleted,
}

/// Every document of one config version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The version read.
    pub version: u64,
    /// Documents sorted by key (`Kind/namespace/name`).
    pub resources: Vec<(String, Resource)>,
}

/// Names of the store's keys under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    hash: String,
    version: String,
    channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            hash: format!("{prefix}:{{cfg}}:resources"),
            version: format!("{prefix}:{{cfg}}:resources:ver"),
            channel: format!("{prefix}:{{cfg}}:resources:changed"),
        }
    }
}

/// The routing config documents in one Redis under one key prefix.
#[derive(Clone)]
pub struct ConfigStore {
    /// For the change notifications: a plain `PUBLISH` reaches every node
    /// of a cluster, so one node (the first URL) is enough.
    client: redis::Client,
    conn: Conn,
    keys: Keys,
    put: Arc<Script>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// The hash field of a document: `Kind/namespace/name`, the namespace
/// `default` when the document names none (as `kubectl apply` does).
pub fn key_of(resource: &Resource) -> String {
    let (kind, meta) = match resource {
        Resource::Subscription(s) => ("Subscription", &s.metadata),
        Resource::EventRoute(r) => ("EventRoute", &r.metadata),
    };
    let ns = meta.namespace.as_deref().unwrap_or("default");
    format!("{kind}/{ns}/{}", meta.name)
}

/// A document as stored: `apiVersion`, `kind`, `metadata`, `spec`.
pub fn to_document(resource: &Resource) -> Value {
    let (kind, body) = match resource {
        Resource::Subscription(s) => ("Subscription", serde_json::to_value(s)),
        Resource::EventRoute(r) => ("EventRoute", serde_json::to_value(r)),
    };
    let mut doc = body.unwrap_or(Value::Null);
    if let Value::Object(map) = &mut doc {
        map.insert("apiVersion".into(), json!(API_VERSION));
        map.insert("kind".into(), json!(kind));
    }
    doc
}

fn from_document(key: &str, json: &str) -> Result<Resource> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let docs = resources::parse_documents(json).map_err(|e| corrupt(e.to_string()))?;
    let mut docs = docs.into_iter();
    match (docs.next(), docs.next()) {
        (Some(doc), None) => Ok(doc),
        _ => Err(corrupt("expected exactly one document".into())),
    }
}

impl ConfigStore {
    /// Connects to `url` (`redis://...`, or comma-separated node URLs of a
    /// Redis Cluster); keys start with `prefix` (the broker's key prefix,
    /// default `er`).
    ///
    /// # Errors
    /// A bad URL or prefix, or Redis unreachable within a few seconds.
    pub async fn connect(url: &str, prefix: &str) -> Result<ConfigStore> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(StoreError::Redis(format!(
                "key prefix {prefix:?} must be non-empty and free of braces"
            )));
        }
        let first = nodes(url).first().copied().unwrap_or(url);
        let client = redis::Client::open(first)?;
        let conn = Conn::connect(url, COMMAND_TIMEOUT)
            .await
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        Ok(ConfigStore {
            client,
            conn,
            keys: Keys::new(prefix),
            put: Arc::new(Script::new(PUT)),
        })
    }

    async fn call<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Redis(format!(
                "no answer within {COMMAND_TIMEOUT:?}"
            ))),
        }
    }

    async fn write(&self, key: &str, json: &str) -> Result<(i64, u64)> {
        let mut conn = self.conn.clone();
        let mut inv = self.put.prepare_invoke();
        inv.key(&self.keys.hash)
            .key(&self.keys.version)
            .arg(key)
            .arg(json)
            .arg(&self.keys.channel);
        self.call(inv.invoke_async(&mut conn)).await
    }

    /// Stores `resource` (replacing the document under its key) and, when
    /// it changed, bumps the version and notifies replicas.
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub async fn put(&self, resource: &Resource) -> Result<Change> {
        let json = to_document(resource).to_string();
        let (done, _) = self.write(&key_of(resource), &json).await?;
        Ok(match done {
            1 => Change::Created,
            2 => Change::Configured,
            _ => Change::Unchanged,
        })
    }

    /// Removes the document under `key` (`Kind/namespace/name`).
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub async fn remove(&self, key: &str) -> Result<Change> {
        let (done, _) = self.write(key, "").await?;
        Ok(if done == 0 {
            Change::Unchanged
        } else {
            Change::Deleted
        })
    }

    /// The current version (0 before the first write).
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub async fn version(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = self
            .call(
                redis::cmd("GET")
                    .arg(&self.keys.version)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Every document with the version they belong to (read atomically).
    ///
    /// # Errors
    /// [`StoreError::Redis`]; [`StoreError::Corrupt`] for a document that
    /// does not parse.
    pub async fn load(&self) -> Result<Snapshot> {
        let mut conn = self.conn.clone();
        let (version, raw): (Option<u64>, Vec<(String, String)>) = self
            .call(
                redis::pipe()
                    .atomic()
                    .cmd("GET")
                    .arg(&self.keys.version)
                    .cmd("HGETALL")
                    .arg(&self.keys.hash)
                    .query_async(&mut conn),
            )
            .await?;
        let mut resources = raw
            .iter()
            .map(|(key, json)| Ok((key.clone(), from_document(key, json)?)))
            .collect::<Result<Vec<_>>>()?;
        resources.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Snapshot {
            version: version.unwrap_or(0),
            resources,
        })
    }

    /// The raw JSON document under `key`, for tests and `status`.
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub async fn raw(&self, key: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        self.call(
            redis::cmd("HGET")
                .arg(&self.keys.hash)
                .arg(key)
                .query_async(&mut conn),
        )
        .await
    }

    /// A pub/sub stream of version notifications.
    async fn notifications(&self) -> Result<redis::aio::PubSub> {
        let mut pubsub = self.call(self.client.get_async_pubsub()).await?;
        self.call(pubsub.subscribe(&self.keys.channel)).await?;
        Ok(pubsub)
    }
}

/// A replica's hot reload: applies every config version to a [`Router`]
/// with [`Router::apply_all`], on a pub/sub notification or a poll. The
/// server keeps running throughout: routes are swapped atomically and no
/// connection is touched. Stops when dropped.
pub struct ConfigWatcher {
    token: CancellationToken,
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("applied", &*self.applied.borrow())
            .finish()
    }
}

impl ConfigWatcher {
    /// Loads and applies the current config, then watches for changes every
    /// `poll` and on notifications. `local` documents (from `serve -f`) are
    /// applied with every version, ahead of the stored ones.
    ///
    /// # Errors
    /// When Redis cannot be reached; a config that does not apply is
    /// logged and retried on the next change, never an error here.
    pub async fn start(
        router: Arc<Router>,
        store: ConfigStore,
        local: Vec<Resource>,
        poll: Duration,
    ) -> Result<ConfigWatcher> {
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let target = Target {
            router,
            store,
            local,
            applied: Arc::new(tx),
        };
        let applied = target.applied.clone();
        let token = CancellationToken::new();
        let mut seen = None;
        target.reload(&mut seen).await?;
        tokio::spawn(watch(target, poll, seen, token.clone()));
        Ok(ConfigWatcher { token, applied })
    }

    /// The last config version applied (0 when none).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied version, for waiting on a change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// What a watcher applies, and to what.
struct Target {
    router: Arc<Router>,
    store: ConfigStore,
    local: Vec<Resource>,
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Target {
    /// Applies the stored config when its version differs from `seen`.
    async fn reload(&self, seen: &mut Option<u64>) -> Result<()> {
        let version = self.store.version().await?;
        if *seen == Some(version) {
            return Ok(());
        }
        let snapshot = match self.store.load().await {
            Ok(s) => s,
            // A document nobody can read must not stop a replica (or every
            // replica, at their next start): keep the config in force and
            // try again at the next change.
            Err(e @ StoreError::Corrupt { .. }) => {
                *seen = Some(version);
                tracing::error!(version, error = %e, "routing config unreadable; previous config stays in force");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut docs = self.local.clone();
        docs.extend(snapshot.resources.into_iter().map(|(_, r)| r));
        match self.router.apply_all(&docs).await {
            Ok(()) => {
                *seen = Some(snapshot.version);
                tracing::info!(
                    version = snapshot.version,
                    resources = docs.len(),
                    "routing config reloaded"
                );
                self.applied.send_replace(snapshot.version);
            }
            // The broker failed (creating a durable group): retried at the
            // next poll.
            Err(e @ crate::RouterError::Broker(_)) => {
                tracing::warn!(version = snapshot.version, error = %e, "routing config not applied yet; retrying");
            }
            // The same documents would fail again: wait for the next change.
            Err(e) => {
                *seen = Some(snapshot.version);
                tracing::error!(version = snapshot.version, error = %e, "routing config rejected; previous config stays in force");
            }
        }
        Ok(())
    }
}

async fn watch(target: Target, poll: Duration, mut seen: Option<u64>, token: CancellationToken) {
    let store = &target.store;
    let poll = poll.max(Duration::from_millis(50));
    while !token.is_cancelled() {
        let mut pubsub = match store.notifications().await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "config notifications unavailable; polling only");
                None
            }
        };
        // Changes made while not subscribed are caught here.
        if let Err(e) = target.reload(&mut seen).await {
            tracing::warn!(error = %e, "config reload failed");
        }
        let mut messages = pubsub.as_mut().map(|p| p.on_message());
        loop {
            let notified = async {
                match messages.as_mut() {
                    Some(m) => m.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            let lost = tokio::select! {
                () = token.cancelled() => return,
                open = notified => !open,
                () = tokio::time::sleep(poll) => false,
            };
            if let Err(e) = target.reload(&mut seen).await {
                tracing::warn!(error = %e, "config reload failed");
            }
            if lost || messages.is_none() {
                break;
            }
        }
        drop(messages);
        if pubsub.is_none() {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}
