//! Durable subscriptions in the routing config (`er:{cfg}:subs`), and each
//! replica's cached view of them.
//!
//! A record is `{sid, created_ms, spec}` as JSON; `sid` names the
//! subscription's keys (`er:s:{sid}:*`), so a subscription deleted and
//! created again under the same name starts from fresh keys. Every change
//! is a compare-and-set that bumps `er:{cfg}:ver`, then bumps every
//! partition's fence (`er:fence:{p}`) before it returns; replicas reload
//! when a poll (every `config_poll`) sees a new version, and publishers
//! reload when their transaction reads a fence other than the one their
//! routing table was built at (see `publish` for why that is enough).
//!
//! Order of a change, which the fence argument relies on:
//! - create: the keys (bands and their groups), then the record, then the
//!   fences;
//! - update: the record, then the fences;
//! - delete: the record, then the fences, then the keys.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::Shared;
use super::keys::SubKeys;
use crate::broker::{BrokerError, GroupSpec, Result};
use crate::topic::TopicTrie;

/// What the config hash stores per subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SubRecord {
    /// Id naming the subscription's keys.
    pub(super) sid: String,
    /// Server time of creation (ms), for people.
    pub(super) created_ms: i64,
    /// The spec.
    pub(super) spec: GroupSpec,
}

/// One subscription as cached by a replica.
#[derive(Debug)]
pub(super) struct Sub {
    pub(super) record: SubRecord,
    pub(super) keys: SubKeys,
    /// The record's JSON as stored, for compare-and-set.
    raw: String,
}

impl Sub {
    pub(super) fn name(&self) -> &str {
        &self.record.spec.name
    }

    pub(super) fn spec(&self) -> &GroupSpec {
        &self.record.spec
    }
}

/// A routing index over the subscriptions of one config version.
#[derive(Default)]
pub(super) struct Routes {
    pub(super) version: i64,
    /// Every partition's fence, read before the config: the table is at
    /// least as new as these generations.
    pub(super) fences: Vec<i64>,
    pub(super) trie: TopicTrie<usize>,
    pub(super) subs: Vec<Arc<Sub>>,
    by_name: HashMap<String, usize>,
}

impl Routes {
    /// The subscriptions `event` goes to: topic trie, then filters.
    /// Indices into `subs`, ascending.
    pub(super) fn matching(&self, event: &crate::event::Event, out: &mut Vec<usize>) {
        out.clear();
        self.trie.matches_into(&event.topic, out);
        out.retain(|&i| self.subs[i].spec().selector.matches_filter(event));
        out.sort_unstable();
        out.dedup();
    }

    /// A subscription by its key id.
    pub(super) fn by_sid(&self, sid: &str) -> Option<&Arc<Sub>> {
        self.subs.iter().find(|s| s.record.sid == sid)
    }
}

/// The cached config; swapped whole on reload.
#[derive(Default)]
pub(super) struct Registry {
    routes: RwLock<Arc<Routes>>,
}

impl Registry {
    /// The current routing index.
    pub(super) fn routes(&self) -> Arc<Routes> {
        self.routes.read().clone()
    }

    /// Every cached subscription.
    pub(super) fn all(&self) -> Vec<Arc<Sub>> {
        self.routes().subs.clone()
    }

    /// A cached subscription by name.
    pub(super) fn get(&self, name: &str) -> Option<Arc<Sub>> {
        let routes = self.routes();
        routes.by_name.get(name).map(|&i| routes.subs[i].clone())
    }

    /// A cached subscription by its key id.
    pub(super) fn by_sid(&self, sid: &str) -> Option<Arc<Sub>> {
        self.routes()
            .subs
            .iter()
            .find(|s| s.record.sid == sid)
            .cloned()
    }
}

