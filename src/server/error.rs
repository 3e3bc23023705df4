//! The one client-facing error type of every transport.
//!
//! [`ApiError`] carries a stable snake_case `code`, an HTTP status and a
//! message. Over HTTP it renders as `{"error":{"code","message"}}` with its
//! status; over WebSocket it becomes an `error` frame (see
//! [`super::protocol::ServerFrame::error`]). Server-side failures (5xx) never
//! show their internals: the detail is logged and the client gets a generic
//! message.
//!
//! [`Json`], [`Query`] and [`Body`] wrap axum's extractors so that their
//! rejections use the same shape.

use axum::extract::FromRequest;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::BrokerError;
use crate::event::ValidationError;
use crate::router::RouterError;
use crate::selector::SelectorError;

/// A client-facing error: stable code, HTTP status, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Stable snake_case code (`invalid_filter`, `unknown_subscription`, ...).
    pub code: &'static str,
    /// The HTTP status it maps to.
    pub status: StatusCode,
    /// What went wrong, naming the offending field or value.
    pub message: String,
    /// When to retry (`rate_limited`): a `Retry-After` header over HTTP,
    /// `retry_after_ms` in WebSocket error frames.
    pub retry_after: Option<std::time::Duration>,
    /// `version_conflict`: the event stream's current version, as
    /// `current_version` in the error body and frame.
    pub current_version: Option<u64>,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status,
            message: message.into(),
            retry_after: None,
            current_version: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`: logs `detail`, shows the client nothing of it.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// 503 with `code`: logs `detail`, shows the client a generic message.
    pub fn unavailable(code: &'static str, detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, code, "service unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "service temporarily unavailable; retry later",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The JSON body of an error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `code` and `message` of an error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// `version_conflict` only: the event stream's current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                current_version: self.current_version,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        response
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let code = e.kind();
        match e {
            BrokerError::UnknownSubscription(_) | BrokerError::UnknownDelivery(_) => {
                Self::new(StatusCode::NOT_FOUND, code, e.to_string())
            }
            BrokerError::InvalidSubscription { .. } | BrokerError::InvalidStream { .. } => {
                Self::bad_request(code, e.to_string())
            }
            BrokerError::VersionConflict { current, .. } => {
                let mut error = Self::new(StatusCode::CONFLICT, code, e.to_string());
                error.current_version = Some(current);
                error
            }
            // The publisher can act on it (slow down, retry): say which.
            BrokerError::QueueFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
            }
            BrokerError::Unavailable(_) | BrokerError::Closed => Self::unavailable(code, &e),
            BrokerError::Internal(_) => Self::internal(&e),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let status = match e {
            ValidationError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        Self::bad_request(e.code(), e.to_string())
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        match e {
            RouterError::Invalid(e) => e.into(),
            RouterError::Selector(e) => e.into(),
            RouterError::Broker(e) => e.into(),
            RouterError::Timeout(_) => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string())
            }
            RouterError::BadRequest(_) | RouterError::Resource { .. } => {
                Self::bad_request(e.code(), e.to_string())
            }
        }
    }
}

fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", "request body is too large")
    } else if status.is_server_error() {
        ApiError::internal(text)
    } else {
        ApiError::new(status, "bad_request", text)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) if e.body_text().contains("recursion limit") => {
                Self::bad_request("too_deep", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => Self::bad_request("invalid_json", e.body_text()),
            JsonRejection::JsonDataError(e) => Self::bad_request("invalid_body", e.body_text()),
            JsonRejection::MissingJsonContentType(e) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e.body_text(),
            ),
            other => body_rejection(other.status(), other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        body_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

/// axum's `Json` extractor with rejections in our error shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// axum's `Query` extractor with rejections in our error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The raw request body, under the body limit, with rejections in our shape.
#[derive(Debug)]
pub struct Body(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(ApiError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_internals_are_hidden_but_client_errors_are_named() {
        let e = ApiError::from(BrokerError::Internal("redis said ERR xyz".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("xyz"));
        let e = ApiError::from(BrokerError::Unavailable("10.0.0.1:6379 refused".into()));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert!(!e.message.contains("10.0.0.1"));
        let e = ApiError::from(BrokerError::UnknownSubscription("w".into()));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "unknown_subscription")
        );
    }

    #[test]
    fn router_errors_map_to_statuses() {
        let e = ApiError::from(RouterError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!((e.status, e.code), (StatusCode::GATEWAY_TIMEOUT, "timeout"));
        let e = ApiError::from(RouterError::Invalid(ValidationError::PayloadTooLarge {
            size: 2,
            limit: 1,
        }));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        );
        let e = ApiError::from(RouterError::BadRequest("empty".into()));
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_request"));
    }
}
