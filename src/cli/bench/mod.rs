//! `event-router bench`: load a router with publishers and subscribers and
//! report throughput, latency and losses.
//!
//! The load goes through the Rust client ([`event_router::client`]), one
//! connection per publisher and per subscriber, so the figures are what an
//! application sees. Every event carries this run's id, its sequence
//! number `k` and the microsecond it was meant to be sent (`t`, relative to
//! the start of the run); subscribers record `arrival - t` in an
//! HdrHistogram and mark `k` as seen, which yields lost and duplicate counts
//! exactly.
//!
//! With `--rate` the load is open-loop: a pacing task releases batch `g`
//! when its last event is due, whatever happened before, and each event's
//! latency counts from its own due time. A stall anywhere (a slow publish,
//! a full buffer, a pause) therefore shows up as latency instead of as a
//! lower send rate, so the percentiles are not coordinated-omission-blind.
//! Without `--rate` the publishers go as fast as the router delivers, with
//! at most `--window` events published but not yet delivered, and latency
//! counts from the actual send.
//!
//! This file holds the arguments, the router under load (`Target`) and
//! the verdict; `load.rs` runs the publishers, subscribers and progress
//! line; `report.rs` is the report and its rendering.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use event_router::broker::{MemoryBroker, SharedBroker};
use event_router::client::{Client, ReconnectPolicy};
use event_router::config::{self, Config};
use event_router::router::MAX_BATCH_EVENTS;
use event_router::{Router, server};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod load;
mod pace;
mod report;

pub use report::Report;

use load::Bench;
use report::render;

use super::{ApiClient, Endpoint, print_json, print_line};

/// The topic every bench event is published on.
pub const TOPIC: &str = "bench.load";

