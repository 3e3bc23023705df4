//! Server-sent events: `GET /api/v1/events/stream`.
//!
//! A thin adapter over [`Session`]: one subscription per stream, its
//! outgoing items encoded as SSE events:
//! - `event:` the topic, `id:` the event id, `data:` the delivery as JSON
//!   `{"subscription_id","delivery_id","attempt","event"}`;
//! - `event: overflow` with `{"subscription_id","dropped"}` when a live
//!   stream fell behind;
//! - `event: error` with `{"code","message"}` when the subscription ended
//!   with an error (the stream then ends);
//! - a `: subscribed <id>` comment first, and keep-alive comments every
//!   [`ServerConfig::sse_keepalive`](super::ServerConfig::sse_keepalive).
//!
//! Query: `topics` (comma-separated, repeatable), `pattern` (regex),
//! `filter` (shorthand `field:op:value` or a JSON document starting with
//! `{`; repeatable, ANDed), `group` and `max_in_flight` (durable; ack with
//! `POST /api/v1/subscriptions/{group}/ack`), `last_event_id`.
//!
//! # Resume
//! Live events carry no history cursor, so the SSE `id` is the event id.
//! On reconnect with `Last-Event-ID` (header, or the `last_event_id` query
//! parameter) the stream subscribes live first, then scans retained
//! history (through the same selector) for that event id and sends every
//! entry after it (at most [`MAX_REPLAY_EVENTS`](super::session::MAX_REPLAY_EVENTS)),
//! then the live events, skipping those already replayed. Subscribing
//! before reading history closes the gap between the two; deduplicating by
//! id removes the overlap, so missed events arrive exactly once. When the
//! id is no longer in retained history, the stream continues live only.
//! Durable streams ignore `Last-Event-ID`: un-acked deliveries come back by
//! themselves.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, Query};
use super::http::{number, split_list};
use super::session::{
    Dialect, MAX_IN_FLIGHT_LIMIT, Outgoing, Session, SubscribeOptions, build_selector,
    parse_filter_texts,
};
use super::{AppState, ConnectionGuard};
use crate::event::Event;
use crate::selector::Selector;

/// Bound of a stream's outgoing channel, in events.
const SSE_QUEUE_EVENTS: usize = 256;

/// The parsed query of a stream request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamQuery {
    /// Topic patterns.
    pub topics: Vec<String>,
    /// A regex over the whole topic.
    pub pattern: Option<String>,
    /// Filter texts, ANDed.
    pub filters: Vec<String>,
    /// Durable group.
    pub group: Option<String>,
    /// Durable in-flight bound.
    pub max_in_flight: Option<usize>,
    /// Resume point (event id).
    pub last_event_id: Option<String>,
}

impl StreamQuery {
    /// Reads query pairs; unknown keys are ignored.
    ///
    /// # Errors
    /// `invalid_query` for a bad `max_in_flight`.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut q = StreamQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "topics" | "topic" => q.topics.extend(split_list(&value)),
                "pattern" => q.pattern = Some(value),
                "filter" => q.filters.push(value),
                "group" if !value.is_empty() => q.group = Some(value),
                "max_in_flight" => {
                    q.max_in_flight =
                        Some(number("max_in_flight", &value, 1, MAX_IN_FLIGHT_LIMIT)?);
                }
                "last_event_id" if !value.is_empty() => q.last_event_id = Some(value),
                _ => {}
            }
        }
        Ok(q)
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        let patterns = build_selector(&self.topics, self.pattern.as_deref(), None)?;
        let filter = parse_filter_texts(&self.filters)?;
        Ok(Selector::new(patterns.patterns().to_vec(), filter)?)
    }
}

