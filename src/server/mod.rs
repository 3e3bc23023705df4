//! The network front: WebSocket (v2 and seed v1), HTTP and SSE on one port
//! (DESIGN §5), over one transport-neutral session core.
//!
//! - [`protocol`]: v2 frames as serde enums; [`ws_v1`]: the seed protocol.
//! - [`session`]: one connection's subscriptions, in-flight deliveries and
//!   requests, writing to an outgoing channel; no sockets in it.
//! - [`limits`]: a session's caps on topic patterns and its byte budget
//!   of live events; [`connection`]: accepting and serving connections
//!   with header read and idle timeouts and a cap on unauthenticated ones.
//! - [`ws`], [`sse`], [`http`]: thin adapters; [`cloudevents`]: the
//!   CloudEvents HTTP bindings; [`error`]: the one client-facing error;
//!   [`openapi`]: the generated API description at `GET /openapi.json`;
//!   [`subscribers`]: this replica's WebSocket and SSE subscriptions;
//!   [`ui`]: the web console at `/ui`.
//!
//! [`run`] serves until its token is cancelled, then drains: WebSocket
//! sessions get a 1001 close, SSE streams end, durable consumers are
//! dropped (in-flight deliveries go back to their groups, nothing is acked
//! on the way out), bounded by [`ServerConfig::shutdown_grace`].

pub mod cloudevents;
pub mod connection;
pub mod error;
pub mod event_streams;
pub mod http;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod protocol;
pub mod session;
pub mod sse;
pub mod subscribers;
pub mod tls;
pub mod ui;
pub mod ws;
pub mod ws_v1;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ApiError;
pub use session::{Outgoing, PatternLimits, Session, SessionConfig};

use crate::router::Router;

