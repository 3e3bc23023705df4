//! Deleting retained events from the partitions' history streams by event
//! time (`event-router purge`), kept apart from the publish path.
//!
//! Each partition's stream is read in pages and the selected entries are
//! deleted with `XDEL`, page by page: a management operation, linear in the
//! retained history, that never blocks publishers for long. Selection is by
//! each event's `time`, as history reads filter, not by stream id.

use redis::streams::StreamRangeReply;

use super::Shared;
use super::publish::{entry_event, parse_id};
use crate::broker::{HistoryPurge, Result};

/// Entries read per `XRANGE` page.
const PAGE: usize = 500;

/// Deletes the history entries `purge` selects in every partition; returns
/// how many were deleted.
pub(super) async fn purge_history(shared: &Shared, purge: &HistoryPurge) -> Result<u64> {
    let mut deleted = 0;
    for p in 0..shared.keys.partitions() {
        deleted += purge_partition(shared, &shared.keys.history(p), purge).await?;
    }
    Ok(deleted)
}

async fn purge_partition(shared: &Shared, key: &str, purge: &HistoryPurge) -> Result<u64> {
    let mut start = "-".to_string();
    let mut deleted = 0;
    loop {
        let mut conn = shared.conn();
        let page: StreamRangeReply = shared
            .call(
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut conn),
            )
            .await?;
        let ids: Vec<&str> = page
            .ids
            .iter()
            .filter(|entry| {
                entry_event(entry).is_some_and(|event| {
                    event.time < purge.before
                        && purge.selector.as_ref().is_none_or(|s| s.matches(&event))
                })
            })
            .map(|entry| entry.id.as_str())
            .collect();
        if !ids.is_empty() {
            let n: u64 = shared
                .call(redis::cmd("XDEL").arg(key).arg(&ids).query_async(&mut conn))
                .await?;
            deleted += n;
        }
        match page.ids.last() {
            Some(last) if page.ids.len() >= PAGE && parse_id(&last.id).is_some() => {
                start = format!("({}", last.id);
            }
            _ => return Ok(deleted),
        }
    }
}
