//! The client's error type: one enum for every call, over either transport.

use std::time::Duration;

use crate::event::ValidationError;
use crate::router::RouterError;
use crate::selector::SelectorError;

/// Result alias for client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Server error codes after which the same publish may succeed later.
const RETRYABLE_CODES: [&str; 6] = [
    "unavailable",
    "closed",
    "not_ready",
    "rate_limited",
    "too_many_requests",
    "timeout",
];

/// What can go wrong in a client call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server cannot be reached: the first connection failed, or
    /// reconnecting gave up after the policy's `max_attempts`. The client is
    /// closed once this is returned for a lost connection.
    #[error("cannot connect to {url}: {reason}")]
    Connection {
        /// The server's URL.
        url: String,
        /// Why, including the number of attempts made.
        reason: String,
    },
    /// The server rejected a publish, or could not store it.
    #[error("publish failed ({code}): {message}")]
    Publish {
        /// Whether publishing the same event again may succeed (the broker
        /// was unavailable, a rate limit was hit, ...).
        retryable: bool,
        /// The server's stable snake_case code (`invalid_event`, ...).
        code: String,
        /// The server's message, naming the offending field.
        message: String,
    },
    /// The bounded buffer of unconfirmed publishes is full (the connection
    /// is down, or the server does not keep up). Retryable.
    #[error("publish buffer is full ({capacity} events awaiting confirmation); retry later")]
    BufferFull {
        /// The configured bound.
        capacity: usize,
    },
    /// No reply (publish confirmation, request response) within the bound.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client was closed by [`Client::close`](super::Client::close).
    #[error("the client is closed")]
    Closed,
    /// The server rejected a request other than a publish.
    #[error("server error ({code}): {message}")]
    Server {
        /// The server's stable snake_case code (`already_subscribed`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// An argument was invalid; nothing was sent.
    #[error("{message}")]
    Invalid {
        /// Stable snake_case code, as the server would use
        /// (`invalid_topic`, `invalid_filter`, ...).
        code: &'static str,
        /// What is wrong, naming the offending value.
        message: String,
    },
}

impl ClientError {
    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Publish { retryable, .. } => *retryable,
            ClientError::BufferFull { .. } | ClientError::Timeout(_) => true,
            ClientError::Server { code, .. } => RETRYABLE_CODES.contains(&code.as_str()),
            ClientError::Connection { .. } | ClientError::Closed | ClientError::Invalid { .. } => {
                false
            }
        }
    }

    /// Stable snake_case label, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connection { .. } => "connection",
            ClientError::Publish { .. } => "publish",
            ClientError::BufferFull { .. } => "buffer_full",
            ClientError::Timeout(_) => "timeout",
            ClientError::Closed => "closed",
            ClientError::Server { .. } => "server",
            ClientError::Invalid { .. } => "invalid",
        }
    }

    /// A publish rejected by the server with `code`.
    pub(crate) fn publish(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        ClientError::Publish {
            retryable: RETRYABLE_CODES.contains(&code.as_str()),
            code,
            message: message.into(),
        }
    }

    /// A non-publish request rejected by the server with `code`.
    pub(crate) fn server(code: impl Into<String>, message: impl Into<String>) -> Self {
        ClientError::Server {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Turns a [`ClientError::Server`] into a publish error; others pass.
    pub(crate) fn into_publish(self) -> Self {
        match self {
            ClientError::Server { code, message } => ClientError::publish(code, message),
            other => other,
        }
    }
}

impl From<ValidationError> for ClientError {
    fn from(e: ValidationError) -> Self {
        ClientError::Invalid {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<SelectorError> for ClientError {
    fn from(e: SelectorError) -> Self {
        ClientError::Invalid {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<RouterError> for ClientError {
    fn from(e: RouterError) -> Self {
        match e {
            RouterError::Timeout(d) => ClientError::Timeout(d),
            RouterError::Invalid(e) => e.into(),
            RouterError::Selector(e) => e.into(),
            other => ClientError::server(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_errors_are_retryable_only_for_transient_codes() {
        assert!(ClientError::publish("unavailable", "later").is_retryable());
        assert!(!ClientError::publish("invalid_event", "bad").is_retryable());
        assert!(ClientError::BufferFull { capacity: 1 }.is_retryable());
        assert!(!ClientError::Closed.is_retryable());
        let e = ClientError::server("rate_limited", "slow down").into_publish();
        assert!(matches!(
            e,
            ClientError::Publish {
                retryable: true,
                ..
            }
        ));
    }
}
