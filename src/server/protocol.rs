//! WebSocket v2 frames (DESIGN §5): what clients send and what the server
//! sends back, as serde enums tagged by `op`.
//!
//! Each text frame is one JSON object. [`parse`] turns a frame into a
//! [`ClientFrame`], or hands a seed v1 frame (one with `type` and no `op`) to
//! [`super::ws_v1`], or explains what is wrong with a [`FrameError`] that
//! carries the request `id` so the error reply can echo it. Request ids are
//! echoed exactly as sent (a string or a number).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use crate::broker::{Appended, StreamPage};
use crate::event::Event;

/// Ops a client may send, for error messages.
pub const CLIENT_OPS: [&str; 11] = [
    "publish",
    "publish_batch",
    "subscribe",
    "ack",
    "nack",
    "unsubscribe",
    "request",
    "ping",
    "append",
    "read_stream",
    "subscribe_stream",
];

/// A request id as the client sent it; echoed in the reply.
pub type RequestId = Option<Value>;

/// A v2 frame from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Publish one event; replied to with `ok` + `event_id` (+ `status`).
    Publish {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The raw event (validated by the router).
        event: Value,
    },
    /// Publish several events in order; replied to with `ok` + `event_ids`.
    PublishBatch {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The raw events.
        events: Vec<Value>,
        /// All or none are stored.
        #[serde(default)]
        atomic: bool,
    },
    /// Open a live or (with `group`) durable subscription.
    Subscribe(SubscribeFrame),
    /// Acknowledge a durable delivery. Acks of live deliveries are ignored.
    Ack {
        /// Echoed in the reply; without it a successful ack is not answered.
        #[serde(default)]
        id: RequestId,
        /// The delivery to ack.
        delivery_id: String,
        /// The subscription it came from (optional; looked up when absent).
        #[serde(default)]
        subscription_id: Option<String>,
    },
    /// Reject a durable delivery for redelivery.
    Nack {
        /// Echoed in the reply; without it a successful nack is not answered.
        #[serde(default)]
        id: RequestId,
        /// The delivery to nack.
        delivery_id: String,
        /// The subscription it came from (optional; looked up when absent).
        #[serde(default)]
        subscription_id: Option<String>,
        /// Redeliver after this many milliseconds instead of the backoff.
        #[serde(default)]
        delay_ms: Option<u64>,
        /// Why processing failed; kept in the attempt history.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Close a subscription of this connection.
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The `subscription_id` returned by `subscribe`.
        subscription_id: String,
    },
    /// Publish an event and wait for the first reply to it.
    Request {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The raw request event.
        event: Value,
        /// How long to wait, in milliseconds (default 30 000, at most 300 000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Liveness check; answered with `pong`.
    Ping {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
    },
    /// Append one event to an event stream; replied to with `ok` +
    /// `stream`, `version`, `event_id`, or `version_conflict`.
    Append {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The event stream (a topic-shaped name such as `order-123`).
        stream: String,
        /// The raw event (validated like a published one).
        event: Value,
        /// Append only if the stream is at this version (0: empty).
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// Read an event stream; replied to with `ok` + `stream`, `version`
    /// (the current one) and `entries` (`{version, event}`, oldest first).
    ReadStream {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The event stream.
        stream: String,
        /// First version to read (default 0: from the start).
        #[serde(default)]
        from_version: u64,
        /// Most entries (default 100, at most 1000).
        #[serde(default)]
        limit: usize,
    },
    /// Follow an event stream from a version: its entries from there, then
    /// each appended one, as `stream_event` frames (no gap, no duplicate).
    /// Replied to with `ok` + `subscription_id`; closed with `unsubscribe`.
    SubscribeStream {
        /// Echoed in the reply.
        #[serde(default)]
        id: RequestId,
        /// The event stream.
        stream: String,
        /// First version to deliver (default 0: from the start).
        #[serde(default)]
        from_version: u64,
    },
}

/// The body of a `subscribe` frame.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SubscribeFrame {
    /// Echoed in the reply.
    #[serde(default)]
    pub id: RequestId,
    /// Topic patterns (`task.*`, `agent.#`, `pattern:REGEX`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression over the whole topic, in addition to `topics`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// A filter document (object), a shorthand string (`priority:gt:5`), or
    /// an array of shorthand strings (ANDed).
    #[serde(default)]
    pub filter: Option<Value>,
    /// A durable consumer group; live when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Durable only: most un-acked deliveries at once (default 100).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Live only: what happens when this subscriber falls behind.
    #[serde(default)]
    pub slow_consumer: SlowConsumer,
}

/// What a live subscription does when its queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Drop the oldest queued events and send an `overflow` notice (default).
    #[default]
    DropOldest,
    /// Close the connection (WebSocket 1008, reason `slow consumer`).
    Disconnect,
}

