//! Membership: every replica heartbeats into `er:{nodes}` (a zset of node →
//! ms) every fifth of `membership_ttl`, so that `status` can list the replicas
//! sharing a Redis. Nothing depends on it for correctness: routing happens
//! at publish, and consumers keep their deliveries alive themselves.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, now_ms};
use crate::broker::Result;

/// Starts the heartbeat loop.
pub(super) fn start(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let token = shared.token.clone();
    let every = (shared.config.membership_ttl / 5).max(Duration::from_millis(20));
    shared.tasks.spawn(async move {
        loop {
            if let Some(shared) = weak.upgrade()
                && let Err(e) = beat(&shared).await
            {
                tracing::debug!(error = %e, "membership heartbeat failed");
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// One heartbeat; forgets replicas silent for ten times the dead-after span.
async fn beat(shared: &Shared) -> Result<()> {
    let dead_after =
        i64::try_from(shared.config.membership_ttl.as_millis()).unwrap_or(i64::MAX) * 2 / 3;
    let now = now_ms();
    let mut conn = shared.conn();
    shared
        .call(
            redis::pipe()
                .cmd("ZADD")
                .arg(shared.keys.nodes())
                .arg(now)
                .arg(&shared.node_id)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(shared.keys.nodes())
                .arg("-inf")
                .arg(now.saturating_sub(dead_after.saturating_mul(10)))
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
}

/// Node ids with a heartbeat within two thirds of `membership_ttl`, sorted.
pub(super) async fn live(shared: &Shared) -> Result<Vec<String>> {
    let dead_after =
        i64::try_from(shared.config.membership_ttl.as_millis()).unwrap_or(i64::MAX) * 2 / 3;
    let mut conn = shared.conn();
    let mut nodes: Vec<String> = shared
        .call(
            redis::cmd("ZRANGEBYSCORE")
                .arg(shared.keys.nodes())
                .arg(now_ms().saturating_sub(dead_after))
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
    nodes.sort_unstable();
    Ok(nodes)
}

/// Leaves the membership (graceful shutdown).
pub(super) async fn leave(shared: &Shared) {
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