/// Default [`ServerConfig::max_frame_bytes`]: 2 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;
/// Default [`ServerConfig::live_queue_capacity`]: 1024 events.
pub const DEFAULT_LIVE_QUEUE_CAPACITY: usize = 1024;
/// Default [`ServerConfig::max_subscriptions_per_connection`]: 100.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 100;
/// Default [`ServerConfig::shutdown_grace`]: 10 s.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default [`ServerConfig::sse_keepalive`]: 15 s.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Default [`ServerConfig::live_queue_max_bytes`]: 4 MiB.
pub const DEFAULT_LIVE_QUEUE_MAX_BYTES: usize = crate::broker::DEFAULT_LIVE_QUEUE_MAX_BYTES;
/// Default [`ServerConfig::max_patterns_per_subscription`]: 1000.
pub const DEFAULT_MAX_PATTERNS_PER_SUBSCRIPTION: usize = 1000;
/// Default [`ServerConfig::max_pattern_bytes_per_subscription`]: 64 KiB.
pub const DEFAULT_MAX_PATTERN_BYTES_PER_SUBSCRIPTION: usize = 64 * 1024;
/// Default [`ServerConfig::max_patterns_per_connection`]: 10 000.
pub const DEFAULT_MAX_PATTERNS_PER_CONNECTION: usize = 10_000;
/// Default [`ServerConfig::max_pattern_bytes_per_connection`]: 1 MiB.
pub const DEFAULT_MAX_PATTERN_BYTES_PER_CONNECTION: usize = 1024 * 1024;
/// Default [`ServerConfig::header_read_timeout`]: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServerConfig::idle_timeout`]: 10 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServerConfig::max_unauthenticated_connections`]: 512.
pub const DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS: usize = 512;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest WebSocket frame and HTTP request body, in bytes. Default
    /// 2 MiB ([`DEFAULT_MAX_FRAME_BYTES`]). Zero rejects every non-empty
    /// frame and body.
    pub max_frame_bytes: usize,
    /// Bound of each live subscription's queue, in events; when full the
    /// oldest is dropped and an overflow notice sent. Default 1024
    /// ([`DEFAULT_LIVE_QUEUE_CAPACITY`]). Zero means 1.
    pub live_queue_capacity: usize,
    /// Byte bound of each live subscription's queue (events measured by
    /// [`crate::broker::footprint::event_footprint`]), applied like
    /// `live_queue_capacity`. Default 4 MiB
    /// ([`DEFAULT_LIVE_QUEUE_MAX_BYTES`]). Zero means no byte bound.
    pub live_queue_max_bytes: usize,
    /// Most subscriptions one connection may hold. Default 100
    /// ([`DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION`]). Zero forbids
    /// subscribing.
    pub max_subscriptions_per_connection: usize,
    /// Most topic patterns in one subscription; more is refused with
    /// `too_many_patterns`. Default 1000
    /// ([`DEFAULT_MAX_PATTERNS_PER_SUBSCRIPTION`]). Zero means no cap.
    pub max_patterns_per_subscription: usize,
    /// Most bytes of topic-pattern text in one subscription. Default
    /// 64 KiB ([`DEFAULT_MAX_PATTERN_BYTES_PER_SUBSCRIPTION`]). Zero means
    /// no cap.
    pub max_pattern_bytes_per_subscription: usize,
    /// Most topic patterns over all subscriptions of one connection.
    /// Default 10 000 ([`DEFAULT_MAX_PATTERNS_PER_CONNECTION`]). Zero
    /// means no cap.
    pub max_patterns_per_connection: usize,
    /// Most bytes of topic-pattern text over all subscriptions of one
    /// connection. Default 1 MiB
    /// ([`DEFAULT_MAX_PATTERN_BYTES_PER_CONNECTION`]). Zero means no cap.
    pub max_pattern_bytes_per_connection: usize,
    /// Longest a client may take to send a complete request head, counted
    /// from its first byte and from the end of the previous response on a
    /// keep-alive connection; then the connection is closed. Default 10 s
    /// ([`DEFAULT_HEADER_READ_TIMEOUT`]). Zero means no limit.
    pub header_read_timeout: Duration,
    /// Longest a new connection may stay silent (no byte received) before
    /// it is closed. Default 10 s ([`DEFAULT_IDLE_TIMEOUT`]). Zero means no
    /// limit.
    pub idle_timeout: Duration,
    /// Most connections that have not yet had a request answered with
    /// anything but 401/403; past it, the oldest of them is closed to admit
    /// the new one. Default 512
    /// ([`DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS`]). Zero means no cap.
    pub max_unauthenticated_connections: usize,
    /// How long shutdown waits for connections to drain before aborting
    /// them. Default 10 s ([`DEFAULT_SHUTDOWN_GRACE`]). Zero aborts at once.
    pub shutdown_grace: Duration,
    /// Interval of SSE keep-alive comments. Default 15 s
    /// ([`DEFAULT_SSE_KEEPALIVE`]). Zero disables them.
    pub sse_keepalive: Duration,
    /// Authentication, ACL and per-principal limits. Default
    /// [`Auth::open`](crate::auth::Auth::open): everything allowed.
    pub auth: Arc<crate::auth::Auth>,
    /// Serve HTTPS/WSS with this certificate and key (PEM files, reloaded
    /// when they change). Default none: plain HTTP.
    pub tls: Option<tls::TlsFiles>,
    /// Serve the web console at `/ui` ([`ui`]). Default on.
    pub ui: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            live_queue_capacity: DEFAULT_LIVE_QUEUE_CAPACITY,
            live_queue_max_bytes: DEFAULT_LIVE_QUEUE_MAX_BYTES,
            max_subscriptions_per_connection: DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION,
            max_patterns_per_subscription: DEFAULT_MAX_PATTERNS_PER_SUBSCRIPTION,
            max_pattern_bytes_per_subscription: DEFAULT_MAX_PATTERN_BYTES_PER_SUBSCRIPTION,
            max_patterns_per_connection: DEFAULT_MAX_PATTERNS_PER_CONNECTION,
            max_pattern_bytes_per_connection: DEFAULT_MAX_PATTERN_BYTES_PER_CONNECTION,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_unauthenticated_connections: DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
            auth: Arc::default(),
            tls: None,
            ui: true,
        }
    }
}

