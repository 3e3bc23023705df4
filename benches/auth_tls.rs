//! Throughput with authentication (API key, ACL checks on every publish and
//! subscribe) and TLS on, as a ratio to both off: one WebSocket publisher
//! sends `publish_batch` frames (closed loop, at most `--window` events
//! outstanding), one WebSocket subscriber receives them live, against an
//! in-process router on the memory broker over loopback.
//!
//! Run: `cargo bench --bench auth_tls -- [--events N] [--batch B] [--rounds R]`
//! Prints events/s per configuration (median of the rounds) and the ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_router::auth::{Auth, AuthConfig, generate_key, sha256_hex};
use event_router::broker::{MemoryBroker, SharedBroker};
use event_router::server::tls::TlsFiles;
use event_router::server::{self, ServerConfig};
use event_router::{Router, RouterConfig};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Args {
    events: u64,
    batch: usize,
    window: u64,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        events: 100_000,
        batch: 100,
        window: 5_000,
        rounds: 3,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let v = pair[1].as_str();
        match pair[0].as_str() {
            "--events" => a.events = v.parse().unwrap_or(a.events),
            "--batch" => a.batch = v.parse().unwrap_or(a.batch).max(1),
            "--window" => a.window = v.parse().unwrap_or(a.window).max(1),
            "--rounds" => a.rounds = v.parse().unwrap_or(a.rounds).max(1),
            _ => {}
        }
    }
    a
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Setup {
    Plain,
    Auth,
    Tls,
    AuthTls,
}

struct Tls {
    files: TlsFiles,
    der: CertificateDer<'static>,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tls_files() -> Tls {
    let dir = std::env::temp_dir().join(format!("er-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: None,
    };
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
    Tls {
        files,
        der: ck.cert.der().clone(),
        _dir: tempdir::Dir(dir),
    }
}

async fn open<S>(stream: S, key: Option<&str>) -> tokio_tungstenite::WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = "ws://localhost/ws".into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream)
        .await
        .unwrap()
        .0
}

async fn run_round<S>(
    publisher: tokio_tungstenite::WebSocketStream<S>,
    mut subscriber: tokio_tungstenite::WebSocketStream<S>,
    args: &Args,
) -> f64
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    subscriber
        .send(Message::Text(
            json!({"op":"subscribe","id":"s","topics":["bench.#"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    loop {
        if let Some(Ok(Message::Text(t))) = subscriber.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["op"], "ok", "subscribe failed: {v}");
            break;
        }
    }
    let total = args.events;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        // Live delivery drops the oldest events of a subscriber that falls
        // behind: overflow notices count them as done (and are reported).
        let mut dropped = 0u64;
        while let Some(Ok(msg)) = subscriber.next().await {
            let Message::Text(t) = msg else { continue };
            let n = if t.starts_with("{\"op\":\"event\"") {
                1
            } else if t.starts_with("{\"op\":\"overflow\"") {
                let v: Value = serde_json::from_str(&t).unwrap();
                let d = v["dropped"].as_u64().unwrap_or(0);
                dropped += d;
                d
            } else {
                0
            };
            if counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n >= total {
                break;
            }
        }
        dropped
    });
    let (mut tx, mut rx) = publisher.split();
    let acks = tokio::spawn(async move {
        let mut errors = 0u64;
        while let Some(Ok(msg)) = rx.next().await {
            if let Message::Text(t) = msg
                && t.contains("\"error\"")
            {
                errors += 1;
                if errors == 1 {
                    eprintln!("publish error: {t}");
                }
            }
        }
    });
    let payload = json!({"data": "x".repeat(64)});
    let started = Instant::now();
    let mut sent = 0u64;
    let mut id = 0u64;
    while sent < total {
        while sent - received.load(std::sync::atomic::Ordering::Relaxed) > args.window {
            tokio::task::yield_now().await;
        }
        let n = (args.batch as u64).min(total - sent);
        let events: Vec<Value> = (0..n)
            .map(|_| json!({"topic": "bench.x", "payload": payload}))
            .collect();
        id += 1;
        tx.send(Message::Text(
            json!({"op":"publish_batch","id":id,"events":events})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        sent += n;
    }
    let dropped = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("all events delivered in time")
        .unwrap();
    if dropped > 0 {
        eprintln!("note: {dropped} of {total} live events dropped (subscriber overflow)");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = tx.close().await;
    acks.abort();
    total as f64 / elapsed
}

async fn measure(setup: Setup, args: &Args, tls: &Tls) -> f64 {
    let key = generate_key();
    let auth = matches!(setup, Setup::Auth | Setup::AuthTls);
    let mut config = ServerConfig::default();
    if auth {
        let yaml = format!(
            "api_keys:\n  - name: bench\n    sha256: \"{}\"\nacl:\n  - principal: bench\n    publish: [\"bench.*\", \"other.#\"]\n    subscribe: [\"bench.#\"]\n",
            sha256_hex(&key)
        );
        config.auth = Arc::new(Auth::from_config(&AuthConfig::from_yaml(&yaml).unwrap()).unwrap());
    }
    if matches!(setup, Setup::Tls | Setup::AuthTls) {
        config.tls = Some(tls.files.clone());
    }
    let broker: SharedBroker = Arc::new(MemoryBroker::default());
    let router = Router::new(broker, RouterConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(server::run(listener, config, router, token.clone()));
    let key = auth.then_some(key.as_str());
    let rate = if matches!(setup, Setup::Tls | Setup::AuthTls) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(tls.der.clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").unwrap();
        let mut conns = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls = connector.connect(name.clone(), tcp).await.unwrap();
            conns.push(open(tls, key).await);
        }
        let subscriber = conns.pop().unwrap();
        let publisher = conns.pop().unwrap();
        run_round(publisher, subscriber, args).await
    } else {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            conns.push(open(tcp, key).await);
        }
        let subscriber = conns.pop().unwrap();
        let publisher = conns.pop().unwrap();
        run_round(publisher, subscriber, args).await
    };
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = args();
    let tls = tls_files();
    let setups = [Setup::Plain, Setup::Auth, Setup::Tls, Setup::AuthTls];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    // Interleave the configurations so drift in machine load hits all alike.
    for _ in 0..args.rounds {
        for (i, setup) in setups.iter().enumerate() {
            results[i].push(measure(*setup, &args, &tls).await);
        }
    }
    let medians: Vec<f64> = results.into_iter().map(median).collect();
    println!(
        "events={} batch={} window={} rounds={} (median events/s, publish→deliver over one WebSocket each way)",
        args.events, args.batch, args.window, args.rounds
    );
    for (setup, m) in setups.iter().zip(&medians) {
        println!(
            "{:<9} {:>10.0} events/s  ratio to plain {:.3}",
            format!("{setup:?}"),
            m,
            m / medians[0]
        );
    }
}
