//! What tracing adds to one event's own steps, in nanoseconds, on one
//! thread: the `validate`, `deliver` and `ack` spans that every durably
//! delivered event makes (with the in-flight table that links the ack to
//! its delivery), recording off and on at sampler 1.0, the spans encoded
//! and handed to an exporter that counts and discards them on the export
//! thread.
//!
//! `benches/tracing.rs` measures the whole router's throughput ratio; on
//! two shared cores that ratio moves by several points between runs, so
//! this bench gives the steady figure for the instrumentation itself.
//!
//! Run: `cargo bench --bench span_steps` (`-- --events N --rounds R`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use event_router::Event;
use event_router::telemetry::pipeline::Export;
use event_router::telemetry::trace::{self, InFlightSpans};
use event_router::telemetry::{Pipeline, PipelineConfig, Sampler};

/// The allocator the `event-router` binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Spans the exporter was handed.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Counts and discards.
struct Discard;

impl Export for Discard {
    fn export(&mut self, _spans: &[&[u8]], count: usize) -> Result<(), String> {
        EXPORTED.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The traced steps of each event's life, as the router runs them.
fn steps(events: &mut [Event], ids: &[String], in_flight: &InFlightSpans) {
    for (event, id) in events.iter_mut().zip(ids) {
        let validate = trace::validate_span();
        trace::validated(&validate, event);
        let deliver = trace::deliver_span("bench", id, 1, event);
        in_flight.insert("bench", id, &deliver);
        drop(deliver);
        let parent = in_flight.take("bench", id);
        drop(trace::ack_span("bench", id, parent));
    }
}

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let events = arg("--events", 200_000);
    let rounds = arg("--rounds", 5);
    let mut config = PipelineConfig::from_env();
    config.sampler = Sampler::AlwaysOn;
    let pipeline = Arc::new(Pipeline::start(Discard, config).expect("span export thread"));
    trace::install(pipeline.clone());
    let in_flight = InFlightSpans::default();
    // Broker-style delivery ids, in flight one at a time.
    let chunk = 1000;
    let ids: Vec<String> = (0..chunk)
        .map(|i| format!("{}-0", 1_700_000_000_000u64 + i as u64))
        .collect();
    let round = |on: bool| {
        trace::set_enabled(on);
        let mut spent = Duration::ZERO;
        for _ in 0..events / chunk {
            let mut batch: Vec<Event> = (0..chunk)
                .map(|i| Event::new("bench.traced", serde_json::json!({ "i": i })).expect("event"))
                .collect();
            let started = Instant::now();
            steps(&mut batch, &ids, &in_flight);
            spent += started.elapsed();
        }
        spent.as_nanos() as f64 / (events / chunk * chunk) as f64
    };
    round(true);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        off.push(round(false));
        on.push(round(true));
        println!(
            "round {r}: off {:.0} ns/event, on {:.0} ns/event",
            off[r], on[r]
        );
    }
    trace::set_enabled(false);
    pipeline.shutdown();
    let (off, on) = (median(off), median(on));
    println!(
        "span steps (validate, deliver, ack; sampler 1): {events} events x {rounds} rounds; \
         median off {off:.0} ns/event, on {on:.0} ns/event: tracing adds {:.0} ns/event \
         on the event's thread; {} spans exported, {} dropped",
        on - off,
        EXPORTED.load(Ordering::Relaxed),
        pipeline.dropped()
    );
}
