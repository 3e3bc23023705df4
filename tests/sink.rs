//! Push sinks on the embedded broker: a 2xx acks, anything else is retried
//! with the subscription's backoff and dead-lettered after `maxAttempts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use event_router::broker::DeadLetterQuery;
use event_router::resources::parse_documents;
use event_router::{Event, MemoryBroker, Router, RouterConfig};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// A sink that fails the first `failures` POSTs with 503, then answers 200;
/// every POST's `ce-attempt` header goes to the channel.
async fn flaky_sink(failures: u32) -> (String, mpsc::UnboundedReceiver<(u32, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(tx): State<mpsc::UnboundedSender<(u32, String)>>,
                      headers: HeaderMap| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let attempt = headers["ce-attempt"].to_str().unwrap().parse().unwrap();
                        let id = headers["ce-id"].to_str().unwrap().to_string();
                        let _ = tx.send((attempt, id));
                        if n < failures {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        }
                    }
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

async fn router_with_sink(uri: &str, max_attempts: u32) -> Arc<Router> {
    let yaml = format!(
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {{name: hook}}\n\
         spec:\n  topics: [\"invoice.#\"]\n  delivery:\n    maxAttempts: {max_attempts}\n    \
         backoff: {{initial: 20ms, max: 50ms, jitter: 0}}\n  sink: {{uri: \"{uri}\"}}\n"
    );
    let broker = Arc::new(MemoryBroker::new(Default::default()));
    let router = Router::new(broker, RouterConfig::default());
    router
        .apply(&parse_documents(&yaml).unwrap())
        .await
        .unwrap();
    assert_eq!(router.sink_names(), vec!["hook"]);
    router
}

#[tokio::test]
async fn failed_posts_are_retried_and_a_2xx_acks() {
    let (uri, mut posts) = flaky_sink(2).await;
    let router = router_with_sink(&uri, 5).await;
    let event = Event::new("invoice.paid", json!({"n": 1})).unwrap();
    router.publish(event.clone()).await.unwrap();
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (attempt, id) = tokio::time::timeout(WAIT, posts.recv())
            .await
            .expect("a POST in time")
            .unwrap();
        assert_eq!(id, event.id);
        attempts.push(attempt);
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    let deadline = Instant::now() + WAIT;
    loop {
        let info = router.broker().subscription("hook").await.unwrap();
        if info.acked == 1 && info.in_flight == 0 && info.pending == 0 {
            assert_eq!(info.dead_letters, 0);
            break;
        }
        assert!(Instant::now() < deadline, "never acked: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sink_that_keeps_failing_dead_letters_after_max_attempts() {
    let (uri, mut posts) = flaky_sink(u32::MAX).await;
    let router = router_with_sink(&uri, 2).await;
    router
        .publish(Event::new("invoice.void", json!(null)).unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let letters = loop {
        let letters = router
            .broker()
            .dead_letters("hook", DeadLetterQuery::default())
            .await
            .unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letters[0].attempts, 2);
    assert!(letters[0].reason.contains("503"), "{}", letters[0].reason);
    let mut seen = 0;
    while posts.try_recv().is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 2, "exactly maxAttempts POSTs");
}

#[tokio::test]
async fn applying_without_the_sink_stops_its_worker() {
    let (uri, _posts) = flaky_sink(0).await;
    let router = router_with_sink(&uri, 3).await;
    let plain = parse_documents(
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {name: hook}\n\
         spec: {topics: [\"invoice.#\"]}\n",
    )
    .unwrap();
    router.apply_all(&plain).await.unwrap();
    assert!(router.sink_names().is_empty());
}