/// A `--topic` value: a valid topic.
fn parse_topic(text: &str) -> Result<String, String> {
    event_router::topic::validate_topic(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}
/// Highest latency the histogram holds (µs); longer ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How often the progress line is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often completion is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Lead time between setting up and the first scheduled event.
const START_LEAD: Duration = Duration::from_millis(20);
/// Bound of the warm-up phase.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of closing all clients at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `--publishers` or `--subscribers`.
const MAX_CONNECTIONS: u64 = 10_000;
/// Most `--window`.
const MAX_WINDOW: u64 = 10_000_000;
/// Most `--warmup` events (built at once, awaited within 10 s).
const MAX_WARMUP: u64 = 1_000_000;
/// Most `--client-threads` or `--router-threads`.
const MAX_THREADS: u64 = 1_024;
/// Most deliveries a run tracks (`--events` x `--subscribers`; a byte each).
const MAX_DELIVERIES: u64 = 1 << 32;
/// Longest open-loop schedule `--rate` may ask for.
const MAX_SCHEDULE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Client-side queue of each subscriber, in deliveries.
const SUBSCRIBER_QUEUE: usize = 1 << 16;

/// Measure what a router can do: throughput, end-to-end latency, losses.
///
/// Connects P publishers and C subscribers over WebSocket to the router at
/// --url (or to one started in this process with --embedded), publishes
/// --events events on topic `bench.load`, and reports publish and delivery
/// throughput, latency percentiles (p50, p90, p99, p99.9, max; from each
/// event's intended send time to its arrival) and errors, lost and
/// duplicate deliveries. Live subscribers each get every event; with
/// --durable the subscribers share one durable group (each event delivered
/// once to one of them, acked).
///
/// With --rate the load is open-loop (events sent on schedule whatever
/// happens, latency counted from the schedule); without it, as fast as
/// delivery keeps up. --warmup events go through the same connections first
/// and are not counted. A progress line goes to stderr while running. Exits
/// 1 when events are lost, errors occur or --timeout passes first; the
/// report is printed either way.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router bench --embedded                                  # 100000 events, batches of 100\n  \
    event-router bench --embedded --batch 1 --rate 10000 --events 100000\n  \
    event-router bench --url http://127.0.0.1:8080 --publishers 2 --subscribers 4 --json\n  \
    event-router bench --embedded --durable bench-workers --subscribers 2 --batch 100")]
pub struct BenchArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,

    /// Start a router on the in-memory broker in this process (on
    /// 127.0.0.1:0) and load it over WebSocket instead of --url.
    #[arg(long)]
    pub embedded: bool,

    /// With --embedded: connect the clients in-process (no socket), to
    /// measure the router without the network.
    #[arg(long, requires = "embedded")]
    pub in_process: bool,

    /// Events to publish in total.
    #[arg(short = 'n', long, default_value_t = 100_000, value_name = "N")]
    pub events: u64,

    /// Events per second over all publishers (open-loop); unset means as
    /// fast as delivery keeps up.
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub rate: Option<f64>,

    /// Approximate JSON size of each event's payload, in bytes (at most
    /// 1048576, a router's default payload limit).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub payload_bytes: usize,

    /// Publisher connections.
    #[arg(short = 'p', long, default_value_t = 1, value_name = "P")]
    pub publishers: usize,

    /// Subscriber connections.
    #[arg(short = 'c', long, default_value_t = 1, value_name = "C")]
    pub subscribers: usize,

    /// Subscribers join durable group G (created if absent) and ack each
    /// delivery; the group gets each event once.
    #[arg(long, value_name = "G")]
    pub durable: Option<String>,

    /// Topic the events are published on and subscribed to (runs with
    /// different topics on one router do not see each other's events).
    #[arg(long, default_value = TOPIC, value_name = "TOPIC", value_parser = parse_topic)]
    pub topic: String,

    /// Events per publish: 1 sends `publish` frames, more sends
    /// `publish_batch` frames of that many events (at most 10000, a
    /// router's batch limit).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub batch: usize,

    /// Without --rate: most events published but not yet delivered to
    /// (or dropped by) the slowest subscriber. Keep it below the router's
    /// live queue capacity (1024 by default) to measure without drops.
    #[arg(long, default_value_t = 1_000, value_name = "EVENTS")]
    pub window: u64,

    /// Events sent (and awaited) before the measured run, so one-time costs
    /// stay out of the figures; not counted in the report. 0 turns it off.
    #[arg(long, default_value_t = 1_000, value_name = "EVENTS")]
    pub warmup: u64,

    /// With --durable: most deliveries each subscriber holds un-acked.
    #[arg(long, default_value_t = 1_000, value_name = "N", requires = "durable")]
    pub prefetch: usize,

    /// With --embedded: per-subscriber live queue of the router, in events.
    #[arg(long, value_name = "EVENTS", requires = "embedded")]
    pub live_queue_capacity: Option<usize>,

    /// Stop waiting after this long and report what arrived (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = config::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Threads the publishers and subscribers run on (a runtime of their
    /// own, apart from an --embedded router's workers). Default: 1 with
    /// --rate (the fewest wake-ups per event, so latency is the router's),
    /// otherwise the machine's cores (so batched load keeps up).
    #[arg(long, value_name = "N")]
    pub client_threads: Option<usize>,

    /// Worker threads of an --embedded router (a runtime of its own).
    /// Default: the cores the clients' threads leave free, so that load
    /// generator and router do not take turns on one core; all cores when
    /// the clients leave none.
    #[arg(long, value_name = "N", requires = "embedded")]
    pub router_threads: Option<usize>,

    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        // Bounds that keep the run's own memory and threads sane: each
        // expected delivery takes a byte of tracking, each event in flight
        // its payload, each connection and thread its buffers.
        let at_most = |flag: &str, value: u64, max: u64| {
            if value > max {
                bail!("{flag} must be at most {max}, got {value}");
            }
            Ok(())
        };
        let count = |flag: &str, value: u64, max: u64| {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
            at_most(flag, value, max)
        };
        count("--events", self.events, u64::MAX)?;
        count("--publishers", self.publishers as u64, MAX_CONNECTIONS)?;
        count("--subscribers", self.subscribers as u64, MAX_CONNECTIONS)?;
        count("--batch", self.batch as u64, MAX_BATCH_EVENTS as u64)?;
        count("--window", self.window, MAX_WINDOW)?;
        for (flag, threads) in [
            ("--client-threads", self.client_threads),
            ("--router-threads", self.router_threads),
        ] {
            if let Some(n) = threads {
                count(flag, n as u64, MAX_THREADS)?;
            }
        }
        at_most("--warmup", self.warmup, MAX_WARMUP)?;
        at_most(
            "--payload-bytes",
            self.payload_bytes as u64,
            config::DEFAULT_MAX_PAYLOAD_BYTES.get() as u64,
        )?;
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of events per second, got {rate}");
            }
            // The schedule's last due time (and one batch's period) must
            // be a time the clock can hold.
            let span = self.events.max(self.batch as u64);
            let seconds = span as f64 / rate;
            if seconds > MAX_SCHEDULE.as_secs_f64() {
                bail!(
                    "--rate is too slow: {span} events at {rate:e} events/s would take \
                     longer than {} days",
                    MAX_SCHEDULE.as_secs() / 86_400
                );
            }
        }
        if self.prefetch == 0 || self.prefetch > server::session::MAX_IN_FLIGHT_LIMIT {
            bail!(
                "--prefetch must be between 1 and {}",
                server::session::MAX_IN_FLIGHT_LIMIT
            );
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be longer than 0s");
        }
        let deliveries = self.events.saturating_mul(self.subscribers as u64);
        if deliveries > MAX_DELIVERIES {
            bail!(
                "--events {} x --subscribers {} is {deliveries} deliveries to track, \
                 over the limit of {MAX_DELIVERIES}",
                self.events,
                self.subscribers
            );
        }
        Ok(())
    }

    /// Threads of the clients' runtime.
    fn client_threads(&self) -> usize {
        self.client_threads.unwrap_or_else(|| match self.rate {
            Some(_) => 1,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        })
    }

    /// Worker threads of an embedded router's runtime.
    fn router_threads(&self) -> usize {
        self.router_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            match cores.saturating_sub(self.client_threads()) {
                0 => cores,
                free => free,
            }
        })
    }

    fn durable(&self) -> bool {
        self.durable.is_some()
    }

    /// How many times each event is expected to arrive.
    fn fan_out(&self) -> u64 {
        if self.durable() {
            1
        } else {
            self.subscribers as u64
        }
    }
}

