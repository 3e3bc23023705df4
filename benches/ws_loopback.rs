//! WebSocket publish → deliver over loopback against an in-process router on
//! the memory broker: throughput and latency.
//!
//! One publisher connection sends `publish_batch` frames; one subscriber
//! connection receives the live events. Latency is measured from the moment a
//! batch was due to be sent (its schedule, so a stalled sender is not hidden:
//! no coordinated omission) to the moment each event arrives.
//!
//! Run: `cargo bench --bench ws_loopback -- [--events N] [--batch B] [--rate EVENTS_PER_S] [--payload-bytes P]`
//! Without `--rate` the publisher runs closed-loop as fast as delivery keeps up
//! (at most `--window` events outstanding); with `--rate` it is open-loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_router::broker::{MemoryBroker, SharedBroker};
use event_router::server::{self, ServerConfig};
use event_router::{Router, RouterConfig};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct Args {
    events: u64,
    batch: usize,
    rate: Option<f64>,
    payload_bytes: usize,
    window: u64,
}

fn args() -> Args {
    let mut a = Args {
        events: 200_000,
        batch: 100,
        rate: None,
        payload_bytes: 64,
        window: 5_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let v = pair[1].as_str();
        match pair[0].as_str() {
            "--events" => a.events = v.parse().unwrap_or(a.events),
            "--batch" => a.batch = v.parse().unwrap_or(a.batch).max(1),
            "--rate" => a.rate = v.parse().ok(),
            "--payload-bytes" => a.payload_bytes = v.parse().unwrap_or(a.payload_bytes),
            "--window" => a.window = v.parse().unwrap_or(a.window).max(1),
            _ => {}
        }
    }
    a
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect to the in-process router")
        .0
}

#[tokio::main]
async fn main() {
    let args = args();
    let broker: SharedBroker = Arc::new(MemoryBroker::default());
    let router = Router::new(broker, RouterConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let token = CancellationToken::new();
    let config = ServerConfig {
        live_queue_capacity: 65_536,
        ..ServerConfig::default()
    };
    let server = tokio::spawn(server::run(listener, config, router, token.clone()));
    let url = format!("ws://{addr}/ws");

    let mut sub = connect(&url).await;
    sub.send(Message::Text(
        json!({"op":"subscribe","id":"s","topics":["bench.#"]})
            .to_string()
            .into(),
    ))
    .await
    .expect("send subscribe");
    loop {
        let Some(Ok(Message::Text(t))) = sub.next().await else {
            panic!("subscriber closed")
        };
        let v: Value = serde_json::from_str(&t).expect("json frame");
        if v["op"] == "ok" {
            break;
        }
        assert_ne!(v["op"], "error", "subscribe failed: {v}");
    }

    let start = Instant::now();
    let (received_tx, received_rx) = watch::channel(0u64);
    let total = args.events;
    let receiver = tokio::spawn(async move {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        let (mut received, mut dropped) = (0u64, 0u64);
        while received + dropped < total {
            let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await
            else {
                break;
            };
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).expect("json frame");
            match v["op"].as_str() {
                Some("event") => {
                    let sent_us = v["event"]["payload"]["t"].as_u64().unwrap_or(0);
                    let now_us = start.elapsed().as_micros() as u64;
                    hist.saturating_record(now_us.saturating_sub(sent_us).max(1));
                    received += 1;
                    if received % 1000 == 0 {
                        let _ = received_tx.send(received);
                    }
                }
                Some("overflow") => dropped += v["dropped"].as_u64().unwrap_or(0),
                _ => {}
            }
        }
        (received, dropped, hist, start.elapsed())
    });

    let mut publisher = connect(&url).await;
    let pad = "x".repeat(args.payload_bytes);
    let mut sent = 0u64;
    let mut batch_no = 0u64;
    while sent < args.events {
        let n = (args.batch as u64).min(args.events - sent);
        let due = match args.rate {
            Some(rate) => {
                let due = Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(tokio::time::Instant::from_std(start + due)).await;
                due
            }
            None => {
                let mut rx = received_rx.clone();
                while sent.saturating_sub(*rx.borrow()) > args.window {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
                start.elapsed()
            }
        };
        let t = due.as_micros() as u64;
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"type": "bench.event", "payload": {"t": t, "i": sent + i, "pad": pad}}))
            .collect();
        let frame = json!({"op":"publish_batch","id": batch_no.to_string(),"events": events});
        publisher
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send batch");
        // Drain publish acks without waiting for them.
        while let Some(Some(Ok(_))) = futures::FutureExt::now_or_never(publisher.next()) {}
        sent += n;
        batch_no += 1;
    }
    let (received, dropped, hist, elapsed) = receiver.await.expect("receiver task");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "ws loopback: {} events ({} per batch, {}) in {:.2}s: {:.0} events/s delivered; received {}, dropped {}; \
         latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        args.events,
        args.batch,
        args.rate
            .map_or("closed loop".to_string(), |r| format!("open loop {r:.0}/s")),
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64(),
        received,
        dropped,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
