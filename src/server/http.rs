//! REST handlers (DESIGN §5): publish (our JSON and CloudEvents), history,
//! durable subscriptions and their dead-letter queues, HTTP ack/nack
//! for SSE consumers, request/response. Health, readiness and stats are in
//! [`super::ops`].
//!
//! Every error is `{"error":{"code","message"}}` with its status (see
//! [`ApiError`]); bodies are limited to
//! [`ServerConfig::max_frame_bytes`](super::ServerConfig::max_frame_bytes)
//! (413 `payload_too_large` beyond).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::cloudevents::{self, Mode};
use super::error::{ApiError, Body, ErrorBody, Json, Query};
use super::session::{build_selector, parse_batch, parse_filter_texts};
use crate::broker::{
    DeadLetter, DeadLetterQuery, DeadLetterSelection, HistoryEntry, HistoryPurge, HistoryQuery,
    NackOptions, SubscriptionInfo,
};
use crate::resources::{DeliveryMode, SubscriptionSpec};
use crate::router::{DEFAULT_REQUEST_TIMEOUT, Receipt};
use crate::selector::Selector;

/// Default `limit` of a history read.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Largest `limit` of a history read.
pub const MAX_HISTORY_LIMIT: usize = 10_000;
/// Default `limit` of a dead-letter listing.
pub const DEFAULT_DLQ_LIMIT: usize = 100;

/// What happened to one published event.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    /// The event id.
    pub event_id: String,
    /// `published`, or `dropped` when an EventRoute dropped it.
    pub status: &'static str,
    /// When the router accepted it (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
}

impl PublishResponse {
    fn new(receipt: &Receipt, timestamp: Timestamp) -> Self {
        PublishResponse {
            event_id: receipt.event_id().to_string(),
            status: match receipt {
                Receipt::Published { .. } => "published",
                Receipt::Dropped { .. } => "dropped",
            },
            timestamp,
        }
    }
}

/// Results of a batch publish, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per input event.
    pub results: Vec<PublishResponse>,
}

/// A batch publish in our JSON (a bare array of events is accepted too).
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// The events.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// All or none are stored. Default false.
    #[serde(default)]
    pub atomic: bool,
}

/// `POST /api/v1/events`: publish one event.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body(
        content = Object,
        description = "Our event JSON, a structured CloudEvent (`application/cloudevents+json`), or binary-mode data with `ce-*` headers",
    ),
    responses(
        (status = 202, body = PublishResponse),
        (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, description = "Not JSON, a CloudEvent, or a binary-mode CloudEvent", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    access: crate::auth::Access,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let raw = match cloudevents::mode(&headers) {
        Mode::Plain => {
            cloudevents::require_json(&headers)?;
            json_body(&body)?
        }
        Mode::Structured => cloudevents::from_structured(json_body(&body)?)?,
        Mode::Binary => cloudevents::from_binary(&headers, &body)?,
        Mode::Batch => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send CloudEvents batches to /api/v1/events/batch",
            ));
        }
    };
    let event = state.router.parse_event(raw)?;
    access.check_publish(&event.topic)?;
    let receipt = state.router.publish(event).await?;
    let body = PublishResponse::new(&receipt, Timestamp::now());
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// `POST /api/v1/events/batch`: publish several events in order.
#[utoipa::path(
    post,
    path = "/api/v1/events/batch",
    tag = "events",
    request_body(
        content = BatchRequest,
        description = "`{\"events\":[...],\"atomic\":bool}`, a JSON array of events, or a CloudEvents batch (`application/cloudevents-batch+json`)",
    ),
    responses(
        (status = 202, body = BatchResponse),
        (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody),
    )
)]
pub async fn publish_batch(
    State(state): State<AppState>,
    access: crate::auth::Access,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let (raws, atomic) = match cloudevents::mode(&headers) {
        Mode::Batch => {
            let Value::Array(items) = json_body(&body)? else {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "a CloudEvents batch is a JSON array",
                ));
            };
            let raws = items
                .into_iter()
                .map(cloudevents::from_structured)
                .collect::<Result<Vec<_>, _>>()?;
            (raws, false)
        }
        Mode::Plain => match cloudevents::require_json(&headers).and_then(|()| json_body(&body))? {
            Value::Array(items) => (items, false),
            other => {
                let req: BatchRequest = serde_json::from_value(other)
                    .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
                (req.events, req.atomic)
            }
        },
        Mode::Structured | Mode::Binary => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a batch is JSON or application/cloudevents-batch+json",
            ));
        }
    };
    let events = parse_batch(&state.router, raws)?;
    access.check_publish_all(events.iter().map(|e| e.topic.as_str()))?;
    let receipts = state.router.publish_batch(events, atomic).await?;
    let now = Timestamp::now();
    let results = receipts
        .iter()
        .map(|r| PublishResponse::new(r, now))
        .collect();
    Ok((StatusCode::ACCEPTED, axum::Json(BatchResponse { results })).into_response())
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| cloudevents::json_error("body", &e))
}

