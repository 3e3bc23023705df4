//! The Rust client against a real `event-router serve` process that is
//! killed with SIGKILL and started again on the same port while the client
//! stays connected (or tries to), and against a connection cut in the
//! network while the router lives.
//!
//! The in-memory broker forgets everything when its process dies, so the
//! memory cases show what survives in the client: subscriptions restored,
//! publishes buffered while the router is down delivered once and in order.
//! Durable in-flight deliveries are shown redelivered where the state that
//! holds them survives: in the router when only the connection is cut (a
//! TCP proxy in this test drops it), and in Redis when the router process
//! is killed (`serve --redis` against a real `redis-server`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::client::{
    QUIET, WAIT, fast_reconnect, next, nothing_more, wait_until_connected, wait_until_disconnected,
};
use common::process::{Child, START_TIMEOUT, Stream, parse_listening_line};
use common::redis::RedisServer;
use event_router::client::{Client, Received};
use event_router::{Event, Priority};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An `event-router serve` process on a known port.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    /// Starts `serve --listen LISTEN EXTRA...` and waits for its listening
    /// line; `Err` with its output when it does not come up.
    fn try_start(listen: &str, extra: &[String]) -> Result<Serve, String> {
        let mut argv = vec!["serve", "--listen", listen];
        argv.extend(extra.iter().map(String::as_str));
        let mut child = Child::spawn(&argv, &[("EVENT_ROUTER_LOG_FORMAT", "text")]);
        let line = child.line_matching(Stream::Stderr, START_TIMEOUT, |l| {
            l.starts_with("listening on ")
        });
        match line.as_deref().and_then(parse_listening_line) {
            Some(addr) => Ok(Serve { child, addr }),
            None => {
                let status = child.wait_exit(Duration::from_millis(500));
                Err(format!(
                    "serve {argv:?} did not start (exit {status:?}):\n{}",
                    child.output()
                ))
            }
        }
    }

    /// Starts on a free port.
    fn start(extra: &[String]) -> Serve {
        Serve::try_start("127.0.0.1:0", extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts again on `addr`, retrying while the old socket lets go.
    fn start_on(addr: SocketAddr, extra: &[String]) -> Serve {
        let mut last = String::new();
        for _ in 0..50 {
            match Serve::try_start(&addr.to_string(), extra) {
                Ok(serve) => return serve,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart on {addr}: {last}");
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `GET /api/v1/subscriptions/{group}`.
    async fn group_info(&self, group: &str) -> Value {
        let url = format!("http://{}/api/v1/subscriptions/{group}", self.addr);
        let response = reqwest::get(&url).await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Waits until the group's `in_flight` and `pending` are as given.
    async fn wait_for_group(&self, group: &str, in_flight: u64, pending: u64) {
        let mut last = Value::Null;
        let reached = tokio::time::timeout(WAIT, async {
            loop {
                last = self.group_info(group).await;
                if last["in_flight"] == in_flight && last["pending"] == pending {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "group {group}: want in_flight {in_flight}, pending {pending}; last {last}"
        );
    }

    /// SIGKILL: no drain, no close frames, nothing flushed.
    fn kill(mut self) -> SocketAddr {
        self.child.signal("KILL");
        assert!(
            self.child.wait_exit(Duration::from_secs(5)).is_some(),
            "the router dies on SIGKILL"
        );
        self.addr
    }
}

/// A loopback TCP proxy whose connections can be cut while the router
/// behind it keeps running.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().push(link);
            }
        });
        Proxy {
            addr,
            links,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every open connection (both sides see it close).
    fn cut(&self) {
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn connect(url: &str) -> Client {
    Client::builder()
        .url(url)
        .reconnect(fast_reconnect())
        .publish_timeout(WAIT)
        .heartbeat(Duration::from_millis(500), Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

fn event(topic: &str, payload: Value, priority: u8) -> Event {
    let mut e = Event::new(topic, payload).unwrap();
    e.priority = Priority::new(priority).unwrap();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_restored_after_the_router_process_is_killed_and_restarted() {
    let serve = Serve::start(&[]);
    let client = connect(&serve.url()).await;
    let mut live = client
        .subscribe("news.#")
        .filter(json!("priority:gte:7"))
        .start()
        .await
        .unwrap();
    let mut durable = client
        .subscribe("job.*")
        .group("jobs")
        .start()
        .await
        .unwrap();
    let addr = serve.kill();
    wait_until_disconnected(&client).await;
    let serve = Serve::start_on(addr, &[]);
    wait_until_connected(&client).await;

    let publisher = connect(&serve.url()).await;
    publisher
        .publish_with(event("news.sports", json!("too low"), 3))
        .await
        .unwrap();
    let kept = publisher
        .publish_with(event("news.world", json!("kept"), 9))
        .await
        .unwrap();
    let job = publisher.publish("job.new", json!({"n": 1})).await.unwrap();

    let got = next(&mut live).await;
    assert_eq!((got.event.id, got.event.payload), (kept, json!("kept")));
    let got = next(&mut durable).await;
    assert_eq!((got.event.id.as_str(), got.attempt), (job.as_str(), 1));
    assert_eq!(got.subscription_id, "jobs");
    got.ack().await.unwrap();
    nothing_more(&mut live).await;
    nothing_more(&mut durable).await;
    client.close().await;
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_buffered_while_the_router_is_down_are_delivered_once_in_order() {
    let serve = Serve::start(&[]);
    let client = connect(&serve.url()).await;
    let mut sub = client.subscribe("seq.n").start().await.unwrap();
    client.publish("seq.n", json!(-1)).await.unwrap();
    assert_eq!(next(&mut sub).await.event.payload, json!(-1));

    let addr = serve.kill();
    wait_until_disconnected(&client).await;
    let mut ids = Vec::new();
    for n in 0..49 {
        ids.push(client.publish_nowait("seq.n", json!(n)).unwrap());
    }
    // An awaited publish made while down waits behind the buffered ones.
    let last = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("seq.n", json!(49)).await })
    };
    let serve = Serve::start_on(addr, &[]);
    tokio::time::timeout(WAIT, client.flush())
        .await
        .expect("the buffer is flushed in time")
        .unwrap();
    ids.push(last.await.unwrap().unwrap());

    let mut got = Vec::new();
    for _ in 0..50 {
        let r = next(&mut sub).await;
        got.push((r.event.id, r.event.payload));
    }
    let want: Vec<(String, Value)> = ids.into_iter().zip((0..50).map(|n| json!(n))).collect();
    assert_eq!(got, want, "every buffered publish once, in order");
    nothing_more(&mut sub).await;
    client.close().await;
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_deliveries_in_flight_when_the_connection_is_cut_are_redelivered() {
    let serve = Serve::start(&[]);
    let proxy = Proxy::start(serve.addr).await;
    let worker = connect(&proxy.url()).await;
    let mut sub = worker
        .subscribe("work.*")
        .group("workers")
        .max_in_flight(10)
        .start()
        .await
        .unwrap();
    let publisher = connect(&serve.url()).await;
    let mut published = Vec::new();
    for n in 0..5 {
        published.push(publisher.publish("work.item", json!(n)).await.unwrap());
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        let r = next(&mut sub).await;
        assert_eq!(r.attempt, 1);
        held.push(r);
    }

    proxy.cut();
    wait_until_disconnected(&worker).await;
    wait_until_connected(&worker).await;
    let mut again = Vec::new();
    for _ in 0..5 {
        let r = next(&mut sub).await;
        assert_eq!(r.attempt, 2, "a redelivery: {r:?}");
        assert!(
            held.iter().all(|h| h.delivery_id != r.delivery_id),
            "a new delivery id per attempt on the memory broker"
        );
        again.push(r.event.id.clone());
        r.ack().await.unwrap();
    }
    again.sort();
    published.sort();
    assert_eq!(again, published, "every in-flight delivery came back");
    drop(held);
    nothing_more(&mut sub).await;
    worker.close().await;
    publisher.close().await;
}

/// Records handler calls per delivery id; the first call blocks until the
/// gate opens.
#[derive(Clone, Default)]
struct Calls {
    log: Arc<Mutex<Vec<(String, String, u32)>>>,
}

impl Calls {
    fn per_delivery(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (delivery, _, _) in self.log.lock().iter() {
            *counts.entry(delivery.clone()).or_default() += 1;
        }
        counts
    }

    fn events(&self) -> Vec<String> {
        let mut events: Vec<String> = self.log.lock().iter().map(|(_, e, _)| e.clone()).collect();
        events.sort();
        events
    }

    async fn wait_for(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.log.lock().len() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} handler calls in time; got {:?}", self.log.lock()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_durable_deliveries_survive_a_killed_router_and_no_handler_runs_twice() {
    let redis = RedisServer::start();
    let extra: Vec<String> = [
        "--redis",
        &redis.url(),
        "--node-id",
        "replica-a",
        "--redis-membership-ttl",
        "1s",
        "--redis-reclaim-idle",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let serve = Serve::start(&extra);
    let worker = connect(&serve.url()).await;
    let calls = Calls::default();
    let (open, gate) = watch::channel(false);
    let recorded = calls.clone();
    let _task = worker
        .subscribe("work.*")
        .group("redis-workers")
        .max_in_flight(10)
        .handle(move |r: Received| {
            let (recorded, mut gate) = (recorded.clone(), gate.clone());
            async move {
                recorded
                    .log
                    .lock()
                    .push((r.delivery_id.clone(), r.event.id.clone(), r.attempt));
                let _ = gate.wait_for(|open| *open).await;
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    let mut published = Vec::new();
    for n in 0..5 {
        published.push(worker.publish("work.item", json!(n)).await.unwrap());
    }
    // The handler holds the first delivery; the router has handed out the
    // other four too, which wait in the client's queue.
    calls.wait_for(1).await;
    serve.wait_for_group("redis-workers", 5, 0).await;

    let addr = serve.kill();
    wait_until_disconnected(&worker).await;
    let serve = Serve::start_on(addr, &extra);
    wait_until_connected(&worker).await;
    open.send_replace(true);
    calls.wait_for(5).await;
    // Every ack reached Redis, including the one for the delivery the
    // handler held across the restart.
    serve.wait_for_group("redis-workers", 0, 0).await;
    tokio::time::sleep(QUIET).await;

    published.sort();
    assert_eq!(
        calls.events(),
        published,
        "each event handled once: {:?}",
        calls.log.lock()
    );
    assert!(
        calls.per_delivery().values().all(|n| *n == 1),
        "no delivery id handled twice: {:?}",
        calls.log.lock()
    );
    let log = calls.log.lock().clone();
    assert_eq!(log[0].2, 1, "{log:?}");
    assert!(
        log[1..].iter().all(|(_, _, attempt)| *attempt >= 2),
        "deliveries in flight at the kill came back as redeliveries: {log:?}"
    );
    worker.close().await;
    drop(serve);
}

/// The next `count` entries of a stream follower, within [`WAIT`] each;
/// returns their versions, checking that payload `n` is the version.
async fn stream_versions(
    follower: &mut event_router::client::StreamSubscription,
    count: usize,
) -> Vec<u64> {
    let mut versions = Vec::new();
    while versions.len() < count {
        let entry = tokio::time::timeout(WAIT, follower.recv())
            .await
            .expect("a stream entry in time")
            .expect("the follower is still open")
            .expect("no read error");
        assert_eq!(entry.event.payload["n"], json!(entry.version));
        versions.push(entry.version);
    }
    versions
}

/// A client follows a stream through router A while a second router
/// appends; A is killed and started again on its port, and the follower
/// resumes on its own from the last version it handed out: 1..=40 exactly
/// once, in order, then nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_follower_resumes_after_the_router_is_killed_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let args = vec!["--redis".to_string(), redis.url()];
    let serve = Serve::start(&args);
    let writer_router = Serve::start(&args);
    let writer = connect(&writer_router.url()).await;
    let append = |n: u64| {
        let writer = writer.clone();
        async move {
            let e = Event::new("order.changed", json!({"n": n})).unwrap();
            let got = writer.append("order-f", e, Some(n - 1)).await.unwrap();
            assert_eq!(got.version, n);
        }
    };
    for n in 1..=10 {
        append(n).await;
    }
    let client = connect(&serve.url()).await;
    let mut follower = client.subscribe_stream("order-f", 1).unwrap();
    let mut got = stream_versions(&mut follower, 10).await;
    for n in 11..=20 {
        append(n).await;
    }
    got.extend(stream_versions(&mut follower, 10).await);
    let addr = serve.kill();
    wait_until_disconnected(&client).await;
    for n in 21..=30 {
        append(n).await;
    }
    let _serve = Serve::start_on(addr, &args);
    wait_until_connected(&client).await;
    for n in 31..=40 {
        append(n).await;
    }
    got.extend(stream_versions(&mut follower, 20).await);
    assert_eq!(got, (1..=40).collect::<Vec<u64>>());
    assert_eq!(follower.last_version(), 40);
    let more = tokio::time::timeout(QUIET, follower.recv()).await;
    assert!(more.is_err(), "nothing after version 40: {more:?}");
    client.close().await;
    writer.close().await;
}

/// A two-step saga over WebSocket on Redis: the first client is dropped
/// after step 1 is stored, the router is killed and started again, and a
/// new client resumes the saga: step 2 runs once there, step 1 not again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_resumes_over_websocket_after_its_client_and_the_router_went_away() {
    use event_router::client::{SagaBuilder, Step};

    let redis = RedisServer::start();
    let args = vec!["--redis".to_string(), redis.url()];
    let serve = Serve::start(&args);
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let saga = |client: Client| {
        let (a, b) = (log.clone(), log.clone());
        async move {
            let first = Step::new("first", &["job.begin"], move |ctx, _| {
                let log = a.clone();
                async move {
                    log.lock().push("first".into());
                    Ok(ctx)
                }
            })
            .unwrap()
            .starts();
            let second = Step::new("second", &["job.next"], move |mut ctx, _| {
                let log = b.clone();
                async move {
                    log.lock().push("second".into());
                    ctx.complete();
                    Ok(ctx)
                }
            })
            .unwrap();
            SagaBuilder::new(&client, "job")
                .step(first)
                .step(second)
                .start()
                .await
                .unwrap()
        }
    };
    let publish = |client: Client, topic: &'static str| async move {
        let mut e = Event::new(topic, json!({})).unwrap();
        e.correlation_id = Some("job-1".into());
        client.publish_with(e).await.unwrap();
    };
    let client = connect(&serve.url()).await;
    let running = saga(client.clone()).await;
    publish(client.clone(), "job.begin").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while running.state("job-1").map(|s| s.steps.len()) != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "step 1 not stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(running);
    client.close().await;
    let addr = serve.kill();
    let serve = Serve::start_on(addr, &args);
    let client = connect(&serve.url()).await;
    publish(client.clone(), "job.next").await;
    let resumed = saga(client.clone()).await;
    let state = resumed.wait("job-1", WAIT).await.unwrap();
    assert_eq!((state.status.as_str(), state.steps.len()), ("completed", 2));
    assert_eq!(*log.lock(), ["first", "second"]);
    client.close().await;
}
