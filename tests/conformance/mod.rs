//! The broker conformance suite: every broker-semantics case, defined once.
//!
//! Each case is `pub async fn case(broker: Arc<dyn Broker>)` and uses its own
//! subscription names and topics (a random suffix from [`unique`]), so cases
//! can share one backing store — a single Redis server — and run in
//! parallel. Cases run in real time with short durations (ack timeout
//! 200 ms, backoff 50 ms) and bounded waits, because the Redis broker runs
//! them against a real server; exact timing under a paused clock is checked
//! by the memory broker's unit tests instead.
//!
//! A test binary instantiates the whole suite with its factory, an
//! `async fn() -> Arc<dyn Broker>` that returns a fresh broker:
//!
//! ```ignore
//! mod conformance;
//! async fn memory_broker() -> Arc<dyn Broker> { Arc::new(MemoryBroker::default()) }
//! conformance::broker_conformance_tests!(memory_broker);
//! ```

mod event_streams;

pub use event_streams::*;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_router::broker::{
    Backoff, Broker, BrokerError, ConsumeOptions, Consumer, DeadLetter, DeadLetterQuery,
    DeadLetterSelection, GroupSpec, HistoryPurge, HistoryQuery, LiveItem, LiveStream,
    LiveSubscription, NackOptions, PublishOptions, Published,
};
use event_router::{Delivery, Event, Priority, Selector};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};

/// Longest wait for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);
/// Time given to an asynchronous broker to move published events into live
/// queues before a case looks at what piled up there.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Bound on a whole case, so that a hang fails instead of blocking CI.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Generates one `#[tokio::test]` per conformance case, each calling the
/// case with a broker from `$factory` (an `async fn() -> Arc<dyn Broker>`).
macro_rules! broker_conformance_tests {
    ($factory:path) => {
        $crate::conformance::broker_conformance_tests!(@cases $factory;
            live_fan_out_reaches_matching_subscribers_only,
            live_filter_selects_by_content,
            live_overflow_drops_oldest_and_reports_count,
            dropping_live_stream_unsubscribes,
            durable_events_published_before_any_consumer_are_delivered_later,
            ack_removes_the_event_for_good,
            competing_consumers_get_distinct_events_and_together_all,
            max_in_flight_limits_unacked_deliveries_per_consumer,
            higher_priority_is_delivered_first,
            nack_redelivers_with_next_attempt_after_delay,
            unacked_delivery_is_redelivered_after_ack_timeout,
            exhausted_attempts_move_event_to_dead_letters_with_history,
            ack_timeouts_count_as_failed_attempts,
            redrive_delivers_dead_letters_again_with_fresh_attempts,
            purge_removes_dead_letters,
            dropped_consumer_returns_in_flight_to_another_consumer,
            expired_events_are_never_delivered_and_are_counted,
            history_reads_by_topic_time_range_cursor_and_limit,
            replay_queues_history_into_a_subscription,
            purge_history_deletes_older_matching_events_and_keeps_queued_copies,
            unknown_delivery_and_subscription_are_errors,
            deleted_subscription_ends_its_consumers,
            ensure_subscription_is_idempotent_and_keeps_queued_events,
            publish_batch_keeps_order,
            close_ends_live_streams_and_consumers,
            event_stream_appends_get_consecutive_versions_and_read_back_in_order,
            event_stream_append_with_a_stale_expected_version_conflicts,
            event_stream_concurrent_appends_with_the_same_expected_version_have_one_winner,
            event_stream_follow_catches_up_then_goes_live_without_gap_or_duplicate,
            event_stream_wait_returns_on_append_or_timeout,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let broker = $factory().await;
                $crate::conformance::run($crate::conformance::$case(broker)).await;
            }
        )*
    };
}
pub(crate) use broker_conformance_tests;

/// Runs one case under [`CASE_TIMEOUT`].
pub async fn run(case: impl Future<Output = ()>) {
    timeout(CASE_TIMEOUT, case)
        .await
        .expect("conformance case did not finish in time");
}

// ---------------------------------------------------------------- helpers

/// `prefix-<random>`: a topic segment and subscription name no other case
/// or earlier run uses.
pub fn unique(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &random[..12])
}

fn event(topic: &str, n: u64) -> Event {
    Event::new(topic, json!({ "n": n })).expect("valid test topic")
}

fn n_of(event: &Event) -> u64 {
    event.payload["n"]
        .as_u64()
        .expect("test events carry payload.n")
}

fn ns(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| n_of(&d.event)).collect()
}