/// Runs `bench`.
///
/// # Errors
/// Invalid arguments, an unreachable router, or a run that lost events,
/// hit errors or timed out (after printing the report).
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    args.validate()?;
    let (target, server) = Target::start(&args).await?;
    let outcome = run_clients(args.clone(), target).await;
    if let Some(server) = server {
        server.stop().await;
    }
    let report = outcome?;
    if args.json {
        print_json(&serde_json::to_value(&report).context("cannot encode the report")?)?;
    } else {
        print_line(&render(&report)).context("cannot write to stdout")?;
    }
    verdict(&report, args.timeout)?;
    Ok(ExitCode::SUCCESS)
}

/// Errors only on stderr (`RUST_LOG` overrides): the client's warnings
/// about drops would repeat what the report counts.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    // Fails only if a subscriber is already set, which then keeps working.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Why a run failed, or `Ok` when everything arrived.
fn verdict(report: &Report, timeout: Duration) -> anyhow::Result<()> {
    if report.errors > 0 {
        bail!(
            "{} errors; first: {}",
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        );
    }
    if report.lost > 0 {
        let why = if report.timed_out {
            format!(
                " (--timeout {} passed first)",
                config::format_duration(timeout)
            )
        } else {
            String::new()
        };
        bail!(
            "{} of {} deliveries lost{why}; {} dropped by slow subscribers",
            report.lost,
            report.expected,
            report.dropped
        );
    }
    if report.duplicates > 0 && report.mode == "live" {
        bail!("{} live deliveries arrived twice", report.duplicates);
    }
    Ok(())
}

/// Runs the publishers and subscribers on a runtime of their own (one
/// thread, or `--client-threads`), so that the load generator and an
/// embedded router do not wake each other's worker threads.
async fn run_clients(args: BenchArgs, target: Target) -> anyhow::Result<Report> {
    let threads = args.client_threads();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-clients".into())
        .spawn(move || {
            let mut builder = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads).thread_name("bench-client");
                builder
            };
            let outcome = builder
                .enable_all()
                .build()
                .context("cannot start the clients' runtime")
                .and_then(|runtime| runtime.block_on(Bench::new(&args, &target).run()));
            let _ = tx.send(outcome);
        })
        .context("cannot start the clients' thread")?;
    rx.await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the clients' thread panicked")))
}

/// The embedded router: its server task on a runtime of its own.
struct EmbeddedServer {
    token: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    /// Shut down without blocking when this is dropped (a runtime must
    /// not be dropped plainly inside another one).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Connection tasks still closing are dropped with it.
            runtime.shutdown_background();
        }
    }
}

