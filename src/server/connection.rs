//! Accepting and serving connections (plain TCP or TLS alike), with the
//! limits that keep idle and half-open sockets from piling up.
//!
//! Each accepted connection is served by hyper's HTTP/1.1 server (with
//! upgrades, for WebSocket) under three bounds from [`ServerConfig`]:
//!
//! - [`ServerConfig::idle_timeout`]: a connection that sends no byte at all
//!   within it is closed.
//! - [`ServerConfig::header_read_timeout`]: a request head (request line
//!   and headers) must be complete within it, counted from the first poll
//!   of the connection and again from the end of each response on a
//!   keep-alive connection (hyper's timer), so a client trickling headers
//!   (slowloris) is closed.
//! - [`ServerConfig::max_unauthenticated_connections`]: connections that
//!   have not yet had a request answered with something other than 401 or
//!   403 (or a WebSocket upgrade) are counted; when a new connection would
//!   exceed the cap, the oldest such connection is closed. Sockets that
//!   never authenticate therefore cannot use up file descriptors and lock
//!   out `/health` and real clients.
//!
//! Once a connection is upgraded to WebSocket it leaves these bounds: the
//! session has its own (ping, frame size, subscriptions).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::ServerConfig;

/// Serves `app` on every connection `listener` accepts until `shutdown` is
/// cancelled, then asks open HTTP connections to finish their current
/// request and waits for them.
///
/// # Cancel safety
/// Not cancel safe in the sense of draining: dropping the future stops
/// accepting, and connection tasks already spawned run on.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    L: Listener,
{
    let pending = Arc::new(Pending::new(config.max_unauthenticated_connections));
    let tasks = TaskTracker::new();
    let limits = Timeouts {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    loop {
        let (io, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let ticket = pending.admit();
        tasks.spawn(serve_one(io, app.clone(), limits, ticket, shutdown.clone()));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header_read: std::time::Duration,
    idle: std::time::Duration,
}

async fn serve_one<I>(
    io: I,
    app: axum::Router,
    limits: Timeouts,
    ticket: Ticket,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let heard = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(FirstByte {
        inner: io,
        heard: heard.clone(),
    });
    let evicted = ticket.evicted.clone();
    let ticket = Arc::new(ticket);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let ticket = ticket.clone();
        async move {
            let req: Request = req.map(Body::new);
            let response = app.oneshot(req).await;
            if let Ok(r) = &response
                && !matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            {
                ticket.authenticated();
            }
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    // Zero disables the timer (hyper would otherwise default to 30 s).
    builder.header_read_timeout((!limits.header_read.is_zero()).then_some(limits.header_read));
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let idle = tokio::time::sleep(limits.idle);
    let mut idle = std::pin::pin!(idle);
    let mut idle_armed = !limits.idle.is_zero();
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = &mut idle, if idle_armed => {
                if !heard.load(Ordering::Relaxed) {
                    tracing::debug!("connection closed: no byte within the idle timeout");
                    return;
                }
                idle_armed = false;
            }
            () = evicted.cancelled() => {
                tracing::debug!(
                    "connection closed: too many unauthenticated connections, this one the oldest"
                );
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// The connections not yet authenticated, oldest first.
#[derive(Debug)]
struct Pending {
    cap: usize,
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    next_id: u64,
    open: BTreeMap<u64, CancellationToken>,
}

impl Pending {
    fn new(cap: usize) -> Self {
        Pending {
            cap,
            state: Mutex::default(),
        }
    }

    /// Registers a new connection, closing the oldest unauthenticated one
    /// when the cap is reached.
    fn admit(self: &Arc<Self>) -> Ticket {
        let evicted = CancellationToken::new();
        let mut state = self.state.lock();
        if self.cap > 0 {
            while state.open.len() >= self.cap {
                let Some((_, oldest)) = state.open.pop_first() else {
                    break;
                };
                oldest.cancel();
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        state.open.insert(id, evicted.clone());
        Ticket {
            pending: self.clone(),
            id,
            evicted,
        }
    }

    fn remove(&self, id: u64) {
        self.state.lock().open.remove(&id);
    }
}

/// One connection's place among the unauthenticated; leaves on
/// authentication or drop.
#[derive(Debug)]
struct Ticket {
    pending: Arc<Pending>,
    id: u64,
    /// Cancelled when the connection is evicted.
    evicted: CancellationToken,
}

impl Ticket {
    fn authenticated(&self) {
        self.pending.remove(self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.remove(self.id);
    }
}

/// An I/O stream that notes when its first byte was read.
struct FirstByte<I> {
    inner: I,
    heard: Arc<AtomicBool>,
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstByte<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstByte<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitting_past_the_cap_evicts_the_oldest_unauthenticated_connection() {
        let pending = Arc::new(Pending::new(2));
        let first = pending.admit();
        let second = pending.admit();
        second.authenticated();
        let third = pending.admit();
        assert!(!first.evicted.is_cancelled());
        let _fourth = pending.admit();
        assert!(first.evicted.is_cancelled(), "the oldest goes first");
        assert!(
            !second.evicted.is_cancelled(),
            "authenticated ones are not counted"
        );
        assert!(!third.evicted.is_cancelled());
    }

    #[test]
    fn dropped_connections_free_their_place() {
        let pending = Arc::new(Pending::new(1));
        drop(pending.admit());
        let second = pending.admit();
        let _third = pending.admit();
        assert!(second.evicted.is_cancelled());
        assert_eq!(pending.state.lock().open.len(), 1);
    }
}
