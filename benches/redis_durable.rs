//! Durable end-to-end throughput and latency of the Redis broker against one
//! local `redis-server`, next to the raw Redis ceiling measured in the same
//! run.
//!
//! - Ceiling: `redis-benchmark -P 16 -c 4` of `XADD` with a 256-byte field
//!   (pipelined, no scripts, nothing read back).
//! - Router: one in-process `RedisBroker` (the library under
//!   `serve --redis`), 16 partitions; 4 publishers (`publish_batch` of
//!   `--batch` events, 256-byte payloads), 4 consumers of one durable
//!   subscription (`max_in_flight` 256), each delivery acked (the acks of
//!   one fetch concurrently). An event
//!   counts when its ack returns: publish → route → deliver → ack.
//!   Latency is from the event's creation (its `time`) to its delivery.
//! - The closed loop runs three times: with the consumed subscription
//!   alone; with 9 more subscriptions that match nothing (their topics
//!   differ), which should cost nothing; with 9 more that match every
//!   event (not consumed), whose extra Redis CPU per event, divided by 9,
//!   is the cost of one more matching subscription.
//! - Then the same at a fixed `--rate` (default 5,000 events/s) for
//!   `--seconds`, open loop, for latency percentiles under a steady load.
//!
//! - After each phase: Redis and router (this process) CPU per event and
//!   Redis commands per event (`INFO` before and after), and what one
//!   event costs in raw `XADD`s of the ceiling run, which bounds the ratio.
//!
//! Run: `cargo bench --bench redis_durable -- [--events N] [--batch B] [--rate R] [--seconds S]`
//! (the v2 figures in docs/redis.md use `--events 200000 --batch 64`).

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use event_router::broker::{
    Broker, ConsumeOptions, GroupSpec, PublishOptions, RedisBroker, RedisBrokerConfig,
};
use event_router::{Event, Selector};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;

/// The allocator of the `event-router` binary, so the library runs as it
/// does under `serve --redis`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PUBLISHERS: usize = 4;
const CONSUMERS: usize = 4;
const PAYLOAD_BYTES: usize = 256;

struct Args {
    events: u64,
    batch: usize,
    rate: f64,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        events: 100_000,
        batch: 16,
        rate: 5_000.0,
        seconds: 10,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let v = pair[1].as_str();
        match pair[0].as_str() {
            "--events" => a.events = v.parse().unwrap_or(a.events),
            "--batch" => a.batch = v.parse().unwrap_or(a.batch).max(1),
            "--rate" => a.rate = v.parse().unwrap_or(a.rate),
            "--seconds" => a.seconds = v.parse().unwrap_or(a.seconds),
            _ => {}
        }
    }
    a
}

/// `redis-benchmark` pipelined XADD: requests per second.
fn raw_ceiling(port: u16) -> Option<f64> {
    let payload = "x".repeat(PAYLOAD_BYTES);
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-n", "300000", "-P", "16", "-c", "4", "-q"])
        .args(["XADD", "raw:bench", "*", "p", &payload])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.rsplit_once(": ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .next_back()
}

/// Redis `INFO` sections as `key -> value` (`cmdstat_*` lines kept whole).
type Info = std::collections::HashMap<String, String>;

fn redis_info(port: u16) -> Info {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["INFO", "everything"])
        .output();
    let Ok(out) = out else {
        return Default::default();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// CPU seconds (user + system) of this process so far.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name `(…)`: utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn num(m: &Info, k: &str) -> f64 {
    m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
}

/// Redis CPU seconds (user + system) in an `INFO` snapshot.
fn redis_cpu(m: &Info) -> f64 {
    num(m, "used_cpu_sys") + num(m, "used_cpu_user")
}

/// A `cmdstat_<cmd>` field (`calls=`, `usec=`) in an `INFO` snapshot.
fn cmdstat(m: &Info, cmd: &str, field: &str) -> f64 {
    m.get(&format!("cmdstat_{cmd}"))
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix(field)))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// What one raw `XADD` of the ceiling run cost Redis: CPU and command time
/// (µs).
struct RawCost {
    cpu_us: f64,
    usec: f64,
}

impl RawCost {
    fn between(before: &Info, after: &Info) -> Option<RawCost> {
        let calls = cmdstat(after, "xadd", "calls=") - cmdstat(before, "xadd", "calls=");
        (calls > 0.0).then(|| RawCost {
            cpu_us: (redis_cpu(after) - redis_cpu(before)) * 1e6 / calls,
            usec: (cmdstat(after, "xadd", "usec=") - cmdstat(before, "xadd", "usec=")) / calls,
        })
    }
}

/// Where the time of a run went: Redis CPU and commands per event, router
/// (this process) CPU per event.
struct Profile {
    redis: std::collections::HashMap<String, String>,
    cpu: f64,
}

impl Profile {
    fn start(port: u16) -> Profile {
        Profile {
            redis: redis_info(port),
            cpu: own_cpu(),
        }
    }

