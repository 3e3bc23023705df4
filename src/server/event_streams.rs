//! Event streams over HTTP (`/api/v1/streams/{stream}/events`) and the
//! checks every transport applies to them (see
//! [`crate::broker::event_stream`]; the WebSocket ops are in `session`).
//!
//! Access: a stream name is topic-shaped, so the topic grants apply to it:
//! appending needs publish rights on the stream name and on the event's
//! type, reading and following need subscribe rights on the stream name.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, Body, ErrorBody, Query};
use crate::auth::Access;
use crate::broker::event_stream::{self, MAX_READ_LIMIT};
use crate::broker::{AppendOptions, Appended, StreamPage, StreamRead};
use crate::router::Router;
use crate::topic::Pattern;

/// Validates `raw` and appends it to `stream`.
///
/// # Errors
/// `invalid_stream`, validation errors, `forbidden`, `rate_limited`,
/// `version_conflict` (409, with `current_version`), broker errors.
pub async fn append(
    router: &Router,
    access: &Access,
    stream: &str,
    raw: Value,
    expected_version: Option<u64>,
) -> Result<Appended, ApiError> {
    event_stream::validate_name(stream)?;
    let event = router.parse_event(raw)?;
    access.check_publish_all([stream, event.topic.as_str()])?;
    Ok(router
        .broker()
        .append(stream, event, AppendOptions { expected_version })
        .await?)
}

/// Reads part of `stream`.
///
/// # Errors
/// `invalid_stream`, `forbidden`, broker errors.
pub async fn read(
    router: &Router,
    access: &Access,
    stream: &str,
    read: StreamRead,
) -> Result<StreamPage, ApiError> {
    check_read(access, stream)?;
    Ok(router.broker().read_stream(stream, read).await?)
}

/// Checks that `stream` is a valid name the caller may read.
///
/// # Errors
/// `invalid_stream`, `forbidden`.
pub fn check_read(access: &Access, stream: &str) -> Result<(), ApiError> {
    event_stream::validate_name(stream)?;
    let pattern = Pattern::parse(stream)
        .map_err(|e| ApiError::bad_request("invalid_stream", format!("stream {stream:?}: {e}")))?;
    access.check_subscribe(&[pattern])
}

/// The body of an append.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AppendRequest {
    /// The event (our JSON; `type` required).
    #[schema(value_type = Object)]
    pub event: Value,
    /// Append only if the stream is at this version (0: the stream must be
    /// empty); any version when absent.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

/// An appended event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppendResponse {
    /// The stream.
    pub stream: String,
    /// The event's version, now the stream's.
    pub version: u64,
    /// The event id.
    pub event_id: String,
}

/// One event of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEntryBody {
    /// 1-based, without gaps.
    pub version: u64,
    /// The event.
    #[schema(value_type = Object)]
    pub event: Value,
}

/// Part of a stream, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamResponse {
    /// The stream.
    pub stream: String,
    /// The stream's version when read (0: empty).
    pub version: u64,
    /// The entries.
    pub entries: Vec<StreamEntryBody>,
}

/// Query of a stream read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// First version to read (default 0: from the start).
    #[serde(default)]
    pub from_version: u64,
    /// Most entries (default 100, at most 1000).
    #[serde(default)]
    pub limit: usize,
}

/// `POST /api/v1/streams/{stream}/events`: append one event.
#[utoipa::path(
    post,
    path = "/api/v1/streams/{stream}/events",
    tag = "events",
    params(("stream" = String, Path, description = "Event stream name (topic-shaped, e.g. `order-123`)")),
    request_body = AppendRequest,
    responses(
        (status = 201, body = AppendResponse),
        (status = 400, body = ErrorBody),
        (status = 409, description = "`version_conflict`: the stream is not at `expected_version`; `error.current_version` says where it is", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn append_http(
    State(state): State<AppState>,
    access: Access,
    Path(stream): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request: AppendRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_request", format!("invalid append body: {e}")))?;
    let appended = append(
        &state.router,
        &access,
        &stream,
        request.event,
        request.expected_version,
    )
    .await?;
    let body = AppendResponse {
        stream: appended.stream,
        version: appended.version,
        event_id: appended.event_id,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /api/v1/streams/{stream}/events`: read a stream by version.
#[utoipa::path(
    get,
    path = "/api/v1/streams/{stream}/events",
    tag = "events",
    params(("stream" = String, Path, description = "Event stream name"), ReadParams),
    responses((status = 200, body = StreamResponse), (status = 400, body = ErrorBody))
)]
pub async fn read_http(
    State(state): State<AppState>,
    access: Access,
    Path(stream): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<axum::Json<StreamResponse>, ApiError> {
    if params.limit > MAX_READ_LIMIT {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("limit must be at most {MAX_READ_LIMIT}"),
        ));
    }
    let query = StreamRead {
        from_version: params.from_version,
        limit: params.limit,
    };
    let page = read(&state.router, &access, &stream, query).await?;
    let entries = page
        .entries
        .into_iter()
        .map(|e| StreamEntryBody {
            version: e.version,
            event: serde_json::to_value(&e.event).unwrap_or(Value::Null),
        })
        .collect();
    Ok(axum::Json(StreamResponse {
        stream: page.stream,
        version: page.version,
        entries,
    }))
}
