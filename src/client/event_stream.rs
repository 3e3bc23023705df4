//! Event streams from the client: [`Client::append`],
//! [`Client::read_stream`] and [`Client::subscribe_stream`] (see
//! [`crate::broker::event_stream`] for the semantics).
//!
//! [`Client::subscribe_stream`] follows a stream by reading pages from the
//! last version it handed out, not through the server's `subscribe_stream`
//! op: a page read is a plain call, which the connection sends again after
//! a reconnect, so resuming without a gap or a duplicate needs no
//! per-subscription state in the connection driver. In-process it waits on
//! the broker for appends; over WebSocket it polls every
//! [`STREAM_POLL_INTERVAL`] while caught up.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::ws::CallBody;
use super::{Client, ClientError, Result, Transport, to_json, within};
use crate::broker::{AppendOptions, Appended, StreamEntry, StreamPage, StreamRead};
use crate::event::Event;

/// How often a caught-up WebSocket follower asks for new entries.
pub const STREAM_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Entries a follower reads at once (the server's maximum page).
const FOLLOW_PAGE: usize = 1000;

/// Entries read but not yet received; the follower waits for room, so
/// memory stays bounded by this and one page.
const FOLLOW_BUFFER: usize = 256;

/// How long an in-process follower waits on the broker before reading
/// again anyway.
const IN_PROCESS_WAIT: Duration = Duration::from_secs(5);

/// A follower of one event stream, from [`Client::subscribe_stream`]:
/// every entry from the starting version on, once and in version order,
/// caught up and then live. Dropping it stops following.
#[derive(Debug)]
pub struct StreamSubscription {
    entries: mpsc::Receiver<Result<StreamEntry>>,
    last: u64,
    _stop: DropGuard,
}

impl StreamSubscription {
    /// The next entry; `None` once the client is closed. An `Err` is the
    /// last item: a failure that reading again cannot fix (an invalid
    /// stream name, a permission).
    ///
    /// # Cancel safety
    /// Cancel safe: an entry is taken from the buffer only when returned.
    pub async fn recv(&mut self) -> Option<Result<StreamEntry>> {
        let item = self.entries.recv().await?;
        if let Ok(entry) = &item {
            self.last = entry.version;
        }
        Some(item)
    }

    /// The version of the last entry [`recv`](Self::recv) returned (the
    /// starting version minus one before the first).
    pub fn last_version(&self) -> u64 {
        self.last
    }
}

impl Client {
    /// Appends `event` to the event stream `stream`, if the stream is at
    /// `expected_version` (when given; 0 means still empty). Returns the
    /// event's version.
    ///
    /// An append whose confirmation is lost to a reconnect is sent again;
    /// give `expected_version` to make that safe (the second one conflicts
    /// instead of appending twice).
    ///
    /// # Errors
    /// [`ClientError::Server`] with code `version_conflict` (its message
    /// names the current version) or `invalid_stream`; otherwise as
    /// [`Client::publish`].
    pub async fn append(
        &self,
        stream: &str,
        event: Event,
        expected_version: Option<u64>,
    ) -> Result<Appended> {
        self.check_open()?;
        let timeout = self.inner.config.publish_timeout;
        match &self.inner.transport {
            Transport::InProcess(t) => {
                let broker = t.router().broker().clone();
                let options = AppendOptions { expected_version };
                within(timeout, async move {
                    broker
                        .append(stream, event, options)
                        .await
                        .map_err(|e| ClientError::server(e.kind(), e.to_string()))
                })
                .await
            }
            Transport::Ws { .. } => {
                let event: Value = serde_json::from_str(&to_json(&event)?)
                    .map_err(|e| ClientError::server("invalid_event", e.to_string()))?;
                let mut op = object(json!({"op": "append", "stream": stream, "event": event}));
                if let Some(v) = expected_version {
                    op.insert("expected_version".into(), v.into());
                }
                let fields = self.call(CallBody::Op(op), 1, timeout).await?;
                decode(fields)
            }
        }
    }

    /// Reads `stream` from `from_version` on (0: the start), at most
    /// `limit` entries (0: 100; at most 1000).
    ///
    /// # Errors
    /// [`ClientError::Server`] with code `invalid_stream`; connection errors.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<StreamPage> {
        self.check_open()?;
        let timeout = self.inner.config.publish_timeout;
        match &self.inner.transport {
            Transport::InProcess(t) => {
                let broker = t.router().broker().clone();
                let read = StreamRead {
                    from_version,
                    limit,
                };
                within(timeout, async move {
                    broker
                        .read_stream(stream, read)
                        .await
                        .map_err(|e| ClientError::server(e.kind(), e.to_string()))
                })
                .await
            }
            Transport::Ws { .. } => {
                let op = object(json!({
                    "op": "read_stream", "stream": stream,
                    "from_version": from_version, "limit": limit,
                }));
                let fields = self.call(CallBody::Op(op), 1, timeout).await?;
                decode(fields)
            }
        }
    }
}

