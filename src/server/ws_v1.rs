//! The seed v1 WebSocket protocol, translated to and from the session core.
//!
//! A frame with `type` and no `op` is v1 (see [`super::protocol::parse`]);
//! v1 and v2 frames may be mixed on one socket, and each reply and
//! delivery uses the dialect of the request or subscription it belongs to.
//! The original service is gone, so these are the shapes we settled on; an
//! optional `id` on any request is echoed in its reply.
//!
//! Client → server:
//! ```text
//! {"type":"publish_event","event":{"type":"task.created","priority":"high","source":"planner",
//!   "target":"worker-1","payload":{...},"metadata":{...},"timestamp":"2024-01-01T00:00:00Z"}}
//! {"type":"subscribe","subscription":{"type":"all"}}
//! {"type":"subscribe","subscription":{"type":"filtered","filter":{"event_types":["task.created"],
//!   "sources":["planner"],"priorities":["high","critical"]}}}
//! {"type":"subscribe","subscription":{"type":"filtered","event_types":["task.created"]}}
//! {"type":"subscribe","subscription":{"type":"pattern","pattern":"task.*"}}
//! {"type":"subscribe","subscription":{"type":"conditional","conditions":{"payload.n":{"$gt":3}}}}
//! {"type":"unsubscribe","subscription_id":"..."}
//! {"type":"ping"}
//! ```
//! Server → client:
//! ```text
//! {"type":"event_published","event_id":"...","timestamp":"...","status":"published"|"dropped"}
//! {"type":"subscribed","subscription_id":"..."}
//! {"type":"unsubscribed","subscription_id":"..."}
//! {"type":"event","subscription_id":"...","event":{"id":"...","type":"task.created","priority":"high",
//!   "source":"planner","target":"worker-1","payload":{...},"metadata":{...},"timestamp":"..."}}
//! {"type":"overflow","subscription_id":"...","dropped":3}
//! {"type":"pong","timestamp":"..."}
//! {"type":"error","error":"message","code":"invalid_topic"}
//! ```
//! Details:
//! - In an event, `timestamp` is accepted for `time`; `priority` is a name
//!   or 1..=10. Delivered events carry the priority's name when it has one
//!   (`lowest`, `low`, `normal`, `high`, `critical`, `system`), else its
//!   number; `metadata` is always present (`{}` when empty).
//! - `event_published.timestamp` is when the router accepted the event;
//!   `pong.timestamp` is the server's clock. Both are RFC 3339.
//! - `filtered`: the criteria sit under `filter` (the v1 usage guide's
//!   form) or directly under `subscription`, not both. `event_types` are
//!   topic patterns (all topics when empty or absent); `sources` and
//!   `priorities` become `{"source":{"$in":...}}` and
//!   `{"priority":{"$in":...}}` filters; every given criterion must hold.
//! - A subscription (or `filter`) with a key not listed here is refused
//!   with an `invalid_frame` error naming the key, never ignored.
//! - `pattern` is a glob (`*` one segment, `#` any number) when it parses as
//!   one, else a regular expression.
//! - `conditional.conditions` is a filter document (DESIGN §3).
//! - v1 subscriptions are always live.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::protocol::RequestId;
use super::session::{Dialect, Session, SubscribeOptions};
use crate::event::{Event, Priority};
use crate::filter::Filter;
use crate::router::Receipt;
use crate::selector::{Selector, SelectorError};
use crate::topic::Pattern;

/// v1 message types a client may send, for error messages.
const V1_TYPES: [&str; 4] = ["publish_event", "subscribe", "unsubscribe", "ping"];

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum V1Frame {
    PublishEvent {
        #[serde(default)]
        id: RequestId,
        event: Value,
    },
    Subscribe {
        #[serde(default)]
        id: RequestId,
        subscription: V1Subscription,
    },
    Unsubscribe {
        #[serde(default)]
        id: RequestId,
        subscription_id: String,
    },
    Ping {
        #[serde(default)]
        id: RequestId,
    },
}

/// A v1 subscription. Unknown keys are refused (serde's message names
/// them and the accepted ones) rather than ignored: a criterion the router
/// does not understand must not widen what a subscriber receives.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum V1Subscription {
    All {},
    /// Criteria directly under `subscription` (flat) or nested under
    /// `filter`, as the v1 usage guide writes them; not both.
    Filtered {
        #[serde(default)]
        event_types: Vec<String>,
        #[serde(default)]
        sources: Vec<String>,
        #[serde(default)]
        priorities: Vec<Value>,
        #[serde(default)]
        filter: Option<V1Criteria>,
    },
    Pattern {
        pattern: String,
    },
    Conditional {
        conditions: Value,
    },
}