impl EmbeddedServer {
    async fn stop(mut self) {
        self.token.cancel();
        match tokio::time::timeout(CLOSE_TIMEOUT, &mut self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "embedded router failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "embedded router task failed"),
            _ => {}
        }
    }
}

/// The router under load, as its clients reach it.
#[derive(Clone)]
enum Target {
    Remote {
        url: String,
    },
    Embedded {
        router: Arc<Router>,
        url: String,
        in_process: bool,
    },
}

impl Target {
    async fn start(args: &BenchArgs) -> anyhow::Result<(Target, Option<EmbeddedServer>)> {
        if !args.embedded {
            let api = ApiClient::new(&args.endpoint)?;
            let target = Target::Remote {
                url: api.ws_url("/ws"),
            };
            return Ok((target, None));
        }
        let config = Config::default();
        let broker: SharedBroker = Arc::new(MemoryBroker::new(config.broker_config()));
        let router = Router::new(broker, config.router_config());
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .context("cannot listen on 127.0.0.1:0 for the embedded router")?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.router_threads())
            .thread_name("router-worker")
            .enable_all()
            .build()
            .context("cannot start the embedded router's runtime")?;
        let mut server_config = config.server_config();
        if let Some(n) = args.live_queue_capacity {
            server_config.live_queue_capacity = n.max(1);
        }
        let token = CancellationToken::new();
        let server = runtime.spawn({
            let (router, token) = (router.clone(), token.clone());
            async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                server::run(listener, server_config, router, token).await
            }
        });
        let target = Target::Embedded {
            router,
            url: format!("ws://{addr}/ws"),
            in_process: args.in_process,
        };
        Ok((
            target,
            Some(EmbeddedServer {
                token,
                server,
                runtime: Some(runtime),
            }),
        ))
    }

    fn describe(&self) -> String {
        match self {
            Target::Embedded {
                in_process: true, ..
            } => "in-process".into(),
            // Without the query, which may carry a token.
            Target::Remote { url } | Target::Embedded { url, .. } => {
                url.split('?').next().unwrap_or(url).to_string()
            }
        }
    }

    /// A client of the target.
    async fn client(&self, args: &BenchArgs) -> anyhow::Result<Client> {
        let buffer = (args.window as usize)
            .max(args.batch.saturating_mul(64))
            .max(event_router::client::DEFAULT_BUFFER_CAPACITY);
        let builder = Client::builder()
            .buffer_capacity(buffer)
            .queue_capacity(SUBSCRIBER_QUEUE)
            .publish_timeout(args.timeout)
            .connect_timeout(Duration::from_secs(5))
            .reconnect(ReconnectPolicy {
                max_attempts: Some(3),
                ..ReconnectPolicy::default()
            });
        match self {
            Target::Embedded {
                router,
                in_process: true,
                ..
            } => Ok(builder.in_process(router.clone())),
            Target::Remote { url } | Target::Embedded { url, .. } => builder
                .url(url.clone())
                .build()
                .await
                .with_context(|| format!("cannot connect to the router at {url}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::load::{Tracker, fields, new_histogram, payload};
    use super::report::Latency;
    use super::*;
    use clap::Parser;
    use serde_json::json;
    use std::sync::atomic::Ordering;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(argv: &[&str]) -> Result<BenchArgs, String> {
        let mut all = vec!["bench"];
        all.extend_from_slice(argv);
        Wrapper::try_parse_from(all)
            .map(|w| w.bench)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_live() {
        let a = args(&[]).unwrap();
        a.validate().unwrap();
        assert_eq!((a.events, a.batch, a.fan_out()), (100_000, 100, 1));
        let a = args(&["--subscribers", "3"]).unwrap();
        assert_eq!(a.fan_out(), 3);
        let a = args(&["--subscribers", "3", "--durable", "g"]).unwrap();
        assert_eq!(a.fan_out(), 1);
    }

    #[test]
    fn open_loop_clients_share_one_thread_unless_told_otherwise() {
        assert_eq!(args(&["--rate", "100"]).unwrap().client_threads(), 1);
        let closed = args(&[]).unwrap().client_threads();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(closed, cores);
        let told = args(&["--rate", "100", "--client-threads", "3"]).unwrap();
        assert_eq!(told.client_threads(), 3);
    }

    #[test]
    fn an_embedded_router_gets_the_cores_the_clients_leave() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let open = args(&["--embedded", "--rate", "100"]).unwrap();
        let free = if cores > 1 { cores - 1 } else { cores };
        assert_eq!(open.router_threads(), free);
        let closed = args(&["--embedded"]).unwrap();
        assert_eq!(
            closed.router_threads(),
            cores,
            "clients on every core share them"
        );
        let told = args(&["--embedded", "--router-threads", "3"]).unwrap();
        assert_eq!(told.router_threads(), 3);
        assert!(
            args(&["--router-threads", "1"]).is_err(),
            "--router-threads needs --embedded"
        );
    }

    #[test]
    fn nonsense_is_rejected_with_the_flag_named() {
        for (argv, flag) in [
            (vec!["--events", "0"], "--events"),
            (vec!["--batch", "0"], "--batch"),
            (vec!["--rate=-5"], "--rate"),
            (vec!["--rate", "1e-300", "--events", "2"], "--rate"),
            (vec!["--rate", "0.001", "--batch", "10000"], "--rate"),
            (vec!["--events", "18446744073709551615"], "--events"),
            (vec!["--window", "18446744073709551615"], "--window"),
            (vec!["--warmup", "18446744073709551615"], "--warmup"),
            (vec!["--payload-bytes", "1000000000000"], "--payload-bytes"),
            (vec!["--batch", "10001"], "--batch"),
            (vec!["--subscribers", "10001"], "--subscribers"),
            (vec!["--client-threads", "100000"], "--client-threads"),
            (vec!["--publishers", "0"], "--publishers"),
            (vec!["--client-threads", "0"], "--client-threads"),
            (
                vec!["--embedded", "--router-threads", "0"],
                "--router-threads",
            ),
        ] {
            let e = args(&argv).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{argv:?}: {e}");
        }
        assert!(
            args(&["--in-process"]).is_err(),
            "--in-process needs --embedded"
        );
        assert!(args(&["--timeout", "soon"]).is_err());
    }

    #[test]
    fn a_tracker_counts_distinct_and_repeated_events() {
        let t = Tracker::new(3);
        assert!(t.mark(0));
        assert!(!t.mark(0));
        assert!(t.mark(2));
        assert!(!t.mark(7), "out of range is not counted as distinct");
        assert!(!t.complete());
        assert!(t.mark(1));
        assert!(t.complete());
        assert_eq!(t.received.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn payload_fields_round_trip_and_other_runs_are_foreign() {
        let p = payload("abc", 5, 1234, "xx");
        assert_eq!(fields(&p, "abc"), Some((5, 1234)));
        assert_eq!(fields(&p, "other"), None);
        assert_eq!(fields(&json!("text"), "abc"), None);
    }

    #[test]
    fn the_verdict_fails_on_loss_errors_and_live_duplicates() {
        let h = new_histogram();
        let mut r = Report {
            target: "x".into(),
            embedded: true,
            mode: "live",
            group: None,
            events: 10,
            publishers: 1,
            subscribers: 1,
            batch: 1,
            rate: None,
            payload_bytes: 64,
            published: 10,
            expected: 10,
            delivered: 10,
            received: 10,
            duplicates: 0,
            lost: 0,
            dropped: 0,
            errors: 0,
            first_error: None,
            foreign: 0,
            timed_out: false,
            publish_seconds: 1.0,
            elapsed_seconds: 1.0,
            publish_rate: 10.0,
            delivery_rate: 10.0,
            latency_ms: Latency::of(&h),
        };
        verdict(&r, Duration::from_secs(1)).unwrap();
        assert!(render(&r).contains("delivered:  10/10"));
        r.lost = 2;
        r.timed_out = true;
        let e = verdict(&r, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(
            e.contains("2 of 10 deliveries lost") && e.contains("--timeout 1s"),
            "{e}"
        );
        r.lost = 0;
        r.duplicates = 1;
        assert!(verdict(&r, Duration::from_secs(1)).is_err());
        r.mode = "durable";
        verdict(&r, Duration::from_secs(1)).unwrap();
        r.errors = 1;
        r.first_error = Some("boom".into());
        assert!(
            verdict(&r, Duration::from_secs(1))
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
    }
}