fn build(shared: &Shared, version: i64, fences: Vec<i64>, raw: HashMap<String, String>) -> Routes {
    let mut routes = Routes {
        version,
        fences,
        ..Routes::default()
    };
    let mut names: Vec<(String, String)> = raw.into_iter().collect();
    names.sort();
    for (name, json) in names {
        let record: SubRecord = match serde_json::from_str(&json) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(subscription = %name, error = %e, "unreadable subscription record; skipped");
                continue;
            }
        };
        let index = routes.subs.len();
        for pattern in record.spec.selector.patterns() {
            routes.trie.insert(pattern, index);
        }
        routes.by_name.insert(name, index);
        routes.subs.push(Arc::new(Sub {
            keys: shared.keys.sub(&record.sid),
            record,
            raw: json,
        }));
    }
    routes
}

/// The config version in Redis.
pub(super) async fn version(shared: &Shared) -> Result<i64> {
    let mut conn = shared.conn();
    let v: Option<i64> = shared
        .call(
            redis::cmd("GET")
                .arg(shared.keys.cfg_version())
                .query_async(&mut conn),
        )
        .await?;
    Ok(v.unwrap_or(0))
}

/// Re-reads the config from Redis and swaps it in. The partitions' fences
/// are read first (same connection, so in that order): the table is at
/// least as new as the generations it is tagged with.
pub(super) async fn reload(shared: &Shared) -> Result<Arc<Routes>> {
    let values = shared
        .each(
            (0..shared.keys.partitions())
                .map(|p| redis::cmd("GET").arg(shared.keys.fence(p)).clone())
                .collect(),
        )
        .await?;
    // After the fences (awaited): the config is at least as new as they are.
    let mut conn = shared.conn();
    let (version, raw): (Option<i64>, HashMap<String, String>) = shared
        .call(
            redis::pipe()
                .cmd("GET")
                .arg(shared.keys.cfg_version())
                .cmd("HGETALL")
                .arg(shared.keys.cfg_subs())
                .query_async(&mut conn),
        )
        .await?;
    let bad = |e: redis::ParsingError| BrokerError::Internal(format!("config reply: {e}"));
    let fences = values
        .iter()
        .map(|v| redis::from_redis_value_ref::<Option<i64>>(v).map(Option::unwrap_or_default))
        .collect::<std::result::Result<Vec<i64>, _>>()
        .map_err(bad)?;
    let routes = Arc::new(build(shared, version.unwrap_or(0), fences, raw));
    *shared.subs.routes.write() = routes.clone();
    shared.deliver.wake_all();
    Ok(routes)
}

/// Bumps every partition's fence: publishers whose routing table is older
/// than this change find out in their next transaction.
async fn bump_fences(shared: &Shared) -> Result<()> {
    shared
        .each(
            (0..shared.keys.partitions())
                .map(|p| redis::cmd("INCR").arg(shared.keys.fence(p)).clone())
                .collect(),
        )
        .await?;
    Ok(())
}

/// Reloads if Redis has a newer version than the cache.
pub(super) async fn refresh(shared: &Shared) -> Result<()> {
    if version(shared).await? != shared.subs.routes().version {
        reload(shared).await?;
    }
    Ok(())
}

/// A subscription by name, reloading once if this replica does not know it
/// (another replica may have just created it).
///
/// # Errors
/// [`BrokerError::UnknownSubscription`].
pub(super) async fn lookup(shared: &Shared, name: &str) -> Result<Arc<Sub>> {
    if let Some(sub) = shared.subs.get(name) {
        return Ok(sub);
    }
    refresh(shared).await?;
    shared
        .subs
        .get(name)
        .ok_or_else(|| BrokerError::UnknownSubscription(name.to_string()))
}

/// Creates the subscription's keys (and repairs missing consumer groups);
/// returns the server time in ms.
pub(super) async fn init_keys(shared: &Shared, name: &str, keys: &SubKeys) -> Result<i64> {
    let mut conn = shared.conn();
    let mut inv = shared.scripts.sub_init.prepare_invoke();
    inv.key(keys.info());
    for band in keys.bands() {
        inv.key(band);
    }
    inv.arg(name);
    shared.call(inv.invoke_async(&mut conn)).await
}

