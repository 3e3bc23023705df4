//! Tracing overhead: events per second with span recording off and on
//! (`telemetry::trace::set_enabled`), at sampler 1.0 by default, exporting
//! every span over OTLP/HTTP to a receiver in this process that counts them
//! (without decoding each span: it stands in for a collector elsewhere). No `tracing` subscriber is installed, as in a router logging
//! at `info` (the per-event log spans are DEBUG).
//!
//! Two transports carry the same pipeline (publish, durable delivery, ack
//! on the memory broker):
//! - `--transport in-process` (default): the router's API called directly,
//!   no network; the worst case for the ratio, since the traced work is
//!   all there is.
//! - `--transport ws`: the router's real HTTP/WebSocket server on
//!   127.0.0.1:0, loaded through the client SDK as applications (and
//!   `event-router bench`) do: one publisher connection sending
//!   `publish_batch` frames of `--batch` events (default 100, the same in
//!   both kinds of rounds, at most 4 batches awaiting their reply), and one
//!   subscriber connection in durable group `bench` acking every delivery.
//!
//! Run: `cargo bench --bench tracing` (add `-- --transport ws`,
//! `--events N --rounds R`, `--export none` to discard spans instead of
//! sending them, `--sampler-ratio 0.1` for parent-based ratio sampling,
//! `--traceparent 01` (or `00`) to publish every event with a sampled (or
//! unsampled) `traceparent` as a traced client would, in the "off" rounds
//! too, `--only on` (or `off`) to run one kind of round under a profiler).
//! Rounds alternate off/on so that machine noise hits both; the line
//! `ratio` is median(on) / median(off) events per second (target >= 0.85).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use event_router::broker::{ConsumeOptions, GroupSpec, MemoryBroker, MemoryBrokerConfig};
use event_router::client::Client;
use event_router::selector::Selector;
use event_router::server::{self, ServerConfig};
use event_router::telemetry::otlp::{self, OtlpConfig, OtlpExporter};
use event_router::telemetry::pipeline::Export;
use event_router::telemetry::{
    EXPORT_TIMEOUT, OtlpProtocol, Pipeline, PipelineConfig, Sampler, trace,
};
use event_router::{Event, Router, RouterConfig, SharedBroker};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// The allocator the `event-router` binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The durable group every event goes to.
const GROUP: &str = "bench";
/// Over WebSocket: most events published but not yet acked.
const WS_WINDOW: usize = 5_000;
/// Over WebSocket: most `publish_batch` calls awaiting their reply.
const WS_PIPELINED: usize = 4;
/// Over WebSocket: deliveries the subscriber holds un-acked.
const WS_PREFETCH: usize = 1_000;

struct Args {
    /// `in-process` (default) or `ws`.
    transport: String,
    events: usize,
    rounds: usize,
    /// Events per `publish_batch` over WebSocket.
    batch: usize,
    /// `otlp` (default): export over OTLP/HTTP to the in-process receiver;
    /// `none`: hand spans to a batch exporter that discards them, which
    /// isolates the instrumentation cost from the export's CPU.
    export: String,
    /// Sampling ratio of the "on" rounds (1.0 = every trace).
    ratio: f64,
    /// Publish every event with a `traceparent` header with these flags
    /// (`01` sampled, `00` not), as a traced client would, in both kinds
    /// of rounds.
    traceparent: Option<String>,
    /// `off` or `on`: run only that kind of round, to profile one side.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        transport: "in-process".to_string(),
        events: 20_000,
        rounds: 5,
        batch: 100,
        export: "otlp".to_string(),
        ratio: 1.0,
        traceparent: None,
        only: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let v = pair[1].as_str();
        match pair[0].as_str() {
            "--transport" => a.transport = v.to_string(),
            "--events" => a.events = v.parse().unwrap_or(a.events).max(1),
            "--rounds" => a.rounds = v.parse().unwrap_or(a.rounds).max(1),
            "--batch" => a.batch = v.parse().unwrap_or(a.batch).max(1),
            "--sampler-ratio" => a.ratio = v.parse().unwrap_or(1.0),
            "--export" => a.export = v.to_string(),
            "--traceparent" => a.traceparent = Some(v.to_string()),
            "--only" => a.only = Some(v.to_string()),
            _ => {}
        }
    }
    a
}

