//! Accepting and serving connections (plain TCP or TLS alike), with the
//! limits that keep idle and half-open sockets from piling up.
//!
//! Each accepted connection is served by hyper's HTTP/1.1 server (with
//! upgrades, for WebSocket) under three bounds from [`ServerConfig`]:
//!
//! - [`ServerConfig::idle_timeout`]: a connection that sends no byte at all
//!   within it is closed. The first bytes are read here, before hyper
//!   sees the connection.
//! - [`ServerConfig::header_read_timeout`]: a request head (request line
//!   and headers) must be complete within it, counted from the first byte
//!   and again from the end of each response on a keep-alive connection
//!   (hyper's timer), so a client trickling headers (slowloris) is closed.
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
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::ServerConfig;
use crate::auth::ClientCertificate;

/// What a listener learned about a connection's client in its handshake,
/// beyond the address: a verified client certificate (TLS listener with
/// `tls_client_ca`). Each request of the connection carries it as an
/// extension for the auth layer.
pub trait ClientIdentity {
    /// The verified client certificate's names, if any.
    fn client_certificate(&self) -> Option<ClientCertificate> {
        None
    }
}

impl ClientIdentity for std::net::SocketAddr {}

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
    L::Addr: ClientIdentity,
{
    let pending = Arc::new(Pending::new(config.max_unauthenticated_connections));
    let tasks = TaskTracker::new();
    let limits = Timeouts {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    loop {
        let (io, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let ticket = pending.admit();
        let certificate = peer.client_certificate();
        tasks.spawn(serve_one(
            io,
            app.clone(),
            limits,
            ticket,
            certificate,
            shutdown.clone(),
        ));
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
    certificate: Option<ClientCertificate>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let evicted = ticket.evicted.clone();
    let Some(io) = first_bytes(io, limits.idle, &evicted, &shutdown).await else {
        return;
    };
    let io = TokioIo::new(io);
    let ticket = Arc::new(ticket);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let ticket = ticket.clone();
        let certificate = certificate.clone();
        async move {
            let mut req: Request = req.map(Body::new);
            if let Some(certificate) = certificate {
                req.extensions_mut().insert(certificate);
            }
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
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
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

/// Waits (at most `idle`, zero meaning forever) for the connection's first
/// bytes, and returns the stream with them put back in front; `None` when
/// the client stayed silent, closed, or the connection was evicted or the
/// server is shutting down meanwhile.
async fn first_bytes<I>(
    mut io: I,
    idle: std::time::Duration,
    evicted: &CancellationToken,
    shutdown: &CancellationToken,
) -> Option<Prefixed<I>>
where
    I: AsyncRead + Unpin,
{
    let mut first = vec![0u8; FIRST_READ_BYTES];
    let read = async {
        if idle.is_zero() {
            Ok(io.read(&mut first).await)
        } else {
            tokio::time::timeout(idle, io.read(&mut first)).await
        }
    };
    let n = tokio::select! {
        read = read => match read {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) => return None,
            Err(_) => {
                tracing::debug!("connection closed: no byte within the idle timeout");
                return None;
            }
        },
        () = evicted.cancelled() => return None,
        () = shutdown.cancelled() => return None,
    };
    first.truncate(n);
    Some(Prefixed {
        prefix: first,
        read: 0,
        inner: io,
    })
}

/// Size of the first read of a connection.
const FIRST_READ_BYTES: usize = 4096;

/// An I/O stream with bytes already read from it put back in front.
struct Prefixed<I> {
    prefix: Vec<u8>,
    read: usize,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
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

    #[tokio::test]
    async fn bytes_read_first_are_put_back_in_front() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(client);
        let never = CancellationToken::new();
        let mut io = first_bytes(server, std::time::Duration::ZERO, &never, &never)
            .await
            .expect("bytes arrived");
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_gets_nothing_after_the_idle_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let never = CancellationToken::new();
        let idle = std::time::Duration::from_secs(10);
        assert!(first_bytes(server, idle, &never, &never).await.is_none());
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