/// Retained events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    /// `{"cursor","event"}` entries.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<HistoryEntry>,
    /// Pass as `after` to read the next page; absent when this page is empty.
    pub next_after: Option<String>,
}

/// `GET /api/v1/events`: read retained history (export).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(
        ("topic" = Option<String>, Query, description = "Topic pattern(s), comma-separated or repeated; all topics when absent"),
        ("filter" = Option<String>, Query, description = "Shorthand `field:op:value` or a JSON filter; repeatable, ANDed"),
        ("from" = Option<String>, Query, description = "RFC 3339: events at or after"),
        ("to" = Option<String>, Query, description = "RFC 3339: events before"),
        ("after" = Option<String>, Query, description = "Cursor: events stored after it"),
        ("limit" = Option<usize>, Query, description = "Most events (default 100, max 10000)"),
    ),
    responses((status = 200, body = HistoryResponse), (status = 400, body = ErrorBody))
)]
pub async fn history(
    State(state): State<AppState>,
    access: crate::auth::Access,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<axum::Json<HistoryResponse>, ApiError> {
    let mut topics = Vec::new();
    let mut filters = Vec::new();
    let mut query = HistoryQuery {
        limit: DEFAULT_HISTORY_LIMIT,
        ..HistoryQuery::default()
    };
    for (key, value) in pairs {
        match key.as_str() {
            "topic" | "topics" => topics.extend(split_list(&value)),
            "filter" => filters.push(value),
            "from" => query.from = Some(timestamp("from", &value)?),
            "to" => query.to = Some(timestamp("to", &value)?),
            "after" => query.after = Some(cursor(value)?),
            "limit" => query.limit = number("limit", &value, 1, MAX_HISTORY_LIMIT)?,
            _ => {}
        }
    }
    let filter = parse_filter_texts(&filters)?;
    query.selector = if topics.is_empty() && filter.is_none() {
        None
    } else if topics.is_empty() {
        Some(Selector::new(Selector::all().patterns().to_vec(), filter)?)
    } else {
        let sel = build_selector(&topics, None, None)?;
        Some(Selector::new(sel.patterns().to_vec(), filter)?)
    };
    match &query.selector {
        Some(selector) => access.check_subscribe(selector.patterns())?,
        None => access.check_subscribe(Selector::all().patterns())?,
    }
    let events = state.router.broker().history(query).await?;
    let next_after = events.last().map(|e| e.cursor.clone());
    Ok(axum::Json(HistoryResponse { events, next_after }))
}

/// Splits a comma-separated query value, dropping empty items.
pub fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn timestamp(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    crate::event::parse_time(value)
        .map_err(|reason| ApiError::bad_request("invalid_query", format!("`{name}`: {reason}")))
}

/// Refuses an `after` that no broker could have issued: cursors are
/// decimal numbers joined by `-` (`17`, `3-1700000000000-0`).
fn cursor(value: String) -> Result<String, ApiError> {
    let well_formed = !value.is_empty()
        && value.len() <= 64
        && value
            .split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if well_formed {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "`after` is not a history cursor: {value:?} (pass a `next_after` or `cursor` as returned)"
            ),
        ))
    }
}

