//! Peak memory of a real `event-router serve` process while large events
//! are published, against its configured byte limits (issue 24, item 3).
//!
//! Starts the built binary on 127.0.0.1 with the limits of the environment
//! (`EVENT_ROUTER_HISTORY_MAX_BYTES`, `EVENT_ROUTER_MAX_QUEUED_BYTES_PER_SUBSCRIPTION`,
//! `EVENT_ROUTER_LIVE_QUEUE_MAX_BYTES`, ... or their defaults), opens the
//! worst consumers for memory — a durable subscription nobody consumes
//! (one event in four is for it) and a live WebSocket subscriber of every
//! event that never reads — then publishes events of
//! `--payload-bytes` over HTTP from `--publishers` tasks for `--seconds`,
//! sampling the router's RSS (`/proc/PID/status`) every 50 ms.
//!
//! ```text
//! cargo bench --bench memory_bound -- --seconds 20 --payload-bytes 1000000
//! EVENT_ROUTER_HISTORY_MAX_BYTES=33554432 cargo bench --bench memory_bound
//! ```
//!
//! The report gives the RSS before and at peak, the sum of the byte limits
//! that apply (history + one durable queue + one live queue + the live
//! connection's outgoing budget + one request body per publisher in
//! flight), and a verdict: the growth must stay within that sum plus
//! [`OVERHEAD_PERCENT`] and [`FIXED_OVERHEAD`]: memory the limits do not
//! describe — request buffers while a body is read and parsed, the frame
//! being encoded for the WebSocket, pages the allocator keeps for reuse.
//! Measured, that is about 30 MiB whatever the limits, and it does not grow
//! with the run's length. Exits 1 when over. Linux only (reads `/proc`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use event_router::config::Config;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_event-router");
/// Allowance over the sum of byte limits, in percent of it.
const OVERHEAD_PERCENT: u64 = 10;
/// Allowance over the sum of byte limits, in bytes, whatever the limits.
const FIXED_OVERHEAD: u64 = 32 * 1024 * 1024;
/// Every this many events of a publisher, one goes to the durable subscription.
const DURABLE_EVERY: u64 = 4;

struct Args {
    seconds: u64,
    payload_bytes: usize,
    publishers: usize,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 20,
        payload_bytes: 1_000_000,
        publishers: 4,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (argv[i].as_str(), value) {
            ("--seconds", Some(v)) => a.seconds = v.clamp(1, 3600),
            ("--payload-bytes", Some(v)) => a.payload_bytes = v.clamp(1, 1 << 20) as usize,
            ("--publishers", Some(v)) => a.publishers = v.clamp(1, 64) as usize,
            // `cargo bench` passes `--bench`; skip what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn effective_config() -> Config {
    let out = Command::new(BIN)
        .args(["serve", "--print-config"])
        .output()
        .expect("event-router runs");
    assert!(out.status.success(), "serve --print-config failed");
    Config::from_yaml(&String::from_utf8_lossy(&out.stdout)).expect("its config reads back")
}

struct Router {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_router() -> Router {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("EVENT_ROUTER_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("event-router starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
                    .collect();
                if let Ok(addr) = addr.parse() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("listening line within 20 s");
    Router { child, addr }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = args();
    let config = effective_config();
    let router = start_router();
    let pid = router.child.id();
    let base = format!("http://{}", router.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    // A durable subscription nobody consumes: fills to its byte limit.
    let put = http
        .put(format!("{base}/api/v1/subscriptions/stalled"))
        .json(&json!({"topics": ["mem.durable"]}))
        .send()
        .await
        .expect("PUT subscription");
    assert!(
        put.status().is_success(),
        "PUT subscription: {}",
        put.status()
    );
    // A live subscriber that never reads: fills its queue and budget.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", router.addr))
        .await
        .expect("WebSocket");
    ws.send(Message::Text(
        json!({"op": "subscribe", "topics": ["mem.#"]})
            .to_string()
            .into(),
    ))
    .await
    .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid).unwrap_or(0);

    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // One event in DURABLE_EVERY goes to the stalled durable subscription
    // (refused once it is full); all go to history and the live subscriber.
    let body = |topic: &str| {
        json!({"topic": topic, "payload": {"pad": "x".repeat(args.payload_bytes.saturating_sub(16))}})
            .to_string()
    };
    let bodies = Arc::new([body("mem.durable"), body("mem.history")]);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.publishers {
        let (http, url, bodies) = (
            http.clone(),
            format!("{base}/api/v1/events"),
            bodies.clone(),
        );
        let (accepted, refused, failed) = (accepted.clone(), refused.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = &bodies[usize::from(!n.is_multiple_of(DURABLE_EVERY))];
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent.map(|r| r.status().as_u16()) {
                    Ok(202) => accepted.fetch_add(1, Ordering::Relaxed),
                    Ok(503) => refused.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let mut peak = rss_before;
    while Instant::now() < deadline {
        if let Some(rss) = rss_bytes(pid) {
            peak = peak.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    if let Some(rss) = rss_bytes(pid) {
        peak = peak.max(rss);
    }
    drop(ws);

    let b = &config.broker;
    let s = &config.server;
    let limits = [
        ("history_max_bytes", b.history_max_bytes as u64),
        (
            "max_queued_bytes_per_subscription (1 subscription)",
            b.max_queued_bytes_per_subscription as u64,
        ),
        (
            "live_queue_max_bytes (queue)",
            s.live_queue_max_bytes as u64,
        ),
        (
            "live_queue_max_bytes (connection budget)",
            s.live_queue_max_bytes as u64,
        ),
        (
            "max_frame_bytes x publishers (bodies in flight)",
            s.max_frame_bytes.get() as u64 * args.publishers as u64,
        ),
    ];
    let total: u64 = limits.iter().map(|(_, v)| v).sum();
    let growth = peak.saturating_sub(rss_before);
    let secs = args.seconds as f64;
    println!(
        "memory_bound: {} s of {} B events from {} publishers",
        args.seconds, args.payload_bytes, args.publishers
    );
    println!(
        "  published {} ({:.1}/s), refused 503 {}, failed {}",
        accepted.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed) as f64 / secs,
        refused.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    for (name, value) in limits {
        println!("  limit {name}: {:.1} MiB", mib(value));
    }
    println!("  sum of limits: {:.1} MiB", mib(total));
    println!(
        "  RSS before: {:.1} MiB, peak: {:.1} MiB, growth: {:.1} MiB",
        mib(rss_before),
        mib(peak),
        mib(growth)
    );
    let share = 100.0 * growth as f64 / total as f64;
    let allowed = total + total * OVERHEAD_PERCENT / 100 + FIXED_OVERHEAD;
    println!(
        "  growth is {share:.0}% of the sum of limits; allowed: +{OVERHEAD_PERCENT}% +{:.0} MiB = {:.1} MiB",
        mib(FIXED_OVERHEAD),
        mib(allowed)
    );
    if growth <= allowed {
        println!("  verdict: bounded by the configured limits");
        std::process::ExitCode::SUCCESS
    } else {
        println!("  verdict: OVER the configured limits");
        std::process::ExitCode::FAILURE
    }
}
