//! TLS for the listener: rustls (ring) with a PEM certificate chain and
//! private key, reloaded when either file changes.
//!
//! [`TlsListener`] implements axum's `Listener`: a background task accepts
//! TCP connections and runs each handshake in its own task (bounded in time
//! and number), so a slow or hostile client never holds up `accept`. Files
//! are polled every [`RELOAD_POLL`]; a change that does not load (a
//! half-written file, a key that does not match) is logged and the previous
//! certificate stays in use.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 1024;

/// Certificate chain and private key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Builds a rustls server configuration from the files.
    ///
    /// # Errors
    /// An I/O error naming the file and what is wrong with it.
    pub fn load(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let bad = |path: &Path, what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| bad(&self.cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(&self.cert, "no certificate in the file".into()));
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad(&self.key, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(&self.key, format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&self.cert)?, m(&self.key)?))
    }
}

/// A TCP listener that hands out TLS streams once their handshake is done.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    stop: tokio_util::sync::DropGuard,
}

impl TlsListener {
    /// Loads the certificate (failing now if it does not load) and starts
    /// accepting on `listener` until `shutdown` is cancelled or the
    /// listener is dropped.
    ///
    /// # Errors
    /// The certificate or key does not load.
    pub fn new(
        listener: TcpListener,
        files: TlsFiles,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(files.load()?)));
        let addr = listener.local_addr()?;
        let stop = shutdown.child_token();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(reload_loop(files, acceptor.clone(), stop.clone()));
        tokio::spawn(accept_loop(listener, acceptor, tx, stop.clone()));
        Ok(TlsListener {
            rx,
            addr,
            stop: stop.drop_guard(),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        let _ = &self.stop;
        Ok(self.addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<RwLock<TlsAcceptor>>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let acceptor = acceptor.read().clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

async fn reload_loop(files: TlsFiles, acceptor: Arc<RwLock<TlsAcceptor>>, stop: CancellationToken) {
    let mut seen = files.modified();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let now = files.modified();
        if now == seen || now.is_none() {
            continue;
        }
        match files.load() {
            Ok(config) => {
                *acceptor.write() = TlsAcceptor::from(config);
                seen = now;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "TLS certificate changed but does not load; keeping the previous one");
            }
        }
    }
}