/// Parses a query number within `min..=max`.
///
/// # Errors
/// `invalid_query` naming the parameter.
pub fn number(name: &str, value: &str, min: usize, max: usize) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{name}` must be a whole number within {min}..={max}, got {value:?}"),
            )
        })
}

/// Open client connections.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionStats {
    /// Open WebSocket connections.
    pub websocket: u64,
    /// Open SSE streams.
    pub sse: u64,
}

/// Every durable subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionsResponse {
    /// Spec and counters of each, by name.
    #[schema(value_type = Vec<Object>)]
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// `GET /api/v1/subscriptions`.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions",
    tag = "subscriptions",
    responses((status = 200, body = SubscriptionsResponse))
)]
pub async fn list_subscriptions(
    State(state): State<AppState>,
) -> Result<axum::Json<SubscriptionsResponse>, ApiError> {
    let subscriptions = state.router.broker().subscriptions().await?;
    Ok(axum::Json(SubscriptionsResponse { subscriptions }))
}

/// `GET /api/v1/subscriptions/{name}`: spec, pending, in flight, retrying,
/// dead letters, consumers and counters.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{name}",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody))
)]
pub async fn get_subscription(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<SubscriptionInfo>, ApiError> {
    Ok(axum::Json(state.router.broker().subscription(&name).await?))
}

/// `PUT /api/v1/subscriptions/{name}`: create or update a durable
/// subscription from a `Subscription` spec (camelCase, as in YAML).
#[utoipa::path(
    put,
    path = "/api/v1/subscriptions/{name}",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = Object, description = "A Subscription spec: topics, pattern, filter, delivery"),
    responses(
        (status = 201, description = "Created", body = Object),
        (status = 200, description = "Updated", body = Object),
        (status = 400, body = ErrorBody),
    )
)]
pub async fn put_subscription(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(spec): Json<SubscriptionSpec>,
) -> Result<Response, ApiError> {
    let invalid = |reason: String| {
        ApiError::bad_request(
            "invalid_subscription",
            format!("subscription {name:?}: {reason}"),
        )
    };
    if spec.delivery.mode == DeliveryMode::Live {
        return Err(invalid(
            "delivery.mode live: live subscriptions are opened by connections".into(),
        ));
    }
    if spec.sink.is_some() {
        return Err(invalid(
            "sink: push sinks come from Subscription resources (serve -f, apply -f or the \
             operator), not from this endpoint"
                .into(),
        ));
    }
    if spec.delivery.group.as_deref().is_some_and(|g| g != name) {
        return Err(invalid(
            "delivery.group must be absent or equal to the name in the path".into(),
        ));
    }
    let group = spec.group_spec(&name).map_err(invalid)?;
    state
        .session_config()
        .patterns
        .check_selector(&group.selector)?;
    let broker = state.router.broker();
    let existed = broker.subscription(&name).await.is_ok();
    broker.ensure_subscription(group).await?;
    let info = broker.subscription(&name).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(info)).into_response())
}

/// `DELETE /api/v1/subscriptions/{name}`: delete a durable subscription with
/// its queued events and dead letters.
#[utoipa::path(
    delete,
    path = "/api/v1/subscriptions/{name}",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody))
)]
pub async fn delete_subscription(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.router.broker().delete_subscription(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(crate::broker::BrokerError::UnknownSubscription(name).into())
    }
}

/// Ack or nack of one delivery.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SettleRequest {
    /// The delivery, as received.
    pub delivery_id: String,
    /// Nack only: redeliver after this many milliseconds instead of the backoff.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Nack only: why processing failed.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Outcome of an ack or nack.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettleResponse {
    /// The delivery.
    pub delivery_id: String,
    /// `acked` or `nacked`.
    pub status: &'static str,
}

/// `POST /api/v1/subscriptions/{name}/ack`: acknowledge a delivery (for SSE
/// consumers).
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{name}/ack",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = SettleRequest,
    responses((status = 200, body = SettleResponse), (status = 404, body = ErrorBody))
)]
pub async fn ack(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<SettleRequest>,
) -> Result<axum::Json<SettleResponse>, ApiError> {
    state.router.broker().ack(&name, &req.delivery_id).await?;
    Ok(axum::Json(SettleResponse {
        delivery_id: req.delivery_id,
        status: "acked",
    }))
}

/// `POST /api/v1/subscriptions/{name}/nack`: reject a delivery for
/// redelivery (or dead-lettering after `max_attempts`).
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{name}/nack",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = SettleRequest,
    responses((status = 200, body = SettleResponse), (status = 404, body = ErrorBody))
)]
pub async fn nack(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<SettleRequest>,
) -> Result<axum::Json<SettleResponse>, ApiError> {
    let options = NackOptions {
        delay: req.delay_ms.map(Duration::from_millis),
        reason: req.reason,
    };
    state
        .router
        .broker()
        .nack(&name, &req.delivery_id, options)
        .await?;
    Ok(axum::Json(SettleResponse {
        delivery_id: req.delivery_id,
        status: "nacked",
    }))
}

/// Dead letters of a subscription, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersResponse {
    /// Entries with reason and attempt history.
    #[schema(value_type = Vec<Object>)]
    pub dead_letters: Vec<DeadLetter>,
}

/// `GET /api/v1/subscriptions/{name}/dlq`.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{name}/dlq",
    tag = "subscriptions",
    params(
        ("name" = String, Path, description = "Subscription name"),
        ("limit" = Option<usize>, Query, description = "Most entries (default 100, max 10000)"),
    ),
    responses((status = 200, body = DeadLettersResponse), (status = 404, body = ErrorBody))
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<axum::Json<DeadLettersResponse>, ApiError> {
    let mut limit = DEFAULT_DLQ_LIMIT;
    for (key, value) in pairs {
        if key == "limit" {
            limit = number("limit", &value, 1, MAX_HISTORY_LIMIT)?;
        }
    }
    let dead_letters = state
        .router
        .broker()
        .dead_letters(&name, DeadLetterQuery { limit })
        .await?;
    Ok(axum::Json(DeadLettersResponse { dead_letters }))
}

/// Which dead letters to redrive or purge; all when `ids` is absent.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DeadLetterIds {
    /// Dead-letter entry ids.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

/// How many dead letters an operation touched.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountResponse {
    /// Entries moved back (redrive), deleted (purge) or queued (replay).
    pub count: u64,
}

/// A JSON body that may be left out: empty (or blank) means `T::default()`.
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

fn selection(body: &[u8]) -> Result<DeadLetterSelection, ApiError> {
    let ids: DeadLetterIds = optional_body(body)?;
    Ok(DeadLetterSelection { ids: ids.ids })
}

/// `POST /api/v1/subscriptions/{name}/dlq/redrive`: move dead letters back
/// into the subscription with fresh attempts.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{name}/dlq/redrive",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = Option<DeadLetterIds>, description = "Optional `{\"ids\":[...]}`; all entries when absent"),
    responses((status = 200, body = CountResponse), (status = 404, body = ErrorBody))
)]
pub async fn redrive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<CountResponse>, ApiError> {
    let count = state
        .router
        .broker()
        .redrive(&name, selection(&body)?)
        .await?;
    Ok(axum::Json(CountResponse { count }))
}

