//! The per-request span of the HTTP server: a request id (the client's
//! `x-request-id` when it sent a usable one, else a fresh one, echoed in the
//! response) and the W3C `traceparent` header as the parent.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use super::trace;

/// The request-id header, read and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID: usize = 128;

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string)
}

/// Axum middleware (`axum::middleware::from_fn(telemetry::http::request_span)`):
/// runs the request inside a `request` span carrying `request_id` and
/// `trace_id`, and echoes `x-request-id` in the response.
pub async fn request_span(request: Request, next: Next) -> Response {
    let id = request_id(&request);
    let path = request.uri().path();
    if matches!(path, "/health" | "/live" | "/ready" | "/metrics") {
        // Probes and scrapes: no span, so no trace per probe.
        return next.run(request).await;
    }
    let log = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %path,
        trace_id = tracing::field::Empty,
    );
    let span = trace::request_span(request.headers(), request.method(), path, log);
    let log = span.log().clone();
    let started = std::time::Instant::now();
    let mut response = span.scope(Box::pin(next.run(request))).await;
    log.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