/// Open connections by transport.
#[derive(Debug, Default)]
pub struct Connections {
    websocket: AtomicU64,
    sse: AtomicU64,
}

impl Connections {
    /// Counts a WebSocket connection until the guard drops.
    pub fn websocket(self: &Arc<Self>) -> ConnectionGuard {
        self.websocket.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            connections: self.clone(),
            sse: false,
        }
    }

    /// Counts an SSE stream until the guard drops.
    pub fn sse(self: &Arc<Self>) -> ConnectionGuard {
        self.sse.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            connections: self.clone(),
            sse: true,
        }
    }

    /// Current counts.
    pub fn snapshot(&self) -> http::ConnectionStats {
        http::ConnectionStats {
            websocket: self.websocket.load(Ordering::Relaxed),
            sse: self.sse.load(Ordering::Relaxed),
        }
    }
}

/// Decrements a connection count on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    sse: bool,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let counter = if self.sse {
            &self.connections.sse
        } else {
            &self.connections.websocket
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The router.
    pub router: Arc<Router>,
    /// The configuration.
    pub config: Arc<ServerConfig>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// WebSocket session tasks, awaited (within the grace) on shutdown.
    pub tasks: TaskTracker,
    /// Open connection counts.
    pub connections: Arc<Connections>,
    /// Readings of the published counter for `events_per_second`.
    pub publish_rate: Arc<ops::PublishRate>,
    /// Open WebSocket and SSE subscriptions, for `GET /api/v1/subscribers`.
    pub subscribers: Arc<subscribers::Subscribers>,
}

impl AppState {
    /// State for a server over `router`, stopped by `shutdown`.
    pub fn new(router: Arc<Router>, config: ServerConfig, shutdown: CancellationToken) -> Self {
        AppState {
            router,
            config: Arc::new(config),
            shutdown,
            tasks: TaskTracker::new(),
            connections: Arc::default(),
            publish_rate: Arc::default(),
            subscribers: Arc::default(),
        }
    }

    /// The limits of one connection's session.
    pub fn session_config(&self) -> SessionConfig {
        let c = &self.config;
        SessionConfig {
            live_queue_capacity: c.live_queue_capacity.max(1),
            live_queue_max_bytes: c.live_queue_max_bytes,
            max_subscriptions: c.max_subscriptions_per_connection,
            patterns: PatternLimits {
                per_subscription: c.max_patterns_per_subscription,
                bytes_per_subscription: c.max_pattern_bytes_per_subscription,
                per_connection: c.max_patterns_per_connection,
                bytes_per_connection: c.max_pattern_bytes_per_connection,
            },
        }
    }
}