impl ClientFrame {
    /// The request id of this frame.
    pub fn id(&self) -> &RequestId {
        match self {
            ClientFrame::Publish { id, .. }
            | ClientFrame::PublishBatch { id, .. }
            | ClientFrame::Ack { id, .. }
            | ClientFrame::Nack { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Request { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Append { id, .. }
            | ClientFrame::ReadStream { id, .. }
            | ClientFrame::SubscribeStream { id, .. } => id,
            ClientFrame::Subscribe(s) => &s.id,
        }
    }
}

/// What [`parse`] found in a text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A v2 frame.
    V2(ClientFrame),
    /// A seed v1 frame (`type`, no `op`), still raw.
    V1(Value),
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The frame's `id`, when it had one.
    pub id: RequestId,
    /// `invalid_json`, `too_deep`, `invalid_frame` or `unknown_op`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        ApiError::bad_request(e.code, e.message)
    }
}

/// The frames that carry events, read in one pass.
///
/// serde reads an `op`-tagged enum such as [`ClientFrame`] by buffering the
/// whole frame first and reading it again; for `publish` and
/// `publish_batch` frames that doubled the cost of every event on its way
/// in. Any other frame, or one this does not read cleanly, goes the typed
/// way, which also words the errors.
#[derive(Deserialize)]
struct EventFrame {
    op: EventOp,
    #[serde(default)]
    id: RequestId,
    #[serde(default)]
    event: Option<Value>,
    #[serde(default)]
    events: Option<Vec<Value>>,
    #[serde(default)]
    atomic: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum EventOp {
    Publish,
    PublishBatch,
    #[serde(other)]
    Other,
}

fn parse_event_frame(text: &str) -> Option<ClientFrame> {
    if !text.contains("\"publish") {
        return None;
    }
    let frame: EventFrame = serde_json::from_str(text).ok()?;
    match (frame.op, frame.event, frame.events) {
        (EventOp::Publish, Some(event), _) => Some(ClientFrame::Publish {
            id: frame.id,
            event,
        }),
        (EventOp::PublishBatch, _, Some(events)) => Some(ClientFrame::PublishBatch {
            id: frame.id,
            events,
            atomic: frame.atomic,
        }),
        _ => None,
    }
}

/// Parses one text frame.
///
/// The common case costs one typed parse; the error path re-reads the frame
/// as a generic value to say precisely what is wrong.
///
/// # Errors
/// A [`FrameError`] naming the problem: malformed JSON, not an object, no
/// `op`, an unknown `op`, or a missing or mistyped field.
pub fn parse(text: &str) -> Result<Parsed, FrameError> {
    if let Some(frame) = parse_event_frame(text) {
        return Ok(Parsed::V2(frame));
    }
    let typed_error = match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => return Ok(Parsed::V2(frame)),
        Err(e) => e,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        code: if crate::event::is_too_deep(&e) {
            "too_deep"
        } else {
            "invalid_json"
        },
        message: format!("malformed JSON: {e}"),
    })?;
    let Value::Object(obj) = &value else {
        return Err(FrameError {
            id: None,
            code: "invalid_frame",
            message: format!(
                "a frame must be a JSON object, got {}",
                crate::event::json_kind(&value)
            ),
        });
    };
    let id = obj.get("id").filter(|v| !v.is_null()).cloned();
    let fail = |code, message| {
        Err(FrameError {
            id: id.clone(),
            code,
            message,
        })
    };
    match obj.get("op") {
        None if obj.contains_key("type") => Ok(Parsed::V1(value)),
        None => fail(
            "invalid_frame",
            "missing field `op` (or `type` for v1 frames)".into(),
        ),
        Some(Value::String(op)) if !CLIENT_OPS.contains(&op.as_str()) => fail(
            "unknown_op",
            format!(
                "unknown op {op:?} (expected one of {})",
                CLIENT_OPS.join(", ")
            ),
        ),
        Some(Value::String(op)) => fail(
            "invalid_frame",
            format!("invalid `{op}` frame: {}", strip_position(&typed_error)),
        ),
        Some(other) => fail(
            "invalid_frame",
            format!(
                "field `op` must be a string, got {}",
                crate::event::json_kind(other)
            ),
        ),
    }
}

fn no_id(id: &&RequestId) -> bool {
    id.is_none()
}