/// The criteria of a `filtered` subscription; every given one must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Criteria {
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    priorities: Vec<Value>,
}

impl V1Criteria {
    fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.sources.is_empty() && self.priorities.is_empty()
    }
}

/// Handles one v1 frame, replying in v1 shapes through the session.
pub async fn handle(session: &mut Session, frame: Value) {
    let id = frame.get("id").filter(|v| !v.is_null()).cloned();
    let frame = match parse(frame) {
        Ok(frame) => frame,
        Err(e) => {
            session.send_reply(error_frame(&id, &e)).await;
            return;
        }
    };
    let reply = match frame {
        V1Frame::PublishEvent { id, event } => {
            let result = match translate_event(event) {
                Ok(event) => session.publish(event).await,
                Err(e) => Err(e),
            };
            result.map(|receipt| {
                let status = match receipt {
                    Receipt::Published { .. } => "published",
                    Receipt::Dropped { .. } => "dropped",
                };
                with_id(
                    json!({"type": "event_published", "event_id": receipt.event_id(),
                           "timestamp": Timestamp::now(), "status": status}),
                    &id,
                )
            })
        }
        V1Frame::Subscribe { id, subscription } => {
            let result = match selector(subscription) {
                Ok(selector) => {
                    session
                        .subscribe(SubscribeOptions {
                            selector,
                            group: None,
                            max_in_flight: None,
                            dialect: Dialect::V1,
                            resume_after: None,
                            slow_consumer: Default::default(),
                        })
                        .await
                }
                Err(e) => Err(e),
            };
            result.map(|tag| {
                with_id(
                    json!({"type": "subscribed", "subscription_id": tag.id}),
                    &id,
                )
            })
        }
        V1Frame::Unsubscribe {
            id,
            subscription_id,
        } => session.unsubscribe(&subscription_id).map(|()| {
            with_id(
                json!({"type": "unsubscribed", "subscription_id": subscription_id}),
                &id,
            )
        }),
        V1Frame::Ping { id } => Ok(with_id(
            json!({"type": "pong", "timestamp": Timestamp::now()}),
            &id,
        )),
    };
    let text = match reply {
        Ok(value) => value.to_string(),
        Err(e) => error_frame(&id, &e),
    };
    session.send_reply(text).await;
}

/// Everything [`handle`] does to a frame short of touching a session:
/// parse it, translate and validate a published event, build a
/// subscription's selector. For fuzzing and tests.
///
/// # Errors
/// The error [`handle`] would reply with.
pub fn check(frame: Value, max_payload_bytes: usize) -> Result<(), ApiError> {
    match parse(frame)? {
        V1Frame::PublishEvent { event, .. } => {
            let event = translate_event(event)?;
            crate::event::Event::from_json(event, max_payload_bytes)
                .map(drop)
                .map_err(ApiError::from)
        }
        V1Frame::Subscribe { subscription, .. } => selector(subscription).map(drop),
        V1Frame::Unsubscribe { .. } | V1Frame::Ping { .. } => Ok(()),
    }
}

fn parse(frame: Value) -> Result<V1Frame, ApiError> {
    let kind = frame.get("type").cloned();
    serde_json::from_value(frame).map_err(|e| match kind {
        Some(Value::String(t)) if !V1_TYPES.contains(&t.as_str()) => ApiError::bad_request(
            "unknown_type",
            format!(
                "unknown message type {t:?} (expected one of {})",
                V1_TYPES.join(", ")
            ),
        ),
        _ => ApiError::bad_request("invalid_frame", format!("invalid v1 message: {e}")),
    })
}

fn with_id(mut reply: Value, id: &RequestId) -> Value {
    if let (Some(id), Value::Object(obj)) = (id, &mut reply) {
        obj.insert("id".into(), id.clone());
    }
    reply
}

/// A v1 `error` frame as text.
pub fn error_frame(id: &RequestId, error: &ApiError) -> String {
    let mut frame = json!({"type": "error", "error": error.message, "code": error.code});
    if let Some(wait) = error.retry_after {
        frame["retry_after_ms"] = json!(wait.as_millis().max(1) as u64);
    }
    with_id(frame, id).to_string()
}

/// Maps a v1 event to our envelope: `timestamp` is an alias of `time`.
fn translate_event(event: Value) -> Result<Value, ApiError> {
    let Value::Object(mut obj) = event else {
        return Err(ApiError::bad_request(
            "invalid_event",
            format!(
                "event must be a JSON object, got {}",
                crate::event::json_kind(&event)
            ),
        ));
    };
    if let Some(ts) = obj.remove("timestamp") {
        obj.entry("time").or_insert(ts);
    }
    Ok(Value::Object(obj))
}

