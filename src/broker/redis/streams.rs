//! Event streams on Redis (see [`crate::broker::event_stream`]): one Redis
//! stream per event stream, `er:es:{<name>}`, whose entry ids are
//! `<version>-1`. Appends run `scripts/stream_append.lua`, which checks the
//! expected version and adds the entry atomically; reads are `XRANGE`.
//! Streams are never trimmed and live as long as Redis keeps its data.
//!
//! Followers poll the stream's last id every `poll_interval` (appends are
//! off the publish path, so no pub/sub is spent on waking them).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::streams::StreamRangeReply;
use tokio::time::Instant;

use super::Shared;
use crate::broker::event_stream::{
    self, AppendOptions, Appended, StreamEntry, StreamPage, StreamRead,
};
use crate::broker::{BrokerError, Result};
use crate::event::Event;

static APPEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/stream_append.lua")));

/// See [`crate::broker::Broker::append`].
pub(super) async fn append(
    shared: &Shared,
    name: &str,
    event: Event,
    options: AppendOptions,
) -> Result<Appended> {
    event_stream::validate_name(name)?;
    shared.check_open()?;
    let json = serde_json::to_string(&event)
        .map_err(|e| BrokerError::Internal(format!("encode event: {e}")))?;
    let expected = options
        .expected_version
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut conn = shared.conn();
    let mut inv = APPEND.prepare_invoke();
    inv.key(shared.keys.event_stream(name))
        .arg(expected)
        .arg(json);
    let (done, version): (i64, u64) = shared.call(inv.invoke_async(&mut conn)).await?;
    if done == 1 {
        Ok(Appended {
            stream: name.to_string(),
            version,
            event_id: event.id,
        })
    } else {
        Err(event_stream::conflict(
            name,
            options.expected_version.unwrap_or_default(),
            version,
        ))
    }
}

/// See [`crate::broker::Broker::read_stream`].
pub(super) async fn read(shared: &Shared, name: &str, read: StreamRead) -> Result<StreamPage> {
    event_stream::validate_name(name)?;
    let key = shared.keys.event_stream(name);
    let replies = shared
        .each(vec![
            redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("{}-0", read.from_version.max(1)))
                .arg("+")
                .arg("COUNT")
                .arg(read.effective_limit())
                .clone(),
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .clone(),
        ])
        .await?;
    let [range, last]: [redis::Value; 2] = replies
        .try_into()
        .map_err(|_| BrokerError::Internal("event stream read: short reply".into()))?;
    let parse = |v| -> Result<StreamRangeReply> {
        redis::from_redis_value(v)
            .map_err(|e| BrokerError::Internal(format!("event stream reply: {e}")))
    };
    let range = parse(range)?;
    let last = parse(last)?;
    let version = match last.ids.first() {
        Some(entry) => version_of(&entry.id)?,
        None => 0,
    };
    let mut entries = Vec::with_capacity(range.ids.len());
    for entry in &range.ids {
        let json: String = entry.get("e").ok_or_else(|| {
            BrokerError::Internal(format!("event stream entry {} has no event", entry.id))
        })?;
        let event: Event = serde_json::from_str(&json)
            .map_err(|e| BrokerError::Internal(format!("event stream entry {}: {e}", entry.id)))?;
        entries.push(StreamEntry {
            version: version_of(&entry.id)?,
            event,
        });
    }
    Ok(StreamPage {
        stream: name.to_string(),
        version,
        entries,
    })
}

/// See [`crate::broker::Broker::wait_stream`]: polls the last entry id.
pub(super) async fn wait(
    shared: &Shared,
    name: &str,
    after: u64,
    timeout: Duration,
) -> Result<u64> {
    event_stream::validate_name(name)?;
    let key = shared.keys.event_stream(name);
    let deadline = Instant::now() + timeout;
    loop {
        shared.check_open()?;
        let mut conn = shared.conn();
        let last: StreamRangeReply = shared
            .call(
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await?;
        let version = match last.ids.first() {
            Some(entry) => version_of(&entry.id)?,
            None => 0,
        };
        if version > after || Instant::now() >= deadline {
            return Ok(version);
        }
        tokio::select! {
            () = shared.token.cancelled() => return Err(BrokerError::Closed),
            () = tokio::time::sleep_until(deadline.min(Instant::now() + shared.config.poll_interval)) => {}
        }
    }
}

/// The version in an entry id `<version>-1`.
fn version_of(id: &str) -> Result<u64> {
    id.split_once('-')
        .and_then(|(v, _)| v.parse().ok())
        .ok_or_else(|| BrokerError::Internal(format!("event stream entry id {id:?}")))
}