/// `GET /api/v1/events/stream`: live or durable deliveries as SSE.
#[utoipa::path(
    get,
    path = "/api/v1/events/stream",
    tag = "events",
    params(
        ("topics" = String, Query, description = "Topic patterns, comma-separated or repeated"),
        ("pattern" = Option<String>, Query, description = "Regex over the whole topic"),
        ("filter" = Option<String>, Query, description = "Shorthand `field:op:value` or a JSON filter; repeatable, ANDed"),
        ("group" = Option<String>, Query, description = "Durable consumer group; live when absent"),
        ("max_in_flight" = Option<usize>, Query, description = "Durable: most un-acked deliveries"),
        ("last_event_id" = Option<String>, Query, description = "Resume after this event id (also the Last-Event-ID header)"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 400, body = super::error::ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    access: crate::auth::Access,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = StreamQuery::from_pairs(pairs)?;
    let selector = query.selector()?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or(query.last_event_id);
    let (tx, rx) = mpsc::channel(SSE_QUEUE_EVENTS);
    let permit = access.connect()?;
    let mut session = Session::new(state.router.clone(), state.session_config(), tx);
    session.set_access(access);
    session.list_in(state.subscribers.clone(), "sse");
    let resume_after = if query.group.is_none() {
        last_event_id
    } else {
        None
    };
    let tag = session
        .subscribe(SubscribeOptions {
            selector,
            group: query.group,
            max_in_flight: query.max_in_flight,
            dialect: Dialect::Sse,
            resume_after,
            slow_consumer: Default::default(),
        })
        .await?;
    let open = Open {
        _permit: permit,
        _session: session,
        rx,
        shutdown: state.shutdown.clone(),
        _count: state.connections.sse(),
    };
    let first = SseEvent::default().comment(format!("subscribed {}", tag.id));
    let events = futures::stream::once(async move { Ok::<_, Infallible>(first) })
        .chain(futures::stream::unfold(Some(open), next_event));
    let keepalive = state.config.sse_keepalive;
    let sse = Sse::new(events);
    Ok(if keepalive.is_zero() {
        sse.into_response()
    } else {
        sse.keep_alive(KeepAlive::new().interval(keepalive))
            .into_response()
    })
}

/// What a stream holds while open: its session (and so its subscription).
struct Open {
    _permit: crate::auth::ConnectionPermit,
    _session: Session,
    rx: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
    _count: ConnectionGuard,
}

/// The next SSE event of an open stream; `None` ends the stream.
async fn next_event(open: Option<Open>) -> Option<(Result<SseEvent, Infallible>, Option<Open>)> {
    let mut open = open?;
    let item = tokio::select! {
        biased;
        () = open.shutdown.cancelled() => return None,
        item = open.rx.recv() => item?,
    };
    match encode(item) {
        Encoded::Event(event) => Some((Ok(event), Some(open))),
        Encoded::Last(event) => Some((Ok(event), None)),
        Encoded::End => None,
    }
}

enum Encoded {
    Event(SseEvent),
    Last(SseEvent),
    End,
}

#[derive(Serialize)]
struct DeliveryData<'a> {
    subscription_id: &'a str,
    delivery_id: &'a str,
    attempt: u32,
    event: &'a Event,
}

fn encode(item: Outgoing) -> Encoded {
    match item {
        Outgoing::Event {
            subscription,
            delivery_id,
            attempt,
            event,
            ..
        } => {
            let data = DeliveryData {
                subscription_id: &subscription.id,
                delivery_id: delivery_id.as_deref().unwrap_or(&event.id),
                attempt,
                event: &event,
            };
            let json = serde_json::to_string(&data).unwrap_or_default();
            let mut sse = SseEvent::default().event(&event.topic).data(json);
            // axum panics on ids with these characters; such ids are valid
            // event ids but cannot be SSE ids, so the event goes without one.
            if !event.id.contains(['\n', '\r', '\0']) {
                sse = sse.id(&event.id);
            }
            Encoded::Event(sse)
        }
        Outgoing::Overflow {
            subscription,
            dropped,
        } => {
            let data = serde_json::json!({"subscription_id": subscription.id, "dropped": dropped});
            Encoded::Event(SseEvent::default().event("overflow").data(data.to_string()))
        }
        Outgoing::Ended { error: Some(e), .. } => {
            let data = serde_json::json!({"code": e.code, "message": e.message});
            Encoded::Last(SseEvent::default().event("error").data(data.to_string()))
        }
        Outgoing::Ended { error: None, .. } => Encoded::End,
        Outgoing::Reply(_) => Encoded::Event(SseEvent::default().comment("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_reads_repeated_and_comma_separated_topics() {
        let q = StreamQuery::from_pairs(pairs(&[
            ("topics", "a.*, b.#"),
            ("topics", "c"),
            ("filter", "priority:gt:5"),
            ("filter", "{\"source\":\"x\"}"),
            ("group", "w"),
            ("max_in_flight", "5"),
        ]))
        .unwrap();
        assert_eq!(q.topics, vec!["a.*", "b.#", "c"]);
        assert_eq!(q.filters.len(), 2);
        assert_eq!((q.group.as_deref(), q.max_in_flight), (Some("w"), Some(5)));
        let e = StreamQuery::from_pairs(pairs(&[("max_in_flight", "0")])).unwrap_err();
        assert_eq!(e.code, "invalid_query");
    }

    #[test]
    fn a_stream_without_topics_is_rejected() {
        let q = StreamQuery::from_pairs(pairs(&[])).unwrap();
        assert_eq!(q.selector().unwrap_err().code, "invalid_pattern");
    }
}