fn selector(subscription: V1Subscription) -> Result<Selector, ApiError> {
    let all = || vec![Pattern::Glob("#".into())];
    let (patterns, filter) = match subscription {
        V1Subscription::All {} => (all(), None),
        V1Subscription::Pattern { pattern } => {
            let parsed = Pattern::parse(&pattern)
                .or_else(|_| Pattern::regex(&pattern))
                .map_err(SelectorError::from)?;
            (vec![parsed], None)
        }
        V1Subscription::Conditional { conditions } => (
            all(),
            Some(Filter::compile(&conditions).map_err(SelectorError::from)?),
        ),
        V1Subscription::Filtered {
            event_types,
            sources,
            priorities,
            filter,
        } => {
            let flat = V1Criteria {
                event_types,
                sources,
                priorities,
            };
            let criteria = match filter {
                Some(_) if !flat.is_empty() => {
                    return Err(ApiError::bad_request(
                        "invalid_subscription",
                        "a filtered subscription gives its criteria either under `filter` \
                         or directly under `subscription`, not both",
                    ));
                }
                Some(nested) => nested,
                None => flat,
            };
            filtered(criteria)?
        }
    };
    Ok(Selector::new(patterns, filter)?)
}

/// Topic patterns and a `source`/`priority` filter from `filtered` criteria.
fn filtered(criteria: V1Criteria) -> Result<(Vec<Pattern>, Option<Filter>), ApiError> {
    let V1Criteria {
        event_types,
        sources,
        priorities,
    } = criteria;
    let patterns = if event_types.is_empty() {
        vec![Pattern::Glob("#".into())]
    } else {
        event_types
            .iter()
            .map(|t| Pattern::parse(t))
            .collect::<Result<_, _>>()
            .map_err(SelectorError::from)?
    };
    let mut doc = Map::new();
    if !sources.is_empty() {
        doc.insert("source".into(), json!({ "$in": sources }));
    }
    if !priorities.is_empty() {
        let values = priorities
            .iter()
            .map(|p| Priority::from_json(p).map(|p| p.get()))
            .collect::<Result<Vec<_>, _>>()?;
        doc.insert("priority".into(), json!({ "$in": values }));
    }
    let filter = if doc.is_empty() {
        None
    } else {
        Some(Filter::compile(&Value::Object(doc)).map_err(SelectorError::from)?)
    };
    Ok((patterns, filter))
}

/// A v1 priority: the name when it has one, else the number.
#[derive(Serialize)]
#[serde(untagged)]
enum V1Priority {
    Name(&'static str),
    Number(u8),
}

#[derive(Serialize)]
struct V1Event<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    topic: &'a str,
    priority: V1Priority,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    payload: &'a Value,
    metadata: &'a Map<String, Value>,
    timestamp: Timestamp,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum V1ServerFrame<'a> {
    Event {
        subscription_id: &'a str,
        event: V1Event<'a>,
    },
    Overflow {
        subscription_id: &'a str,
        dropped: u64,
    },
}

