//! Resource limits against a real `event-router serve` process (issue 24):
//! byte bounds on history, live and durable queues; caps on topic
//! patterns; timeouts and a cap for connections that never finish (or
//! never authenticate) their request.
//!
//! Settings go through environment variables (as a Deployment would set
//! them), so that a router without a limit ignores them and fails the test
//! on its behaviour rather than on an unknown flag. Every socket is on
//! 127.0.0.1; every wait is bounded; the router is killed by PID when its
//! handle drops.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{BIN, RouterProcess, parse_listening_line};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A payload of about `bytes` bytes.
fn padded(n: u64, bytes: usize) -> Value {
    json!({"n": n, "pad": "x".repeat(bytes)})
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn publish(router: &RouterProcess, topic: &str, payload: Value) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/events", router.http_url()))
        .json(&json!({"topic": topic, "payload": payload}))
        .send()
        .await
        .unwrap()
}

async fn get_json(router: &RouterProcess, path: &str) -> Value {
    let response = client()
        .get(format!("{}{path}", router.http_url()))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Reads until the peer closes (EOF or reset), for at most `within`;
/// whether it closed.
fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

// ---- item 3: byte bounds -------------------------------------------------

#[tokio::test]
async fn a_durable_subscription_at_its_byte_limit_refuses_publishes_with_queue_full_and_loses_none()
{
    let router = RouterProcess::start_with_env(
        &[],
        &[("EVENT_ROUTER_MAX_QUEUED_BYTES_PER_SUBSCRIPTION", "3000000")],
    );
    let put = client()
        .put(format!("{}/api/v1/subscriptions/big", router.http_url()))
        .json(&json!({"topics": ["big.#"]}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let mut accepted = 0u64;
    let mut refusal = None;
    for n in 0..10 {
        let response = publish(&router, "big.x", padded(n, 900_000)).await;
        if response.status().as_u16() == 202 {
            accepted += 1;
        } else {
            refusal = Some((
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            ));
            break;
        }
    }
    let (status, body) = refusal.expect("a publish past 3 MB is refused");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"big\""),
        "{body}"
    );
    assert!((2..=3).contains(&accepted), "accepted {accepted}");
    // Everything accepted is still stored: nothing was dropped to make room.
    let info = get_json(&router, "/api/v1/subscriptions/big").await;
    assert_eq!(info["pending"], accepted, "{info}");
}

#[tokio::test]
async fn history_at_its_byte_limit_evicts_the_oldest_and_counts_them() {
    let router =
        RouterProcess::start_with_env(&[], &[("EVENT_ROUTER_HISTORY_MAX_BYTES", "2000000")]);
    for n in 0..8 {
        let response = publish(&router, "hist.x", padded(n, 500_000)).await;
        assert_eq!(response.status().as_u16(), 202);
    }
    let history = get_json(&router, "/api/v1/events?topic=hist.%23&limit=100").await;
    let kept: Vec<u64> = history["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array in {history}"))
        .iter()
        .map(|e| e["event"]["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [5, 6, 7], "history keeps the newest within 2 MB");
    let metrics = client()
        .get(format!("{}/metrics", router.http_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("event_router_dropped_total{reason=\"history_bytes\"} 5")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_live_subscriber_that_does_not_read_holds_at_most_its_byte_limit() {
    let router =
        RouterProcess::start_with_env(&[], &[("EVENT_ROUTER_LIVE_QUEUE_MAX_BYTES", "1000000")]);
    let (mut ws, _) = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"op": "subscribe", "id": "s", "topics": ["slow.#"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(reply, Some(Ok(Message::Text(_)))), "{reply:?}");
    // The client stops reading: socket buffers and the outgoing channel fill,
    // then the live queue; 60 events of 500 kB are far past all of them.
    for n in 0..60 {
        assert_eq!(
            publish(&router, "slow.x", padded(n, 500_000))
                .await
                .status()
                .as_u16(),
            202
        );
    }
    let stats = get_json(&router, "/api/v1/stats").await;
    let dropped = stats["broker"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no broker.dropped in {stats}"));
    assert!(dropped > 0, "{stats}");
    drop(ws);
}

// ---- item 4: pattern caps --------------------------------------------------

fn topics(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}.t{i}")).collect()
}

async fn ws_call(ws: &mut Ws, frame: Value) -> Value {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn subscriptions_past_the_pattern_caps_are_refused_with_too_many_patterns() {
    let router = RouterProcess::start_with_env(
        &[],
        &[
            ("EVENT_ROUTER_MAX_PATTERNS_PER_SUBSCRIPTION", "50"),
            ("EVENT_ROUTER_MAX_PATTERNS_PER_CONNECTION", "80"),
            ("EVENT_ROUTER_MAX_PATTERN_BYTES_PER_SUBSCRIPTION", "4000"),
        ],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .unwrap();
    // v2: one subscription over the count cap.
    let reply = ws_call(
        &mut ws,
        json!({"op": "subscribe", "id": "1", "topics": topics(51, "a")}),
    )
    .await;
    assert_eq!(reply["code"], "too_many_patterns", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("51"), "{reply}");
    // v2: one subscription over the byte cap (few, long patterns).
    let long: Vec<String> = (0..20)
        .map(|i| format!("b{i}.{}", "x".repeat(240)))
        .collect();
    let reply = ws_call(
        &mut ws,
        json!({"op": "subscribe", "id": "2", "topics": long}),
    )
    .await;
    assert_eq!(reply["code"], "too_many_patterns", "{reply}");
    // v2: two subscriptions under the per-subscription cap, over the connection's.
    let reply = ws_call(
        &mut ws,
        json!({"op": "subscribe", "id": "3", "topics": topics(50, "c")}),
    )
    .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    let reply = ws_call(
        &mut ws,
        json!({"op": "subscribe", "id": "4", "topics": topics(40, "d")}),
    )
    .await;
    assert_eq!(reply["code"], "too_many_patterns", "{reply}");
    // Unsubscribing gives the patterns back.
    let id = reply_subscription(&mut ws, "5", topics(20, "e")).await;
    ws_call(&mut ws, json!({"op": "unsubscribe", "subscription_id": id})).await;
    let id = reply_subscription(&mut ws, "6", topics(30, "f")).await;
    assert!(!id.is_empty());

    // v1: a filtered subscription with too many event types.
    let (mut v1, _) = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .unwrap();
    let reply = ws_call(
        &mut v1,
        json!({"type": "subscribe", "subscription": {"type": "filtered",
               "event_types": topics(51, "g")}}),
    )
    .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "too_many_patterns", "{reply}");

    // SSE: the same cap on the query string.
    let url = format!(
        "{}/api/v1/events/stream?topics={}",
        router.http_url(),
        topics(51, "h").join(",")
    );
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_patterns", "{body}");

    // HTTP: a durable subscription made by PUT.
    let response = client()
        .put(format!("{}/api/v1/subscriptions/wide", router.http_url()))
        .json(&json!({"topics": topics(51, "i")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_patterns", "{body}");
}

async fn reply_subscription(ws: &mut Ws, id: &str, topics: Vec<String>) -> String {
    let reply = ws_call(ws, json!({"op": "subscribe", "id": id, "topics": topics})).await;
    assert_eq!(reply["op"], "ok", "{reply}");
    reply["subscription_id"].as_str().unwrap().to_string()
}

// ---- item 5: slow and silent connections --------------------------------

#[test]
fn a_socket_that_never_finishes_its_headers_is_closed_after_the_header_read_timeout() {
    let router = RouterProcess::start_with_env(
        &[],
        &[
            ("EVENT_ROUTER_HEADER_READ_TIMEOUT", "500ms"),
            ("EVENT_ROUTER_IDLE_TIMEOUT", "0s"),
        ],
    );
    let mut socket = TcpStream::connect(router.addr()).unwrap();
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    assert!(
        closed_within(&mut socket, Duration::from_secs(10)),
        "a half-sent request head was still open after 10 s"
    );
}

#[test]
fn a_socket_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let router = RouterProcess::start_with_env(
        &[],
        &[
            ("EVENT_ROUTER_IDLE_TIMEOUT", "500ms"),
            ("EVENT_ROUTER_HEADER_READ_TIMEOUT", "0s"),
        ],
    );
    let mut socket = TcpStream::connect(router.addr()).unwrap();
    assert!(
        closed_within(&mut socket, Duration::from_secs(10)),
        "a silent connection was still open after 10 s"
    );
}

/// `event-router serve` under a file limit of `nofile`, killed on drop.
struct LimitedRouter {
    child: std::process::Child,
    addr: SocketAddr,
}

impl LimitedRouter {
    fn start(nofile: u32, envs: &[(&str, &str)]) -> LimitedRouter {
        let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = parse_listening_line(&line) {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the router prints its listening line");
        LimitedRouter { child, addr }
    }
}

impl Drop for LimitedRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn health_answers_while_more_half_open_sockets_than_file_descriptors_wait() {
    let router = LimitedRouter::start(
        64,
        &[
            ("EVENT_ROUTER_HEADER_READ_TIMEOUT", "60s"),
            ("EVENT_ROUTER_IDLE_TIMEOUT", "60s"),
            ("EVENT_ROUTER_MAX_UNAUTHENTICATED_CONNECTIONS", "16"),
        ],
    );
    let addr = router.addr;
    let sockets: Vec<TcpStream> = (0..120)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut healthy = false;
    for _ in 0..10 {
        let answer = client()
            .get(format!("http://{addr}/health"))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            healthy = true;
            break;
        }
    }
    assert!(
        healthy,
        "/health did not answer beside 120 half-open sockets"
    );
    drop(sockets);
}

/// A fresh self-signed certificate for localhost in a scratch directory,
/// removed on drop.
struct TestCert {
    dir: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    fn new() -> TestCert {
        let dir = std::env::temp_dir().join(format!("er-limits-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
        TestCert {
            dir,
            der: ck.cert.der().clone(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_tls_connection_that_never_finishes_its_headers_is_closed_after_the_header_read_timeout()
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = TestCert::new();
    let (cert_path, key_path) = (cert.path("tls.crt"), cert.path("tls.key"));
    let router = RouterProcess::start_with_env(
        &[],
        &[
            ("EVENT_ROUTER_TLS_CERT", cert_path.as_str()),
            ("EVENT_ROUTER_TLS_KEY", key_path.as_str()),
            ("EVENT_ROUTER_HEADER_READ_TIMEOUT", "500ms"),
            ("EVENT_ROUTER_IDLE_TIMEOUT", "0s"),
        ],
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake");
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a half-sent request head over TLS was still open after 10 s"
    );
}
