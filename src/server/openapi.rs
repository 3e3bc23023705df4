//! The OpenAPI description of the HTTP API, generated from the handlers'
//! `#[utoipa::path]` annotations and served at `GET /openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{error, event_streams, http, ops, sse, subscribers, ui, ws};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "event-router",
        description = "Publish, subscribe (WebSocket, SSE), durable subscriptions and dead letters. \
                       Errors are `{\"error\":{\"code\",\"message\"}}`."
    ),
    paths(
        http::publish,
        http::publish_batch,
        http::history,
        http::purge_history,
        sse::stream,
        http::request,
        event_streams::append_http,
        event_streams::read_http,
        ops::stats,
        ui::whoami,
        subscribers::list,
        http::list_subscriptions,
        http::get_subscription,
        http::put_subscription,
        http::delete_subscription,
        http::ack,
        http::nack,
        http::dead_letters,
        http::redrive,
        http::replay,
        http::purge,
        ops::health,
        ops::live,
        ops::ready,
        ws::upgrade,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    tags(
        (name = "events", description = "Publish, history, streams, request/response"),
        (name = "subscriptions", description = "Durable subscriptions and dead letters"),
        (name = "operations", description = "Health, liveness, readiness, stats"),
        (name = "websocket", description = "WebSocket v2 and seed v1 protocols"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
