//! CloudEvents 1.0 over HTTP: structured (`application/cloudevents+json`),
//! batch (`application/cloudevents-batch+json`) and binary (`ce-*` headers)
//! modes, mapped to our envelope (DESIGN §3).
//!
//! `specversion`, `id`, `source`, `type`, `time`, `datacontenttype` and
//! `data` map 1:1. Our extras travel as extension attributes, whose names
//! are lowercase alphanumerics: `priority`, `ttl`, `key`, `target`,
//! `correlationid`, `causationid`, `replyto`; `traceparent` and
//! `tracestate` go to `headers`. `subject`, `dataschema`, `data_base64`
//! (kept as a string in `payload`, with `metadata.data_base64 = true`) and
//! any other extension land in `metadata`, so nothing sent is lost.
//! `specversion` is required and must be `1.0`; `data_base64` must be
//! base64. A plain (non-CloudEvents) body must be JSON by content type.
//!
//! [`to_structured`] maps the other way (for `event-router export`):
//! [`from_structured`] of its output gives the event back.

use axum::http::HeaderMap;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Media type of a structured-mode CloudEvent.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch of structured-mode CloudEvents.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// How a request body carries its event(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our JSON envelope.
    Plain,
    /// One structured CloudEvent.
    Structured,
    /// A JSON array of structured CloudEvents.
    Batch,
    /// Binary mode: attributes in `ce-*` headers, the body is `data`.
    Binary,
}

/// The body mode of a request, from its headers.
pub fn mode(headers: &HeaderMap) -> Mode {
    let media = media_type(headers);
    if media.eq_ignore_ascii_case(STRUCTURED) {
        Mode::Structured
    } else if media.eq_ignore_ascii_case(BATCH) {
        Mode::Batch
    } else if headers.contains_key("ce-specversion") {
        Mode::Binary
    } else {
        Mode::Plain
    }
}

/// The request's media type without parameters (`; charset=...`).
fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_event", message)
}

/// Refuses a `specversion` other than `1.0` with `unsupported_specversion`.
fn check_specversion(value: &Value) -> Result<(), ApiError> {
    if value.as_str() == Some("1.0") {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "unsupported_specversion",
        format!("unsupported CloudEvents specversion {value} (expected \"1.0\")"),
    ))
}

/// Base64 as CloudEvents' `data_base64` carries it (RFC 4648, standard
/// alphabet); padding may be left out.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Refuses a `data_base64` that is not a base64 string.
fn check_base64(value: &Value) -> Result<(), ApiError> {
    use base64::Engine as _;
    let Value::String(text) = value else {
        return Err(invalid(format!(
            "data_base64 must be a string, got {}",
            crate::event::json_kind(value)
        )));
    };
    BASE64
        .decode(text)
        .map(drop)
        .map_err(|e| invalid(format!("data_base64 is not base64: {e}")))
}

/// Maps one structured CloudEvent to our raw envelope.
///
/// # Errors
/// `invalid_event` when it is not an object, lacks `specversion` or has a
/// `data_base64` that is not base64; `unsupported_specversion` for a
/// `specversion` other than `1.0`.
pub fn from_structured(ce: Value) -> Result<Value, ApiError> {
    let Value::Object(attributes) = ce else {
        return Err(invalid(format!(
            "a CloudEvent must be a JSON object, got {}",
            crate::event::json_kind(&ce)
        )));
    };
    if !attributes.contains_key("specversion") {
        return Err(invalid(
            "missing required CloudEvents attribute `specversion` (\"1.0\")",
        ));
    }
    map_attributes(attributes)
}

/// Maps a binary-mode CloudEvent (`ce-*` headers plus body) to our raw
/// envelope.
///
/// # Errors
/// `unsupported_specversion` for a `ce-specversion` other than `1.0`
/// (checked before the data is read); `invalid_event` for a bad attribute;
/// `invalid_json` or `too_deep` for JSON data that does not parse;
/// `unsupported_media_type` for data that is neither JSON (by content
/// type) nor UTF-8 text.
pub fn from_binary(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let version = headers
        .get("ce-specversion")
        .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .unwrap_or(Value::Null);
    check_specversion(&version)?;
    let mut attributes = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| invalid(format!("header {name} is not visible ASCII")))?;
        attributes.insert(attr.to_string(), Value::String(value.to_string()));
    }
    let media = media_type(headers);
    if !media.is_empty() {
        attributes.insert("datacontenttype".into(), Value::String(media.to_string()));
    }
    let data = if body.is_empty() {
        Value::Null
    } else if is_json(media) {
        serde_json::from_slice(body).map_err(|e| json_error("data", &e))?
    } else {
        let text = std::str::from_utf8(body).map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "binary-mode data must be JSON or UTF-8 text",
            )
        })?;
        Value::String(text.to_string())
    };
    attributes.insert("data".into(), data);
    map_attributes(attributes)
}