/// A v1 `event` delivery frame as text.
pub fn event_frame(subscription_id: &str, event: &Event) -> String {
    let priority = match event.priority.name() {
        Some(name) => V1Priority::Name(name),
        None => V1Priority::Number(event.priority.get()),
    };
    let frame = V1ServerFrame::Event {
        subscription_id,
        event: V1Event {
            id: &event.id,
            topic: &event.topic,
            priority,
            source: event.source.as_deref(),
            target: event.target.as_deref(),
            payload: &event.payload,
            metadata: &event.metadata,
            timestamp: event.time,
        },
    };
    // Serializing plain strings, numbers and JSON values cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// A v1 `overflow` notice as text.
pub fn overflow_frame(subscription_id: &str, dropped: u64) -> String {
    serde_json::to_string(&V1ServerFrame::Overflow {
        subscription_id,
        dropped,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_frames_parse_and_unknown_types_are_named() {
        assert!(matches!(
            parse(json!({"type":"publish_event","event":{"type":"a"}})),
            Ok(V1Frame::PublishEvent { .. })
        ));
        assert!(matches!(
            parse(
                json!({"type":"subscribe","subscription":{"type":"filtered","event_types":["a.b"]}})
            ),
            Ok(V1Frame::Subscribe {
                subscription: V1Subscription::Filtered { .. },
                ..
            })
        ));
        let e = parse(json!({"type":"teleport"})).unwrap_err();
        assert_eq!(e.code, "unknown_type");
        assert!(e.message.contains("teleport"));
        let e = parse(json!({"type":"subscribe"})).unwrap_err();
        assert_eq!(e.code, "invalid_frame");
        assert!(e.message.contains("subscription"), "{}", e.message);
    }

    #[test]
    fn v1_subscriptions_become_selectors() {
        let sel = |v: Value| selector(serde_json::from_value(v).unwrap());
        let all = sel(json!({"type":"all"})).unwrap();
        assert!(all.matches(&Event::new("x.y.z", Value::Null).unwrap()));
        let glob = sel(json!({"type":"pattern","pattern":"task.*"})).unwrap();
        assert!(glob.matches(&Event::new("task.created", Value::Null).unwrap()));
        assert!(!glob.matches(&Event::new("task.a.b", Value::Null).unwrap()));
        let re = sel(json!({"type":"pattern","pattern":"^task\\.(a|b)$"})).unwrap();
        assert!(re.matches(&Event::new("task.a", Value::Null).unwrap()));
        let e = sel(json!({"type":"filtered","priorities":["urgent"]})).unwrap_err();
        assert_eq!(e.code, "invalid_priority");
        let e = sel(json!({"type":"filtered","event_types":["a..b"]})).unwrap_err();
        assert_eq!(e.code, "invalid_pattern");
    }

    #[test]
    fn filtered_criteria_nested_under_filter_are_applied() {
        let sel = |v: Value| selector(parse_subscription(v)?);
        let guide = sel(json!({"type":"filtered","filter":{
            "event_types":["task_created","task_completed"],
            "sources":["task_manager"],
            "priorities":["high","critical"]}}))
        .unwrap();
        let event = |topic: &str, source: &str, priority: u8| {
            let mut e = Event::new(topic, Value::Null).unwrap();
            e.source = Some(source.into());
            e.priority = Priority::new(priority).unwrap();
            e
        };
        assert!(guide.matches(&event("task_created", "task_manager", 7)));
        assert!(guide.matches(&event("task_completed", "task_manager", 9)));
        assert!(!guide.matches(&event("task_created", "task_manager", 5)));
        assert!(!guide.matches(&event("task_created", "scheduler", 7)));
        assert!(!guide.matches(&event("agent_started", "task_manager", 7)));
        let flat = sel(json!({"type":"filtered","sources":["a"]})).unwrap();
        assert!(!flat.matches(&event("x", "b", 5)));
        let both = sel(json!({"type":"filtered","sources":["a"],"filter":{"sources":["b"]}}));
        assert_eq!(both.unwrap_err().code, "invalid_subscription");
    }

    #[test]
    fn unknown_subscription_keys_are_refused_and_named() {
        for (sub, key) in [
            (
                json!({"type":"filtered","filter":{"event_type":["a"]}}),
                "event_type",
            ),
            (json!({"type":"filtered","topics":["a"]}), "topics"),
            (
                json!({"type":"pattern","pattern":"a.*","regex":true}),
                "regex",
            ),
            (
                json!({"type":"conditional","conditions":{},"mode":"any"}),
                "mode",
            ),
            (json!({"type":"all","filter":{}}), "filter"),
        ] {
            let e = parse_subscription(sub).unwrap_err();
            assert_eq!(e.code, "invalid_frame");
            assert!(e.message.contains(key), "{key}: {}", e.message);
        }
    }

    fn parse_subscription(subscription: Value) -> Result<V1Subscription, ApiError> {
        match parse(json!({"type":"subscribe","subscription":subscription}))? {
            V1Frame::Subscribe { subscription, .. } => Ok(subscription),
            other => panic!("not a subscribe frame: {other:?}"),
        }
    }

    #[test]
    fn delivered_events_use_priority_names_and_timestamp() {
        let mut event = Event::new("task.created", json!({"n": 1})).unwrap();
        event.priority = Priority::new(7).unwrap();
        let v: Value = serde_json::from_str(&event_frame("s1", &event)).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["subscription_id"], "s1");
        assert_eq!(v["event"]["type"], "task.created");
        assert_eq!(v["event"]["priority"], "high");
        assert_eq!(v["event"]["metadata"], json!({}));
        assert!(v["event"]["timestamp"].is_string());
        event.priority = Priority::new(4).unwrap();
        let v: Value = serde_json::from_str(&event_frame("s1", &event)).unwrap();
        assert_eq!(v["event"]["priority"], 4);
    }

    #[test]
    fn timestamp_is_an_alias_of_time() {
        let v = translate_event(json!({"type":"a","timestamp":"2024-01-01T00:00:00Z"})).unwrap();
        assert_eq!(v, json!({"type":"a","time":"2024-01-01T00:00:00Z"}));
        assert_eq!(translate_event(json!(3)).unwrap_err().code, "invalid_event");
    }
}