/// `POST /api/v1/subscriptions/{name}/dlq/purge`: delete dead letters.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{name}/dlq/purge",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = Option<DeadLetterIds>, description = "Optional `{\"ids\":[...]}`; all entries when absent"),
    responses((status = 200, body = CountResponse), (status = 404, body = ErrorBody))
)]
pub async fn purge(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<CountResponse>, ApiError> {
    let count = state
        .router
        .broker()
        .purge(&name, selection(&body)?)
        .await?;
    Ok(axum::Json(CountResponse { count }))
}

/// Which retained events to replay into a subscription.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Topic patterns; every topic when absent.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A filter the events must match: a JSON document, a `field:op:value`
    /// shorthand string, or an array of such strings (all must hold).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// RFC 3339: events whose `time` is at or after this.
    #[serde(default)]
    pub from: Option<String>,
    /// RFC 3339: events whose `time` is before this.
    #[serde(default)]
    pub to: Option<String>,
    /// Most events to queue, oldest first; every matching retained event
    /// (up to the broker's safety cap) when absent.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `POST /api/v1/subscriptions/{name}/replay`: queue retained events from
/// history into a durable subscription for redelivery.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{name}/replay",
    tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = Option<ReplayRequest>, description = "Optional selection; all retained events when absent"),
    responses(
        (status = 200, body = CountResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<CountResponse>, ApiError> {
    let req: ReplayRequest = optional_body(&body)?;
    let selector = if req.topics.is_empty() && req.filter.is_none() {
        None
    } else if req.topics.is_empty() {
        Some(build_selector(
            &["#".to_string()],
            None,
            req.filter.as_ref(),
        )?)
    } else {
        Some(build_selector(&req.topics, None, req.filter.as_ref())?)
    };
    let limit = match req.limit {
        None => 0,
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "`limit` must be at least 1 (leave it out to replay everything retained)",
            ));
        }
        Some(n) => n,
    };
    let query = HistoryQuery {
        selector,
        from: req
            .from
            .as_deref()
            .map(|v| timestamp("from", v))
            .transpose()?,
        to: req.to.as_deref().map(|v| timestamp("to", v)).transpose()?,
        after: None,
        limit,
    };
    let count = state.router.broker().replay(&name, query).await?;
    Ok(axum::Json(CountResponse { count }))
}