/// Refuses a plain-mode body whose content type is not JSON (absent,
/// `application/json` or `*/*+json`) with 415 `unsupported_media_type`.
///
/// # Errors
/// `unsupported_media_type` naming the content type.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = media_type(headers);
    if is_json(media) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "content type {media:?} is not accepted here: send application/json, \
             application/cloudevents+json, or a binary-mode CloudEvent (ce-* headers)"
        ),
    ))
}

/// A JSON parse failure of `what` (`body`, `data`): `too_deep` when it
/// nests past what serde_json reads, else `invalid_json`.
pub fn json_error(what: &str, e: &serde_json::Error) -> ApiError {
    if crate::event::is_too_deep(e) {
        ApiError::bad_request(
            "too_deep",
            format!(
                "{what} nests deeper than {} levels of arrays and objects",
                crate::event::JSON_MAX_DEPTH
            ),
        )
    } else {
        ApiError::bad_request("invalid_json", format!("{what} is not valid JSON: {e}"))
    }
}

fn is_json(media: &str) -> bool {
    let media = media.to_ascii_lowercase();
    media.is_empty() || media == "application/json" || media.ends_with("+json")
}

fn map_attributes(attributes: Map<String, Value>) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut headers = Map::new();
    let mut metadata = Map::new();
    for (name, value) in attributes {
        match name.as_str() {
            "specversion" => check_specversion(&value)?,
            "id" | "source" | "type" | "time" | "datacontenttype" | "priority" | "key"
            | "target" => {
                out.insert(name, value);
            }
            "ttl" => {
                out.insert(name, number_or_text(value));
            }
            "data" => {
                if out.contains_key("payload") {
                    return Err(invalid("send only one of `data` and `data_base64`"));
                }
                out.insert("payload".into(), value);
            }
            "data_base64" => {
                check_base64(&value)?;
                if out.contains_key("payload") {
                    return Err(invalid("send only one of `data` and `data_base64`"));
                }
                out.insert("payload".into(), value);
                metadata.insert("data_base64".into(), Value::Bool(true));
            }
            "correlationid" => {
                out.insert("correlation_id".into(), value);
            }
            "causationid" => {
                out.insert("causation_id".into(), value);
            }
            "replyto" => {
                out.insert("reply_to".into(), value);
            }
            "traceparent" | "tracestate" => {
                headers.insert(name, value);
            }
            _ => {
                metadata.insert(name, value);
            }
        }
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Object(headers));
    }
    if !metadata.is_empty() {
        out.insert("metadata".into(), Value::Object(metadata));
    }
    Ok(Value::Object(out))
}

/// Source of an event published without one, as CloudEvents requires a
/// `source`.
pub const DEFAULT_SOURCE: &str = "/event-router";

/// `event` as a structured-mode CloudEvent: the inverse of
/// [`from_structured`]. `metadata` entries become extension attributes
/// (a name that is already a context attribute is left out), and a payload
/// that arrived as `data_base64` leaves as one.
pub fn to_structured(event: &crate::event::Event) -> Value {
    let mut ce = Map::new();
    let mut put = |name: &str, value: Value| {
        ce.insert(name.to_string(), value);
    };
    put("specversion", "1.0".into());
    put("id", event.id.clone().into());
    put("type", event.topic.clone().into());
    put(
        "source",
        event.source.as_deref().unwrap_or(DEFAULT_SOURCE).into(),
    );
    put("time", event.time.to_string().into());
    put("priority", event.priority.get().into());
    let optional = [
        ("datacontenttype", &event.datacontenttype),
        ("target", &event.target),
        ("correlationid", &event.correlation_id),
        ("causationid", &event.causation_id),
        ("replyto", &event.reply_to),
        ("key", &event.key),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            put(name, v.clone().into());
        }
    }
    if let Some(ttl) = event.ttl {
        put("ttl", ttl.into());
    }
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = event.headers.get(name) {
            put(name, v.into());
        }
    }
    let base64 = event.metadata.get("data_base64") == Some(&Value::Bool(true));
    for (name, value) in &event.metadata {
        if !(name == "data_base64" || ce.contains_key(name)) {
            ce.insert(name.clone(), value.clone());
        }
    }
    let data = if base64 { "data_base64" } else { "data" };
    ce.insert(data.into(), event.payload.clone());
    Value::Object(ce)
}

