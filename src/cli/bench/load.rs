//! One `bench` run: the publisher and subscriber tasks, the open-loop
//! pacing task, the trackers that count what arrived, and the progress line.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use event_router::Event;
use event_router::client::{Client, ClientError, Subscription};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pace::Pacer;
use super::report::{Latency, Report};
use super::{
    BenchArgs, CLOSE_TIMEOUT, MAX_LATENCY_US, POLL_INTERVAL, PROGRESS_INTERVAL, START_LEAD, Target,
    WARMUP_TIMEOUT,
};

/// Which events one subscriber (live) or one group (durable) has seen.
pub(super) struct Tracker {
    seen: Vec<AtomicU8>,
    distinct: AtomicU64,
    pub(super) received: AtomicU64,
    /// Live: deliveries the router or client dropped for this subscriber.
    dropped: AtomicU64,
}

impl Tracker {
    pub(super) fn new(events: usize) -> Tracker {
        Tracker {
            seen: (0..events).map(|_| AtomicU8::new(0)).collect(),
            distinct: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Marks event `k` seen; `true` the first time.
    pub(super) fn mark(&self, k: usize) -> bool {
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

    pub(super) fn complete(&self) -> bool {
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
pub(super) struct Bench<'a> {
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
    pub(super) fn new(args: &'a BenchArgs, target: &'a Target) -> Bench<'a> {
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

    pub(super) async fn run(self) -> anyhow::Result<Report> {
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
        self.warm_up(&publishers, &mut subscriptions).await?;
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
        let publisher_tasks = self.spawn_publishers(&publishers, &trackers, start, &stop)?;
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

    /// Sends `--warmup` events through every connection and subscription
    /// the run uses and waits (at most [`WARMUP_TIMEOUT`]) until they
    /// arrive, so that one-time costs (first allocations, lazily built
    /// state, TCP windows) stay out of the measured latencies. Warm-up
    /// events carry their own run id; late ones count as foreign.
    async fn warm_up(
        &self,
        publishers: &[Client],
        subscriptions: &mut [Subscription],
    ) -> anyhow::Result<()> {
        let n = self.args.warmup;
        if n == 0 || publishers.is_empty() || subscriptions.is_empty() {
            return Ok(());
        }
        if !self.args.quiet {
            eprintln!("bench: warming up with {n} events");
        }
        let run_id = format!("{}-warmup", self.run_id);
        let events = (0..n)
            .map(|k| Event::new(self.args.topic.as_str(), payload(&run_id, k, 0, &self.pad)))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot build a warm-up event")?;
        let chunk = self.args.batch.max(1);
        // One call at a time, so live queues never overflow.
        let send = async {
            for (i, events) in events.chunks(chunk).enumerate() {
                let client = publishers[i % publishers.len()].clone();
                if let (_, Err(e)) = PublisherCtx::send(client, events.to_vec()).await {
                    return Err(anyhow::anyhow!("warm-up publish failed: {e}"));
                }
            }
            Ok(())
        };
        // Live subscribers each get every event; a durable group's
        // subscribers share them.
        let received = AtomicU64::new(0);
        let want = if self.args.durable() {
            n
        } else {
            n * subscriptions.len() as u64
        };
        let done = CancellationToken::new();
        let receive = futures::future::join_all(subscriptions.iter_mut().map(|sub| {
            let (run_id, received, done) = (&run_id, &received, &done);
            async move {
                loop {
                    let delivery = tokio::select! {
                        () = done.cancelled() => return,
                        d = sub.recv() => d,
                    };
                    let Some(delivery) = delivery else { return };
                    if delivery.is_durable() {
                        let _ = delivery.ack().await;
                    }
                    if fields(&delivery.event.payload, run_id).is_some()
                        && received.fetch_add(1, Ordering::Relaxed) + 1 >= want
                    {
                        done.cancel();
                    }
                }
            }
        }));
        let warm = async {
            let (sent, _) = tokio::join!(send, receive);
            sent
        };
        match tokio::time::timeout(WARMUP_TIMEOUT, warm).await {
            Ok(result) => result,
            Err(_) => {
                eprintln!(
                    "bench: warm-up incomplete after {WARMUP_TIMEOUT:?} ({} of {want} arrived); measuring anyway",
                    received.load(Ordering::Relaxed)
                );
                Ok(())
            }
        }
    }

    async fn subscribe(&self, client: &Client) -> anyhow::Result<Subscription> {
        let topic = self.args.topic.as_str();
        let builder = client.subscribe(topic);
        let builder = match &self.args.durable {
            Some(group) => builder
                .group(group.clone())
                .max_in_flight(self.args.prefetch),
            None => builder,
        };
        builder
            .start()
            .await
            .with_context(|| format!("cannot subscribe to {topic}"))
    }

    fn spawn_publishers(
        &self,
        publishers: &[Client],
        trackers: &[Arc<Tracker>],
        start: Instant,
        stop: &CancellationToken,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
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
                topic: self.args.topic.clone(),
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
            Some(rate) => spawn_ticker(
                senders,
                start,
                rate,
                args.events,
                batch,
                self.shared.clone(),
                stop.clone(),
            )?,
            // Closed loop: every batch is released at once; the window paces.
            None => {
                for g in 0..batches {
                    let _ = senders[(g % p) as usize].send(g);
                }
            }
        }
        Ok(tasks)
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

pub(super) fn new_histogram() -> Histogram<u64> {
    // Cannot fail: 1 ≤ low, high ≥ 2·low and 3 significant figures are valid.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

pub(super) fn payload(run_id: &str, k: u64, t: u64, pad: &str) -> Value {
    if pad.is_empty() {
        json!({"run": run_id, "k": k, "t": t})
    } else {
        json!({"run": run_id, "k": k, "t": t, "pad": pad})
    }
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX)
}

/// How far ahead of its due time a batch may be released at a tick.
const TICK_SLACK: Duration = Duration::from_micros(1);

/// Releases batch numbers to the publishers on the open-loop schedule:
/// batch `g` when its last event is due. A task on the clients' runtime,
/// woken by the [`Pacer`] once per batch period (no timer thread to hand
/// over from per batch); every batch due by then is released.
fn spawn_ticker(
    senders: Vec<mpsc::UnboundedSender<u64>>,
    start: Instant,
    rate: f64,
    events: u64,
    batch: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let due = move |g: u64| {
        let last = ((g + 1) * batch).min(events) - 1;
        start + Duration::from_secs_f64(last as f64 / rate)
    };
    let period = Duration::from_secs_f64(batch as f64 / rate);
    let mut pacer = Pacer::new(due(0), period).context("cannot create the open-loop timer")?;
    let p = senders.len() as u64;
    tokio::spawn(async move {
        let batches = events.div_ceil(batch);
        let mut g = 0;
        while g < batches {
            let paced = tokio::select! {
                () = stop.cancelled() => return,
                paced = pacer.tick() => paced,
            };
            if let Err(e) = paced {
                shared.error(format!("the open-loop timer failed: {e}"));
                return;
            }
            // The tick and the due times are computed apart; a microsecond
            // of slack keeps rounding from holding a batch back a period.
            let now = Instant::now() + TICK_SLACK;
            while g < batches && due(g) <= now {
                let _ = senders[(g % p) as usize].send(g);
                g += 1;
            }
        }
    });
    Ok(())
}

struct PublisherCtx {
    client: Client,
    topic: String,
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
                match Event::new(self.topic.as_str(), payload) {
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
    // Nothing goes out before the clock starts (closed loop included).
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep_until(ctx.start.into()) => {}
    }
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
pub(super) fn fields(payload: &Value, run_id: &str) -> Option<(u64, u64)> {
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