fn selector(patterns: &[&str], filter: Option<Value>) -> Selector {
    Selector::parse(patterns, filter.as_ref()).expect("valid test selector")
}

/// A durable subscription with fast real-time policy: ack timeout 200 ms,
/// backoff 50 ms doubling up to 200 ms without jitter, 3 attempts.
fn fast_spec(name: &str, pattern: &str) -> GroupSpec {
    GroupSpec {
        max_attempts: 3,
        ack_timeout: Duration::from_millis(200),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: 0.0,
        },
        ..GroupSpec::new(name, selector(&[pattern], None))
    }
}

/// Like [`fast_spec`] but with a 10 s ack timeout, for cases where a
/// timeout redelivery would blur what is checked.
fn patient_spec(name: &str, pattern: &str) -> GroupSpec {
    GroupSpec {
        ack_timeout: Duration::from_secs(10),
        ..fast_spec(name, pattern)
    }
}

async fn ensure(broker: &Arc<dyn Broker>, spec: GroupSpec) {
    broker
        .ensure_subscription(spec)
        .await
        .expect("ensure_subscription");
}

async fn publish(broker: &Arc<dyn Broker>, event: Event) -> Published {
    broker
        .publish(event, PublishOptions::default())
        .await
        .expect("publish")
}

async fn consumer(broker: &Arc<dyn Broker>, subscription: &str, max_in_flight: usize) -> Consumer {
    let options = ConsumeOptions {
        max_in_flight,
        ..ConsumeOptions::default()
    };
    broker
        .consume(subscription, options)
        .await
        .expect("consume")
}

/// The next batch of deliveries, waiting at most [`WAIT`].
async fn next(consumer: &mut Consumer) -> Vec<Delivery> {
    timeout(WAIT, consumer.next())
        .await
        .expect("no delivery within the wait")
        .expect("consumer failed")
}

/// Exactly `count` deliveries, over as many batches as it takes.
async fn take(consumer: &mut Consumer, count: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < count {
        out.extend(next(consumer).await);
    }
    assert_eq!(out.len(), count, "more deliveries than expected");
    out
}

/// Asserts that nothing is delivered for [`QUIET`] (or longer).
async fn assert_quiet(consumer: &mut Consumer, for_at_least: Duration) {
    if let Ok(got) = timeout(for_at_least.max(QUIET), consumer.next()).await {
        panic!("expected no delivery, got {got:?}");
    }
}

async fn ack_all(broker: &Arc<dyn Broker>, deliveries: &[Delivery]) {
    for d in deliveries {
        broker
            .ack(&d.subscription, &d.delivery_id)
            .await
            .expect("ack");
    }
}

async fn live(
    broker: &Arc<dyn Broker>,
    pattern: &str,
    filter: Option<Value>,
    capacity: usize,
) -> LiveStream {
    let subscription = LiveSubscription {
        selector: selector(&[pattern], filter),
        capacity,
        max_bytes: 0,
    };
    broker
        .subscribe_live(subscription)
        .await
        .expect("subscribe_live")
}

async fn recv(stream: &mut LiveStream) -> LiveItem {
    timeout(WAIT, stream.recv())
        .await
        .expect("no live item within the wait")
        .expect("live stream ended")
}