    /// Prints CPU and Redis commands per event; with the cost of a raw
    /// `XADD`, also what they amount to in raw `XADD`s, which bounds the
    /// ratio to the ceiling.
    fn print(&self, port: u16, events: u64, raw: Option<&RawCost>) -> f64 {
        let now = redis_info(port);
        let cpu = own_cpu() - self.cpu;
        let n = events.max(1) as f64;
        let redis_us = (redis_cpu(&now) - redis_cpu(&self.redis)) * 1e6 / n;
        println!(
            "  cpu per event: redis {redis_us:.1} us, router process {:.1} us",
            cpu * 1e6 / n
        );
        let mut rows: Vec<(String, f64, f64)> = now
            .keys()
            .filter_map(|k| k.strip_prefix("cmdstat_"))
            .map(|cmd| {
                let calls = cmdstat(&now, cmd, "calls=") - cmdstat(&self.redis, cmd, "calls=");
                let usec = cmdstat(&now, cmd, "usec=") - cmdstat(&self.redis, cmd, "usec=");
                (cmd.to_string(), calls / n, usec / n)
            })
            .filter(|r| r.1 > 0.0)
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (cmd, calls, usec) in rows.iter().take(12) {
            println!("  {cmd:<16} {calls:>7.3} calls/event {usec:>6.2} us/event");
        }
        if let Some(raw) = raw {
            // Commands inside scripts are counted on their own as well as
            // in their EVALSHA: without EVALSHA, this is the command work
            // alone, as if scripts cost nothing.
            let commands: f64 = rows
                .iter()
                .filter(|r| r.0 != "evalsha" && r.0 != "eval")
                .map(|r| r.2)
                .sum();
            println!(
                "  one event = {:.1} raw XADDs of Redis CPU ({:.1} of command time alone): \
                 bound {:.1}% of the ceiling ({:.1}% without scripts)",
                redis_us / raw.cpu_us,
                commands / raw.usec,
                100.0 * raw.cpu_us / redis_us,
                100.0 * raw.usec / commands,
            );
        }
        redis_us
    }
}

fn event(n: u64, payload: &str) -> Event {
    let mut e = Event::new("bench.job", json!({ "n": n, "p": payload })).expect("valid topic");
    e.key = Some(format!("k{}", n % 256));
    e
}

fn micros_since(e: &Event) -> u64 {
    let now = jiff::Timestamp::now().as_microsecond();
    u64::try_from(now - e.time.as_microsecond()).unwrap_or(0)
}

