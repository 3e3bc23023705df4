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
//! With `--rate` the load is open-loop: a timer thread releases batch `g`
//! when its last event is due, whatever happened before, and each event's
//! latency counts from its own due time. A stall anywhere (a slow publish,
//! a full buffer, a pause) therefore shows up as latency instead of as a
//! lower send rate, so the percentiles are not coordinated-omission-blind.
//! Without `--rate` the publishers go as fast as the router delivers, with
//! at most `--window` events published but not yet delivered, and latency
//! counts from the actual send.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use event_router::broker::{MemoryBroker, SharedBroker};
use event_router::client::{Client, ClientError, ReconnectPolicy, Subscription};
use event_router::config::{self, Config};
use event_router::{Event, Router, server};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ApiClient, Endpoint, print_json, print_line};

/// The topic every bench event is published on.
pub const TOPIC: &str = "bench.load";
/// Highest latency the histogram holds (µs); longer ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How often the progress line is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often completion is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Lead time between setting up and the first scheduled event.
const START_LEAD: Duration = Duration::from_millis(20);
/// Bound of closing all clients at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
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
/// delivery keeps up. A progress line goes to stderr while running. Exits
/// 1 when events are lost, errors occur or --timeout passes first; the
/// report is printed either way.
#[derive(Debug, clap::Args)]
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

    /// Approximate JSON size of each event's payload, in bytes.
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

    /// Events per publish: 1 sends `publish` frames, more sends
    /// `publish_batch` frames of that many events.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub batch: usize,

    /// Without --rate: most events published but not yet delivered to
    /// (or dropped by) the slowest subscriber. Keep it below the router's
    /// live queue capacity (1024 by default) to measure without drops.
    #[arg(long, default_value_t = 1_000, value_name = "EVENTS")]
    pub window: u64,

    /// With --durable: most deliveries each subscriber holds un-acked.
    #[arg(long, default_value_t = 1_000, value_name = "N", requires = "durable")]
    pub prefetch: usize,

    /// With --embedded: per-subscriber live queue of the router, in events.
    #[arg(long, value_name = "EVENTS", requires = "embedded")]
    pub live_queue_capacity: Option<usize>,

    /// Stop waiting after this long and report what arrived (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = config::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.events == 0 {
            bail!("--events must be at least 1");
        }
        if self.publishers == 0 {
            bail!("--publishers must be at least 1");
        }
        if self.subscribers == 0 {
            bail!("--subscribers must be at least 1");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of events per second, got {rate}");
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
        usize::try_from(self.events)
            .ok()
            .filter(|n| n.checked_mul(self.subscribers).is_some())
            .ok_or_else(|| anyhow!("--events {} is too large", self.events))?;
        Ok(())
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

/// The report `bench` prints (and emits as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the load went: a `ws://` URL, or `in-process`.
    pub target: String,
    /// Whether the router was started by `bench` itself.
    pub embedded: bool,
    /// `live` or `durable`.
    pub mode: &'static str,
    /// The durable group, if any.
    pub group: Option<String>,
    /// Events to publish.
    pub events: u64,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Events per publish call.
    pub batch: usize,
    /// Open-loop rate in events/s, or `null` for closed loop.
    pub rate: Option<f64>,
    /// Approximate payload size in bytes.
    pub payload_bytes: usize,
    /// Events the router confirmed.
    pub published: u64,
    /// Deliveries expected: events × subscribers (live) or events (durable).
    pub expected: u64,
    /// Distinct deliveries that arrived (each event counted once per live
    /// subscriber, once per durable group).
    pub delivered: u64,
    /// Every delivery that arrived, repeats included.
    pub received: u64,
    /// `received - delivered`.
    pub duplicates: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Deliveries the router or the client dropped because a subscriber
    /// fell behind (included in `lost`).
    pub dropped: u64,
    /// Failed publish calls and subscriptions ended by an error.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Events of other runs seen on the topic (ignored).
    pub foreign: u64,
    /// Whether --timeout passed before everything arrived.
    pub timed_out: bool,
    /// Seconds from the first scheduled send to the last publish confirmation.
    pub publish_seconds: f64,
    /// Seconds from the first scheduled send to the last delivery.
    pub elapsed_seconds: f64,
    /// Confirmed events per second.
    pub publish_rate: f64,
    /// Distinct deliveries per second.
    pub delivery_rate: f64,
    /// End-to-end latency of the distinct deliveries, in milliseconds.
    pub latency_ms: Latency,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Deliveries measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                count: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
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
    let target = Target::start(&args).await?;
    let outcome = Bench::new(&args, &target).run().await;
    target.stop().await;
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

/// The router under load.
enum Target {
    Remote {
        url: String,
    },
    Embedded {
        router: Arc<Router>,
        url: String,
        token: CancellationToken,
        server: JoinHandle<std::io::Result<()>>,
        in_process: bool,
    },
}

impl Target {
    async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
        if !args.embedded {
            let api = ApiClient::new(&args.endpoint)?;
            return Ok(Target::Remote {
                url: api.ws_url("/ws"),
            });
        }
        let config = Config::default();
        let broker: SharedBroker = Arc::new(MemoryBroker::new(config.broker_config()));
        let router = Router::new(broker, config.router_config());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1:0 for the embedded router")?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let mut server_config = config.server_config();
        if let Some(n) = args.live_queue_capacity {
            server_config.live_queue_capacity = n.max(1);
        }
        let token = CancellationToken::new();
        let server = tokio::spawn(server::run(
            listener,
            server_config,
            router.clone(),
            token.clone(),
        ));
        Ok(Target::Embedded {
            router,
            url: format!("ws://{addr}/ws"),
            token,
            server,
            in_process: args.in_process,
        })
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

    async fn stop(self) {
        if let Target::Embedded { token, server, .. } = self {
            token.cancel();
            match tokio::time::timeout(CLOSE_TIMEOUT, server).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "embedded router failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "embedded router task failed"),
                _ => {}
            }
        }
    }
}

