//! Client-certificate authentication (mTLS) on the TLS listener, with
//! certificates made by rcgen at test time: a certificate from the
//! configured CA authenticates its subject's common name (or first
//! alternative name) under the same ACL as any principal; no certificate
//! means no credentials; a certificate from another CA fails the
//! handshake.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::inproc::{Running, start_with};
use event_router::auth::{Auth, AuthConfig};
use event_router::server::ServerConfig;
use event_router::server::tls::{TlsFiles, certificate_names};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(5);

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority that signs server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate with `cn` and `sans`, for clients or servers.
    fn issue(&self, cn: &str, sans: &[&str], client: bool) -> (CertificateDer<'static>, KeyPair) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().clone(), key)
    }
}

struct Mtls {
    server: Running,
    ca: Ca,
    _scratch: Scratch,
}

/// A TLS router whose listener accepts client certificates of a fresh CA,
/// with `auth` YAML.
async fn start(auth: &str) -> Mtls {
    let dir = std::env::temp_dir().join(format!("er-mtls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("event-router test CA");
    let (cert, key) = ca.issue("localhost", &["localhost"], false);
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: Some(dir.join("client-ca.crt")),
    };
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.cert, pem_of(&cert)).unwrap();
    std::fs::write(files.client_ca.as_ref().unwrap(), &ca.pem).unwrap();
    let auth = Auth::from_config(&AuthConfig::from_yaml(auth).unwrap()).unwrap();
    let server = start_with(ServerConfig {
        tls: Some(files),
        auth: Arc::new(auth),
        ..ServerConfig::default()
    })
    .await;
    Mtls {
        server,
        ca,
        _scratch: Scratch(dir),
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// One HTTP/1.1 exchange over TLS, presenting `client` when given; the
/// status code, or the handshake's error.
async fn request(
    mtls: &Mtls,
    client: Option<(CertificateDer<'static>, KeyPair)>,
    method: &str,
    path: &str,
    body: String,
) -> std::io::Result<u16> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(mtls.ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(mtls.server.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))??;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))
}

const AUTH_BY_CN: &str = "client_certs:\n  principal: common_name\n\
    acl:\n  - principal: planner\n    publish: [\"task.*\"]\n";

fn event(topic: &str) -> String {
    format!("{{\"type\":\"{topic}\",\"payload\":{{}}}}")
}

#[tokio::test]
async fn a_client_certificate_of_the_ca_authenticates_its_common_name_under_the_acl() {
    let mtls = start(AUTH_BY_CN).await;
    let planner = || mtls.ca.issue("planner", &["planner.agents.svc"], true);
    let allowed = request(
        &mtls,
        Some(planner()),
        "POST",
        "/api/v1/events",
        event("task.created"),
    );
    assert_eq!(allowed.await.unwrap(), 202);
    let refused = request(
        &mtls,
        Some(planner()),
        "POST",
        "/api/v1/events",
        event("billing.paid"),
    );
    assert_eq!(refused.await.unwrap(), 403, "same ACL as any principal");
    let stranger = mtls.ca.issue("stranger", &[], true);
    let no_grants = request(
        &mtls,
        Some(stranger),
        "POST",
        "/api/v1/events",
        event("task.x"),
    );
    assert_eq!(no_grants.await.unwrap(), 403);
}

#[tokio::test]
async fn without_a_certificate_a_request_has_no_credentials() {
    let mtls = start(AUTH_BY_CN).await;
    let status = request(&mtls, None, "POST", "/api/v1/events", event("task.created"));
    assert_eq!(status.await.unwrap(), 401);
    let health = request(&mtls, None, "GET", "/health", String::new())
        .await
        .unwrap();
    assert_eq!(health, 200, "public paths need no certificate");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let mtls = start(AUTH_BY_CN).await;
    let rogue = Ca::new("rogue CA").issue("planner", &[], true);
    let result = request(
        &mtls,
        Some(rogue),
        "POST",
        "/api/v1/events",
        event("task.created"),
    );
    assert!(
        result.await.is_err(),
        "a foreign certificate got an HTTP answer"
    );
}

#[tokio::test]
async fn the_principal_can_come_from_the_subject_alternative_name() {
    let auth = "client_certs:\n  principal: alt_name\n\
        acl:\n  - principal: planner.agents.svc\n    publish: [\"task.*\"]\n";
    let mtls = start(auth).await;
    let cert = mtls.ca.issue("ignored-cn", &["planner.agents.svc"], true);
    let status = request(
        &mtls,
        Some(cert),
        "POST",
        "/api/v1/events",
        event("task.created"),
    );
    assert_eq!(status.await.unwrap(), 202);
}

#[test]
fn certificate_names_reads_the_common_name_and_alternative_names() {
    let ca = Ca::new("names CA");
    let (der, _) = ca.issue(
        "planner",
        &["planner.agents.svc", "spiffe://cluster/planner"],
        true,
    );
    let names = certificate_names(der.as_ref()).unwrap();
    assert_eq!(names.common_name.as_deref(), Some("planner"));
    assert_eq!(
        names.alt_names,
        ["planner.agents.svc", "spiffe://cluster/planner"]
    );
}
