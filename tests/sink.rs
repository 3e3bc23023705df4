//! Push sinks on the embedded broker: a 2xx acks, anything else is retried
//! with the subscription's backoff and dead-lettered after `maxAttempts`;
//! `https://` sinks are verified against the trusted roots (`SSL_CERT_FILE`
//! in the process tests), and a TLS failure is a nack naming the problem.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::process::RouterProcess;
use event_router::broker::{DeadLetter, DeadLetterQuery};
use event_router::resources::parse_documents;
use event_router::{Event, MemoryBroker, Router, RouterConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const WAIT: Duration = Duration::from_secs(10);

/// A sink that fails the first `failures` POSTs with 503, then answers 200;
/// every POST's `ce-attempt` header goes to the channel.
async fn flaky_sink(failures: u32) -> (String, mpsc::UnboundedReceiver<(u32, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(tx): State<mpsc::UnboundedSender<(u32, String)>>,
                      headers: HeaderMap| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let attempt = headers["ce-attempt"].to_str().unwrap().parse().unwrap();
                        let id = headers["ce-id"].to_str().unwrap().to_string();
                        let _ = tx.send((attempt, id));
                        if n < failures {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        }
                    }
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

/// A Subscription `hook` on `invoice.#` pushing to `uri`.
fn sink_yaml(uri: &str, max_attempts: u32) -> String {
    format!(
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {{name: hook}}\n\
         spec:\n  topics: [\"invoice.#\"]\n  delivery:\n    maxAttempts: {max_attempts}\n    \
         backoff: {{initial: 20ms, max: 50ms, jitter: 0}}\n  sink: {{uri: \"{uri}\"}}\n"
    )
}

async fn router_with_sink(uri: &str, max_attempts: u32) -> Arc<Router> {
    let yaml = sink_yaml(uri, max_attempts);
    let broker = Arc::new(MemoryBroker::new(Default::default()));
    let router = Router::new(broker, RouterConfig::default());
    router
        .apply(&parse_documents(&yaml).unwrap())
        .await
        .unwrap();
    assert_eq!(router.sink_names(), vec!["hook"]);
    router
}

#[tokio::test]
async fn failed_posts_are_retried_and_a_2xx_acks() {
    let (uri, mut posts) = flaky_sink(2).await;
    let router = router_with_sink(&uri, 5).await;
    let event = Event::new("invoice.paid", json!({"n": 1})).unwrap();
    router.publish(event.clone()).await.unwrap();
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (attempt, id) = tokio::time::timeout(WAIT, posts.recv())
            .await
            .expect("a POST in time")
            .unwrap();
        assert_eq!(id, event.id);
        attempts.push(attempt);
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    let deadline = Instant::now() + WAIT;
    loop {
        let info = router.broker().subscription("hook").await.unwrap();
        if info.acked == 1 && info.in_flight == 0 && info.pending == 0 {
            assert_eq!(info.dead_letters, 0);
            break;
        }
        assert!(Instant::now() < deadline, "never acked: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to [`WAIT`]) until subscription `hook` has dead letters.
async fn dead_letters_of_hook(router: &Router) -> Vec<DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        let letters = router
            .broker()
            .dead_letters("hook", DeadLetterQuery::default())
            .await
            .unwrap();
        if !letters.is_empty() {
            return letters;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sink_that_keeps_failing_dead_letters_after_max_attempts() {
    let (uri, mut posts) = flaky_sink(u32::MAX).await;
    let router = router_with_sink(&uri, 2).await;
    router
        .publish(Event::new("invoice.void", json!(null)).unwrap())
        .await
        .unwrap();
    let letters = dead_letters_of_hook(&router).await;
    assert_eq!(letters[0].attempts, 2);
    assert!(letters[0].reason.contains("503"), "{}", letters[0].reason);
    let mut seen = 0;
    while posts.try_recv().is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 2, "exactly maxAttempts POSTs");
}

#[tokio::test]
async fn applying_without_the_sink_stops_its_worker() {
    let (uri, _posts) = flaky_sink(0).await;
    let router = router_with_sink(&uri, 3).await;
    let plain = parse_documents(
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {name: hook}\n\
         spec: {topics: [\"invoice.#\"]}\n",
    )
    .unwrap();
    router.apply_all(&plain).await.unwrap();
    assert!(router.sink_names().is_empty());
}

/// A test certificate authority; nothing it signs is trusted unless its
/// certificate is given to the router.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "event-router test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A server certificate for `names`, with its private key.
    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        (cert.der().clone(), key.into())
    }
}

/// A TLS listener for `axum::serve`; failed handshakes are skipped.
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(stream) = self.tls.accept(tcp).await {
                return (stream, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS sink on 127.0.0.1 presenting `cert`: answers 200 and sends
/// each POST's `ce-id` to the channel.
async fn https_sink(
    (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>),
) -> (String, mpsc::UnboundedReceiver<String>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(tx): State<mpsc::UnboundedSender<String>>, headers: HeaderMap| async move {
                    let _ = tx.send(headers["ce-id"].to_str().unwrap().to_string());
                    StatusCode::OK
                },
            ),
        )
        .with_state(tx);
    let listener = TlsListener {
        tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tls: TlsAcceptor::from(Arc::new(config)),
    };
    let addr = listener.tcp.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("https://127.0.0.1:{}/hook", addr.port()), rx)
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("er-sink-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `event-router serve -f` with a sink to `uri`, trusting only the PEM
/// file `ca` (`SSL_CERT_FILE`; an empty `SSL_CERT_DIR` is ignored, so an
/// inherited one does not add the system roots).
fn serve_trusting(scratch: &Scratch, ca: &Path, uri: &str, max_attempts: u32) -> RouterProcess {
    let ca = ca.to_str().unwrap();
    serve_with_env(
        scratch,
        uri,
        max_attempts,
        &[("SSL_CERT_FILE", ca), ("SSL_CERT_DIR", "")],
    )
}

fn serve_with_env(
    scratch: &Scratch,
    uri: &str,
    max_attempts: u32,
    envs: &[(&str, &str)],
) -> RouterProcess {
    let file = scratch.write("hook.yaml", &sink_yaml(uri, max_attempts));
    RouterProcess::start_with_env(&["-f", file.to_str().unwrap()], envs)
}

async fn publish(base: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/events"))
        .json(&json!({"type": "invoice.paid", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["event_id"].as_str();
    id.unwrap_or_else(|| panic!("no event id in {answer}"))
        .to_string()
}

/// The first dead letter of `hook`, waiting at most [`WAIT`].
async fn first_dead_letter(base: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let dlq: Value = reqwest::Client::new()
            .get(format!("{base}/api/v1/subscriptions/hook/dlq?limit=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(first) = dlq["dead_letters"].get(0) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {dlq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_https_sink_signed_by_a_ca_in_ssl_cert_file_receives_events() {
    let ca = TestCa::new();
    let (uri, mut posts) = https_sink(ca.issue(&["127.0.0.1"])).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.issuer.pem());
    let router = serve_trusting(&scratch, &ca_file, &uri, 3);
    let id = publish(&router.http_url()).await;
    let seen = tokio::time::timeout(WAIT, posts.recv())
        .await
        .expect("a POST in time")
        .unwrap();
    assert_eq!(seen, id);
}

#[tokio::test]
async fn a_ca_in_a_directory_named_by_ssl_cert_dir_is_trusted_too() {
    let ca = TestCa::new();
    let (uri, mut posts) = https_sink(ca.issue(&["127.0.0.1"])).await;
    let scratch = Scratch::new();
    std::fs::create_dir(scratch.0.join("ca")).unwrap();
    scratch.write("ca/private-ca.crt", &ca.issuer.pem());
    // An empty SSL_CERT_FILE, so that only the directory can trust the CA.
    let none = scratch.write("none.pem", "");
    let dir = scratch.0.join("ca");
    let envs = [
        ("SSL_CERT_FILE", none.to_str().unwrap()),
        ("SSL_CERT_DIR", dir.to_str().unwrap()),
    ];
    let router = serve_with_env(&scratch, &uri, 3, &envs);
    let id = publish(&router.http_url()).await;
    let seen = tokio::time::timeout(WAIT, posts.recv())
        .await
        .expect("a POST in time")
        .unwrap();
    assert_eq!(seen, id);
}

#[tokio::test]
async fn an_https_sink_certified_for_another_host_dead_letters_with_the_tls_reason() {
    let ca = TestCa::new();
    let (uri, mut posts) = https_sink(ca.issue(&["sink.example"])).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.issuer.pem());
    let router = serve_trusting(&scratch, &ca_file, &uri, 2);
    publish(&router.http_url()).await;
    let letter = first_dead_letter(&router.http_url()).await;
    let reason = letter["reason"].as_str().unwrap();
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert!(reason.contains(&uri), "{reason}");
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    assert!(reason.contains("not valid for name"), "{reason}");
    assert!(posts.try_recv().is_err(), "no POST got through");
}

#[tokio::test]
async fn with_no_loadable_ca_an_https_sink_dead_letters_saying_why() {
    let ca = TestCa::new();
    let (uri, _posts) = https_sink(ca.issue(&["127.0.0.1"])).await;
    let scratch = Scratch::new();
    let router = serve_trusting(&scratch, &scratch.0.join("missing.pem"), &uri, 1);
    publish(&router.http_url()).await;
    let letter = first_dead_letter(&router.http_url()).await;
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    assert!(reason.contains("no trusted CA certificates"), "{reason}");
    assert!(reason.contains("missing.pem"), "{reason}");
}

#[tokio::test]
async fn an_https_sink_with_an_untrusted_certificate_dead_letters_with_the_tls_reason() {
    let untrusted = TestCa::new();
    let (uri, mut posts) = https_sink(untrusted.issue(&["127.0.0.1"])).await;
    let router = router_with_sink(&uri, 2).await;
    router
        .publish(Event::new("invoice.paid", json!(null)).unwrap())
        .await
        .unwrap();
    let letters = dead_letters_of_hook(&router).await;
    let reason = &letters[0].reason;
    assert_eq!(letters[0].attempts, 2);
    assert!(reason.contains(&uri), "{reason}");
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(posts.try_recv().is_err(), "no POST got through");
}

#[tokio::test]
async fn a_sink_that_never_answers_the_tls_handshake_times_out_into_the_dlq() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("https://{}/hook", silent.local_addr().unwrap());
    // Accepts connections and holds them open without a byte in reply.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let yaml =
        sink_yaml(&uri, 1).replace("maxAttempts: 1", "maxAttempts: 1\n    ackTimeout: 200ms");
    let router = Router::new(
        Arc::new(MemoryBroker::new(Default::default())),
        RouterConfig::default(),
    );
    router
        .apply(&parse_documents(&yaml).unwrap())
        .await
        .unwrap();
    router
        .publish(Event::new("invoice.paid", json!(null)).unwrap())
        .await
        .unwrap();
    let letters = dead_letters_of_hook(&router).await;
    // The POST's bound is the ack timeout, so the sink's nack and the
    // broker's own ack timeout race: either reason is right.
    let reason = &letters[0].reason;
    let sink_timed_out = reason.contains(&uri) && reason.contains("gave no answer within");
    assert!(sink_timed_out || reason.contains("ack timeout"), "{reason}");
}