/// CloudEvents integers arrive as text in headers.
fn number_or_text(value: Value) -> Value {
    match &value {
        Value::String(s) => s.trim().parse::<u64>().map_or(value, Value::from),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn to_structured_round_trips_through_from_structured() {
        let raw = json!({"type":"task.created","source":"/planner","priority":8,
            "payload":{"n":1},"correlation_id":"c-1","ttl":30,"key":"k",
            "headers":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            "metadata":{"subject":"s-1"}});
        let event = crate::event::Event::from_json(raw, 1 << 20).unwrap();
        let ce = to_structured(&event);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "task.created");
        assert_eq!(ce["data"], json!({"n":1}));
        assert_eq!(ce["correlationid"], "c-1");
        assert_eq!(ce["subject"], "s-1");
        let back = crate::event::Event::from_json(from_structured(ce).unwrap(), 1 << 20).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn structured_attributes_and_extensions_map_to_our_fields() {
        let ce = json!({
            "specversion": "1.0", "id": "e1", "source": "/svc", "type": "task.created",
            "time": "2024-01-01T00:00:00Z", "datacontenttype": "application/json",
            "data": {"n": 1}, "priority": 7, "correlationid": "c", "replyto": "r.x",
            "traceparent": "00-abc-def-01", "subject": "s", "custom": true
        });
        let v = from_structured(ce).unwrap();
        assert_eq!(v["payload"], json!({"n": 1}));
        assert_eq!(v["correlation_id"], "c");
        assert_eq!(v["reply_to"], "r.x");
        assert_eq!(v["headers"]["traceparent"], "00-abc-def-01");
        assert_eq!(v["metadata"], json!({"subject": "s", "custom": true}));
        assert!(v.get("specversion").is_none());
        crate::event::Event::from_json(v, 1 << 20).unwrap();
    }

    #[test]
    fn unsupported_specversion_is_rejected() {
        let e = from_structured(json!({"specversion": "0.3", "type": "a"})).unwrap_err();
        assert_eq!(e.code, "unsupported_specversion");
        assert!(e.message.contains("0.3"));
    }

    #[test]
    fn binary_mode_reads_headers_and_body() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-type", "task.created".parse().unwrap());
        h.insert("ce-id", "b1".parse().unwrap());
        h.insert("ce-ttl", "60".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(mode(&h), Mode::Binary);
        let v = from_binary(&h, br#"{"a":1}"#).unwrap();
        assert_eq!(v["payload"], json!({"a": 1}));
        assert_eq!(v["ttl"], 60);
        assert_eq!(v["datacontenttype"], "application/json");
        h.insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(from_binary(&h, b"hi").unwrap()["payload"], "hi");
        assert_eq!(
            from_binary(&h, &[0xff, 0xfe]).unwrap_err().code,
            "unsupported_media_type"
        );
    }

    #[test]
    fn a_structured_event_needs_specversion_and_base64_data_must_decode() {
        let e = from_structured(json!({"type": "a", "id": "1", "source": "/s"})).unwrap_err();
        assert_eq!(e.code, "invalid_event");
        assert!(e.message.contains("specversion"), "{}", e.message);
        let ce = |b64: &str| json!({"specversion": "1.0", "type": "a", "data_base64": b64});
        assert_eq!(
            from_structured(ce("!!!")).unwrap_err().code,
            "invalid_event"
        );
        assert_eq!(from_structured(ce("aGk=")).unwrap()["payload"], "aGk=");
        assert_eq!(from_structured(ce("aGk")).unwrap()["payload"], "aGk");
        let both = json!({"specversion": "1.0", "type": "a", "data": 1, "data_base64": "aGk="});
        assert_eq!(from_structured(both).unwrap_err().code, "invalid_event");
    }

    #[test]
    fn binary_mode_checks_specversion_before_reading_the_data() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "2.0".parse().unwrap());
        h.insert("ce-type", "a".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(
            from_binary(&h, b"not json").unwrap_err().code,
            "unsupported_specversion"
        );
    }

    #[test]
    fn plain_bodies_must_be_json_by_content_type() {
        let mut h = HeaderMap::new();
        require_json(&h).unwrap();
        for ok in ["application/json; charset=utf-8", "application/vnd.x+json"] {
            h.insert("content-type", ok.parse().unwrap());
            require_json(&h).unwrap();
        }
        h.insert("content-type", "text/xml".parse().unwrap());
        let e = require_json(&h).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
        assert!(e.message.contains("text/xml"), "{}", e.message);
    }
}
