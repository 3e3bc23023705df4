//! TLS for the listener: rustls (ring) with a PEM certificate chain and
//! private key, reloaded when either file changes.
//!
//! [`TlsListener`] implements axum's `Listener`: a background task accepts
//! TCP connections and runs each handshake in its own task (bounded in time
//! and number), so a slow or hostile client never holds up `accept`. Files
//! are polled every [`RELOAD_POLL`]; a change that does not load (a
//! half-written file, a key that does not match) is logged and the previous
//! certificate stays in use.
//!
//! With [`TlsFiles::client_ca`] the listener asks for client certificates
//! (mTLS) and verifies them against those authorities: a client without
//! one still connects (it may use a token), one whose certificate does not
//! verify fails the handshake. The names of a verified certificate travel
//! with the connection ([`TlsPeer`]) to the auth layer, which decides
//! whether they are credentials (`auth.client_certs`).

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

use super::connection::ClientIdentity;
use crate::auth::ClientCertificate;

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
    /// Certificate authorities (PEM) whose client certificates are
    /// accepted; `None`: client certificates are not requested.
    pub client_ca: Option<PathBuf>,
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
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad(&self.key, format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime, Option<SystemTime>)> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let ca = match &self.client_ca {
            Some(path) => Some(m(path)?),
            None => None,
        };
        Some((m(&self.cert)?, m(&self.key)?, ca))
    }
}

/// A verifier of client certificates issued by the CAs in `path`; clients
/// without a certificate are let through (to authenticate otherwise).
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> io::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// The names of the client's certificate on `tls`, when it sent one (the
/// handshake verified it). `None` also when the certificate does not parse,
/// which cannot happen after verification.
fn peer_certificate(tls: &TlsStream<TcpStream>) -> Option<ClientCertificate> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    certificate_names(leaf.as_ref())
}

/// The subject common name and alternative names (DNS, URI, email) of a
/// DER certificate.
pub fn certificate_names(der: &[u8]) -> Option<ClientCertificate> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut alt_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) | GeneralName::RFC822Name(n) => {
                    alt_names.push((*n).to_string());
                }
                _ => {}
            }
        }
    }
    Some(ClientCertificate {
        common_name,
        alt_names,
    })
}

/// A TLS connection's peer: its address and its verified client
/// certificate's names, if it sent one.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The client certificate's names.
    pub certificate: Option<ClientCertificate>,
}

impl ClientIdentity for TlsPeer {
    fn client_certificate(&self) -> Option<ClientCertificate> {
        self.certificate.clone()
    }
}

/// A TCP listener that hands out TLS streams once their handshake is done.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
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
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        let _ = &self.stop;
        Ok(TlsPeer {
            addr: self.addr,
            certificate: None,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<RwLock<TlsAcceptor>>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
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
                    let certificate = peer_certificate(&tls);
                    let peer = TlsPeer {
                        addr: peer,
                        certificate,
                    };
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
