//! TLS on the listener: a certificate generated at test time (no private
//! key is committed), HTTPS and WSS round trips, plain HTTP refused, and a
//! certificate swapped on disk picked up without a restart.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::inproc::{Running, start_with};
use event_router::server::ServerConfig;
use event_router::server::tls::{RELOAD_POLL, TlsFiles};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("er-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a fresh self-signed certificate for localhost/127.0.0.1 and
/// returns its DER for the client's trust store.
fn write_cert(files: &TlsFiles) -> CertificateDer<'static> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    // Key first, then certificate: the reloader waits until both load.
    std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    ck.cert.der().clone()
}

async fn start(scratch: &Scratch) -> (Running, TlsFiles, CertificateDer<'static>) {
    let files = TlsFiles {
        cert: scratch.0.join("tls.crt"),
        key: scratch.0.join("tls.key"),
        client_ca: None,
    };
    let der = write_cert(&files);
    let server = start_with(ServerConfig {
        tls: Some(files.clone()),
        ..ServerConfig::default()
    })
    .await;
    (server, files, der)
}

fn connector(trusted: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    server: &Running,
    trusted: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector(trusted).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

async fn read_until_close<S: AsyncReadExt + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn https_and_wss_work_with_the_test_certificate() {
    let scratch = Scratch::new();
    let (server, _files, der) = start(&scratch).await;
    let mut tls = tls_connect(&server, &der).await.expect("TLS handshake");
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&read_until_close(&mut tls).await).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let tls = tls_connect(&server, &der).await.expect("TLS handshake");
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("websocket over TLS");
    let frame = json!({"op": "publish", "id": 1, "event": {"topic": "task.x", "payload": {}}});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let reply = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected a reply, got {other:?}"),
        }
    };
    assert_eq!(reply["op"], "ok", "{reply}");
    server.token.cancel();
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_response() {
    let scratch = Scratch::new();
    let (server, _files, der) = start(&scratch).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_close(&mut tcp).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client that does not trust the certificate fails the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    assert!(tls_connect(&server, other.cert.der()).await.is_err());
    // The server still serves TLS afterwards.
    assert!(tls_connect(&server, &der).await.is_ok());
    server.token.cancel();
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let scratch = Scratch::new();
    let (server, files, old) = start(&scratch).await;
    assert!(tls_connect(&server, &old).await.is_ok());
    // Make sure the new files get a different modification time.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = write_cert(&files);
    let mut switched = false;
    for _ in 0..(RELOAD_POLL.as_millis() as usize * 4 / 100) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tls_connect(&server, &new).await.is_ok() {
            switched = true;
            break;
        }
    }
    assert!(switched, "the new certificate was never served");
    assert!(
        tls_connect(&server, &old).await.is_err(),
        "the old certificate is still served"
    );
    server.token.cancel();
}

#[tokio::test]
async fn a_key_that_does_not_fit_the_certificate_is_named() {
    let scratch = Scratch::new();
    let files = TlsFiles {
        cert: scratch.0.join("tls.crt"),
        key: scratch.0.join("tls.key"),
        client_ca: None,
    };
    write_cert(&files);
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&files.key, other.serialize_pem()).unwrap();
    let e = files.load().unwrap_err();
    assert!(e.to_string().contains("tls.key"), "{e}");
    let missing = TlsFiles {
        cert: scratch.0.join("absent.crt"),
        key: files.key.clone(),
        client_ca: None,
    };
    assert!(
        missing
            .load()
            .unwrap_err()
            .to_string()
            .contains("absent.crt")
    );
}