/// serde_json's message without " at line 1 column 42", which says nothing
/// useful about a one-line frame.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The payload of an `ok` reply, flattened into the frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// Nothing beyond `ok`.
    Done {},
    /// A live ack or nack that was ignored (live deliveries need no ack).
    Ignored {
        /// Always true.
        ignored: bool,
    },
    /// `publish`.
    Published {
        /// The event id.
        event_id: String,
        /// `published`, or `dropped` when an EventRoute dropped it.
        status: &'static str,
    },
    /// `publish_batch`.
    Batch {
        /// Event ids in input order.
        event_ids: Vec<String>,
        /// Ids of events an EventRoute dropped; absent when none was.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        dropped: Vec<String>,
    },
    /// `subscribe`.
    Subscribed {
        /// Names this subscription in `event` frames and `unsubscribe`.
        subscription_id: String,
    },
    /// `request`.
    Response {
        /// The first reply event.
        response: Box<Event>,
    },
    /// `append`.
    Appended(Appended),
    /// `read_stream`.
    StreamRead(StreamPage),
}

/// A v2 frame from the server.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// A request succeeded.
    Ok {
        /// The request's id.
        #[serde(skip_serializing_if = "no_id")]
        id: &'a RequestId,
        /// What it produced.
        #[serde(flatten)]
        reply: &'a Reply,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(skip_serializing_if = "no_id")]
        id: &'a RequestId,
    },
    /// A delivery. Live: `delivery_id` is the event id and `attempt` 1.
    Event {
        /// The subscription it matched.
        subscription_id: &'a str,
        /// Id to `ack`/`nack` (durable) with.
        delivery_id: &'a str,
        /// 1 on first delivery.
        attempt: u32,
        /// The event.
        event: &'a Event,
    },
    /// An event of a followed event stream (`subscribe_stream`).
    StreamEvent {
        /// The subscription.
        subscription_id: &'a str,
        /// The event stream.
        stream: &'a str,
        /// The event's version.
        version: u64,
        /// The event.
        event: &'a Event,
    },
    /// A live subscription fell behind and lost `dropped` events.
    Overflow {
        /// The subscription.
        subscription_id: &'a str,
        /// How many events were dropped since the last notice.
        dropped: u64,
    },
    /// A request failed, or a subscription ended with an error.
    Error {
        /// The request's id.
        #[serde(skip_serializing_if = "no_id")]
        id: &'a RequestId,
        /// Stable snake_case code.
        code: &'a str,
        /// What went wrong.
        message: &'a str,
        /// The subscription that ended, for errors not caused by a request.
        #[serde(skip_serializing_if = "Option::is_none")]
        subscription_id: Option<&'a str>,
        /// `rate_limited`: milliseconds to wait before retrying.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// `version_conflict`: the event stream's current version.
        #[serde(skip_serializing_if = "Option::is_none")]
        current_version: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these frames cannot fail: every map key is a string and
        // `Event` serializes infallibly.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An `ok` frame as text.
    pub fn ok(id: &RequestId, reply: &Reply) -> String {
        ServerFrame::Ok { id, reply }.to_text()
    }

    /// An `error` frame for a failed request, as text.
    pub fn error(id: &RequestId, error: &ApiError) -> String {
        ServerFrame::Error {
            id,
            code: error.code,
            message: &error.message,
            subscription_id: None,
            retry_after_ms: error.retry_after.map(|d| d.as_millis().max(1) as u64),
            current_version: error.current_version,
        }
        .to_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2(text: &str) -> ClientFrame {
        match parse(text) {
            Ok(Parsed::V2(f)) => f,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn err(text: &str) -> FrameError {
        parse(text).expect_err(text)
    }

    #[test]
    fn the_one_pass_event_frames_read_as_the_typed_parse_does() {
        for text in [
            r#"{"op":"publish","id":"1","event":{"type":"a","payload":{"publish":1}}}"#,
            r#"{"id":7,"events":[{"type":"a"},{"type":"b"}],"op":"publish_batch"}"#,
            r#"{"op":"publish_batch","events":[],"atomic":true,"extra":1}"#,
            r#"{"op":"publish","event":null}"#,
            r#"{"op":"subscribe","topics":["publish.#"]}"#,
        ] {
            let typed = serde_json::from_str::<ClientFrame>(text).unwrap();
            assert_eq!(v2(text), typed, "{text}");
        }
        for bad in [
            r#"{"op":"publish_batch","events":{"type":"a"}}"#,
            r#"{"op":"publish_batch","events":[],"atomic":"yes"}"#,
            r#"{"op":"publish"}"#,
        ] {
            assert_eq!(err(bad).code, "invalid_frame", "{bad}");
        }
    }

    #[test]
    fn every_client_frame_parses() {
        assert_eq!(
            v2(r#"{"op":"publish","id":"1","event":{"type":"a"}}"#),
            ClientFrame::Publish {
                id: Some(json!("1")),
                event: json!({"type":"a"})
            }
        );
        assert_eq!(
            v2(r#"{"op":"publish_batch","id":2,"events":[{"type":"a"}],"atomic":true}"#),
            ClientFrame::PublishBatch {
                id: Some(json!(2)),
                events: vec![json!({"type":"a"})],
                atomic: true
            }
        );
        let ClientFrame::Subscribe(s) = v2(
            r#"{"op":"subscribe","id":"3","topics":["task.*"],"filter":"priority:gt:5","group":"w","max_in_flight":7}"#,
        ) else {
            panic!()
        };
        assert_eq!(s.topics, vec!["task.*"]);
        assert_eq!(s.filter, Some(json!("priority:gt:5")));
        assert_eq!((s.group.as_deref(), s.max_in_flight), (Some("w"), Some(7)));
        assert_eq!(
            v2(r#"{"op":"ack","delivery_id":"d"}"#),
            ClientFrame::Ack {
                id: None,
                delivery_id: "d".into(),
                subscription_id: None
            }
        );
        assert_eq!(
            v2(r#"{"op":"nack","delivery_id":"d","delay_ms":1000,"reason":"busy"}"#),
            ClientFrame::Nack {
                id: None,
                delivery_id: "d".into(),
                subscription_id: None,
                delay_ms: Some(1000),
                reason: Some("busy".into())
            }
        );
        assert_eq!(
            v2(r#"{"op":"unsubscribe","subscription_id":"s"}"#),
            ClientFrame::Unsubscribe {
                id: None,
                subscription_id: "s".into()
            }
        );
        assert_eq!(
            v2(r#"{"op":"request","id":"4","event":{"type":"a"},"timeout_ms":5000}"#),
            ClientFrame::Request {
                id: Some(json!("4")),
                event: json!({"type":"a"}),
                timeout_ms: Some(5000)
            }
        );
        assert_eq!(v2(r#"{"op":"ping"}"#), ClientFrame::Ping { id: None });
        assert_eq!(
            v2(
                r#"{"op":"append","id":5,"stream":"order-1","event":{"type":"a"},"expected_version":0}"#
            ),
            ClientFrame::Append {
                id: Some(json!(5)),
                stream: "order-1".into(),
                event: json!({"type":"a"}),
                expected_version: Some(0)
            }
        );
        assert_eq!(
            v2(r#"{"op":"read_stream","stream":"order-1","from_version":3}"#),
            ClientFrame::ReadStream {
                id: None,
                stream: "order-1".into(),
                from_version: 3,
                limit: 0
            }
        );
        assert_eq!(
            v2(r#"{"op":"subscribe_stream","stream":"order-1"}"#),
            ClientFrame::SubscribeStream {
                id: None,
                stream: "order-1".into(),
                from_version: 0
            }
        );
    }

    #[test]
    fn v1_frames_are_recognised_by_type_without_op() {
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok(Parsed::V1(v)) if v["type"] == "ping"
        ));
    }

    #[test]
    fn bad_frames_get_precise_codes_and_keep_the_id() {
        assert_eq!(err("{not json").code, "invalid_json");
        assert_eq!(err("[1,2]").code, "invalid_frame");
        assert_eq!(err(r#"{"id":"9"}"#).code, "invalid_frame");
        let e = err(r#"{"op":"explode","id":"7"}"#);
        assert_eq!((e.code, e.id), ("unknown_op", Some(json!("7"))));
        assert!(e.message.contains("explode") && e.message.contains("publish_batch"));
        let e = err(r#"{"op":"publish","id":"8"}"#);
        assert_eq!(e.code, "invalid_frame");
        assert!(e.message.contains("`event`"), "{}", e.message);
        assert!(!e.message.contains("line 1"), "{}", e.message);
        assert_eq!(err(r#"{"op":5}"#).code, "invalid_frame");
        assert_eq!(
            err(r#"{"op":"subscribe","topics":"a.b"}"#).code,
            "invalid_frame"
        );
        assert_eq!(err(r#"{"op":"ack"}"#).code, "invalid_frame");
    }

    #[test]
    fn server_frames_have_the_documented_shapes() {
        let id = Some(json!("1"));
        let text = ServerFrame::ok(
            &id,
            &Reply::Published {
                event_id: "e".into(),
                status: "published",
            },
        );
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"op":"ok","id":"1","event_id":"e","status":"published"})
        );
        let text = ServerFrame::ok(&None, &Reply::Done {});
        assert_eq!(text, r#"{"op":"ok"}"#);
        let e = ApiError::bad_request("invalid_filter", "bad");
        assert_eq!(
            serde_json::from_str::<Value>(&ServerFrame::error(&id, &e)).unwrap(),
            json!({"op":"error","id":"1","code":"invalid_filter","message":"bad"})
        );
        let event = Event::new("a.b", json!(1)).unwrap();
        let text = ServerFrame::Event {
            subscription_id: "s",
            delivery_id: &event.id,
            attempt: 1,
            event: &event,
        }
        .to_text();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["op"], "event");
        assert_eq!(v["event"]["type"], "a.b");
        assert_eq!(v["delivery_id"], event.id.as_str());
    }
}
