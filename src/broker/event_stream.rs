//! Event streams: named sequences of events with a version per event, for
//! event sourcing and saga state (`order-123` holds `order.created` at
//! version 1, `order.paid` at version 2, ...).
//!
//! An event stream is not a topic: appending does not publish (no
//! subscription, route or history sees it) and reading is by version, not
//! by time. Versions start at 1 and have no gaps; an empty stream is at
//! version 0. An append may name the version it expects the stream to be
//! at (optimistic concurrency): of several appends expecting the same
//! version exactly one succeeds, the others fail with
//! [`BrokerError::VersionConflict`] naming the current version.
//!
//! The [`Broker`](super::Broker) methods are `append`, `read_stream` and
//! `wait_stream`; [`follow`] builds a gap-free, duplicate-free subscription
//! (catch up, then live) on top of them for any broker.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BrokerError, Result, SharedBroker};
use crate::event::Event;

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 200;
/// Events a read returns when its limit is 0.
pub const DEFAULT_READ_LIMIT: usize = 100;
/// Most events one read returns.
pub const MAX_READ_LIMIT: usize = 1000;

/// Per-call append knobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// Append only if the stream is at this version (0: the stream must be
    /// empty); any version when `None`.
    pub expected_version: Option<u64>,
}

/// Where an appended event was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The stream.
    pub stream: String,
    /// The event's version, which is now the stream's version.
    pub version: u64,
    /// The event id.
    pub event_id: String,
}

/// One event of a stream with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// 1-based, without gaps.
    pub version: u64,
    /// The event as appended.
    pub event: Event,
}

/// Which part of a stream to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamRead {
    /// Events at this version and later (0 and 1 both read from the start).
    pub from_version: u64,
    /// Most events to return; 0 means [`DEFAULT_READ_LIMIT`], and at most
    /// [`MAX_READ_LIMIT`] are returned.
    pub limit: usize,
}

impl StreamRead {
    /// The limit this read applies.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => DEFAULT_READ_LIMIT,
            n => n.min(MAX_READ_LIMIT),
        }
    }
}

/// Events read from a stream, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPage {
    /// The stream.
    pub stream: String,
    /// The stream's version when it was read (0 when empty).
    pub version: u64,
    /// The events, by version.
    pub entries: Vec<StreamEntry>,
}

/// Checks a stream name: a valid topic (dot-separated segments of
/// `[A-Za-z0-9_-]`) of at most 200 bytes, so that access rules written for
/// topics apply to streams by name.
///
/// # Errors
/// [`BrokerError::InvalidStream`] naming the problem.
pub fn validate_name(name: &str) -> Result<()> {
    let problem = if name.len() > MAX_STREAM_NAME_LEN {
        Some(format!(
            "a stream name is at most {MAX_STREAM_NAME_LEN} bytes"
        ))
    } else {
        crate::topic::validate_topic(name)
            .err()
            .map(|e| format!("a stream name must be a valid topic: {e}"))
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(BrokerError::InvalidStream {
            name: name.chars().take(MAX_STREAM_NAME_LEN).collect(),
            reason,
        }),
    }
}

/// The conflict error for an append that expected `expected`.
pub(crate) fn conflict(stream: &str, expected: u64, current: u64) -> BrokerError {
    BrokerError::VersionConflict {
        stream: stream.to_string(),
        expected,
        current,
    }
}

/// How long [`follow`] waits for an append before reading again anyway, so
/// that a missed wake-up costs at most this much latency.
const FOLLOW_WAIT: Duration = Duration::from_secs(5);

/// Reads `stream` from `from_version` on and keeps waiting for appends:
/// every event exactly once, in version order (catch up, then live).
/// `deliver` gets each entry and returns `false` to stop.
///
/// Entries are read in pages of at most `page` and handed over one at a
/// time; memory is bounded by one page.
///
/// # Cancel safety
/// Not cancel safe in the sense that a cancelled call may have delivered
/// part of a page; the caller knows the last version it got and resumes
/// from the next.
///
/// # Errors
/// The first broker error (invalid name, broker closed or unavailable).
pub async fn follow<F, Fut>(
    broker: SharedBroker,
    stream: &str,
    from_version: u64,
    page: usize,
    mut deliver: F,
) -> Result<()>
where
    F: FnMut(StreamEntry) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    validate_name(stream)?;
    let mut next = from_version.max(1);
    loop {
        let read = StreamRead {
            from_version: next,
            limit: page,
        };
        let got = broker.read_stream(stream, read).await?;
        if got.entries.is_empty() {
            broker.wait_stream(stream, next - 1, FOLLOW_WAIT).await?;
            continue;
        }
        for entry in got.entries {
            // Versions are contiguous; anything else is skipped rather
            // than delivered twice or out of order.
            if entry.version != next {
                continue;
            }
            next += 1;
            if !deliver(entry).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_checked() {
        for ok in ["order-123", "saga.process_order.42", "a.b_c"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "{x}", "a..b", "a:b", &"x".repeat(201)] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid_stream", "{bad}");
        }
    }

    #[test]
    fn read_limits_default_and_cap() {
        let read = |limit| StreamRead {
            from_version: 0,
            limit,
        };
        assert_eq!(read(0).effective_limit(), DEFAULT_READ_LIMIT);
        assert_eq!(read(7).effective_limit(), 7);
        assert_eq!(read(1_000_000).effective_limit(), MAX_READ_LIMIT);
    }
}
