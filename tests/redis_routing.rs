//! Routing at publish on Redis (DESIGN §6 v2), against a real
//! `redis-server`: the config fence under subscription changes racing
//! publishes at full rate, trimming of acked entries, refusal of the first
//! key layout, and dead-lettering of stored events that cannot be read.
//!
//! The races use two brokers on one Redis: `pub_side` publishes with a
//! routing table that it never refreshes by polling (`config_poll` of an
//! hour), `cfg_side` changes subscriptions. Only the fence can tell the
//! publisher about a change.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::redis::{RedisServer, key_prefix as prefix, subscription_sid as sid};
use event_router::broker::{
    Broker, BrokerError, ConsumeOptions, GroupSpec, PublishOptions, RedisBroker, RedisBrokerConfig,
};
use event_router::{Event, Selector};
use serde_json::json;
use tokio::time::{Instant, sleep, timeout};

fn config(url: &str, prefix: &str) -> RedisBrokerConfig {
    RedisBrokerConfig {
        key_prefix: prefix.to_string(),
        poll_interval: Duration::from_millis(20),
        config_poll: Duration::from_secs(3600),
        command_timeout: Duration::from_millis(2000),
        reclaim_idle: Duration::from_millis(900),
        ..RedisBrokerConfig::new(url)
    }
}

async fn connect(url: &str, prefix: &str) -> RedisBroker {
    RedisBroker::connect(config(url, prefix))
        .await
        .expect("connect to redis")
}

fn spec(name: &str, filter: Option<serde_json::Value>) -> GroupSpec {
    GroupSpec::new(
        name,
        Selector::parse(&["race.#"], filter.as_ref()).expect("selector"),
    )
}

/// Publishers numbering their events per task; `started[t]` is the number
/// of task `t`'s events whose publish has begun.
struct Publishers {
    started: Vec<Arc<AtomicU64>>,
    acked: Arc<parking_lot::Mutex<HashSet<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const TASKS: u64 = 4;

impl Publishers {
    fn start(broker: Arc<RedisBroker>) -> Publishers {
        let acked = Arc::new(parking_lot::Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut started = Vec::new();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let counter = Arc::new(AtomicU64::new(0));
            started.push(counter.clone());
            let (broker, acked, stop) = (broker.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                // Bounded: at most 200,000 events per task.
                for k in 0..200_000u64 {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    counter.store(k + 1, Ordering::SeqCst);
                    let event = Event::new("race.x", json!({ "t": t, "k": k })).expect("event");
                    if broker
                        .publish(event, PublishOptions::default())
                        .await
                        .is_ok()
                    {
                        acked.lock().insert((t, k));
                    }
                }
            }));
        }
        Publishers {
            started,
            acked,
            stop,
            tasks,
        }
    }

    /// Per task: events numbered at or above this began after now.
    fn snapshot(&self) -> Vec<u64> {
        self.started
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    async fn stop(self) -> HashSet<(u64, u64)> {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.expect("publisher task");
        }
        Arc::try_unwrap(self.acked)
            .map(parking_lot::Mutex::into_inner)
            .unwrap_or_else(|a| a.lock().clone())
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// `(t, k)` of every event stored in a subscription's default band.
async fn stored(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    sid: &str,
) -> HashSet<(u64, u64)> {
    let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:s:{{{sid}}}:q5"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE band");
    page.ids
        .iter()
        .map(|e| {
            let json: String = e.get("ev").expect("ev");
            let v: serde_json::Value = serde_json::from_str(&json).expect("event JSON");
            let p = if v.get("payload").is_some() {
                &v["payload"]
            } else {
                &v["data"]
            };
            (p["t"].as_u64().expect("t"), p["k"].as_u64().expect("k"))
        })
        .collect()
}

