//! Membership and partition ownership.
//!
//! Every replica heartbeats into `er:{nodes}` (a zset of node → ms) every
//! fifth of `lease_ttl`; a node without a heartbeat for two thirds of it is
//! dead. Each partition's desired owner is chosen by rendezvous hashing over
//! the live nodes, so a joining or leaving node moves only its share. The
//! desired owner takes the partition's lease with `SET NX PX` and renews it
//! with a compare-and-`PEXPIRE` script; a replica that owns a partition it
//! is no longer the desired owner of releases it (compare-and-delete), and
//! a replica that cannot renew in time stops routing it. A lease that is
//! not renewed (crash, stall) expires after `lease_ttl`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys::fnv1a;
use super::{Shared, now_ms, route};
use crate::broker::Result;

/// A partition this replica routes.
pub(super) struct Owned {
    token: String,
    renewed_at: Instant,
    cancel: CancellationToken,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts the membership/lease loop.
pub(super) fn start(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let token = shared.token.clone();
    let every = shared.config.lease_ttl / 5;
    shared.tasks.spawn(async move {
        loop {
            if let Some(shared) = weak.upgrade()
                && let Err(e) = tick(&shared).await
            {
                tracing::warn!(error = %e, "lease tick failed");
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// The live node that should own `partition`.
fn desired_owner(nodes: &[String], partition: u32) -> Option<&str> {
    nodes
        .iter()
        .map(|n| {
            let mut h = fnv1a(format!("{n}/{partition}").as_bytes());
            // Finalizer (splitmix64) so that similar names spread well.
            h ^= h >> 30;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 27;
            h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^= h >> 31;
            (h, n.as_str())
        })
        .max()
        .map(|(_, n)| n)
}

async fn tick(shared: &Arc<Shared>) -> Result<()> {
    let ttl = ms(shared.config.lease_ttl);
    let dead_after = ttl * 2 / 3;
    let now = now_ms();
    let mut conn = shared.conn();
    let (_, _, live): (i64, i64, Vec<String>) = shared
        .call(
            redis::pipe()
                .cmd("ZADD")
                .arg(shared.keys.nodes())
                .arg(now)
                .arg(&shared.node_id)
                .cmd("ZREMRANGEBYSCORE")
                .arg(shared.keys.nodes())
                .arg("-inf")
                .arg(now - dead_after * 10)
                .cmd("ZRANGEBYSCORE")
                .arg(shared.keys.nodes())
                .arg(now - dead_after)
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
    for p in 0..shared.keys.partitions() {
        if shared.token.is_cancelled() {
            return Ok(());
        }
        let mine = desired_owner(&live, p) == Some(shared.node_id.as_str());
        let owned = shared.owned.lock().get(&p).map(|o| o.token.clone());
        match owned {
            None if mine => acquire(shared, p, ttl).await?,
            None => {}
            Some(token) if !mine => release(shared, p, &token).await,
            Some(token) => renew(shared, p, &token, ttl).await,
        }
    }
    Ok(())
}

async fn acquire(shared: &Arc<Shared>, p: u32, ttl: i64) -> Result<()> {
    let token = format!("{}:{}", shared.node_id, uuid::Uuid::new_v4().simple());
    let mut conn = shared.conn();
    let set: Option<String> = shared
        .call(
            redis::cmd("SET")
                .arg(shared.keys.lease(p))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query_async(&mut conn),
        )
        .await?;
    if set.is_none() {
        return Ok(());
    }
    let cancel = shared.token.child_token();
    shared.owned.lock().insert(
        p,
        Owned {
            token: token.clone(),
            renewed_at: Instant::now(),
            cancel: cancel.clone(),
        },
    );
    tracing::debug!(partition = p, node = %shared.node_id, "partition lease acquired");
    shared
        .tasks
        .spawn(route::run(shared.clone(), p, token, cancel));
    Ok(())
}

async fn renew(shared: &Shared, p: u32, token: &str, ttl: i64) {
    let mut conn = shared.conn();
    let mut inv = shared.scripts.lease_renew.prepare_invoke();
    inv.key(shared.keys.lease(p)).arg(token).arg(ttl);
    let renewed: Result<i64> = shared.call(inv.invoke_async(&mut conn)).await;
    let mut owned = shared.owned.lock();
    let lost = match renewed {
        Ok(1) => {
            if let Some(o) = owned.get_mut(&p) {
                o.renewed_at = Instant::now();
            }
            false
        }
        Ok(_) => true,
        // Unknown: keep routing until the lease must have expired.
        Err(_) => owned
            .get(&p)
            .is_some_and(|o| o.renewed_at.elapsed() >= shared.config.lease_ttl),
    };
    if lost && let Some(o) = owned.remove(&p) {
        o.cancel.cancel();
        tracing::info!(partition = p, "partition lease lost; routing stopped");
    }
}

/// Stops routing `p` and gives its lease up if it is still ours.
async fn release(shared: &Shared, p: u32, token: &str) {
    if let Some(o) = shared.owned.lock().remove(&p) {
        o.cancel.cancel();
    }
    let mut conn = shared.conn();
    let mut inv = shared.scripts.lease_release.prepare_invoke();
    inv.key(shared.keys.lease(p)).arg(token);
    if let Err(e) = shared.call(inv.invoke_async::<i64>(&mut conn)).await {
        tracing::debug!(partition = p, error = %e, "lease release failed; it will expire");
    }
}

/// Releases every lease and leaves the membership (graceful shutdown).
pub(super) async fn release_all(shared: &Shared) {
    let owned: Vec<(u32, String)> = shared
        .owned
        .lock()
        .iter()
        .map(|(p, o)| (*p, o.token.clone()))
        .collect();
    for (p, token) in owned {
        release(shared, p, &token).await;
    }
    let mut conn = shared.conn();
    let _ = shared
        .call(
            redis::cmd("ZREM")
                .arg(shared.keys.nodes())
                .arg(&shared.node_id)
                .query_async::<i64>(&mut conn),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_leaving_nodes_partitions() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let mut counts = [0; 3];
        for p in 0..64 {
            let before = desired_owner(&three, p).unwrap();
            let after = desired_owner(&two, p).unwrap();
            if before != "c" {
                assert_eq!(before, after, "partition {p} moved needlessly");
            }
            counts[(before.as_bytes()[0] - b'a') as usize] += 1;
        }
        assert!(counts.iter().all(|&n| n > 8), "{counts:?}");
        assert_eq!(desired_owner(&[], 0), None);
    }
}
