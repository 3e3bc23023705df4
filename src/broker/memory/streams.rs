//! Event streams of the memory broker (see [`crate::broker::event_stream`]):
//! one vector of entries per stream, and a `watch` channel carrying its
//! version for followers.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::broker::event_stream::{
    self, AppendOptions, Appended, StreamEntry, StreamPage, StreamRead,
};
use crate::broker::footprint::event_footprint;
use crate::broker::{BrokerError, Result};
use crate::event::Event;

/// Most bytes of events (by [`event_footprint`]) all event streams of a
/// memory broker hold together: 256 MiB. Streams are never trimmed (an
/// event-sourced stream with a hole is wrong), so an append past it fails
/// with [`BrokerError::InvalidStream`] instead.
pub const EVENT_STREAMS_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Bytes charged per stream for its name and bookkeeping.
const STREAM_OVERHEAD: usize = 256;

/// Every event stream of one broker.
#[derive(Default)]
pub(super) struct EventStreams {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, Stream>,
    bytes: usize,
    closed: bool,
}

struct Stream {
    entries: Vec<StreamEntry>,
    version: watch::Sender<u64>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            entries: Vec::new(),
            version: watch::Sender::new(0),
        }
    }
}

impl EventStreams {
    /// See [`crate::broker::Broker::append`].
    pub(super) fn append(
        &self,
        name: &str,
        event: Event,
        options: AppendOptions,
    ) -> Result<Appended> {
        event_stream::validate_name(name)?;
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(BrokerError::Closed);
        }
        let current = inner
            .streams
            .get(name)
            .map_or(0, |s| s.entries.len() as u64);
        if let Some(expected) = options.expected_version
            && expected != current
        {
            return Err(event_stream::conflict(name, expected, current));
        }
        let overhead = if inner.streams.contains_key(name) {
            0
        } else {
            STREAM_OVERHEAD + name.len()
        };
        let bytes = event_footprint(&event) + overhead;
        if inner.bytes + bytes > EVENT_STREAMS_MAX_BYTES {
            return Err(BrokerError::InvalidStream {
                name: name.to_string(),
                reason: format!(
                    "event streams hold {} of {EVENT_STREAMS_MAX_BYTES} bytes; this event does not fit",
                    inner.bytes
                ),
            });
        }
        inner.bytes += bytes;
        let stream = inner
            .streams
            .entry(name.to_string())
            .or_insert_with(Stream::new);
        let version = current + 1;
        let event_id = event.id.clone();
        stream.entries.push(StreamEntry { version, event });
        stream.version.send_replace(version);
        Ok(Appended {
            stream: name.to_string(),
            version,
            event_id,
        })
    }

    /// See [`crate::broker::Broker::read_stream`].
    pub(super) fn read(&self, name: &str, read: StreamRead) -> Result<StreamPage> {
        event_stream::validate_name(name)?;
        let inner = self.inner.lock();
        let (version, entries) = match inner.streams.get(name) {
            None => (0, Vec::new()),
            Some(stream) => {
                let start = usize::try_from(read.from_version.max(1) - 1).unwrap_or(usize::MAX);
                let entries = stream
                    .entries
                    .iter()
                    .skip(start)
                    .take(read.effective_limit())
                    .cloned()
                    .collect();
                (stream.entries.len() as u64, entries)
            }
        };
        Ok(StreamPage {
            stream: name.to_string(),
            version,
            entries,
        })
    }

    /// See [`crate::broker::Broker::wait_stream`].
    pub(super) async fn wait(&self, name: &str, after: u64, timeout: Duration) -> Result<u64> {
        event_stream::validate_name(name)?;
        let rx = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(BrokerError::Closed);
            }
            if !inner.streams.contains_key(name) {
                // A follower may wait before the first append: the empty
                // stream is created for it and charged like any other.
                let bytes = STREAM_OVERHEAD + name.len();
                if inner.bytes + bytes <= EVENT_STREAMS_MAX_BYTES {
                    inner.bytes += bytes;
                    inner.streams.insert(name.to_string(), Stream::new());
                }
            }
            inner.streams.get(name).map(|s| s.version.subscribe())
        };
        let Some(mut rx) = rx else {
            // No room for even an empty stream: poll.
            tokio::time::sleep(timeout.min(Duration::from_millis(100))).await;
            return Ok(self.version(name));
        };
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|v| *v > after).await.map(|v| *v)
        })
        .await;
        match waited {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Ok(*rx.borrow()),
        }
    }

    fn version(&self, name: &str) -> u64 {
        self.inner
            .lock()
            .streams
            .get(name)
            .map_or(0, |s| s.entries.len() as u64)
    }

    /// Drops every stream; waiters get [`BrokerError::Closed`].
    pub(super) fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.streams.clear();
        inner.bytes = 0;
    }
}
