//! Unit tests of the memory broker for what the conformance suite
//! (`tests/conformance`) cannot check with real time: exact timeouts and
//! backoff under a paused clock, memory bounds, and memory-only behaviour.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::broker::{Backoff, LiveItem};
use crate::event::Delivery;

fn selector(pattern: &str) -> Selector {
    Selector::parse(&[pattern], None).unwrap()
}

/// 30 s ack timeout, 1 s → 2 s → 4 s backoff without jitter, 3 attempts.
fn spec(name: &str, pattern: &str) -> GroupSpec {
    GroupSpec {
        ack_timeout: Duration::from_secs(30),
        backoff: Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
        },
        max_attempts: 3,
        ..GroupSpec::new(name, selector(pattern))
    }
}

fn event(topic: &str, n: u32) -> Event {
    Event::new(topic, json!({ "n": n })).unwrap()
}

fn n(delivery: &Delivery) -> u64 {
    delivery.event.payload["n"].as_u64().unwrap()
}

async fn broker_with(config: MemoryBrokerConfig, specs: &[GroupSpec]) -> MemoryBroker {
    let broker = MemoryBroker::new(config);
    for spec in specs {
        broker.ensure_subscription(spec.clone()).await.unwrap();
    }
    broker
}

async fn consumer(broker: &MemoryBroker, name: &str, max_in_flight: usize) -> Consumer {
    let options = ConsumeOptions {
        max_in_flight,
        ..ConsumeOptions::default()
    };
    broker.consume(name, options).await.unwrap()
}

async fn publish(broker: &MemoryBroker, event: Event) -> Result<Published> {
    broker.publish(event, PublishOptions::default()).await
}

