//! Tracing overhead: throughput of the in-process pipeline (validate,
//! publish, durable delivery, ack on the memory broker) with span recording
//! off and on (`telemetry::trace::set_enabled`), at sampler 1.0 by default,
//! exporting every span over OTLP/HTTP to a receiver in this process that
//! decodes and counts them. No `tracing` subscriber is installed, as in a
//! router logging at `info` (the per-event log spans are DEBUG).
//!
//! Run: `cargo bench --bench tracing` (add `-- --events N --rounds R`,
//! `--export none` to discard spans instead of sending them, and
//! `--sampler-ratio 0.1` for parent-based ratio sampling, `--traceparent 01`
//! (or `00`) to publish every event with a sampled (or unsampled)
//! `traceparent` as a traced client would, in the "off" rounds too).
//! Rounds alternate off/on so that machine noise hits both; the line
//! `ratio` is median(on) / median(off) events per second (target >= 0.85).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use event_router::broker::{ConsumeOptions, GroupSpec, MemoryBroker, MemoryBrokerConfig};
use event_router::selector::Selector;
use event_router::telemetry::{Pipeline, PipelineConfig, Sampler, trace};
use event_router::{Router, RouterConfig, SharedBroker};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

/// The allocator the `event-router` binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    events: usize,
    rounds: usize,
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
}

fn args() -> Args {
    let mut a = Args {
        events: 20_000,
        rounds: 5,
        export: "otlp".to_string(),
        ratio: 1.0,
        traceparent: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--events", Some(n)) => a.events = n,
            ("--rounds", Some(n)) => a.rounds = n,
            ("--sampler-ratio", _) => {
                a.ratio = argv.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1.0);
            }
            ("--export", _) => a.export = argv.get(i + 1).cloned().unwrap_or_default(),
            ("--traceparent", _) => a.traceparent = argv.get(i + 1).cloned(),
            _ => {}
        }
        i += 1;
    }
    a
}

/// Spans the receiver decoded.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// An OTLP/HTTP sink on a thread of its own: decodes each request, counts
/// its spans, answers 200.
fn start_receiver() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver address");
    std::thread::spawn(move || {
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
                    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
                        let spans: usize = request
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len())
                            .sum();
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
    addr
}

/// A span exporter that counts and discards.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        EXPORTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Publishes `events` events and consumes and acks all of them; events/s.
async fn run_round(
    router: &Arc<Router>,
    group: &str,
    events: usize,
    traceparent: Option<&str>,
) -> f64 {
    let started = Instant::now();
    let mut consumer = router
        .broker()
        .consume(
            group,
            ConsumeOptions {
                max_in_flight: 1000,
                name: String::new(),
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
                           "headers": {"traceparent": format!("00-{:032x}-00f067aa0ba902b7-{flags}", done + i + 1)}}),
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
    events as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let receiver = start_receiver();
    let mut config = PipelineConfig::from_env();
    config.sampler = if args.ratio >= 1.0 {
        Sampler::AlwaysOn
    } else {
        Sampler::ParentBased(Box::new(Sampler::Ratio(args.ratio)))
    };
    let pipeline = if args.export == "none" {
        Pipeline::start(Discard, config)
    } else {
        let exporter = runtime.block_on(async {
            SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("http://{receiver}/v1/traces"))
                .build()
                .expect("exporter")
        });
        Pipeline::start(exporter, config)
    }
    .expect("span export thread");
    let pipeline = Arc::new(pipeline);
    // The event spans' pipeline, switched off for the "off" rounds.
    trace::install(pipeline.clone());
    trace::set_enabled(false);

    let broker: SharedBroker = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
    let router = Router::new(broker, RouterConfig::default());
    runtime.block_on(async {
        router
            .broker()
            .ensure_subscription(GroupSpec::new(
                "bench",
                Selector::parse(&["bench.#".to_string()], None).expect("selector"),
            ))
            .await
            .expect("subscription");
        // Warm-up, untimed.
        run_round(
            &router,
            "bench",
            args.events / 10,
            args.traceparent.as_deref(),
        )
        .await;
    });

    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let rate_off = runtime.block_on(run_round(
            &router,
            "bench",
            args.events,
            args.traceparent.as_deref(),
        ));
        trace::set_enabled(true);
        let rate_on = runtime.block_on(run_round(
            &router,
            "bench",
            args.events,
            args.traceparent.as_deref(),
        ));
        trace::set_enabled(false);
        println!(
            "round {round}: off {rate_off:.0} events/s, on (sampler {}) {rate_on:.0} events/s",
            args.ratio
        );
        off.push(rate_off);
        on.push(rate_on);
    }
    pipeline.shutdown();
    let traced_events = (args.events * args.rounds) as u64;
    println!(
        "spans received: {} for {traced_events} traced events; {} dropped by the bounded \
         export buffer (which never blocks publishing)",
        EXPORTED.load(Ordering::Relaxed),
        pipeline.dropped()
    );
    let (off, on) = (median(off), median(on));
    println!(
        "tracing overhead (export {}, sampler {}): {} events x {} rounds; median off {off:.0}/s, on {on:.0}/s; ratio {:.3} (target >= 0.85 at sampler 1.0)",
        args.export,
        args.ratio,
        args.events,
        args.rounds,
        on / off
    );
}
