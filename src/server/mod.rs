//! PLACEHOLDER — the HTTP/WebSocket/SSE server is being written.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::router::Router;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest WebSocket frame / HTTP body, in bytes.
    pub max_frame_bytes: usize,
    /// Per-subscriber live queue bound.
    pub live_queue_capacity: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace: Duration,
    /// SSE keep-alive interval.
    pub sse_keepalive: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_bytes: 2 * 1024 * 1024,
            live_queue_capacity: 1024,
            max_subscriptions_per_connection: 100,
            shutdown_grace: Duration::from_secs(10),
            sse_keepalive: Duration::from_secs(15),
        }
    }
}

/// Serves HTTP, WebSocket and SSE on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    router: Arc<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = (listener, config, router);
    shutdown.cancelled().await;
    Ok(())
}