struct Run {
    acked: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Starts the consumers; they count acks until `total` is reached.
fn start_consumers(
    broker: &Arc<RedisBroker>,
    run: &Arc<Run>,
    total: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CONSUMERS)
        .map(|_| {
            let (broker, run) = (broker.clone(), run.clone());
            tokio::spawn(async move {
                let options = ConsumeOptions {
                    max_in_flight: 256,
                    ..ConsumeOptions::default()
                };
                let mut consumer = broker.consume("bench", options).await.expect("consume");
                while run.acked.load(Ordering::Relaxed) < total {
                    let next =
                        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
                    let Ok(Ok(deliveries)) = next else { continue };
                    // Acks of one fetch go out together, as a consumer
                    // with several workers would send them.
                    let acks = deliveries.iter().map(|d| {
                        let us = micros_since(&d.event);
                        let _ = run.latency.lock().record(us.max(1));
                        broker.ack("bench", &d.delivery_id)
                    });
                    let done = futures::future::join_all(acks).await;
                    let ok = done.iter().filter(|r| r.is_ok()).count() as u64;
                    run.acked.fetch_add(ok, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

async fn wait_acked(run: &Run, total: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while run.acked.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(label: &str, run: &Run, elapsed: Duration) -> f64 {
    let acked = run.acked.load(Ordering::Relaxed);
    let rate = acked as f64 / elapsed.as_secs_f64();
    let h = run.latency.lock();
    println!(
        "{label}: {acked} events acked in {:.2}s = {rate:.0} events/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
    rate
}

/// Subscriptions besides `bench` in a closed-loop run.
#[derive(Clone, Copy)]
enum Others {
    None,
    /// Nine that match nothing.
    NineUnmatched,
    /// Nine that match every event and are not consumed.
    NineMatching,
}

async fn fresh(
    server: &redis_server::RedisServer,
    prefix: &str,
    others: Others,
) -> Arc<RedisBroker> {
    let config = RedisBrokerConfig {
        key_prefix: prefix.to_string(),
        ..RedisBrokerConfig::new(server.url())
    };
    let broker = Arc::new(RedisBroker::connect(config).await.expect("connect"));
    let spec = GroupSpec::new(
        "bench",
        Selector::parse(&["bench.#".to_string()], None).expect("selector"),
    );
    broker
        .ensure_subscription(spec)
        .await
        .expect("subscription");
    let pattern = match others {
        Others::None => return broker,
        Others::NineUnmatched => "other.#",
        Others::NineMatching => "bench.#",
    };
    for i in 0..9 {
        let spec = GroupSpec::new(
            format!("other-{i}"),
            Selector::parse(&[pattern], None).expect("selector"),
        );
        broker
            .ensure_subscription(spec)
            .await
            .expect("subscription");
    }
    broker
}

/// What a closed-loop run measured.
struct Closed {
    rate: f64,
    redis_us: f64,
}

/// One closed-loop run: as fast as it goes.
async fn closed_loop(
    server: &redis_server::RedisServer,
    prefix: &str,
    a: &Args,
    others: Others,
    label: &str,
    raw: Option<&RawCost>,
) -> Closed {
    let broker = fresh(server, prefix, others).await;
    let payload = "x".repeat(PAYLOAD_BYTES - 20);
    let run = new_run();
    let consumers = start_consumers(&broker, &run, a.events);
    let profile = Profile::start(server.port());
    let started = Instant::now();
    let per = a.events / PUBLISHERS as u64;
    let publishers: Vec<_> = (0..PUBLISHERS as u64)
        .map(|p| {
            let (broker, payload, batch) = (broker.clone(), payload.clone(), a.batch as u64);
            tokio::spawn(async move {
                let mut n = p * per;
                let end = n + per;
                while n < end {
                    let events = (n..(n + batch).min(end))
                        .map(|i| event(i, &payload))
                        .collect();
                    n += batch;
                    broker
                        .publish_batch(events, PublishOptions::default())
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for p in publishers {
        let _ = p.await;
    }
    let total = per * PUBLISHERS as u64;
    wait_acked(&run, total, Duration::from_secs(300)).await;
    let rate = report(
        &format!(
            "router durable, closed loop, {label} ({PUBLISHERS} publishers x batch {}, {CONSUMERS} consumers)",
            a.batch
        ),
        &run,
        started.elapsed(),
    );
    let redis_us = profile.print(server.port(), total, raw);
    for c in consumers {
        c.abort();
    }
    broker.close().await;
    Closed { rate, redis_us }
}

fn new_run() -> Arc<Run> {
    Arc::new(Run {
        acked: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new(3).expect("histogram")),
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let server = redis_server::RedisServer::start();
    let payload = "x".repeat(PAYLOAD_BYTES - 20);

    let before = redis_info(server.port());
    let ceiling = raw_ceiling(server.port());
    let raw = RawCost::between(&before, &redis_info(server.port()));
    match ceiling {
        Some(c) => println!(
            "raw ceiling: redis-benchmark XADD pipelined (-P 16 -c 4), 256-byte field: {c:.0} requests/s"
        ),
        None => println!("raw ceiling: redis-benchmark not available"),
    }

    let mut runs = Vec::new();
    for (i, (others, label)) in [
        (Others::None, "1 subscription"),
        (Others::NineUnmatched, "10 subscriptions, 1 matching"),
        (
            Others::NineMatching,
            "10 subscriptions, all matching, 1 consumed",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let closed = closed_loop(&server, &format!("b1{i}"), &a, others, label, raw.as_ref()).await;
        if let Some(c) = ceiling {
            println!("router / raw ceiling: {:.1}%", 100.0 * closed.rate / c);
        }
        runs.push(closed);
    }
    if let [one, unmatched, matching] = &runs[..] {
        println!(
            "9 non-matching subscriptions: throughput {:.1}% of 1 subscription's",
            100.0 * unmatched.rate / one.rate
        );
        let extra = (matching.redis_us - one.redis_us) / 9.0;
        match raw.as_ref() {
            Some(raw) => println!(
                "each extra matching subscription: {extra:.1} us of Redis CPU per event = {:.2} raw XADDs",
                extra / raw.cpu_us
            ),
            None => {
                println!("each extra matching subscription: {extra:.1} us of Redis CPU per event")
            }
        }
    }

    // Open loop at a fixed rate.
    let broker = fresh(&server, "b2", Others::None).await;
    let run = new_run();
    let total = (a.rate * a.seconds as f64) as u64;
    let consumers = start_consumers(&broker, &run, total);
    let profile = Profile::start(server.port());
    let started = Instant::now();
    let per_publisher = a.rate / PUBLISHERS as f64;
    let tick = Duration::from_millis(10);
    let per_tick = (per_publisher * tick.as_secs_f64()).max(1.0);
    let publishers: Vec<_> = (0..PUBLISHERS as u64)
        .map(|p| {
            let (broker, payload) = (broker.clone(), payload.clone());
            let mine = total / PUBLISHERS as u64;
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                let (mut sent, mut due) = (0u64, 0f64);
                while sent < mine {
                    interval.tick().await;
                    due += per_tick;
                    let n = (due as u64).min(mine) - sent;
                    if n == 0 {
                        continue;
                    }
                    let events = (sent..sent + n)
                        .map(|i| event(p * mine + i, &payload))
                        .collect();
                    sent += n;
                    broker
                        .publish_batch(events, PublishOptions::default())
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for p in publishers {
        let _ = p.await;
    }
    let total = (total / PUBLISHERS as u64) * PUBLISHERS as u64;
    wait_acked(&run, total, Duration::from_secs(120)).await;
    report(
        &format!("router durable, open loop at {:.0} events/s", a.rate),
        &run,
        started.elapsed(),
    );
    profile.print(server.port(), total, raw.as_ref());
    for c in consumers {
        c.abort();
    }
    broker.close().await;
}
