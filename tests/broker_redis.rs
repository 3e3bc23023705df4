//! The broker conformance suite (`tests/conformance`) against the Redis
//! broker, plus what only a shared, external store can show: several
//! replicas, partition takeover, Redis going away and coming back.
//!
//! Conformance cases share one `redis-server` (started on first use, killed
//! when this test process exits); each case gets its own broker and key
//! prefix. Redis-specific tests start their own servers.

mod common;
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{RedisServer, key_prefix as prefix};
use event_router::broker::{
    Broker, BrokerError, ConsumeOptions, Consumer, GroupSpec, PublishOptions, RedisBroker,
    RedisBrokerConfig,
};
use event_router::{Delivery, Event, Selector};
use serde_json::json;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// Fast timings for tests on one machine.
fn config(url: &str, prefix: &str) -> RedisBrokerConfig {
    RedisBrokerConfig {
        key_prefix: prefix.to_string(),
        membership_ttl: Duration::from_millis(1000),
        poll_interval: Duration::from_millis(20),
        config_poll: Duration::from_millis(200),
        command_timeout: Duration::from_millis(1000),
        reclaim_idle: Duration::from_millis(900),
        ..RedisBrokerConfig::new(url)
    }
}

async fn redis_broker() -> Arc<dyn Broker> {
    let server = RedisServer::shared();
    let broker = RedisBroker::connect(config(&server.url(), &prefix()))
        .await
        .expect("connect to redis");
    Arc::new(broker)
}

conformance::broker_conformance_tests!(redis_broker);

// ------------------------------------------------------------ redis only

async fn connect(url: &str, prefix: &str) -> RedisBroker {
    RedisBroker::connect(config(url, prefix))
        .await
        .expect("connect to redis")
}

fn event(topic: &str, n: u64) -> Event {
    Event::new(topic, json!({ "n": n })).expect("valid topic")
}

fn spec(name: &str) -> GroupSpec {
    GroupSpec {
        ack_timeout: Duration::from_secs(10),
        ..GroupSpec::new(
            name,
            Selector::parse(&[format!("{name}.#")], None).expect("selector"),
        )
    }
}

async fn next(consumer: &mut Consumer, within: Duration) -> Vec<Delivery> {
    timeout(within, consumer.next())
        .await
        .expect("no delivery in time")
        .expect("consumer failed")
}

#[tokio::test]
async fn second_replica_consumes_and_acks_events_published_through_the_first() {
    let server = RedisServer::start();
    let prefix = prefix();
    let a = connect(&server.url(), &prefix).await;
    let b = connect(&server.url(), &prefix).await;
    a.ensure_subscription(spec("orders")).await.expect("ensure");
    let mut c = b
        .consume("orders", ConsumeOptions::default())
        .await
        .expect("consume through the other replica");
    for n in 1..=3 {
        a.publish(event("orders.created", n), PublishOptions::default())
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(next(&mut c, Duration::from_secs(5)).await);
    }
    let ns: Vec<u64> = got
        .iter()
        .map(|d| d.event.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2, 3]);
    for d in &got {
        a.ack("orders", &d.delivery_id)
            .await
            .expect("ack on the other replica");
    }
    let info = b.subscription("orders").await.expect("info");
    assert_eq!((info.acked, info.in_flight, info.pending), (3, 0, 0));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn publish_fails_fast_while_redis_is_down_and_recovers_after_restart() {
    let mut server = RedisServer::start();
    let broker = connect(&server.url(), &prefix()).await;
    broker
        .publish(event("t.x", 1), PublishOptions::default())
        .await
        .expect("publish");
    server.kill();
    let start = Instant::now();
    let down = broker
        .publish(event("t.x", 2), PublishOptions::default())
        .await;
    assert!(matches!(down, Err(BrokerError::Unavailable(_))), "{down:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(!broker.ready().await);
    server.restart();
    // Everything was lost (no persistence): the broker recreates what it
    // needs (ingest groups on NOGROUP, subscription keys on ensure).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match broker
            .publish(event("t.x", 3), PublishOptions::default())
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "not recovered: {e}"),
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(broker.ready().await);
    broker
        .ensure_subscription(spec("after"))
        .await
        .expect("ensure");
    let mut c = broker
        .consume("after", ConsumeOptions::default())
        .await
        .expect("consume");
    broker
        .publish(event("after.x", 4), PublishOptions::default())
        .await
        .expect("publish");
    let got = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!(got[0].event.payload["n"], 4);
    broker.close().await;
}

#[tokio::test]
async fn deliveries_held_by_a_dead_replica_are_reclaimed_as_ack_timeouts() {
    let server = RedisServer::start();
    let prefix = prefix();
    let a = connect(&server.url(), &prefix).await;
    let b = connect(&server.url(), &prefix).await;
    a.ensure_subscription(spec("work")).await.expect("ensure");
    a.publish(event("work.x", 1), PublishOptions::default())
        .await
        .expect("publish");
    let mut held = a
        .consume("work", ConsumeOptions::default())
        .await
        .expect("consume");
    let first = next(&mut held, Duration::from_secs(5)).await;
    // A crash: the consumer never returns its delivery and nobody keeps it
    // alive any more.
    std::mem::forget(held);
    drop(a);
    let mut c = b
        .consume("work", ConsumeOptions::default())
        .await
        .expect("consume");
    let again = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!(again[0].event.id, first[0].event.id);
    assert_eq!(again[0].attempt, 2);
    b.ack("work", &again[0].delivery_id).await.expect("ack");
    b.close().await;
}