/// Which events one subscriber (live) or one group (durable) has seen.
struct Tracker {
    seen: Vec<AtomicU8>,
    distinct: AtomicU64,
    received: AtomicU64,
    /// Live: deliveries the router or client dropped for this subscriber.
    dropped: AtomicU64,
}

impl Tracker {
    fn new(events: usize) -> Tracker {
        Tracker {
            seen: (0..events).map(|_| AtomicU8::new(0)).collect(),
            distinct: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Marks event `k` seen; `true` the first time.
    fn mark(&self, k: usize) -> bool {
        self.received.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.seen.get(k) else {
            return false;
        };
        let first = slot
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .is_ok_and(|n| n == 0);
        if first {
            self.distinct.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    fn complete(&self) -> bool {
        self.distinct.load(Ordering::Relaxed) >= self.seen.len() as u64
    }

    /// Events that will not arrive any more: delivered or dropped.
    fn settled(&self) -> u64 {
        self.distinct.load(Ordering::Relaxed) + self.dropped.load(Ordering::Relaxed)
    }
}

/// Counters shared by every task of a run.
#[derive(Default)]
struct Shared {
    published: AtomicU64,
    /// Events handed to the client (closed-loop window accounting).
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    foreign: AtomicU64,
    /// Publishers that sent everything and got every answer.
    publishers_done: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Microseconds since the start of the last confirmation / delivery.
    last_publish_us: AtomicU64,
    last_delivery_us: AtomicU64,
    /// Woken as deliveries arrive, for the closed-loop window.
    progress: Notify,
}

impl Shared {
    fn error(&self, what: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(what.to_string());
        }
    }
}

/// One run: its settings, the shared counters and the trackers.
struct Bench<'a> {
    args: &'a BenchArgs,
    target: &'a Target,
    run_id: String,
    shared: Arc<Shared>,
    pad: String,
}

/// What a subscriber task hands back.
struct SubscriberResult {
    histogram: Histogram<u64>,
    dropped: u64,
}

impl<'a> Bench<'a> {
    fn new(args: &'a BenchArgs, target: &'a Target) -> Bench<'a> {
        let run_id = format!("{:08x}", rand::random::<u32>());
        let base = payload(&run_id, u64::MAX, u64::MAX, "").to_string().len() + 2;
        let pad = "x".repeat(args.payload_bytes.saturating_sub(base));
        Bench {
            args,
            target,
            run_id,
            shared: Arc::new(Shared::default()),
            pad,
        }
    }

    async fn run(self) -> anyhow::Result<Report> {
        let args = self.args;
        let events = args.events as usize;
        let trackers: Vec<Arc<Tracker>> = if args.durable() {
            vec![Arc::new(Tracker::new(events))]
        } else {
            (0..args.subscribers)
                .map(|_| Arc::new(Tracker::new(events)))
                .collect()
        };
        let mut clients = Vec::new();
        let mut subscriptions = Vec::new();
        for i in 0..args.subscribers {
            let client = self.target.client(args).await?;
            subscriptions.push(self.subscribe(&client).await?);
            clients.push((client, trackers[i % trackers.len()].clone()));
        }
        let mut publishers = Vec::new();
        for _ in 0..args.publishers {
            publishers.push(self.target.client(args).await?);
        }
        let start = Instant::now() + START_LEAD;
        let stop = CancellationToken::new();
        let subscriber_tasks: Vec<_> = subscriptions
            .into_iter()
            .zip(&clients)
            .map(|(sub, (_, tracker))| {
                let ctx = SubscriberCtx {
                    run_id: self.run_id.clone(),
                    shared: self.shared.clone(),
                    tracker: tracker.clone(),
                    start,
                    stop: stop.clone(),
                };
                tokio::spawn(subscriber(sub, ctx))
            })
            .collect();
        let publisher_tasks = self.spawn_publishers(&publishers, &trackers, start, &stop);
        let timed_out = self.wait(&trackers, start).await;
        stop.cancel();
        for task in publisher_tasks {
            task.abort();
        }
        let mut histogram = new_histogram();
        let mut dropped = 0;
        for task in subscriber_tasks {
            let result = task.await.context("a subscriber task failed")?;
            // Both histograms share bounds, so adding cannot fail.
            let _ = histogram.add(&result.histogram);
            dropped += result.dropped;
        }
        let all = clients
            .iter()
            .map(|(c, _)| c)
            .chain(&publishers)
            .map(Client::close);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures::future::join_all(all)).await;
        Ok(self.report(&trackers, &histogram, dropped, timed_out))
    }