#[tokio::test(start_paused = true)]
async fn ack_timeout_redelivers_after_timeout_plus_backoff() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    let first = c.next().await.unwrap();
    let start = Instant::now();
    let again = c.next().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(31));
    assert_eq!(again[0].attempt, 2);
    let err = broker.ack("s", &first[0].delivery_id).await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownDelivery(_)), "{err}");
    let info = broker.subscription("s").await.unwrap();
    assert_eq!((info.delivered, info.retried, info.in_flight), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_each_failure_until_dead_lettered() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    let mut delays = Vec::new();
    let mut delivery = c.next().await.unwrap().remove(0);
    for _ in 0..3 {
        let options = NackOptions {
            delay: None,
            reason: Some("boom".into()),
        };
        broker
            .nack("s", &delivery.delivery_id, options)
            .await
            .unwrap();
        let start = Instant::now();
        match tokio::time::timeout(Duration::from_secs(60), c.next()).await {
            Ok(next) => delivery = next.unwrap().remove(0),
            Err(_) => break,
        }
        delays.push(start.elapsed().as_secs());
    }
    // Third failure exhausts max_attempts = 3: dead-lettered, not retried.
    assert_eq!(delays, [1, 2]);
    let dead = broker
        .dead_letters("s", DeadLetterQuery::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let reasons: Vec<_> = dead[0].history.iter().map(|a| a.reason.as_str()).collect();
    assert_eq!(reasons, ["nack: boom"; 3]);
    assert_eq!(dead[0].attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn nack_delay_replaces_backoff() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    let delivery = c.next().await.unwrap().remove(0);
    let options = NackOptions {
        delay: Some(Duration::from_secs(7)),
        reason: None,
    };
    broker
        .nack("s", &delivery.delivery_id, options)
        .await
        .unwrap();
    let start = Instant::now();
    let again = c.next().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(again[0].attempt, 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_consumer_gets_what_another_consumer_let_time_out() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    let mut busy = consumer(&broker, "s", 1).await;
    let held = busy.next().await.unwrap();
    let mut idle = consumer(&broker, "s", 1).await;
    let start = Instant::now();
    let waiting = tokio::spawn(async move {
        let got = idle.next().await;
        (idle, got)
    });
    let (_idle, got) = waiting.await.unwrap();
    let got = got.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(31));
    assert_eq!((n(&got[0]), got[0].attempt), (n(&held[0]), 2));
    let err = broker.ack("s", &held[0].delivery_id).await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownDelivery(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn disconnect_returns_deliveries_to_the_front_without_counting_a_failure() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    for i in 1..=3 {
        publish(&broker, event("a", i)).await.unwrap();
    }
    let mut first = consumer(&broker, "s", 2).await;
    assert_eq!(first.next().await.unwrap().len(), 2);
    drop(first);
    let mut second = consumer(&broker, "s", 10).await;
    let got = second.next().await.unwrap();
    let seen: Vec<_> = got.iter().map(|d| (n(d), d.attempt)).collect();
    assert_eq!(seen, [(1, 2), (2, 2), (3, 1)]);
    let info = broker.subscription("s").await.unwrap();
    assert_eq!((info.retried, info.consumers), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn exhausted_event_without_dead_letter_queue_is_discarded_and_counted() {
    let mut s = spec("s", "a");
    s.dead_letter = false;
    s.max_attempts = 1;
    let broker = broker_with(MemoryBrokerConfig::default(), &[s]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    let d = c.next().await.unwrap().remove(0);
    broker
        .nack("s", &d.delivery_id, NackOptions::default())
        .await
        .unwrap();
    let info = broker.subscription("s").await.unwrap();
    assert_eq!((info.dead_letters, info.pending, info.retrying), (0, 0, 0));
    let group = broker.shared.group("s").unwrap();
    assert_eq!(group.discarded_and_evicted(), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn dead_letter_queue_evicts_its_oldest_entry_beyond_the_bound() {
    let config = MemoryBrokerConfig {
        dead_letter_max: 2,
        ..MemoryBrokerConfig::default()
    };
    let mut s = spec("s", "a");
    s.max_attempts = 1;
    let broker = broker_with(config, &[s]).await;
    for i in 1..=3 {
        publish(&broker, event("a", i)).await.unwrap();
    }
    let mut c = consumer(&broker, "s", 10).await;
    for d in c.next().await.unwrap() {
        broker
            .nack("s", &d.delivery_id, NackOptions::default())
            .await
            .unwrap();
    }
    let dead = broker
        .dead_letters("s", DeadLetterQuery::default())
        .await
        .unwrap();
    let kept: Vec<_> = dead.iter().map(|d| d.event.payload["n"].clone()).collect();
    assert_eq!(kept, [json!(2), json!(3)]);
    let group = broker.shared.group("s").unwrap();
    assert_eq!(group.discarded_and_evicted(), (0, 1));
    let info = broker.subscription("s").await.unwrap();
    assert_eq!(info.dead_lettered, 3);
}

#[tokio::test(start_paused = true)]
async fn full_subscription_rejects_publishes_and_stores_nothing() {
    let config = MemoryBrokerConfig {
        max_queued_per_subscription: 2,
        ..MemoryBrokerConfig::default()
    };
    let broker = broker_with(config, &[spec("small", "a"), spec("other", "b")]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    publish(&broker, event("a", 2)).await.unwrap();
    let err = publish(&broker, event("a", 3)).await.unwrap_err();
    assert!(
        matches!(&err, BrokerError::QueueFull { subscription, .. } if subscription == "small"),
        "{err}"
    );
    // All or nothing: a batch that would overfill one subscription is
    // stored neither in history nor in the other subscription.
    let batch = vec![event("b", 4), event("a", 5)];
    assert!(
        broker
            .publish_batch(batch, PublishOptions::default())
            .await
            .is_err()
    );
    assert_eq!(broker.stats().await.unwrap().history_len, 2);
    assert_eq!(broker.subscription("other").await.unwrap().pending, 0);
    // Room comes back once an event is acked.
    let mut c = consumer(&broker, "small", 1).await;
    let d = c.next().await.unwrap().remove(0);
    assert!(publish(&broker, event("a", 6)).await.is_err());
    broker.ack("small", &d.delivery_id).await.unwrap();
    publish(&broker, event("a", 6)).await.unwrap();
}

fn big_event(topic: &str, n: u32) -> Event {
    Event::new(topic, json!({ "n": n, "pad": "x".repeat(100_000) })).unwrap()
}

#[tokio::test(start_paused = true)]
async fn subscription_over_its_byte_limit_refuses_publishes_and_keeps_what_it_stored() {
    let config = MemoryBrokerConfig {
        max_queued_bytes_per_subscription: 250_000,
        ..MemoryBrokerConfig::default()
    };
    let broker = broker_with(config, &[spec("bytes", "a")]).await;
    publish(&broker, big_event("a", 1)).await.unwrap();
    publish(&broker, big_event("a", 2)).await.unwrap();
    let err = publish(&broker, big_event("a", 3)).await.unwrap_err();
    assert!(
        matches!(&err, BrokerError::QueueFull { subscription, reason }
            if subscription == "bytes" && reason.contains("250000 bytes")),
        "{err}"
    );
    assert_eq!(err.kind(), "queue_full");
    // Small events still fit; nothing stored was dropped to make room.
    publish(&broker, event("a", 4)).await.unwrap();
    let mut c = consumer(&broker, "bytes", 10).await;
    let deliveries = c.next().await.unwrap();
    let got: Vec<u64> = deliveries.iter().map(n).collect();
    assert_eq!(got, [1, 2, 4]);
    // In-flight events still count; acked ones give their bytes back.
    assert!(publish(&broker, big_event("a", 5)).await.is_err());
    for d in &deliveries {
        broker.ack("bytes", &d.delivery_id).await.unwrap();
    }
    publish(&broker, big_event("a", 5)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn history_over_its_byte_limit_evicts_the_oldest_and_counts_them() {
    let config = MemoryBrokerConfig {
        history_max_bytes: 350_000,
        ..MemoryBrokerConfig::default()
    };
    let broker = broker_with(config, &[]).await;
    for i in 0..10 {
        publish(&broker, big_event("h", i)).await.unwrap();
    }
    let kept = broker.history(HistoryQuery::default()).await.unwrap();
    let kept: Vec<u64> = kept
        .iter()
        .map(|e| e.event.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [7, 8, 9]);
    assert_eq!(broker.discarded().history_bytes, 7);
}

#[tokio::test(start_paused = true)]
async fn live_queue_over_its_byte_limit_drops_the_oldest_and_counts_them() {
    let broker = MemoryBroker::default();
    let live = LiveSubscription {
        selector: selector("l"),
        capacity: 1000,
        max_bytes: 250_000,
    };
    let mut stream = broker.subscribe_live(live).await.unwrap();
    for i in 0..5 {
        publish(&broker, big_event("l", i)).await.unwrap();
    }
    assert_eq!(stream.len(), 2);
    assert_eq!(broker.stats().await.unwrap().dropped, 3);
    assert_eq!(stream.recv().await, Some(LiveItem::Overflow { dropped: 3 }));
}

#[tokio::test(start_paused = true)]
async fn event_expiring_while_queued_is_dropped_and_counted() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    let mut stale = event("a", 1);
    stale.time = Timestamp::now() - jiff::SignedDuration::from_secs(10);
    stale.ttl = Some(5);
    broker.shared.group("s").unwrap().enqueue_unchecked(stale);
    publish(&broker, event("a", 2)).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    let got = c.next().await.unwrap();
    assert_eq!(got.iter().map(n).collect::<Vec<_>>(), [2]);
    assert_eq!(broker.subscription("s").await.unwrap().expired, 1);
    assert_eq!(broker.stats().await.unwrap().expired, 1);
}

#[tokio::test(start_paused = true)]
async fn event_expired_at_publish_is_counted_and_routed_nowhere() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    let live = LiveSubscription {
        selector: selector("a"),
        capacity: 10,
        max_bytes: 0,
    };
    let mut stream = broker.subscribe_live(live).await.unwrap();
    let mut stale = event("a", 1);
    stale.time = Timestamp::now() - jiff::SignedDuration::from_secs(10);
    stale.ttl = Some(5);
    publish(&broker, stale).await.unwrap();
    assert!(stream.try_recv().is_none());
    assert_eq!(broker.subscription("s").await.unwrap().pending, 0);
    let stats = broker.stats().await.unwrap();
    assert_eq!(
        (stats.published, stats.expired, stats.history_len),
        (1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn spec_update_keeps_queued_events_and_reroutes() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    publish(&broker, event("a", 1)).await.unwrap();
    broker.ensure_subscription(spec("s", "b")).await.unwrap();
    publish(&broker, event("a", 2)).await.unwrap();
    publish(&broker, event("b", 3)).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    let got = c.next().await.unwrap();
    assert_eq!(got.iter().map(n).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(broker.stats().await.unwrap().subscriptions, 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_spec_is_rejected_naming_the_problem() {
    let broker = MemoryBroker::default();
    let mut s = spec("s", "a");
    s.ack_timeout = Duration::ZERO;
    let err = broker.ensure_subscription(s).await.unwrap_err();
    assert!(err.to_string().contains("ack_timeout"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_broker_ends_live_streams_and_consumers() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    let live = LiveSubscription {
        selector: selector("a"),
        capacity: 10,
        max_bytes: 0,
    };
    let mut stream = broker.subscribe_live(live).await.unwrap();
    let mut c = consumer(&broker, "s", 10).await;
    drop(broker);
    assert_eq!(stream.recv().await, None);
    assert_eq!(c.next().await.unwrap_err(), BrokerError::Closed);
}

#[tokio::test(start_paused = true)]
async fn closed_broker_rejects_new_work_but_still_reports() {
    let broker = broker_with(MemoryBrokerConfig::default(), &[spec("s", "a")]).await;
    broker.close().await;
    assert!(!broker.ready().await);
    let live = LiveSubscription {
        selector: selector("a"),
        capacity: 10,
        max_bytes: 0,
    };
    assert_eq!(
        broker.subscribe_live(live).await.unwrap_err(),
        BrokerError::Closed
    );
    assert_eq!(
        broker
            .consume("s", ConsumeOptions::default())
            .await
            .unwrap_err(),
        BrokerError::Closed
    );
    assert_eq!(
        publish(&broker, event("a", 1)).await.unwrap_err(),
        BrokerError::Closed
    );
    assert_eq!(broker.subscriptions().await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn live_overflow_is_counted_as_dropped() {
    let broker = MemoryBroker::default();
    let live = LiveSubscription {
        selector: selector("a"),
        capacity: 1,
        max_bytes: 0,
    };
    let mut stream = broker.subscribe_live(live).await.unwrap();
    for i in 1..=3 {
        publish(&broker, event("a", i)).await.unwrap();
    }
    assert_eq!(stream.try_recv(), Some(LiveItem::Overflow { dropped: 2 }));
    let stats = broker.stats().await.unwrap();
    assert_eq!((stats.delivered_live, stats.dropped), (3, 2));
    drop(stream);
    assert_eq!(broker.stats().await.unwrap().live_subscriptions, 0);
    assert!(broker.shared.live.read().trie.is_empty());
}