impl Client {
    /// Follows `stream` from `from_version` on (0 and 1: the start): the
    /// entries already there, then each new one as it is appended, every
    /// version once and in order, across reconnects of this client (it
    /// resumes from the version after the last one it read).
    ///
    /// Entries wait in a buffer of 256 until received; the follower reads
    /// no further meanwhile, so a slow reader costs no memory beyond that
    /// and one page.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the client is closed. An invalid name
    /// or a refused read arrives as the subscription's last item.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the follower task).
    pub fn subscribe_stream(&self, stream: &str, from_version: u64) -> Result<StreamSubscription> {
        self.check_open()?;
        let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
        let stop = CancellationToken::new();
        let next = from_version.max(1);
        let client = self.clone();
        let stream = stream.to_string();
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = follow(client, stream, next, tx) => {}
            }
        });
        Ok(StreamSubscription {
            entries: rx,
            last: next - 1,
            _stop: stop.drop_guard(),
        })
    }

    /// Waits until `stream` may have moved past `version`.
    async fn wait_for_append(&self, stream: &str, version: u64) {
        match &self.inner.transport {
            Transport::InProcess(t) => {
                let broker = t.router().broker().clone();
                if broker
                    .wait_stream(stream, version, IN_PROCESS_WAIT)
                    .await
                    .is_err()
                {
                    // Read again after a pause; the read reports the error.
                    tokio::time::sleep(STREAM_POLL_INTERVAL).await;
                }
            }
            Transport::Ws { .. } => tokio::time::sleep(STREAM_POLL_INTERVAL).await,
        }
    }
}

/// Reads `stream` from `next` on into `to` until the receiver is dropped,
/// the client closes, or a read fails for good.
async fn follow(
    client: Client,
    stream: String,
    mut next: u64,
    to: mpsc::Sender<Result<StreamEntry>>,
) {
    loop {
        let page = match client.read_stream(&stream, next, FOLLOW_PAGE).await {
            Ok(page) => page,
            Err(ClientError::Closed) => return,
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, %stream, "stream read failed; reading again");
                tokio::time::sleep(STREAM_POLL_INTERVAL).await;
                continue;
            }
            Err(e) => {
                if client.check_open().is_ok() {
                    let _ = to.send(Err(e)).await;
                }
                return;
            }
        };
        if page.entries.is_empty() {
            client.wait_for_append(&stream, next - 1).await;
            continue;
        }
        for entry in page.entries {
            // Versions are contiguous; anything else is skipped rather
            // than handed out twice or out of order.
            if entry.version != next {
                continue;
            }
            next += 1;
            if to.send(Ok(entry)).await.is_err() {
                return;
            }
        }
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(fields: Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| ClientError::server("invalid_reply", format!("malformed reply: {e}")))
}
