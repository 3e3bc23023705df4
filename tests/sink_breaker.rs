//! The circuit breaker of push sinks, on both brokers: a sink that keeps
//! failing opens its breaker, events wait in the subscription with their
//! attempts intact (none is dead-lettered, most are never POSTed while it
//! is down), the state shows in the stats, and the flow resumes once the
//! sink recovers. Without a breaker the same outage dead-letters them.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::redis::{RedisServer, key_prefix};
use event_router::broker::{RedisBroker, RedisBrokerConfig, SharedBroker};
use event_router::resources::parse_documents;
use event_router::sink::BreakerState;
use event_router::{Event, MemoryBroker, Router, RouterConfig};
use parking_lot::Mutex;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Sink {
    healthy: AtomicBool,
    /// Event ids of POSTs answered with 503.
    failed: Mutex<Vec<String>>,
    /// Event ids of POSTs answered with 200.
    ok: Mutex<HashSet<String>>,
}

async fn start_sink() -> (String, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(sink): State<Arc<Sink>>, headers: HeaderMap| async move {
                    let id = headers["ce-id"].to_str().unwrap().to_string();
                    if sink.healthy.load(Ordering::SeqCst) {
                        sink.ok.lock().insert(id);
                        StatusCode::OK
                    } else {
                        sink.failed.lock().push(id);
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                },
            ),
        )
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), sink)
}

fn yaml(uri: &str, breaker: bool) -> String {
    let breaker = if breaker {
        "\n    circuitBreaker: {failureThreshold: 3, window: 10s, recoveryTimeout: 400ms}"
    } else {
        ""
    };
    format!(
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {{name: hook}}\n\
         spec:\n  topics: [\"invoice.#\"]\n  delivery:\n    maxAttempts: 10\n    maxInFlight: 2\n    \
         backoff: {{initial: 20ms, max: 40ms, jitter: 0}}\n  sink:\n    uri: \"{uri}\"{breaker}\n"
    )
}

async fn router(broker: SharedBroker, uri: &str, breaker: bool) -> Arc<Router> {
    let router = Router::new(broker, RouterConfig::default());
    router
        .apply(&parse_documents(&yaml(uri, breaker)).unwrap())
        .await
        .unwrap();
    router
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn circuit(router: &Router) -> Option<BreakerState> {
    router
        .sink_states()
        .first()?
        .circuit
        .as_ref()
        .map(|c| c.state)
}

async fn breaker_holds_events_while_the_sink_is_down(broker: SharedBroker) {
    let (uri, sink) = start_sink().await;
    let router = router(broker, &uri, true).await;
    assert_eq!(circuit(&router), Some(BreakerState::Closed));
    let mut ids = Vec::new();
    for n in 0..10 {
        let event = Event::new("invoice.paid", json!({"n": n})).unwrap();
        ids.push(event.id.clone());
        router.publish(event).await.unwrap();
    }
    until("the breaker to open", async || {
        circuit(&router) != Some(BreakerState::Closed)
    })
    .await;
    // Down for a while: only the opening failures and a probe every 400 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let failed = sink.failed.lock().clone();
    let posted: HashSet<&String> = failed.iter().collect();
    assert!(
        failed.len() <= 12,
        "{} POSTs while open: the breaker did not hold",
        failed.len()
    );
    assert!(posted.len() < 10, "every event was POSTed: {posted:?}");
    let info = router.broker().subscription("hook").await.unwrap();
    assert_eq!(info.dead_letters, 0, "attempts were burnt: {info:?}");
    assert_eq!(info.acked, 0);
    assert!(
        router.sink_states()[0]
            .circuit
            .as_ref()
            .unwrap()
            .opened_total
            >= 1
    );
    sink.healthy.store(true, Ordering::SeqCst);
    until("every event delivered", async || sink.ok.lock().len() == 10).await;
    until("all acked", async || {
        let info = router.broker().subscription("hook").await.unwrap();
        info.acked == 10 && info.pending == 0 && info.in_flight == 0
    })
    .await;
    let delivered: HashSet<String> = sink.ok.lock().clone();
    assert_eq!(delivered, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(circuit(&router), Some(BreakerState::Closed));
    let info = router.broker().subscription("hook").await.unwrap();
    assert_eq!(info.dead_letters, 0);
}

async fn without_a_breaker_the_same_outage_dead_letters(broker: SharedBroker) {
    let (uri, sink) = start_sink().await;
    let router = router(broker, &uri, false).await;
    assert_eq!(router.sink_states()[0].circuit, None);
    for n in 0..4 {
        let event = Event::new("invoice.paid", json!({"n": n})).unwrap();
        router.publish(event).await.unwrap();
    }
    until("dead letters", async || {
        router
            .broker()
            .subscription("hook")
            .await
            .unwrap()
            .dead_letters
            == 4
    })
    .await;
    assert!(sink.failed.lock().len() >= 40);
}

fn memory() -> SharedBroker {
    Arc::new(MemoryBroker::default())
}

async fn redis() -> SharedBroker {
    let server = RedisServer::shared();
    let config = RedisBrokerConfig {
        key_prefix: key_prefix(),
        poll_interval: Duration::from_millis(20),
        command_timeout: Duration::from_millis(1000),
        reclaim_idle: Duration::from_millis(900),
        ..RedisBrokerConfig::new(server.url())
    };
    Arc::new(
        RedisBroker::connect(config)
            .await
            .expect("connect to redis"),
    )
}

#[tokio::test]
async fn memory_sink_breaker_opens_holds_events_and_resumes() {
    breaker_holds_events_while_the_sink_is_down(memory()).await;
}

#[tokio::test]
async fn redis_sink_breaker_opens_holds_events_and_resumes() {
    breaker_holds_events_while_the_sink_is_down(redis().await).await;
}

#[tokio::test]
async fn memory_sink_without_breaker_dead_letters_through_an_outage() {
    without_a_breaker_the_same_outage_dead_letters(memory()).await;
}

#[tokio::test]
async fn redis_sink_without_breaker_dead_letters_through_an_outage() {
    without_a_breaker_the_same_outage_dead_letters(redis().await).await;
}