/// Spans the receiver counted.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// The spans in an OTLP `ExportTraceServiceRequest`, counted by walking
/// its tags (`resource_spans` 1 → `scope_spans` 2 → `spans` 2) without
/// building anything: the receiver stands in for a collector on another
/// machine, so it spends as little of the shared cores as it can (decoding
/// every span here made the "on" rounds pay for the collector's work).
/// `None` for a malformed body.
fn count_spans(body: &[u8]) -> Option<usize> {
    /// The length-delimited fields numbered `field` in `message`.
    fn each(mut message: &[u8], field: u32, mut f: impl FnMut(&[u8]) -> Option<()>) -> Option<()> {
        use prost::encoding::{WireType, decode_key, decode_varint};
        while !message.is_empty() {
            let (tag, wire) = decode_key(&mut message).ok()?;
            let skip = match wire {
                WireType::Varint => {
                    decode_varint(&mut message).ok()?;
                    0
                }
                WireType::SixtyFourBit => 8,
                WireType::ThirtyTwoBit => 4,
                WireType::LengthDelimited => {
                    let len = usize::try_from(decode_varint(&mut message).ok()?).ok()?;
                    let inner = message.get(..len)?;
                    if tag == field {
                        f(inner)?;
                    }
                    len
                }
                _ => return None,
            };
            message = message.get(skip..)?;
        }
        Some(())
    }
    let mut spans = 0;
    each(body, 1, |resource| {
        each(resource, 2, |scope| {
            each(scope, 2, |_| {
                spans += 1;
                Some(())
            })
        })
    })?;
    Some(spans)
}

/// An OTLP/HTTP sink on a thread of its own: counts each request's spans,
/// answers 200.
fn start_receiver() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver address");
    // Named, so that a profile tells its share from the publisher's (the
    // main thread's).
    let spawned = std::thread::Builder::new()
        .name("otlp-receiver".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(|body: axum::body::Bytes| async move {
                        if let Some(spans) = count_spans(&body) {
                            EXPORTED.fetch_add(spans as u64, Ordering::Relaxed);
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }),
                );
                let _ = axum::serve(listener, app).await;
            });
        });
    spawned.expect("spawn the receiver thread");
    addr
}

/// A span exporter that counts and discards.
#[derive(Debug)]
struct Discard;