/// The HTTP application: every route of DESIGN §5, with our error shape for
/// unknown routes, wrong methods and oversize bodies.
pub fn app(state: AppState) -> axum::Router {
    let body_limit = state.config.max_frame_bytes;
    let console = if state.config.ui {
        ui::routes()
    } else {
        axum::Router::new()
    };
    axum::Router::new()
        .route("/", get(ws::upgrade))
        .route("/ws", get(ws::upgrade))
        .route("/health", get(ops::health))
        .route("/live", get(ops::live))
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics))
        .route("/api/v1/events", post(http::publish).get(http::history))
        .route("/api/v1/events/batch", post(http::publish_batch))
        .route("/api/v1/events/purge", post(http::purge_history))
        .route("/api/v1/events/stream", get(sse::stream))
        .route("/api/v1/request", post(http::request))
        .route("/api/v1/stats", get(ops::stats))
        .route("/api/v1/whoami", get(ui::whoami))
        .route("/api/v1/subscribers", get(subscribers::list))
        .route("/api/v1/subscriptions", get(http::list_subscriptions))
        .route(
            "/api/v1/subscriptions/{name}",
            get(http::get_subscription)
                .put(http::put_subscription)
                .delete(http::delete_subscription),
        )
        .route("/api/v1/subscriptions/{name}/ack", post(http::ack))
        .route("/api/v1/subscriptions/{name}/nack", post(http::nack))
        .route("/api/v1/subscriptions/{name}/dlq", get(http::dead_letters))
        .route(
            "/api/v1/subscriptions/{name}/dlq/redrive",
            post(http::redrive),
        )
        .route("/api/v1/subscriptions/{name}/dlq/purge", post(http::purge))
        .route("/api/v1/subscriptions/{name}/replay", post(http::replay))
        .route(
            "/api/v1/streams/{stream}/events",
            post(event_streams::append_http).get(event_streams::read_http),
        )
        .merge(console)
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.config.auth.clone(),
            crate::auth::middleware,
        ))
        .layer(axum::middleware::from_fn(
            crate::telemetry::http::request_span,
        ))
        .with_state(state)
}

/// Serves HTTP, WebSocket and SSE on `listener` until `shutdown` is
/// cancelled, then drains connections for at most
/// [`ServerConfig::shutdown_grace`] and aborts what is left.
///
/// # Errors
/// An I/O error if the listener fails for good.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    router: Arc<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let grace = config.shutdown_grace;
    let tls_files = config.tls.clone();
    let state = AppState::new(router, config, shutdown.clone());
    // The first reading of `events_per_second`; without it (store down) the
    // first stats read takes it.
    if let Ok(stats) = state.router.broker().stats().await {
        state
            .publish_rate
            .record(std::time::Instant::now(), stats.published);
    }
    let limits = state.config.clone();
    let tasks = state.tasks.clone();
    let mut server = match tls_files {
        None => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving HTTP, WebSocket and SSE");
            }
            // Frames are small and latency matters more than packet count: no Nagle.
            let listener = listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
            });
            tokio::spawn(connection::serve(
                listener,
                app(state),
                limits,
                shutdown.clone(),
            ))
        }
        Some(files) => {
            let listener = tls::TlsListener::new(listener, files, shutdown.clone())?;
            if let Ok(peer) = axum::serve::Listener::local_addr(&listener) {
                let addr = peer.addr;
                tracing::info!(%addr, "serving HTTPS, WSS and SSE over TLS");
            }
            tokio::spawn(connection::serve(
                listener,
                app(state),
                limits,
                shutdown.clone(),
            ))
        }
    };
    tokio::select! {
        result = &mut server => return flatten(result),
        () = shutdown.cancelled() => {}
    }
    tracing::info!(grace = ?grace, "shutting down: draining connections");
    tasks.close();
    let drain = async {
        let result = (&mut server).await;
        tasks.wait().await;
        result
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(result) => flatten(result),
        Err(_) => {
            tracing::warn!("connections still open after the shutdown grace; aborting them");
            server.abort();
            Ok(())
        }
    }
}

fn flatten(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    result.map_err(std::io::Error::other)?
}

/// `GET /metrics`: refreshes the state gauges from the broker, then answers
/// in the classic text format, or OpenMetrics when the `Accept` header asks
/// for `application/openmetrics-text`.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let broker = state.router.broker();
    let stats = broker.stats().await.ok();
    let subscriptions = broker.subscriptions().await.unwrap_or_default();
    let connections = state.connections.snapshot();
    let m = crate::telemetry::metrics::metrics();
    m.refresh(
        stats.as_ref(),
        &subscriptions,
        connections.websocket,
        connections.sse,
    );
    m.refresh_discarded(broker.discarded());
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            m.encode_openmetrics(),
            crate::telemetry::metrics::OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            m.encode_text(),
            crate::telemetry::metrics::TEXT_CONTENT_TYPE,
        )
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}