/// Which retained events to delete from history.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeHistoryRequest {
    /// RFC 3339: events whose `time` is before this are deleted.
    pub before: String,
    /// Topic patterns; every topic when absent.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A filter the events must match: a JSON document, a `field:op:value`
    /// shorthand string, or an array of such strings (all must hold).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
}

/// `POST /api/v1/events/purge`: delete retained events older than
/// `before` from history (durable subscriptions keep their queued copies).
#[utoipa::path(
    post,
    path = "/api/v1/events/purge",
    tag = "events",
    request_body = PurgeHistoryRequest,
    responses((status = 200, body = CountResponse), (status = 400, body = ErrorBody))
)]
pub async fn purge_history(
    State(state): State<AppState>,
    Json(req): Json<PurgeHistoryRequest>,
) -> Result<axum::Json<CountResponse>, ApiError> {
    let selector = match (req.topics.is_empty(), &req.filter) {
        (true, None) => None,
        (true, Some(filter)) => Some(build_selector(&["#".to_string()], None, Some(filter))?),
        (false, filter) => Some(build_selector(&req.topics, None, filter.as_ref())?),
    };
    let purge = HistoryPurge {
        before: timestamp("before", &req.before)?,
        selector,
    };
    let count = state.router.broker().purge_history(purge).await?;
    Ok(axum::Json(CountResponse { count }))
}

/// A request/response exchange over HTTP.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestBody {
    /// The request event; `reply_to` and `correlation_id` are set when absent.
    #[schema(value_type = Object)]
    pub event: Value,
    /// How long to wait, in milliseconds (default 30 000, at most 300 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The reply to a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestResponse {
    /// The first event published to `reply_to` with the same correlation id.
    #[schema(value_type = Object)]
    pub response: crate::event::Event,
}

/// `POST /api/v1/request`: publish a request and wait for its reply.
#[utoipa::path(
    post,
    path = "/api/v1/request",
    tag = "events",
    request_body = RequestBody,
    responses(
        (status = 200, body = RequestResponse),
        (status = 400, body = ErrorBody),
        (status = 403, description = "May not publish the request or read its `reply_to`", body = ErrorBody),
        (status = 504, description = "No reply in time", body = ErrorBody),
    )
)]
pub async fn request(
    State(state): State<AppState>,
    access: crate::auth::Access,
    Json(body): Json<RequestBody>,
) -> Result<axum::Json<RequestResponse>, ApiError> {
    let event = state.router.parse_event(body.event)?;
    access.check_reply_to(event.reply_to.as_deref())?;
    access.check_publish(&event.topic)?;
    let timeout = body
        .timeout_ms
        .map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis);
    let response = state.router.request(event, timeout).await?;
    Ok(axum::Json(RequestResponse { response }))
}

/// Unknown paths: 404 in our error shape.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// Known paths with another method: 405 in our error shape.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