impl Export for Discard {
    fn export(&mut self, _spans: &[&[u8]], count: usize) -> Result<(), String> {
        EXPORTED.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The `traceparent` header of the `k`-th event of a round.
fn traceparent_of(flags: &str, k: usize) -> String {
    format!("00-{:032x}-00f067aa0ba902b7-{flags}", k + 1)
}

/// The router under load, and how events reach it.
enum Load {
    InProcess(Arc<Router>),
    Ws(WsLoad),
}

impl Load {
    /// Publishes `events` events and consumes and acks all of them; events/s.
    async fn round(&self, events: usize, traceparent: Option<&str>) -> f64 {
        let started = Instant::now();
        match self {
            Load::InProcess(router) => in_process_round(router, events, traceparent).await,
            Load::Ws(ws) => ws.round(events, traceparent).await,
        }
        events as f64 / started.elapsed().as_secs_f64()
    }
}

/// The round of `--transport in-process`: the router's API called directly.
async fn in_process_round(router: &Arc<Router>, events: usize, traceparent: Option<&str>) {
    let mut consumer = router
        .broker()
        .consume(
            GROUP,
            ConsumeOptions {
                max_in_flight: 1000,
                ..ConsumeOptions::default()
            },
        )
        .await
        .expect("consume");
    let batch = 500;
    let mut done = 0;
    while done < events {
        let n = batch.min(events - done);
        for i in 0..n {
            let event = router
                .parse_event(match traceparent {
                    Some(flags) => json!({"type": "bench.traced", "payload": {"i": done + i},
                           "headers": {"traceparent": traceparent_of(flags, done + i)}}),
                    None => json!({"type": "bench.traced", "payload": {"i": done + i}}),
                })
                .expect("valid event");
            router.publish(event).await.expect("publish");
        }
        let mut acked = 0;
        while acked < n {
            for d in consumer.next().await.expect("deliveries") {
                router
                    .broker()
                    .ack(&d.subscription, &d.delivery_id)
                    .await
                    .expect("ack");
                acked += 1;
            }
        }
        done += n;
    }
}

/// `--transport ws`: the router's server on loopback, a publisher and an
/// acking durable subscriber connected to it through the client SDK.
struct WsLoad {
    publisher: Client,
    /// Kept open for the subscription's sake.
    _subscriber: Client,
    batch: usize,
    /// Deliveries acked so far, over all rounds.
    acked: Arc<AtomicU64>,
    /// The `acked` count that ends the current round.
    goal: Arc<AtomicU64>,
    /// Signalled when `acked` reaches `goal`.
    reached: Arc<Notify>,
    /// One permit per event that may be published and not yet acked.
    window: Arc<Semaphore>,
    token: CancellationToken,
}

impl WsLoad {
    async fn start(router: Arc<Router>, batch: usize) -> WsLoad {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("ws://{}/ws", listener.local_addr().expect("bound address"));
        let token = CancellationToken::new();
        tokio::spawn(server::run(
            listener,
            ServerConfig::default(),
            router,
            token.clone(),
        ));
        let connect = || {
            Client::builder()
                .url(url.clone())
                .publish_timeout(Duration::from_secs(60))
                .build()
        };
        let publisher = connect().await.expect("publisher connects");
        let subscriber = connect().await.expect("subscriber connects");
        let mut subscription = subscriber
            .subscribe("bench.#")
            .group(GROUP)
            .max_in_flight(WS_PREFETCH)
            .start()
            .await
            .expect("subscribe");
        let acked = Arc::new(AtomicU64::new(0));
        let goal = Arc::new(AtomicU64::new(u64::MAX));
        let reached = Arc::new(Notify::new());
        let window = Arc::new(Semaphore::new(WS_WINDOW.max(batch)));
        let (a, g, r, w) = (acked.clone(), goal.clone(), reached.clone(), window.clone());
        tokio::spawn(async move {
            while let Some(delivery) = subscription.recv().await {
                delivery.ack().await.expect("ack");
                w.add_permits(1);
                if a.fetch_add(1, Ordering::Relaxed) + 1 >= g.load(Ordering::Relaxed) {
                    r.notify_one();
                }
            }
        });
        WsLoad {
            publisher,
            _subscriber: subscriber,
            batch,
            acked,
            goal,
            reached,
            window,
            token,
        }
    }

    /// Publishes `events` in batches, at most [`WS_PIPELINED`] awaiting
    /// their reply and [`WS_WINDOW`] un-acked, and waits until all are acked.
    async fn round(&self, events: usize, traceparent: Option<&str>) {
        let goal = self.acked.load(Ordering::Relaxed) + events as u64;
        self.goal.store(goal, Ordering::Relaxed);
        let batches = (0..events)
            .step_by(self.batch)
            .map(|first| first..(first + self.batch).min(events));
        futures::stream::iter(batches)
            .map(|range| async move {
                let n = u32::try_from(range.len()).expect("batch fits u32");
                self.window
                    .acquire_many(n)
                    .await
                    .expect("window never closed")
                    .forget();
                let batch = range.map(|i| event(i, traceparent)).collect();
                self.publisher
                    .publish_batch(batch, false)
                    .await
                    .expect("publish");
            })
            .buffer_unordered(WS_PIPELINED)
            .collect::<()>()
            .await;
        while self.acked.load(Ordering::Relaxed) < goal {
            self.reached.notified().await;
        }
    }
}

/// The `i`-th event of a round over WebSocket.
fn event(i: usize, traceparent: Option<&str>) -> Event {
    let mut event = Event::new("bench.traced", json!({ "i": i })).expect("valid event");
    if let Some(flags) = traceparent {
        event
            .headers
            .insert(trace::TRACEPARENT.to_string(), traceparent_of(flags, i));
    }
    event
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The span pipeline of the "on" rounds, exporting to `receiver` (or
/// discarding with `--export none`).
fn pipeline(args: &Args, receiver: std::net::SocketAddr) -> Arc<Pipeline> {
    let mut config = PipelineConfig::from_env();
    config.sampler = if args.ratio >= 1.0 {
        Sampler::AlwaysOn
    } else {
        Sampler::ParentBased(Box::new(Sampler::Ratio(args.ratio)))
    };
    let pipeline = if args.export == "none" {
        Pipeline::start(Discard, config)
    } else {
        let otlp = OtlpConfig {
            protocol: OtlpProtocol::HttpProtobuf,
            endpoint: format!("http://{receiver}/v1/traces")
                .parse()
                .expect("receiver URL"),
            headers: http::HeaderMap::new(),
            timeout: EXPORT_TIMEOUT,
        };
        let exporter = OtlpExporter::new(otlp, &otlp::resource_from_env()).expect("exporter");
        Pipeline::start(exporter, config)
    };
    Arc::new(pipeline.expect("span export thread"))
}

fn main() {
    let args = args();
    let ws = match args.transport.as_str() {
        "in-process" => false,
        "ws" => true,
        other => {
            eprintln!("--transport {other}: expected in-process or ws");
            std::process::exit(2);
        }
    };
    // Over WebSocket, a multi-threaded runtime as `event-router` runs.
    let runtime = if ws {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("runtime");
    let receiver = start_receiver();
    let pipeline = pipeline(&args, receiver);
    // The event spans' pipeline, switched off for the "off" rounds.
    trace::install(pipeline.clone());
    trace::set_enabled(false);

    let broker: SharedBroker = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
    let router = Router::new(broker, RouterConfig::default());
    let traceparent = args.traceparent.as_deref();
    let load = runtime.block_on(async {
        router
            .broker()
            .ensure_subscription(GroupSpec::new(
                GROUP,
                Selector::parse(&["bench.#".to_string()], None).expect("selector"),
            ))
            .await
            .expect("subscription");
        let load = if ws {
            Load::Ws(WsLoad::start(router, args.batch).await)
        } else {
            Load::InProcess(router)
        };
        // Warm-up, untimed.
        load.round(args.events / 10, traceparent).await;
        load
    });

    let (run_off, run_on) = match args.only.as_deref() {
        Some("off") => (true, false),
        Some("on") => (false, true),
        _ => (true, true),
    };
    let round = |on: bool| {
        if !(if on { run_on } else { run_off }) {
            return f64::NAN;
        }
        trace::set_enabled(on);
        let rate = runtime.block_on(load.round(args.events, traceparent));
        trace::set_enabled(false);
        rate
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round_number in 0..args.rounds {
        let rate_off = round(false);
        let rate_on = round(true);
        println!(
            "round {round_number}: off {rate_off:.0} events/s, on (sampler {}) {rate_on:.0} events/s",
            args.ratio
        );
        off.push(rate_off);
        on.push(rate_on);
    }
    if let Load::Ws(ws) = &load {
        ws.token.cancel();
    }
    pipeline.shutdown();
    let traced_events = (args.events * args.rounds) as u64;
    println!(
        "spans received: {} for {traced_events} traced events; {} dropped by the bounded \
         export buffer (which never blocks publishing)",
        EXPORTED.load(Ordering::Relaxed),
        pipeline.dropped()
    );
    let batch = if ws {
        format!(", batch {}", args.batch)
    } else {
        String::new()
    };
    let (off, on) = (median(off), median(on));
    println!(
        "tracing overhead (transport {}{batch}, export {}, sampler {}): {} events x {} rounds; median off {off:.0}/s, on {on:.0}/s; ratio {:.3} (target >= 0.85 at sampler 1.0)",
        args.transport,
        args.export,
        args.ratio,
        args.events,
        args.rounds,
        on / off
    );
}