    async fn subscribe(&self, client: &Client) -> anyhow::Result<Subscription> {
        let builder = client.subscribe(TOPIC);
        let builder = match &self.args.durable {
            Some(group) => builder
                .group(group.clone())
                .max_in_flight(self.args.prefetch),
            None => builder,
        };
        builder
            .start()
            .await
            .with_context(|| format!("cannot subscribe to {TOPIC}"))
    }

    fn spawn_publishers(
        &self,
        publishers: &[Client],
        trackers: &[Arc<Tracker>],
        start: Instant,
        stop: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let args = self.args;
        let batch = args.batch as u64;
        let batches = args.events.div_ceil(batch);
        let p = publishers.len() as u64;
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for (i, client) in publishers.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            let ctx = PublisherCtx {
                client: client.clone(),
                run_id: self.run_id.clone(),
                pad: self.pad.clone(),
                shared: self.shared.clone(),
                start,
                events: args.events,
                batch,
                rate: args.rate,
                window: args.window,
                trackers: trackers.to_vec(),
            };
            let own: Vec<u64> = (i as u64..batches).step_by(p as usize).collect();
            tasks.push(tokio::spawn(publisher(ctx, own, rx, stop.clone())));
        }
        match args.rate {
            Some(rate) => spawn_ticker(senders, start, rate, args.events, batch, stop.clone()),
            // Closed loop: every batch is released at once; the window paces.
            None => {
                for g in 0..batches {
                    let _ = senders[(g % p) as usize].send(g);
                }
            }
        }
        tasks
    }

    /// Waits until every tracker is complete and every publish answered,
    /// or the timeout passes, printing progress. `true` on timeout.
    async fn wait(&self, trackers: &[Arc<Tracker>], start: Instant) -> bool {
        let deadline = start + self.args.timeout;
        let mut progress = Progress::new(!self.args.quiet, self.args.events * self.args.fan_out());
        let publishers = self.args.publishers as u64;
        loop {
            // Done when every publish is answered and every event arrived
            // or was reported dropped: nothing more can come.
            let events = self.args.events;
            if trackers.iter().all(|t| t.settled() >= events)
                && self.shared.publishers_done.load(Ordering::Relaxed) >= publishers
            {
                progress.finish(&self.shared, self.args.events);
                return false;
            }
            if Instant::now() >= deadline {
                progress.finish(&self.shared, self.args.events);
                return true;
            }
            progress.tick(&self.shared, self.args.events, start);
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn report(
        &self,
        trackers: &[Arc<Tracker>],
        histogram: &Histogram<u64>,
        dropped: u64,
        timed_out: bool,
    ) -> Report {
        let args = self.args;
        let shared = &self.shared;
        let delivered: u64 = trackers
            .iter()
            .map(|t| t.distinct.load(Ordering::Relaxed))
            .sum();
        let received: u64 = trackers
            .iter()
            .map(|t| t.received.load(Ordering::Relaxed))
            .sum();
        let expected = args.events * args.fan_out();
        let published = shared.published.load(Ordering::Relaxed);
        let secs = |us: u64| us as f64 / 1e6;
        let publish_seconds = secs(shared.last_publish_us.load(Ordering::Relaxed));
        let elapsed_seconds = secs(shared.last_delivery_us.load(Ordering::Relaxed));
        let per_second = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Report {
            target: self.target.describe(),
            embedded: args.embedded,
            mode: if args.durable() { "durable" } else { "live" },
            group: args.durable.clone(),
            events: args.events,
            publishers: args.publishers,
            subscribers: args.subscribers,
            batch: args.batch,
            rate: args.rate,
            payload_bytes: args.payload_bytes,
            published,
            expected,
            delivered,
            received,
            duplicates: received.saturating_sub(delivered),
            lost: expected.saturating_sub(delivered),
            dropped,
            errors: shared.errors.load(Ordering::Relaxed),
            first_error: shared.first_error.lock().clone(),
            foreign: shared.foreign.load(Ordering::Relaxed),
            timed_out,
            publish_seconds,
            elapsed_seconds,
            publish_rate: per_second(published, publish_seconds),
            delivery_rate: per_second(delivered, elapsed_seconds),
            latency_ms: Latency::of(histogram),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Cannot fail: 1 ≤ low, high ≥ 2·low and 3 significant figures are valid.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn payload(run_id: &str, k: u64, t: u64, pad: &str) -> Value {
    if pad.is_empty() {
        json!({"run": run_id, "k": k, "t": t})
    } else {
        json!({"run": run_id, "k": k, "t": t, "pad": pad})
    }
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX)
}

/// Releases batch numbers to the publishers on the open-loop schedule:
/// batch `g` when its last event is due. A plain thread, because its
/// sleeps are precise to tens of microseconds where the async timer
/// rounds to milliseconds.
fn spawn_ticker(
    senders: Vec<mpsc::UnboundedSender<u64>>,
    start: Instant,
    rate: f64,
    events: u64,
    batch: u64,
    stop: CancellationToken,
) {
    let p = senders.len() as u64;
    std::thread::spawn(move || {
        let batches = events.div_ceil(batch);
        for g in 0..batches {
            let last = ((g + 1) * batch).min(events) - 1;
            let due = start + Duration::from_secs_f64(last as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if stop.is_cancelled() {
                return;
            }
            let _ = senders[(g % p) as usize].send(g);
        }
    });
}

struct PublisherCtx {
    client: Client,
    run_id: String,
    pad: String,
    shared: Arc<Shared>,
    start: Instant,
    events: u64,
    batch: u64,
    rate: Option<f64>,
    window: u64,
    trackers: Vec<Arc<Tracker>>,
}

impl PublisherCtx {
    /// The events of batch `g`, stamped with their intended send times.
    fn batch_events(&self, g: u64) -> Vec<Event> {
        let first = g * self.batch;
        let last = ((g + 1) * self.batch).min(self.events);
        let now = micros_since(self.start);
        (first..last)
            .filter_map(|k| {
                let t = match self.rate {
                    Some(rate) => (k as f64 / rate * 1e6) as u64,
                    None => now,
                };
                let payload = payload(&self.run_id, k, t, &self.pad);
                match Event::new(TOPIC, payload) {
                    Ok(event) => Some(event),
                    Err(e) => {
                        self.shared.error(format!("cannot build an event: {e}"));
                        None
                    }
                }
            })
            .collect()
    }

    /// Closed loop: waits until fewer than `window` events are on their
    /// way to the slowest subscriber.
    async fn wait_for_window(&self, adding: u64, stop: &CancellationToken) {
        let shared = &self.shared;
        while !stop.is_cancelled() {
            let notified = shared.progress.notified();
            let sent = shared.sent.load(Ordering::Relaxed);
            let settled = self.trackers.iter().map(|t| t.settled()).min().unwrap_or(0);
            if sent + adding <= settled + self.window.max(adding) {
                return;
            }
            // Bounded wait: a wake-up between the load and here is not lost
            // for long.
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
    }

    async fn send(client: Client, mut events: Vec<Event>) -> (usize, Result<(), ClientError>) {
        let n = events.len();
        let result = if n == 1 {
            let event = events.pop().map(|e| client.publish_with(e));
            match event {
                Some(fut) => fut.await.map(|_| ()),
                None => Ok(()),
            }
        } else {
            client.publish_batch(events, false).await.map(|_| ())
        };
        (n, result)
    }
}

async fn publisher(
    ctx: PublisherCtx,
    own: Vec<u64>,
    mut release: mpsc::UnboundedReceiver<u64>,
    stop: CancellationToken,
) {
    let max_calls = (ctx.window / ctx.batch).max(1) as usize;
    let mut in_flight = FuturesUnordered::new();
    let mut remaining = own.len();
    let settle =
        |joined: Result<(usize, Result<(), ClientError>), tokio::task::JoinError>| match joined {
            Err(e) => ctx.shared.error(format!("a publish task failed: {e}")),
            Ok((_, Err(e))) => ctx.shared.error(format!("publish failed: {e}")),
            Ok((n, Ok(()))) => {
                ctx.shared.published.fetch_add(n as u64, Ordering::Relaxed);
                ctx.shared
                    .last_publish_us
                    .fetch_max(micros_since(ctx.start), Ordering::Relaxed);
            }
        };
    while remaining > 0 {
        let g = tokio::select! {
            () = stop.cancelled() => return,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                settle(done);
                continue;
            }
            g = release.recv() => match g {
                Some(g) => g,
                None => break,
            },
        };
        remaining -= 1;
        let events = ctx.batch_events(g);
        let n = events.len() as u64;
        if ctx.rate.is_none() {
            ctx.wait_for_window(n, &stop).await;
            while in_flight.len() >= max_calls {
                if let Some(done) = in_flight.next().await {
                    settle(done);
                }
            }
        }
        ctx.shared.sent.fetch_add(n, Ordering::Relaxed);
        // A task of its own, so that the call is sent now and progresses
        // while this loop waits for the schedule or the window.
        in_flight.push(tokio::spawn(PublisherCtx::send(ctx.client.clone(), events)));
    }
    while let Some(done) = tokio::select! {
        () = stop.cancelled() => return,
        done = in_flight.next() => done,
    } {
        settle(done);
    }
    ctx.shared.publishers_done.fetch_add(1, Ordering::Relaxed);
}

struct SubscriberCtx {
    run_id: String,
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    start: Instant,
    stop: CancellationToken,
}

async fn subscriber(mut sub: Subscription, ctx: SubscriberCtx) -> SubscriberResult {
    let mut histogram = new_histogram();
    let mut since_notify = 0u32;
    // Drops are reported by the router on the connection; publish them for
    // the window even while nothing else arrives.
    let mut drops = tokio::time::interval(POLL_INTERVAL);
    loop {
        let received = tokio::select! {
            () = ctx.stop.cancelled() => break,
            _ = drops.tick() => {
                if !sub.is_durable() {
                    ctx.tracker.dropped.store(sub.dropped(), Ordering::Relaxed);
                    ctx.shared.progress.notify_waiters();
                }
                continue;
            }
            r = sub.recv() => r,
        };
        let Some(received) = received else {
            if let Some(e) = sub.error() {
                ctx.shared.error(format!("subscription ended: {e}"));
            }
            break;
        };
        let now = micros_since(ctx.start);
        match fields(&received.event.payload, &ctx.run_id) {
            Some((k, t)) => {
                if ctx.tracker.mark(k as usize) {
                    histogram.saturating_record(now.saturating_sub(t).max(1));
                    ctx.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    ctx.shared
                        .last_delivery_us
                        .fetch_max(now, Ordering::Relaxed);
                }
            }
            None => {
                ctx.shared.foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
        if received.is_durable()
            && let Err(e) = received.ack().await
        {
            ctx.shared.error(format!("ack failed: {e}"));
        }
        since_notify += 1;
        if since_notify >= 64 || ctx.tracker.complete() {
            since_notify = 0;
            ctx.shared.progress.notify_waiters();
        }
    }
    SubscriberResult {
        histogram,
        dropped: sub.dropped(),
    }
}

/// `(k, t)` of an event of this run.
fn fields(payload: &Value, run_id: &str) -> Option<(u64, u64)> {
    let map: &Map<String, Value> = payload.as_object()?;
    if map.get("run")?.as_str()? != run_id {
        return None;
    }
    Some((map.get("k")?.as_u64()?, map.get("t")?.as_u64()?))
}

/// The progress line on stderr: rewritten in place on a terminal, one line
/// per interval otherwise.
struct Progress {
    enabled: bool,
    terminal: bool,
    expected: u64,
    next: Instant,
}

impl Progress {
    fn new(enabled: bool, expected: u64) -> Progress {
        Progress {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            expected,
            next: Instant::now() + PROGRESS_INTERVAL,
        }
    }

    fn line(&self, shared: &Shared, events: u64) -> String {
        let published = shared.published.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let pct = delivered as f64 * 100.0 / self.expected.max(1) as f64;
        format!(
            "bench: published {published}/{events}  delivered {delivered}/{} ({pct:.0}%)  errors {errors}",
            self.expected
        )
    }

    fn tick(&mut self, shared: &Shared, events: u64, start: Instant) {
        if !self.enabled || Instant::now() < self.next {
            return;
        }
        self.next += PROGRESS_INTERVAL;
        let elapsed = Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64();
        let line = format!("{}  {elapsed:.0}s", self.line(shared, events));
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn finish(&mut self, shared: &Shared, events: u64) {
        if !self.enabled {
            return;
        }
        let line = self.line(shared, events);
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            writeln!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// The human-readable report.
fn render(r: &Report) -> String {
    let load = match r.rate {
        Some(rate) => format!("open loop at {rate:.0} events/s"),
        None => "closed loop".to_string(),
    };
    let mode = match &r.group {
        Some(group) => format!("durable group {group}"),
        None => "live".to_string(),
    };
    let l = &r.latency_ms;
    [
        format!(
            "event-router bench: {} events, {} publisher(s) -> {} subscriber(s) ({mode}), batch {}, {load}, payload ~{} B",
            r.events, r.publishers, r.subscribers, r.batch, r.payload_bytes
        ),
        format!(
            "target:     {}{}",
            r.target,
            if r.embedded { " (embedded)" } else { "" }
        ),
        format!(
            "published:  {} in {:.3} s = {:.0} events/s",
            r.published, r.publish_seconds, r.publish_rate
        ),
        format!(
            "delivered:  {}/{} in {:.3} s = {:.0} events/s",
            r.delivered, r.expected, r.elapsed_seconds, r.delivery_rate
        ),
        format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n={})",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean, l.count
        ),
        format!(
            "problems:   lost {}  duplicates {}  dropped {}  errors {}{}",
            r.lost,
            r.duplicates,
            r.dropped,
            r.errors,
            if r.timed_out { "  (timed out)" } else { "" }
        ),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
    fn nonsense_is_rejected_with_the_flag_named() {
        for (argv, flag) in [
            (vec!["--events", "0"], "--events"),
            (vec!["--batch", "0"], "--batch"),
            (vec!["--rate=-5"], "--rate"),
            (vec!["--publishers", "0"], "--publishers"),
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
