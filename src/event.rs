//! The event envelope (DESIGN §3): what publishers send, what subscribers get.
//!
//! Raw JSON from any transport goes through [`Event::from_json`], which accepts
//! the aliases (`topic` for `type`, `data` for `payload`), priority names, and
//! fills `id` (UUIDv7) and `time` when absent. Everything downstream of that
//! function handles only valid events.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::topic::{self, TopicError};

mod headers;

pub use headers::{Headers, InlineTraceparent, TRACEPARENT, TRACEPARENT_LEN};

/// Default maximum size of an event's `payload`, serialized (1 MiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Longest accepted `id`, `source`, `target` and other string attributes.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Deepest nesting of arrays and objects `serde_json` reads: its recursion
/// limit of 128 refuses the 128th nested level.
pub const JSON_MAX_DEPTH: usize = 127;

/// Levels the deepest form an event travels in adds above its payload:
/// a history or dead-letter listing,
/// `{"events":[{"event":{"payload":…}}]}` (object, array, entry, event).
/// Deliveries (`{"op":"event","event":{…}}`), stored events and batches
/// add fewer.
pub const ENVELOPE_DEPTH: usize = 4;

/// Deepest `payload` (and `metadata`) accepted, counting each array or
/// object as one level (a scalar is 0, `[]` is 1): whatever is accepted
/// can be stored, delivered and listed by every transport and client.
pub const MAX_PAYLOAD_DEPTH: usize = JSON_MAX_DEPTH - ENVELOPE_DEPTH;

/// Why a raw event was rejected. Each message names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// The event is not a JSON object.
    #[error("event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type or an out-of-range value.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// The field's name as sent.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The topic (`type`) is malformed.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The priority is neither 1..=10 nor a known name.
    #[error(
        "invalid priority {0}: expected 1..=10 or one of lowest, low, normal, high, critical, system"
    )]
    Priority(String),
    /// `payload` or `metadata` nests deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("`{field}` nests deeper than {limit} levels of arrays and objects")]
    TooDeep {
        /// `payload` or `metadata`.
        field: &'static str,
        /// The limit, [`MAX_PAYLOAD_DEPTH`].
        limit: usize,
    },
    /// The serialized payload exceeds the configured limit.
    #[error("payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Serialized payload size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
}

