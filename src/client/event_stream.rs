//! Event streams from the client: [`Client::append`] and
//! [`Client::read_stream`] (see [`crate::broker::event_stream`] for the
//! semantics). Following a stream live is the server's `subscribe_stream`
//! op; this client reads pages instead.

use serde_json::{Map, Value, json};

use super::ws::CallBody;
use super::{Client, ClientError, Result, Transport, to_json, within};
use crate::broker::{AppendOptions, Appended, StreamPage, StreamRead};
use crate::event::Event;

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