/// Lets the publishers run a little between changes.
async fn pause(i: u64) {
    sleep(Duration::from_millis(5 + (i * 7) % 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_created_while_publishing_get_every_event_published_after_creation_returned()
{
    let server = RedisServer::start();
    let prefix = prefix();
    let pub_side = Arc::new(connect(&server.url(), &prefix).await);
    let cfg_side = connect(&server.url(), &prefix).await;
    let publishers = Publishers::start(pub_side.clone());
    sleep(Duration::from_millis(100)).await;
    let mut created = Vec::new();
    for i in 0..12 {
        let name = format!("new-{i}");
        cfg_side
            .ensure_subscription(spec(&name, None))
            .await
            .expect("create");
        created.push((name, publishers.snapshot()));
        pause(i).await;
    }
    sleep(Duration::from_millis(100)).await;
    let acked = publishers.stop().await;
    let mut conn = redis_conn(&server.url()).await;
    let mut checked = 0;
    for (name, after) in &created {
        let sid = sid(&mut conn, &prefix, name).await;
        let got = stored(&mut conn, &prefix, &sid).await;
        let missing: Vec<_> = acked
            .iter()
            .filter(|(t, k)| *k >= after[*t as usize])
            .filter(|e| !got.contains(e))
            .collect();
        checked += acked
            .iter()
            .filter(|(t, k)| *k >= after[*t as usize])
            .count();
        assert!(
            missing.is_empty(),
            "{name}: {} events published after its creation returned are missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    assert!(
        checked > 100,
        "the publishers ran during the changes ({checked} checked)"
    );
    println!(
        "create race: {} events acknowledged, {checked} (event, subscription) pairs checked",
        acked.len()
    );
    pub_side.close().await;
    cfg_side.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_subscriptions_get_nothing_published_after_their_delete_returned() {
    let server = RedisServer::start();
    let prefix = prefix();
    let pub_side = Arc::new(connect(&server.url(), &prefix).await);
    let cfg_side = connect(&server.url(), &prefix).await;
    let mut conn = redis_conn(&server.url()).await;
    let mut sids = Vec::new();
    for i in 0..12 {
        let name = format!("gone-{i}");
        cfg_side
            .ensure_subscription(spec(&name, None))
            .await
            .expect("create");
        sids.push((name.clone(), sid(&mut conn, &prefix, &name).await));
    }
    // The publisher's table holds them all (read now, not polled later).
    assert_eq!(pub_side.subscriptions().await.expect("list").len(), 12);
    let publishers = Publishers::start(pub_side.clone());
    sleep(Duration::from_millis(100)).await;
    for (i, (name, _)) in sids.iter().enumerate() {
        assert!(cfg_side.delete_subscription(name).await.expect("delete"));
        pause(i as u64).await;
    }
    sleep(Duration::from_millis(100)).await;
    let acked = publishers.stop().await;
    assert!(
        acked.len() > 100,
        "the publishers ran ({} events)",
        acked.len()
    );
    for (name, sid) in &sids {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:s:{{{sid}}}:*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        assert!(
            keys.is_empty(),
            "{name} was deleted, yet it holds {keys:?} (events published after its delete)"
        );
    }
    let err = pub_side
        .consume("gone-3", ConsumeOptions::default())
        .await
        .err();
    assert!(
        matches!(err, Some(BrokerError::UnknownSubscription(_))),
        "{err:?}"
    );
    pub_side.close().await;
    cfg_side.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_updated_while_publishing_applies_to_every_event_published_after_the_update() {
    let server = RedisServer::start();
    let prefix = prefix();
    let pub_side = Arc::new(connect(&server.url(), &prefix).await);
    let cfg_side = connect(&server.url(), &prefix).await;
    let mut conn = redis_conn(&server.url()).await;
    // Each subscription first takes everything, then only task 0's events.
    let names: Vec<String> = (0..8).map(|i| format!("upd-{i}")).collect();
    for name in &names {
        cfg_side
            .ensure_subscription(spec(name, None))
            .await
            .expect("create");
    }
    let publishers = Publishers::start(pub_side.clone());
    sleep(Duration::from_millis(100)).await;
    let mut updated = Vec::new();
    for (i, name) in names.iter().enumerate() {
        cfg_side
            .ensure_subscription(spec(name, Some(json!({ "payload.t": 0 }))))
            .await
            .expect("update");
        updated.push(publishers.snapshot());
        pause(i as u64).await;
    }
    sleep(Duration::from_millis(100)).await;
    let acked = publishers.stop().await;
    for (name, after) in names.iter().zip(&updated) {
        let sid = sid(&mut conn, &prefix, name).await;
        let got = stored(&mut conn, &prefix, &sid).await;
        let wrong: Vec<_> = got
            .iter()
            .filter(|(t, k)| *t != 0 && *k >= after[*t as usize])
            .collect();
        assert!(
            wrong.is_empty(),
            "{name}: {} events of other tasks published after the update were kept, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        let missing = acked
            .iter()
            .filter(|(t, k)| *t == 0 && *k >= after[0])
            .filter(|e| !got.contains(e))
            .count();
        assert_eq!(
            missing, 0,
            "{name}: matching events published after the update are missing"
        );
    }
    pub_side.close().await;
    cfg_side.close().await;
}

#[tokio::test]
async fn acked_entries_are_trimmed_from_the_bands_but_held_ones_stay() {
    let server = RedisServer::start();
    let prefix = prefix();
    let broker = connect(&server.url(), &prefix).await;
    broker
        .ensure_subscription(GroupSpec::new(
            "trim",
            Selector::parse(&["trim.#"], None).expect("selector"),
        ))
        .await
        .expect("subscription");
    let events: Vec<Event> = (0..600)
        .map(|n| Event::new("trim.x", json!({ "n": n })).expect("event"))
        .collect();
    broker
        .publish_batch(events, PublishOptions::default())
        .await
        .expect("publish");
    let mut conn = redis_conn(&server.url()).await;
    let sid = sid(&mut conn, &prefix, "trim").await;
    let band = format!("{prefix}:s:{{{sid}}}:q5");
    let mut consumer = broker
        .consume(
            "trim",
            ConsumeOptions {
                max_in_flight: 1000,
                ..ConsumeOptions::default()
            },
        )
        .await
        .expect("consume");
    let mut held = None;
    let mut seen = 0;
    while seen < 600 {
        let batch = timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("deliveries in time")
            .expect("consumer");
        for d in batch {
            seen += 1;
            if held.is_none() {
                // The first delivery stays unacked: everything after it is
                // acked, but the floor is this one.
                held = Some(d);
                continue;
            }
            broker.ack("trim", &d.delivery_id).await.expect("ack");
        }
    }
    let held = held.expect("a held delivery");
    let held_entry = held
        .delivery_id
        .split_once('-')
        .expect("band-id")
        .1
        .to_string();
    // The held entry pins the floor: nothing is trimmed past it.
    sleep(Duration::from_millis(2500)).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(&band)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(len, 600, "entries after an unacked one are kept");
    broker
        .ack("trim", &held.delivery_id)
        .await
        .expect("ack held");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let len: u64 = redis::cmd("XLEN")
            .arg(&band)
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        if len < 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acked entries not trimmed: {len} left"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let gone: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&band)
        .arg(&held_entry)
        .arg(&held_entry)
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert!(gone.ids.is_empty(), "the acked held entry is trimmed too");
    let info = broker.subscription("trim").await.expect("info");
    assert_eq!((info.pending, info.in_flight, info.acked), (0, 0, 600));
    broker.close().await;
}

/// Concurrent single publishes share transactions (group commit): each
/// gets its own receipt, every one is delivered once, and Redis runs far
/// fewer transactions than there were publishes. Publishers that give up
/// waiting (dropped futures) leave nothing stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_publishes_share_transactions_and_each_gets_its_receipt() {
    let server = RedisServer::start();
    let prefix = prefix();
    let broker = Arc::new(connect(&server.url(), &prefix).await);
    broker
        .ensure_subscription(GroupSpec::new(
            "group",
            Selector::parse(&["group.#"], None).expect("selector"),
        ))
        .await
        .expect("subscription");
    server.command("CONFIG RESETSTAT");
    const N: usize = 400;
    let tasks: Vec<_> = (0..N)
        .map(|n| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let event = Event::new("group.x", json!({ "n": n })).expect("event");
                let id = event.id.clone();
                let published = broker
                    .publish(event, PublishOptions::default())
                    .await
                    .expect("publish");
                assert_eq!(published.id, id, "each publisher gets its own receipt");
                published.cursor
            })
        })
        .collect();
    let mut cursors = HashSet::new();
    for t in tasks {
        cursors.insert(t.await.expect("publisher"));
    }
    assert_eq!(cursors.len(), N, "a history cursor per event");
    let execs = server.exec_calls();
    println!("{N} concurrent publishes in {execs} transactions");
    assert!(
        execs < N as u64 / 2,
        "{execs} transactions for {N} concurrent publishes"
    );
    // Publishers that stop waiting at once: the queue keeps its writer.
    for n in 0..50 {
        let event = Event::new("group.x", json!({ "n": N + n })).expect("event");
        let _ = timeout(
            Duration::ZERO,
            broker.publish(event, PublishOptions::default()),
        )
        .await;
    }
    let event = Event::new("group.x", json!({ "n": "last" })).expect("event");
    timeout(
        Duration::from_secs(5),
        broker.publish(event, PublishOptions::default()),
    )
    .await
    .expect("a publish after abandoned ones completes")
    .expect("publish");
    let mut consumer = broker
        .consume(
            "group",
            ConsumeOptions {
                max_in_flight: 1000,
                ..ConsumeOptions::default()
            },
        )
        .await
        .expect("consume");
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("\"last\"") && Instant::now() < deadline {
        let Ok(batch) = timeout(Duration::from_secs(2), consumer.next()).await else {
            continue;
        };
        for d in batch.expect("consumer") {
            assert!(
                seen.insert(d.event.payload["n"].to_string()),
                "delivered twice: {}",
                d.event.payload
            );
            broker.ack("group", &d.delivery_id).await.expect("ack");
        }
    }
    assert!(
        (0..N).all(|n| seen.contains(&n.to_string())),
        "every acknowledged publish delivered"
    );
    broker.close().await;
}

/// Acks of one subscription go out together, one `XACK` per band: every
/// first ack of a held delivery succeeds, every repeat (in the same batch
/// or a later one) is an unknown delivery, and the counter counts each
/// event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_repeated_acks_each_get_their_own_answer() {
    let server = RedisServer::start();
    let prefix = prefix();
    let broker = Arc::new(connect(&server.url(), &prefix).await);
    broker
        .ensure_subscription(GroupSpec::new(
            "acks",
            Selector::parse(&["acks.#"], None).expect("selector"),
        ))
        .await
        .expect("subscription");
    // Two bands: priorities 5 and 9.
    let events: Vec<Event> = (0..200)
        .map(|n| {
            let mut e = Event::new("acks.x", json!({ "n": n })).expect("event");
            if n % 2 == 0 {
                e.priority = event_router::Priority::parse("9").expect("priority");
            }
            e
        })
        .collect();
    broker
        .publish_batch(events, PublishOptions::default())
        .await
        .expect("publish");
    let mut consumer = broker
        .consume(
            "acks",
            ConsumeOptions {
                max_in_flight: 1000,
                ..ConsumeOptions::default()
            },
        )
        .await
        .expect("consume");
    let mut ids = Vec::new();
    while ids.len() < 200 {
        let batch = timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("deliveries in time")
            .expect("consumer");
        ids.extend(batch.into_iter().map(|d| d.delivery_id));
    }
    let bands: HashSet<&str> = ids
        .iter()
        .filter_map(|d| d.split_once('-'))
        .map(|(b, _)| b)
        .collect();
    assert_eq!(bands.len(), 2, "deliveries from two bands: {bands:?}");
    // Every delivery acked twice at once, the first 50 a third time.
    let attempts: Vec<String> = ids
        .iter()
        .chain(ids.iter())
        .chain(ids.iter().take(50))
        .cloned()
        .collect();
    let answers = futures::future::join_all(attempts.iter().map(|id| {
        let broker = broker.clone();
        let id = id.clone();
        async move { (id.clone(), broker.ack("acks", &id).await) }
    }))
    .await;
    let mut ok = std::collections::HashMap::<String, usize>::new();
    for (id, answer) in answers {
        match answer {
            Ok(()) => *ok.entry(id).or_default() += 1,
            Err(BrokerError::UnknownDelivery(_)) => {}
            Err(e) => panic!("ack {id}: {e}"),
        }
    }
    assert_eq!(ok.len(), 200, "every delivery acked");
    assert!(
        ok.values().all(|&n| n == 1),
        "each delivery acked exactly once: {:?}",
        ok.iter()
            .filter(|(_, n)| **n != 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    // A repeat long after: unknown.
    assert!(matches!(
        broker.ack("acks", &ids[7]).await,
        Err(BrokerError::UnknownDelivery(_))
    ));
    let info = broker.subscription("acks").await.expect("info");
    assert_eq!((info.in_flight, info.acked), (0, 200));
    broker.close().await;
}

#[tokio::test]
async fn a_redis_holding_the_first_layout_is_refused_with_what_to_do() {
    let server = RedisServer::start();
    let prefix = prefix();
    // The first layout's subscriptions hash, without a layout mark.
    let reply = server.command(&format!("HSET {prefix}:{{cfg}}:subs jobs record"));
    assert!(reply.starts_with(":1"), "{reply}");
    let err = RedisBroker::connect(config(&server.url(), &prefix))
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("first key layout") && message.contains("--redis-key-prefix"),
        "{message}"
    );
    // Another prefix on the same Redis is fine.
    connect(&server.url(), &format!("{prefix}b"))
        .await
        .close()
        .await;
}

#[tokio::test]
async fn a_stored_event_that_cannot_be_read_is_dead_lettered_with_the_reason() {
    let server = RedisServer::start();
    let prefix = prefix();
    let broker = connect(&server.url(), &prefix).await;
    broker
        .ensure_subscription(GroupSpec::new(
            "deep",
            Selector::parse(&["deep.#"], None).expect("selector"),
        ))
        .await
        .expect("subscription");
    let mut conn = redis_conn(&server.url()).await;
    let sid = sid(&mut conn, &prefix, "deep").await;
    // What serde cannot read back: JSON nested past its recursion limit.
    let deep = format!(
        r#"{{"id":"e1","type":"deep.x","payload":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:s:{{{sid}}}:q5"))
        .arg("*")
        .arg("ev")
        .arg(&deep)
        .query_async(&mut conn)
        .await
        .expect("XADD");
    broker
        .publish(
            Event::new("deep.x", json!({ "ok": true })).expect("event"),
            PublishOptions::default(),
        )
        .await
        .expect("publish");
    let mut consumer = broker
        .consume("deep", ConsumeOptions::default())
        .await
        .expect("consume");
    let got = timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("in time")
        .expect("consumer");
    assert_eq!(got.len(), 1, "only the readable event is delivered");
    assert_eq!(got[0].event.payload["ok"], true);
    let dead = broker
        .dead_letters("deep", Default::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("unreadable event"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].event.topic, "router.unreadable");
    assert_eq!(dead[0].event.payload["raw"], deep.as_str());
    broker.close().await;
}