impl ValidationError {
    /// Stable snake_case code for client-facing errors.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::Topic(_) => "invalid_topic",
            ValidationError::Priority(_) => "invalid_priority",
            ValidationError::PayloadTooLarge { .. } => "payload_too_large",
            ValidationError::TooDeep { .. } => "too_deep",
            _ => "invalid_event",
        }
    }

    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        ValidationError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// Event priority, 1 (lowest) to 10 (system). Higher is delivered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// The lowest priority, 1.
    pub const LOWEST: Priority = Priority(1);
    /// The default priority, 5 (`normal`).
    pub const NORMAL: Priority = Priority(5);
    /// The highest priority, 10 (`system`).
    pub const SYSTEM: Priority = Priority(10);
    /// Named priorities and their values.
    pub const NAMES: [(&'static str, u8); 6] = [
        ("lowest", 1),
        ("low", 3),
        ("normal", 5),
        ("high", 7),
        ("critical", 9),
        ("system", 10),
    ];

    /// A priority from a number in 1..=10.
    pub fn new(value: u8) -> Option<Priority> {
        (1..=10).contains(&value).then_some(Priority(value))
    }

    /// The numeric value, 1..=10.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Index into a 10-slot array of priority bands, 0 for priority 1.
    pub fn band(self) -> usize {
        usize::from(self.0 - 1)
    }

    /// Parses a name (`high`) or a number (`7`).
    ///
    /// # Errors
    /// [`ValidationError::Priority`] naming the rejected text.
    pub fn parse(text: &str) -> Result<Priority, ValidationError> {
        let lower = text.trim().to_ascii_lowercase();
        if let Some((_, v)) = Self::NAMES.iter().find(|(n, _)| *n == lower) {
            return Ok(Priority(*v));
        }
        lower
            .parse::<u8>()
            .ok()
            .and_then(Priority::new)
            .ok_or_else(|| ValidationError::Priority(format!("{text:?}")))
    }

    /// Parses a JSON number or name.
    ///
    /// # Errors
    /// [`ValidationError::Priority`] for anything else.
    pub fn from_json(value: &Value) -> Result<Priority, ValidationError> {
        match value {
            Value::String(s) => Priority::parse(s),
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .and_then(Priority::new)
                .ok_or_else(|| ValidationError::Priority(n.to_string())),
            other => Err(ValidationError::Priority(other.to_string())),
        }
    }

    /// The name of this priority if it has one (`5` → `normal`).
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self.0)
            .map(|(n, _)| *n)
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Priority::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A validated event. Construct with [`Event::from_json`] or [`Event::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; a UUIDv7 when the publisher gave none.
    pub id: String,
    /// The topic: dot-separated segments.
    #[serde(rename = "type", alias = "topic")]
    pub topic: String,
    /// The producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Optional direct addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When the event happened; the publish time when the publisher gave none.
    pub time: Timestamp,
    /// 1..=10, default 5.
    #[serde(default)]
    pub priority: Priority,
    /// Any JSON.
    #[serde(default, alias = "data")]
    pub payload: Value,
    /// Request/response correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Topic a responder should publish its reply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Ordering/partition key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Seconds after `time` at which the event expires and is no longer delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// String headers; carries `traceparent`/`tracestate`.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// Free-form object (seed v1 compatibility).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Media type of the payload (CloudEvents `datacontenttype`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
}

impl Event {
    /// A new event on `topic` with `payload`, a fresh id and the current time.
    ///
    /// # Errors
    /// [`ValidationError::Topic`] when the topic is malformed;
    /// [`ValidationError::TooDeep`] past [`MAX_PAYLOAD_DEPTH`].
    pub fn new(topic: impl Into<String>, payload: Value) -> Result<Event, ValidationError> {
        let topic = topic.into();
        topic::validate_topic(&topic)?;
        // No size to go by here; the walk stops at the limit either way.
        check_depth("payload", &payload, usize::MAX)?;
        Ok(Event {
            id: new_id(),
            topic,
            source: None,
            target: None,
            time: Timestamp::now(),
            priority: Priority::NORMAL,
            payload,
            correlation_id: None,
            causation_id: None,
            reply_to: None,
            key: None,
            ttl: None,
            headers: Headers::new(),
            metadata: Map::new(),
            datacontenttype: None,
        })
    }

    /// Validates raw JSON into an event, filling `id` and `time` when absent.
    ///
    /// Accepts `topic` for `type` and `data` for `payload`; CloudEvents'
    /// `specversion` is accepted and ignored. Unknown top-level fields are
    /// rejected so that typos do not pass silently.
    ///
    /// # Errors
    /// A [`ValidationError`] naming the first offending field.
    pub fn from_json(value: Value, max_payload_bytes: usize) -> Result<Event, ValidationError> {
        let Value::Object(mut obj) = value else {
            return Err(ValidationError::NotAnObject(json_kind(&value)));
        };
        let topic =
            take_alias(&mut obj, "type", "topic")?.ok_or(ValidationError::Missing("type"))?;
        let topic = into_string("type", topic)?;
        topic::validate_topic(&topic)?;
        let id = match obj.remove("id") {
            None | Some(Value::Null) => new_id(),
            Some(v) => attribute("id", v)?,
        };
        if id.is_empty() {
            return Err(ValidationError::invalid("id", "must not be empty"));
        }
        let time = match obj.remove("time") {
            None | Some(Value::Null) => Timestamp::now(),
            Some(Value::String(s)) => {
                parse_time(&s).map_err(|reason| ValidationError::invalid("time", reason))?
            }
            Some(other) => {
                return Err(ValidationError::invalid("time", expected("string", &other)));
            }
        };
        let priority = match obj.remove("priority") {
            None | Some(Value::Null) => Priority::NORMAL,
            Some(v) => Priority::from_json(&v)?,
        };
        let payload = take_alias(&mut obj, "payload", "data")?.unwrap_or(Value::Null);
        let size = serialized_len(&payload);
        if size > max_payload_bytes {
            return Err(ValidationError::PayloadTooLarge {
                size,
                limit: max_payload_bytes,
            });
        }
        check_depth("payload", &payload, size)?;
        let ttl = match obj.remove("ttl") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
                ValidationError::invalid("ttl", "must be a whole number of seconds >= 0")
            })?),
            Some(other) => return Err(ValidationError::invalid("ttl", expected("number", &other))),
        };
        let headers: Headers = match obj.remove("headers") {
            None | Some(Value::Null) => Headers::new(),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(ValidationError::invalid(
                        &format!("headers.{k}"),
                        expected("string", &other),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ValidationError::invalid(
                    "headers",
                    expected("object", &other),
                ));
            }
        };
        let metadata = match obj.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => {
                // The object is one level; its values may take the rest.
                if map.values().any(|v| deeper_than(v, MAX_PAYLOAD_DEPTH - 1)) {
                    return Err(ValidationError::TooDeep {
                        field: "metadata",
                        limit: MAX_PAYLOAD_DEPTH,
                    });
                }
                map
            }
            Some(other) => {
                return Err(ValidationError::invalid(
                    "metadata",
                    expected("object", &other),
                ));
            }
        };
        let mut event = Event {
            id,
            topic,
            source: optional_attribute(&mut obj, "source")?,
            target: optional_attribute(&mut obj, "target")?,
            time,
            priority,
            payload,
            correlation_id: optional_attribute(&mut obj, "correlation_id")?,
            causation_id: optional_attribute(&mut obj, "causation_id")?,
            reply_to: optional_attribute(&mut obj, "reply_to")?,
            key: optional_attribute(&mut obj, "key")?,
            ttl,
            headers,
            metadata,
            datacontenttype: optional_attribute(&mut obj, "datacontenttype")?,
        };
        if let Some(reply_to) = &event.reply_to {
            topic::validate_topic(reply_to)
                .map_err(|e| ValidationError::invalid("reply_to", e.to_string()))?;
        }
        // CloudEvents attributes we accept and do not keep as fields.
        obj.remove("specversion");
        // Delivery attributes may come back when a consumer republishes a delivery.
        for ignored in ["subscription", "delivery_id", "attempt"] {
            obj.remove(ignored);
        }
        if let Some(unknown) = obj.keys().next() {
            return Err(ValidationError::invalid(
                unknown,
                "unknown field (put custom data in `payload`, `headers` or `metadata`)",
            ));
        }
        event.headers.remove("");
        Ok(event)
    }

    /// When this event expires, if it has a `ttl`.
    pub fn expires_at(&self) -> Option<Timestamp> {
        let ttl = self.ttl?;
        let secs = i64::try_from(ttl).unwrap_or(i64::MAX);
        self.time
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .ok()
            .or(Some(Timestamp::MAX))
    }

    /// Whether the event's TTL has passed at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|at| at <= now)
    }

    /// Whether the event's TTL has passed now.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(Timestamp::now())
    }

    /// Remaining time to live at `now`, if the event has a TTL.
    pub fn remaining_ttl(&self, now: Timestamp) -> Option<Duration> {
        let at = self.expires_at()?;
        Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
    }
}

/// A durable delivery of an event to one consumer of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The subscription (durable group) name.
    pub subscription: String,
    /// Opaque id to `ack`/`nack` this delivery with.
    pub delivery_id: String,
    /// 1 on first delivery, incremented on each redelivery.
    pub attempt: u32,
    /// The event.
    pub event: Event,
}

/// A fresh, time-ordered event id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn take_alias(
    obj: &mut Map<String, Value>,
    name: &'static str,
    alias: &'static str,
) -> Result<Option<Value>, ValidationError> {
    match (obj.remove(name), obj.remove(alias)) {
        (Some(_), Some(_)) => Err(ValidationError::invalid(
            alias,
            format!("`{alias}` is an alias of `{name}`; send only one of them"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn into_string(field: &str, value: Value) -> Result<String, ValidationError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(ValidationError::invalid(field, expected("string", &other))),
    }
}

fn attribute(field: &str, value: Value) -> Result<String, ValidationError> {
    let s = into_string(field, value)?;
    if s.len() > MAX_ATTRIBUTE_BYTES {
        return Err(ValidationError::invalid(
            field,
            format!(
                "is {} bytes, over the limit of {MAX_ATTRIBUTE_BYTES}",
                s.len()
            ),
        ));
    }
    Ok(s)
}

fn optional_attribute(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ValidationError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => attribute(field, v).map(Some),
    }
}

fn expected(kind: &str, got: &Value) -> String {
    format!("expected a {kind}, got {}", json_kind(got))
}

/// The JSON type name of a value, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses an RFC 3339 timestamp.
///
/// # Errors
/// Why not, for a message about the field: "out of range" for a
/// well-formed time outside the years the router represents (about
/// -9999 to 9999), else "not an RFC 3339 timestamp" and the parser's reason.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.parse::<Timestamp>().map_err(|e| {
        let well_formed = jiff::fmt::temporal::Pieces::parse(text)
            .is_ok_and(|p| p.time().is_some() && p.offset().is_some());
        if well_formed {
            format!(
                "{text:?} is out of range (timestamps must lie between {} and {})",
                Timestamp::MIN,
                Timestamp::MAX
            )
        } else {
            format!("not an RFC 3339 timestamp: {e}")
        }
    })
}

/// Whether a serde_json error is its recursion limit: the input nests
/// deeper than [`JSON_MAX_DEPTH`].
pub fn is_too_deep(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("recursion limit exceeded")
}

/// Refuses `value` when it nests deeper than [`MAX_PAYLOAD_DEPTH`].
/// `size` is its serialized length (`usize::MAX` when unknown): each
/// level takes two bytes, so smaller values are not walked.
fn check_depth(field: &'static str, value: &Value, size: usize) -> Result<(), ValidationError> {
    if size > 2 * MAX_PAYLOAD_DEPTH && deeper_than(value, MAX_PAYLOAD_DEPTH) {
        return Err(ValidationError::TooDeep {
            field,
            limit: MAX_PAYLOAD_DEPTH,
        });
    }
    Ok(())
}

/// Whether `value` nests more than `limit` arrays/objects. Never descends
/// past the limit, so the recursion is bounded by it.
fn deeper_than(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| deeper_than(v, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|v| deeper_than(v, limit - 1)),
        _ => false,
    }
}

/// Length of `value` serialized as compact JSON, without allocating it.
fn serialized_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Event, ValidationError> {
        Event::from_json(v, DEFAULT_MAX_PAYLOAD_BYTES)
    }

    #[test]
    fn fills_id_time_and_default_priority() {
        let e = parse(json!({"type": "task.created", "payload": {"a": 1}})).unwrap();
        assert_eq!(e.topic, "task.created");
        assert_eq!(e.priority, Priority::NORMAL);
        assert_eq!(uuid::Uuid::parse_str(&e.id).unwrap().get_version_num(), 7);
        assert_eq!(e.payload, json!({"a": 1}));
    }

    #[test]
    fn accepts_topic_and_data_aliases_and_priority_names() {
        let e = parse(json!({"topic": "a.b", "data": 3, "priority": "high"})).unwrap();
        assert_eq!(e.topic, "a.b");
        assert_eq!(e.payload, json!(3));
        assert_eq!(e.priority.get(), 7);
        let out = serde_json::to_value(&e).unwrap();
        assert_eq!(out["type"], "a.b");
        assert_eq!(out["priority"], 7);
    }

    #[test]
    fn rejects_both_name_and_alias() {
        let err = parse(json!({"type": "a", "topic": "a"})).unwrap_err();
        assert!(err.to_string().contains("alias"), "{err}");
    }

    #[test]
    fn rejects_bad_priorities_naming_them() {
        for p in [
            json!(0),
            json!(11),
            json!("urgent"),
            json!(2.5),
            json!(true),
        ] {
            let err = parse(json!({"type": "a", "priority": p})).unwrap_err();
            assert_eq!(err.code(), "invalid_priority", "{p}: {err}");
        }
    }

    #[test]
    fn rejects_missing_or_malformed_topic() {
        assert_eq!(
            parse(json!({"payload": 1})).unwrap_err(),
            ValidationError::Missing("type")
        );
        assert_eq!(
            parse(json!({"type": "a..b"})).unwrap_err().code(),
            "invalid_topic"
        );
        assert_eq!(
            parse(json!({"type": 5})).unwrap_err().code(),
            "invalid_event"
        );
    }

    #[test]
    fn rejects_unknown_fields_and_non_objects() {
        let err = parse(json!({"type": "a", "payolad": 1})).unwrap_err();
        assert!(err.to_string().contains("payolad"), "{err}");
        assert_eq!(
            parse(json!([1])).unwrap_err(),
            ValidationError::NotAnObject("array")
        );
    }

    #[test]
    fn rejects_oversize_payload() {
        let err =
            Event::from_json(json!({"type": "a", "payload": "x".repeat(100)}), 50).unwrap_err();
        assert!(
            matches!(
                err,
                ValidationError::PayloadTooLarge {
                    size: 102,
                    limit: 50
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn ttl_expiry() {
        let e = parse(json!({"type": "a", "time": "2020-01-01T00:00:00Z", "ttl": 10})).unwrap();
        let t0: Timestamp = "2020-01-01T00:00:05Z".parse().unwrap();
        let t1: Timestamp = "2020-01-01T00:00:10Z".parse().unwrap();
        assert!(!e.is_expired_at(t0));
        assert!(e.is_expired_at(t1));
        assert_eq!(e.remaining_ttl(t0), Some(Duration::from_secs(5)));
        let forever = parse(json!({"type": "a"})).unwrap();
        assert!(!forever.is_expired());
    }

    #[test]
    fn round_trips_through_serde() {
        let e = parse(json!({
            "type": "a.b", "source": "s", "headers": {"traceparent": "x"},
            "metadata": {"m": 1}, "ttl": 5, "correlation_id": "c", "reply_to": "r.x"
        }))
        .unwrap();
        let back: Event = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    fn nested(depth: usize) -> Value {
        let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn payload_and_metadata_at_the_depth_limit_pass_and_one_deeper_is_too_deep() {
        parse(json!({"type": "a", "payload": nested(MAX_PAYLOAD_DEPTH)})).unwrap();
        let err =
            parse(json!({"type": "a", "payload": nested(MAX_PAYLOAD_DEPTH + 1)})).unwrap_err();
        assert_eq!(err.code(), "too_deep");
        assert!(err.to_string().contains("`payload`"), "{err}");
        let metadata = json!({"k": nested(MAX_PAYLOAD_DEPTH - 1)});
        parse(json!({"type": "a", "metadata": metadata})).unwrap();
        let metadata = json!({"k": nested(MAX_PAYLOAD_DEPTH)});
        let err = parse(json!({"type": "a", "metadata": metadata})).unwrap_err();
        assert_eq!(err.code(), "too_deep");
        assert!(Event::new("a", nested(MAX_PAYLOAD_DEPTH + 1)).is_err());
    }

    #[test]
    fn the_deepest_accepted_event_parses_back_inside_the_deepest_envelope() {
        let event = parse(json!({"type": "a", "payload": nested(MAX_PAYLOAD_DEPTH)})).unwrap();
        let listing = json!({"events": [{"cursor": "1", "event": event}]});
        let text = serde_json::to_string(&listing).unwrap();
        serde_json::from_str::<Value>(&text).unwrap();
        let deeper = format!("[{text}]");
        let err = serde_json::from_str::<Value>(&deeper).unwrap_err();
        assert!(is_too_deep(&err), "{err}");
    }

    #[test]
    fn a_well_formed_time_past_the_representable_range_is_called_out_of_range() {
        let err = parse(json!({"type": "a", "time": "9999-12-31T23:59:59Z"})).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = parse(json!({"type": "a", "time": "yesterday"})).unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339"), "{err}");
    }
}