async fn put(shared: &Shared, name: &str, old: &str, new: &str) -> Result<bool> {
    let mut conn = shared.conn();
    let mut inv = shared.scripts.cfg_put.prepare_invoke();
    inv.key(shared.keys.cfg_subs())
        .key(shared.keys.cfg_version())
        .arg(name)
        .arg(old)
        .arg(new);
    let done: i64 = shared.call(inv.invoke_async(&mut conn)).await?;
    Ok(done == 1)
}

async fn current(shared: &Shared, name: &str) -> Result<Option<String>> {
    let mut conn = shared.conn();
    shared
        .call(
            redis::cmd("HGET")
                .arg(shared.keys.cfg_subs())
                .arg(name)
                .query_async(&mut conn),
        )
        .await
}

fn to_json(record: &SubRecord) -> Result<String> {
    serde_json::to_string(record).map_err(|e| BrokerError::Internal(format!("encode spec: {e}")))
}

/// Compare-and-set attempts before giving up on a contended name.
const CAS_ATTEMPTS: usize = 8;

/// Creates or updates a subscription (idempotent).
pub(super) async fn ensure(shared: &Shared, spec: GroupSpec) -> Result<()> {
    spec.validate()?;
    for _ in 0..CAS_ATTEMPTS {
        let old = current(shared, &spec.name).await?;
        let record = match old.as_deref().map(serde_json::from_str::<SubRecord>) {
            Some(Ok(existing)) => {
                let keys = shared.keys.sub(&existing.sid);
                init_keys(shared, &spec.name, &keys).await?;
                SubRecord {
                    spec: spec.clone(),
                    ..existing
                }
            }
            _ => {
                let sid = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
                let keys = shared.keys.sub(&sid);
                let created_ms = init_keys(shared, &spec.name, &keys).await?;
                SubRecord {
                    sid,
                    created_ms,
                    spec: spec.clone(),
                }
            }
        };
        let json = to_json(&record)?;
        let old = old.unwrap_or_default();
        if old == json || put(shared, &spec.name, &old, &json).await? {
            bump_fences(shared).await?;
            reload(shared).await?;
            return Ok(());
        }
        if old.is_empty() {
            drop_keys(shared, &shared.keys.sub(&record.sid)).await?;
        }
    }
    Err(BrokerError::Unavailable(format!(
        "subscription {:?} is being changed concurrently",
        spec.name
    )))
}

/// Deletes every key of a subscription.
pub(super) async fn drop_keys(shared: &Shared, keys: &SubKeys) -> Result<()> {
    let mut conn = shared.conn();
    // `info` goes first in the same command, so routers and consumers that
    // race with the deletion see the subscription gone and write nothing.
    shared
        .call(
            redis::cmd("DEL")
                .arg(keys.all())
                .query_async::<i64>(&mut conn),
        )
        .await?;
    Ok(())
}

/// Deletes a subscription and its keys; returns whether it existed.
pub(super) async fn delete(shared: &Shared, name: &str) -> Result<bool> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(old) = current(shared, name).await? else {
            reload(shared).await?;
            return Ok(false);
        };
        if put(shared, name, &old, "").await? {
            // Fences before keys: a publisher that writes into the keys
            // after they are gone sees the new fence and deletes them again.
            bump_fences(shared).await?;
            if let Ok(record) = serde_json::from_str::<SubRecord>(&old) {
                drop_keys(shared, &shared.keys.sub(&record.sid)).await?;
            }
            reload(shared).await?;
            return Ok(true);
        }
    }
    Err(BrokerError::Unavailable(format!(
        "subscription {name:?} is being changed concurrently"
    )))
}

/// Polls the config version every `config_poll` and reloads on change.
pub(super) fn start_watch(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let token = shared.token.clone();
    let every = shared.config.config_poll;
    shared.tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            if let Err(e) = refresh(&shared).await {
                tracing::debug!(error = %e, "config poll failed");
            }
        }
    });
}

impl PartialEq for Sub {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