/// Consumer names in the group of `band` of subscription `name`.
async fn band_consumers(url: &str, prefix: &str, name: &str, band: u8) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let sid = common::redis::subscription_sid(&mut conn, prefix, name).await;
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("{prefix}:s:{{{sid}}}:q{band}"))
        .arg("g")
        .query_async(&mut conn)
        .await
        .expect("XINFO CONSUMERS");
    reply.consumers.into_iter().map(|c| c.name).collect()
}

#[tokio::test]
async fn janitor_forgets_departed_consumers_but_not_live_ones() {
    let server = RedisServer::start();
    let prefix = prefix();
    let broker = connect(&server.url(), &prefix).await;
    broker
        .ensure_subscription(spec("gc"))
        .await
        .expect("subscription");
    for n in 0..4 {
        broker
            .publish(event("gc.x", n), PublishOptions::default())
            .await
            .expect("publish");
    }
    // A group learns a consumer's name when it first takes an entry.
    let one = || ConsumeOptions {
        max_in_flight: 1,
        ..ConsumeOptions::default()
    };
    let mut live = broker.consume("gc", one()).await.expect("consume");
    for d in next(&mut live, Duration::from_secs(5)).await {
        broker.ack("gc", &d.delivery_id).await.expect("ack");
    }
    for _ in 0..3 {
        let mut gone = broker.consume("gc", one()).await.expect("consume");
        for d in next(&mut gone, Duration::from_secs(5)).await {
            broker.ack("gc", &d.delivery_id).await.expect("ack");
        }
    }
    let before = band_consumers(&server.url(), &prefix, "gc", 5).await;
    assert_eq!(before.len(), 4, "{before:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = before.clone();
    while after.len() > 1 && Instant::now() < deadline {
        sleep(Duration::from_millis(100)).await;
        after = band_consumers(&server.url(), &prefix, "gc", 5).await;
    }
    assert_eq!(after.len(), 1, "departed consumers forgotten: {after:?}");
    // The live consumer still works.
    broker
        .publish(event("gc.x", 4), PublishOptions::default())
        .await
        .expect("publish");
    let got = next(&mut live, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    broker.close().await;
}

#[tokio::test]
async fn dedup_window_stores_a_republished_event_id_once() {
    let server = RedisServer::shared();
    let broker = RedisBroker::connect(RedisBrokerConfig {
        dedup_window: Duration::from_secs(60),
        ..config(&server.url(), &prefix())
    })
    .await
    .expect("connect");
    broker
        .ensure_subscription(spec("dd"))
        .await
        .expect("subscription");
    let first = event("dd.x", 1);
    let a = broker
        .publish(first.clone(), PublishOptions::default())
        .await
        .expect("publish");
    let b = broker
        .publish(first.clone(), PublishOptions::default())
        .await
        .expect("publish again");
    assert_eq!(a, b, "the retry returns the first position");
    let batch = broker
        .publish_batch(
            vec![first.clone(), event("dd.x", 2), event("dd.x", 3)],
            PublishOptions::default(),
        )
        .await
        .expect("batch");
    assert_eq!(batch[0], a);
    let info = broker.subscription("dd").await.expect("info");
    assert_eq!(info.pending, 3, "three distinct events stored: {info:?}");
    broker.close().await;
}

/// The `event_router_expired_total` sample of `subscription`, 0 when absent.
fn expired_metric(subscription: &str) -> f64 {
    let series = format!("event_router_expired_total{{subscription=\"{subscription}\"}} ");
    event_router::telemetry::metrics::metrics()
        .encode_text()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn an_event_expiring_in_a_subscription_is_counted_in_the_metric() {
    let server = RedisServer::shared();
    let broker = connect(&server.url(), &prefix()).await;
    // Unique: the metric is process-wide.
    let name = format!("ttl{}", &prefix()[1..]);
    broker
        .ensure_subscription(spec(&name))
        .await
        .expect("subscription");
    let topic = format!("{name}.x");
    // Alive when routed into the subscription, expired by the time it is
    // fetched from there.
    let mut short_lived = event(&topic, 1);
    short_lived.ttl = Some(2);
    let expires = Instant::now() + Duration::from_secs(2);
    broker
        .publish(short_lived, PublishOptions::default())
        .await
        .expect("publish the short-lived event");
    while broker.subscription(&name).await.expect("info").pending == 0 {
        assert!(
            Instant::now() + Duration::from_millis(500) < expires,
            "not routed into the subscription well before its TTL"
        );
        sleep(Duration::from_millis(20)).await;
    }
    sleep_until(expires + Duration::from_millis(200)).await;
    broker
        .publish(event(&topic, 2), PublishOptions::default())
        .await
        .expect("publish the fresh event");
    let mut consumer = broker
        .consume(&name, ConsumeOptions::default())
        .await
        .expect("consume");
    // The expired event comes first in its band and is dropped on the way.
    let got = next(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event.payload["n"], 2);
    assert_eq!(expired_metric(&name), 1.0);
    broker.close().await;
}