async fn recv_n(stream: &mut LiveStream) -> u64 {
    match recv(stream).await {
        LiveItem::Event(event) => n_of(&event),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn assert_live_quiet(stream: &mut LiveStream) {
    if let Ok(item) = timeout(QUIET, stream.recv()).await {
        panic!("expected no live item, got {item:?}");
    }
}

async fn dead_letters(broker: &Arc<dyn Broker>, subscription: &str) -> Vec<DeadLetter> {
    broker
        .dead_letters(subscription, DeadLetterQuery::default())
        .await
        .expect("dead_letters")
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `subscription` holds `count` dead letters and returns them.
async fn await_dead_letters(
    broker: &Arc<dyn Broker>,
    subscription: &str,
    count: usize,
) -> Vec<DeadLetter> {
    eventually(&format!("{count} dead letters"), || async {
        dead_letters(broker, subscription).await.len() >= count
    })
    .await;
    let dead = dead_letters(broker, subscription).await;
    assert_eq!(dead.len(), count, "{dead:?}");
    dead
}

async fn nack(broker: &Arc<dyn Broker>, d: &Delivery, delay: Option<Duration>, reason: &str) {
    let options = NackOptions {
        delay,
        reason: Some(reason.to_string()),
    };
    broker
        .nack(&d.subscription, &d.delivery_id, options)
        .await
        .expect("nack");
}

fn select(ids: &[&DeadLetter]) -> DeadLetterSelection {
    DeadLetterSelection {
        ids: Some(ids.iter().map(|d| d.id.clone()).collect()),
    }
}

// ------------------------------------------------------------------ live

/// A live event reaches every subscriber whose pattern matches, once, and
/// no other.
pub async fn live_fan_out_reaches_matching_subscribers_only(broker: Arc<dyn Broker>) {
    let ns = unique("fanout");
    let mut star = live(&broker, &format!("{ns}.task.*"), None, 16).await;
    let mut hash = live(&broker, &format!("{ns}.#"), None, 16).await;
    let mut other = live(&broker, &format!("{ns}.agent.*"), None, 16).await;
    publish(&broker, event(&format!("{ns}.task.created"), 1)).await;
    assert_eq!(recv_n(&mut star).await, 1);
    assert_eq!(recv_n(&mut hash).await, 1);
    assert_live_quiet(&mut other).await;
    assert_live_quiet(&mut star).await;
}

/// A live subscription's content filter is applied before queueing.
pub async fn live_filter_selects_by_content(broker: Arc<dyn Broker>) {
    let ns = unique("livefilter");
    let filter = json!({"payload.n": {"$gt": 1}});
    let mut stream = live(&broker, &format!("{ns}.*"), Some(filter), 16).await;
    for n in 1..=3 {
        publish(&broker, event(&format!("{ns}.x"), n)).await;
    }
    assert_eq!(recv_n(&mut stream).await, 2, "n = 1 must be filtered out");
    assert_eq!(recv_n(&mut stream).await, 3);
    assert_live_quiet(&mut stream).await;
}

/// A subscriber that falls behind loses the oldest events, is told how many
/// first, and the broker counts them.
pub async fn live_overflow_drops_oldest_and_reports_count(broker: Arc<dyn Broker>) {
    let ns = unique("overflow");
    let before = broker.stats().await.expect("stats").dropped;
    let mut stream = live(&broker, &format!("{ns}.x"), None, 2).await;
    for n in 1..=5 {
        publish(&broker, event(&format!("{ns}.x"), n)).await;
    }
    sleep(SETTLE).await;
    assert_eq!(recv(&mut stream).await, LiveItem::Overflow { dropped: 3 });
    assert_eq!(recv_n(&mut stream).await, 4);
    assert_eq!(recv_n(&mut stream).await, 5);
    let after = broker.stats().await.expect("stats").dropped;
    assert!(after >= before + 3, "dropped went from {before} to {after}");
}

/// Dropping the stream ends the subscription.
pub async fn dropping_live_stream_unsubscribes(broker: Arc<dyn Broker>) {
    let ns = unique("livedrop");
    let count = |broker: Arc<dyn Broker>| async move {
        broker.stats().await.expect("stats").live_subscriptions
    };
    let before = count(broker.clone()).await;
    let stream = live(&broker, &format!("{ns}.#"), None, 16).await;
    assert_eq!(count(broker.clone()).await, before + 1);
    drop(stream);
    eventually("the live subscription is gone", || {
        let broker = broker.clone();
        async move { count(broker).await == before }
    })
    .await;
    publish(&broker, event(&format!("{ns}.x"), 1)).await;
}

// --------------------------------------------------------------- durable

/// Events are stored from `ensure_subscription` on, whether or not a
/// consumer is connected, and delivered in publish order.
pub async fn durable_events_published_before_any_consumer_are_delivered_later(
    broker: Arc<dyn Broker>,
) {
    let name = unique("stored");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    for n in 1..=3 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    let info = broker.subscription(&name).await.expect("subscription");
    assert_eq!(info.pending, 3);
    let mut c = consumer(&broker, &name, 10).await;
    let got = take(&mut c, 3).await;
    assert_eq!(ns(&got), [1, 2, 3]);
    assert!(got.iter().all(|d| d.attempt == 1 && d.subscription == name));
    ack_all(&broker, &got).await;
}

/// An acked event is gone: not redelivered after the ack timeout, counted.
pub async fn ack_removes_the_event_for_good(broker: Arc<dyn Broker>) {
    let name = unique("ack");
    let spec = fast_spec(&name, &format!("{name}.#"));
    let ack_timeout = spec.ack_timeout;
    ensure(&broker, spec).await;
    publish(&broker, event(&format!("{name}.x"), 1)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let got = take(&mut c, 1).await;
    ack_all(&broker, &got).await;
    assert_quiet(&mut c, ack_timeout * 3).await;
    let info = broker.subscription(&name).await.expect("subscription");
    assert_eq!(
        (info.pending, info.in_flight, info.retrying, info.acked),
        (0, 0, 0, 1)
    );
}

/// Consumers of one subscription share its events: none gets an event
/// another got, and together they get all.
pub async fn competing_consumers_get_distinct_events_and_together_all(broker: Arc<dyn Broker>) {
    let name = unique("compete");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    let mut expected = Vec::new();
    for n in 0..12 {
        expected.push(publish(&broker, event(&format!("{name}.x"), n)).await.id);
    }
    let mut consumers = [
        consumer(&broker, &name, 3).await,
        consumer(&broker, &name, 3).await,
    ];
    let mut seen: [Vec<String>; 2] = Default::default();
    let deadline = Instant::now() + WAIT;
    while seen.iter().map(Vec::len).sum::<usize>() < expected.len() {
        assert!(Instant::now() < deadline, "only got {seen:?}");
        for (c, seen) in consumers.iter_mut().zip(seen.iter_mut()) {
            if let Ok(got) = timeout(QUIET, c.next()).await {
                let got = got.expect("consumer failed");
                seen.extend(got.iter().map(|d| d.event.id.clone()));
                ack_all(&broker, &got).await;
            }
        }
    }
    assert!(
        seen.iter().all(|s| !s.is_empty()),
        "one consumer got nothing: {seen:?}"
    );
    let mut all: Vec<String> = seen.concat();
    all.sort();
    expected.sort();
    assert_eq!(all, expected, "an event was delivered twice or not at all");
}

/// A consumer never holds more than its `max_in_flight` unacked deliveries.
pub async fn max_in_flight_limits_unacked_deliveries_per_consumer(broker: Arc<dyn Broker>) {
    let name = unique("inflight");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    for n in 1..=4 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    let mut c = consumer(&broker, &name, 2).await;
    let first = take(&mut c, 2).await;
    assert_quiet(&mut c, QUIET).await;
    ack_all(&broker, &first[..1]).await;
    let second = take(&mut c, 1).await;
    assert_quiet(&mut c, QUIET).await;
    ack_all(&broker, &first[1..]).await;
    ack_all(&broker, &second).await;
    let rest = take(&mut c, 1).await;
    let mut all = ns(&first);
    all.extend(ns(&second));
    all.extend(ns(&rest));
    assert_eq!(all, [1, 2, 3, 4]);
}

/// Higher priority first, whatever the publish order.
pub async fn higher_priority_is_delivered_first(broker: Arc<dyn Broker>) {
    let name = unique("priority");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    for p in [1, 5, 9, 3] {
        let mut e = event(&format!("{name}.x"), u64::from(p));
        e.priority = Priority::new(p).expect("1..=10");
        publish(&broker, e).await;
    }
    let mut c = consumer(&broker, &name, 1).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = take(&mut c, 1).await;
        order.push(got[0].event.priority.get());
        ack_all(&broker, &got).await;
    }
    assert_eq!(order, [9, 5, 3, 1]);
}

/// A nacked delivery comes back, not before the requested delay, as the
/// next attempt.
pub async fn nack_redelivers_with_next_attempt_after_delay(broker: Arc<dyn Broker>) {
    let name = unique("nack");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    publish(&broker, event(&format!("{name}.x"), 1)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let first = take(&mut c, 1).await;
    let delay = Duration::from_millis(150);
    let start = Instant::now();
    nack(&broker, &first[0], Some(delay), "busy").await;
    let again = take(&mut c, 1).await;
    // A little slack for stores that keep due times in whole milliseconds.
    assert!(start.elapsed() >= delay - Duration::from_millis(10));
    assert_eq!(again[0].event.id, first[0].event.id);
    assert_eq!(again[0].attempt, 2);
    ack_all(&broker, &again).await;
    let info = broker.subscription(&name).await.expect("subscription");
    assert_eq!((info.retried, info.acked, info.in_flight), (1, 1, 0));
}

/// A delivery not acked within `ack_timeout` is redelivered; its old
/// delivery id is then void.
pub async fn unacked_delivery_is_redelivered_after_ack_timeout(broker: Arc<dyn Broker>) {
    let name = unique("timeout");
    ensure(&broker, fast_spec(&name, &format!("{name}.#"))).await;
    publish(&broker, event(&format!("{name}.x"), 1)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let first = take(&mut c, 1).await;
    let again = take(&mut c, 1).await;
    assert_eq!(again[0].event.id, first[0].event.id);
    assert_eq!(again[0].attempt, 2);
    let stale = broker.ack(&name, &first[0].delivery_id).await;
    assert!(
        matches!(stale, Err(BrokerError::UnknownDelivery(_))),
        "{stale:?}"
    );
    ack_all(&broker, &again).await;
}

/// After `max_attempts` failures the event is dead-lettered with the last
/// reason and every attempt, and not delivered again.
pub async fn exhausted_attempts_move_event_to_dead_letters_with_history(broker: Arc<dyn Broker>) {
    let name = unique("exhaust");
    let spec = GroupSpec {
        max_attempts: 2,
        ..patient_spec(&name, &format!("{name}.#"))
    };
    ensure(&broker, spec).await;
    let published = publish(&broker, event(&format!("{name}.x"), 1)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let first = take(&mut c, 1).await;
    nack(&broker, &first[0], None, "first").await;
    let second = take(&mut c, 1).await;
    assert_eq!(second[0].attempt, 2);
    nack(&broker, &second[0], None, "second").await;
    let dead = await_dead_letters(&broker, &name, 1).await;
    let d = &dead[0];
    assert_eq!(
        (d.event.id.as_str(), d.subscription.as_str()),
        (published.id.as_str(), name.as_str())
    );
    assert!(d.reason.contains("second"), "reason {:?}", d.reason);
    assert_eq!(d.attempts, 2);
    let history: Vec<_> = d
        .history
        .iter()
        .map(|a| (a.attempt, a.reason.as_str()))
        .collect();
    assert_eq!(history, [(1, "nack: first"), (2, "nack: second")]);
    assert_quiet(&mut c, QUIET).await;
    let info = broker.subscription(&name).await.expect("subscription");
    assert_eq!((info.dead_letters, info.dead_lettered), (1, 1));
}

/// Ack timeouts are failed attempts: they dead-letter like nacks do.
pub async fn ack_timeouts_count_as_failed_attempts(broker: Arc<dyn Broker>) {
    let name = unique("timeoutdlq");
    let spec = GroupSpec {
        max_attempts: 1,
        ..fast_spec(&name, &format!("{name}.#"))
    };
    ensure(&broker, spec).await;
    publish(&broker, event(&format!("{name}.x"), 1)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let _unacked = take(&mut c, 1).await;
    let dead = await_dead_letters(&broker, &name, 1).await;
    assert!(dead[0].reason.contains("timeout"), "{:?}", dead[0].reason);
    assert_eq!(dead[0].history.len(), 1);
}

/// Redriven dead letters are delivered again, starting over at attempt 1.
pub async fn redrive_delivers_dead_letters_again_with_fresh_attempts(broker: Arc<dyn Broker>) {
    let name = unique("redrive");
    let spec = GroupSpec {
        max_attempts: 1,
        ..patient_spec(&name, &format!("{name}.#"))
    };
    ensure(&broker, spec).await;
    for n in 1..=2 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    let mut c = consumer(&broker, &name, 10).await;
    for d in take(&mut c, 2).await {
        nack(&broker, &d, None, "poison").await;
    }
    let dead = await_dead_letters(&broker, &name, 2).await;
    let one = broker
        .redrive(&name, select(&[&dead[0]]))
        .await
        .expect("redrive");
    assert_eq!(one, 1);
    let got = take(&mut c, 1).await;
    assert_eq!(
        (got[0].event.id.as_str(), got[0].attempt),
        (dead[0].event.id.as_str(), 1)
    );
    let rest = broker
        .redrive(&name, DeadLetterSelection::default())
        .await
        .expect("redrive");
    assert_eq!(rest, 1);
    let got = take(&mut c, 1).await;
    assert_eq!(got[0].event.id, dead[1].event.id);
    assert!(dead_letters(&broker, &name).await.is_empty());
}

/// Purge deletes the selected dead letters, or all of them.
pub async fn purge_removes_dead_letters(broker: Arc<dyn Broker>) {
    let name = unique("purge");
    let spec = GroupSpec {
        max_attempts: 1,
        ..patient_spec(&name, &format!("{name}.#"))
    };
    ensure(&broker, spec).await;
    for n in 1..=3 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    let mut c = consumer(&broker, &name, 10).await;
    for d in take(&mut c, 3).await {
        nack(&broker, &d, None, "poison").await;
    }
    let dead = await_dead_letters(&broker, &name, 3).await;
    let purged = broker
        .purge(&name, select(&[&dead[0]]))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let left: Vec<_> = dead_letters(&broker, &name)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, [dead[1].id.clone(), dead[2].id.clone()]);
    let purged = broker
        .purge(&name, DeadLetterSelection::default())
        .await
        .expect("purge");
    assert_eq!(purged, 2);
    assert!(dead_letters(&broker, &name).await.is_empty());
    assert_eq!(
        broker
            .subscription(&name)
            .await
            .expect("subscription")
            .dead_letters,
        0
    );
    assert_quiet(&mut c, QUIET).await;
}

/// A consumer that goes away loses nothing: what it held goes to another
/// consumer right away (long before the ack timeout), as a new attempt.
pub async fn dropped_consumer_returns_in_flight_to_another_consumer(broker: Arc<dyn Broker>) {
    let name = unique("handover");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    for n in 1..=2 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    let mut first = consumer(&broker, &name, 10).await;
    let held = take(&mut first, 2).await;
    let mut second = consumer(&broker, &name, 10).await;
    drop(first);
    let got = take(&mut second, 2).await;
    assert_eq!(ns(&got), ns(&held));
    assert!(got.iter().all(|d| d.attempt == 2), "{got:?}");
    ack_all(&broker, &got).await;
}

/// Events whose TTL passed — before publish or while queued — are never
/// delivered, and are counted as expired.
pub async fn expired_events_are_never_delivered_and_are_counted(broker: Arc<dyn Broker>) {
    let name = unique("ttl");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    let before = broker.stats().await.expect("stats").expired;
    let topic = format!("{name}.x");
    let mut dead_on_arrival = event(&topic, 1);
    dead_on_arrival.time = Timestamp::now() - SignedDuration::from_secs(60);
    dead_on_arrival.ttl = Some(1);
    publish(&broker, dead_on_arrival).await;
    // Expires 300 ms from now: in the queue, or at publish on a slow machine.
    let mut short_lived = event(&topic, 2);
    short_lived.time = Timestamp::now() - SignedDuration::from_millis(700);
    short_lived.ttl = Some(1);
    publish(&broker, short_lived).await;
    sleep(Duration::from_millis(400)).await;
    publish(&broker, event(&topic, 3)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let got = take(&mut c, 1).await;
    assert_eq!(ns(&got), [3]);
    assert_quiet(&mut c, QUIET).await;
    let after = broker.stats().await.expect("stats").expired;
    assert!(after >= before + 2, "expired went from {before} to {after}");
}

// --------------------------------------------------------------- history

/// History reads filter by selector, time range (`to` exclusive) and
/// cursor, oldest first, up to the limit.
pub async fn history_reads_by_topic_time_range_cursor_and_limit(broker: Arc<dyn Broker>) {
    let ns_ = unique("history");
    let base = Timestamp::now() - SignedDuration::from_secs(60);
    let mut published = Vec::new();
    for (n, sub) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
        let mut e = event(&format!("{ns_}.{sub}"), n);
        e.time = base + SignedDuration::from_secs(n as i64);
        published.push(publish(&broker, e).await);
    }
    let read = |query: HistoryQuery| {
        let broker = broker.clone();
        async move {
            let entries = broker.history(query).await.expect("history");
            // Sorted: events of different partitions stored in the same
            // millisecond have no order between them on Redis.
            let mut ns = entries.iter().map(|e| n_of(&e.event)).collect::<Vec<_>>();
            ns.sort_unstable();
            ns
        }
    };
    let everything = || HistoryQuery {
        selector: Some(selector(&[&format!("{ns_}.#")], None)),
        ..HistoryQuery::default()
    };
    assert_eq!(read(everything()).await, [1, 2, 3, 4]);
    let topic_a = HistoryQuery {
        selector: Some(selector(&[&format!("{ns_}.a")], None)),
        ..HistoryQuery::default()
    };
    assert_eq!(read(topic_a).await, [1, 3, 4]);
    let range = HistoryQuery {
        from: Some(base + SignedDuration::from_secs(2)),
        to: Some(base + SignedDuration::from_secs(4)),
        ..everything()
    };
    assert_eq!(read(range).await, [2, 3]);
    let after_first = HistoryQuery {
        after: Some(published[0].cursor.clone()),
        ..everything()
    };
    assert_eq!(read(after_first).await, [2, 3, 4]);
    let entries = broker.history(everything()).await.expect("history");
    let after_third = HistoryQuery {
        after: Some(entries[2].cursor.clone()),
        ..everything()
    };
    assert_eq!(read(after_third).await, [4]);
    let limited = HistoryQuery {
        limit: 2,
        ..everything()
    };
    assert_eq!(read(limited).await, [1, 2]);
}

/// Replay copies matching history into a subscription, which then delivers
/// it like newly published events.
pub async fn replay_queues_history_into_a_subscription(broker: Arc<dyn Broker>) {
    let name = unique("replay");
    for n in 1..=3 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    assert_eq!(
        broker
            .subscription(&name)
            .await
            .expect("subscription")
            .pending,
        0
    );
    let query = HistoryQuery {
        selector: Some(selector(&[&format!("{name}.#")], None)),
        ..HistoryQuery::default()
    };
    let queued = broker.replay(&name, query.clone()).await.expect("replay");
    assert_eq!(queued, 3);
    let mut c = consumer(&broker, &name, 10).await;
    let got = take(&mut c, 3).await;
    assert_eq!(ns(&got), [1, 2, 3]);
    assert!(got.iter().all(|d| d.attempt == 1));
    let missing = broker.replay(&unique("nosuchsub"), query).await;
    assert!(
        matches!(missing, Err(BrokerError::UnknownSubscription(_))),
        "{missing:?}"
    );
}

/// `purge_history` deletes the retained events older than its cutoff that
/// its selector matches, and nothing else; durable subscriptions keep
/// their queued copies.
pub async fn purge_history_deletes_older_matching_events_and_keeps_queued_copies(
    broker: Arc<dyn Broker>,
) {
    let ns_ = unique("purge");
    ensure(&broker, patient_spec(&ns_, &format!("{ns_}.#"))).await;
    let now = Timestamp::now();
    let old = now - SignedDuration::from_hours(40 * 24);
    for (n, sub, time) in [(1, "a", old), (2, "b", old), (3, "a", now), (4, "b", now)] {
        let mut e = event(&format!("{ns_}.{sub}"), n);
        e.time = time;
        publish(&broker, e).await;
    }
    let history = || {
        let broker = broker.clone();
        let query = HistoryQuery {
            selector: Some(selector(&[&format!("{ns_}.#")], None)),
            ..HistoryQuery::default()
        };
        async move {
            let entries = broker.history(query).await.expect("history");
            // Sorted: events of different partitions stored in the same
            // millisecond have no order between them on Redis.
            let mut ns = entries.iter().map(|e| n_of(&e.event)).collect::<Vec<_>>();
            ns.sort_unstable();
            ns
        }
    };
    let cutoff = now - SignedDuration::from_hours(30 * 24);
    let only_b = HistoryPurge {
        before: cutoff,
        selector: Some(selector(&[&format!("{ns_}.b")], None)),
    };
    assert_eq!(broker.purge_history(only_b).await.expect("purge"), 1);
    assert_eq!(history().await, [1, 3, 4]);
    let older = HistoryPurge {
        before: cutoff,
        selector: Some(selector(&[&format!("{ns_}.#")], None)),
    };
    assert_eq!(broker.purge_history(older.clone()).await.expect("purge"), 1);
    assert_eq!(history().await, [3, 4]);
    assert_eq!(broker.purge_history(older).await.expect("purge"), 0);
    let info = broker.subscription(&ns_).await.expect("subscription");
    assert_eq!(info.pending, 4, "queued copies stay");
}

// ---------------------------------------------------------------- errors

/// Acks and nacks of ids that are not in flight, and calls naming a
/// subscription that does not exist, are errors.
pub async fn unknown_delivery_and_subscription_are_errors(broker: Arc<dyn Broker>) {
    let name = unique("unknown");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    let ack = broker.ack(&name, "no-such-delivery").await;
    assert!(
        matches!(ack, Err(BrokerError::UnknownDelivery(_))),
        "{ack:?}"
    );
    let nack = broker
        .nack(&name, "no-such-delivery", NackOptions::default())
        .await;
    assert!(
        matches!(nack, Err(BrokerError::UnknownDelivery(_))),
        "{nack:?}"
    );
    let missing = unique("nosuchsub");
    let unknown = |r: Result<(), BrokerError>| {
        assert!(
            matches!(r, Err(BrokerError::UnknownSubscription(_))),
            "{r:?}"
        );
    };
    unknown(broker.ack(&missing, "1").await);
    unknown(broker.subscription(&missing).await.map(drop));
    unknown(
        broker
            .consume(&missing, ConsumeOptions::default())
            .await
            .map(drop),
    );
    unknown(
        broker
            .dead_letters(&missing, DeadLetterQuery::default())
            .await
            .map(drop),
    );
    let mut bad = patient_spec(&name, "x");
    bad.max_attempts = 0;
    let invalid = broker.ensure_subscription(bad).await;
    assert!(
        matches!(invalid, Err(BrokerError::InvalidSubscription { .. })),
        "{invalid:?}"
    );
}

/// Deleting a subscription wakes its waiting consumers with an error.
pub async fn deleted_subscription_ends_its_consumers(broker: Arc<dyn Broker>) {
    let name = unique("delete");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    publish(&broker, event(&format!("{name}.x"), 1)).await;
    let mut c = consumer(&broker, &name, 10).await;
    let _held = take(&mut c, 1).await;
    let waiting = tokio::spawn(async move {
        let result = c.next().await;
        (c, result)
    });
    sleep(Duration::from_millis(50)).await;
    assert!(broker.delete_subscription(&name).await.expect("delete"));
    let (_c, result) = timeout(WAIT, waiting)
        .await
        .expect("consumer not woken by delete")
        .expect("task");
    assert!(
        matches!(result, Err(BrokerError::UnknownSubscription(_))),
        "{result:?}"
    );
    assert!(!broker.delete_subscription(&name).await.expect("delete"));
    assert!(broker.subscription(&name).await.is_err());
    publish(&broker, event(&format!("{name}.x"), 2)).await;
}

/// Ensuring an existing subscription updates its policy and keeps what it
/// has queued.
pub async fn ensure_subscription_is_idempotent_and_keeps_queued_events(broker: Arc<dyn Broker>) {
    let name = unique("ensure");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    for n in 1..=2 {
        publish(&broker, event(&format!("{name}.x"), n)).await;
    }
    let updated = GroupSpec {
        max_attempts: 7,
        ..patient_spec(&name, &format!("{name}.#"))
    };
    ensure(&broker, updated.clone()).await;
    ensure(&broker, updated).await;
    let info = broker.subscription(&name).await.expect("subscription");
    assert_eq!((info.spec.max_attempts, info.pending), (7, 2));
    let listed = broker.subscriptions().await.expect("subscriptions");
    assert_eq!(listed.iter().filter(|s| s.spec.name == name).count(), 1);
    let mut c = consumer(&broker, &name, 10).await;
    assert_eq!(ns(&take(&mut c, 2).await), [1, 2]);
}

// ----------------------------------------------------------------- batch

/// A batch is stored in order: history cursors, live delivery and durable
/// delivery all follow it.
pub async fn publish_batch_keeps_order(broker: Arc<dyn Broker>) {
    let name = unique("batch");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    let mut stream = live(&broker, &format!("{name}.#"), None, 64).await;
    let events: Vec<Event> = (0..10).map(|n| event(&format!("{name}.x"), n)).collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let options = PublishOptions { atomic: true };
    let published = broker
        .publish_batch(events, options)
        .await
        .expect("publish_batch");
    let published_ids: Vec<_> = published.iter().map(|p| p.id.clone()).collect();
    assert_eq!(published_ids, ids);
    let mut live_order = Vec::new();
    for _ in 0..10 {
        live_order.push(recv_n(&mut stream).await);
    }
    assert_eq!(live_order, (0..10).collect::<Vec<_>>());
    let mut c = consumer(&broker, &name, 100).await;
    assert_eq!(ns(&take(&mut c, 10).await), (0..10).collect::<Vec<_>>());
    let after_first = HistoryQuery {
        selector: Some(selector(&[&format!("{name}.#")], None)),
        after: Some(published[0].cursor.clone()),
        ..HistoryQuery::default()
    };
    let history = broker.history(after_first).await.expect("history");
    let history: Vec<_> = history.iter().map(|e| n_of(&e.event)).collect();
    assert_eq!(history, (1..10).collect::<Vec<_>>());
}

// ----------------------------------------------------------------- close

/// `close` ends live streams, wakes consumers with `Closed` and refuses
/// publishes.
pub async fn close_ends_live_streams_and_consumers(broker: Arc<dyn Broker>) {
    let name = unique("close");
    ensure(&broker, patient_spec(&name, &format!("{name}.#"))).await;
    let mut stream = live(&broker, &format!("{name}.#"), None, 16).await;
    let mut c = consumer(&broker, &name, 10).await;
    let waiting = tokio::spawn(async move {
        let result = c.next().await;
        (c, result)
    });
    assert!(broker.ready().await);
    broker.close().await;
    let end = timeout(WAIT, stream.recv())
        .await
        .expect("live stream not ended by close");
    assert_eq!(end, None);
    let (_c, result) = timeout(WAIT, waiting)
        .await
        .expect("consumer not woken by close")
        .expect("task");
    assert_eq!(result.map(|d| d.len()), Err(BrokerError::Closed));
    let publish = broker
        .publish(event(&format!("{name}.x"), 1), PublishOptions::default())
        .await;
    assert_eq!(publish.map(drop), Err(BrokerError::Closed));
    assert!(!broker.ready().await);
}
