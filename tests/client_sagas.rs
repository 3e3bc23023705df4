//! Sagas in the Rust client, in-process against a router on the memory
//! broker: a failing step compensates in reverse, a step past its timeout
//! fails, and a saga whose client was dropped mid-way resumes in a new
//! client and runs each remaining step once.

use std::sync::Arc;
use std::time::Duration;

use event_router::client::{Client, Saga, SagaBuilder, Step};
use event_router::{Event, Router, RouterConfig};
use parking_lot::Mutex;
use serde_json::json;

type Log = Arc<Mutex<Vec<String>>>;

const WAIT: Duration = Duration::from_secs(10);

fn router() -> Arc<Router> {
    let broker = Arc::new(event_router::broker::MemoryBroker::default());
    Router::new(broker, RouterConfig::default())
}

/// reserve (start) → charge → ship; ship fails when `fail_ship`, sleeps
/// past its 100 ms timeout when `slow_ship`.
async fn order_saga(client: &Client, log: &Log, fail_ship: bool, slow_ship: bool) -> Saga {
    let l = |log: &Log, what: &str| log.lock().push(what.to_string());
    let (a, b, c, d, e) = (
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
    );
    let reserve = Step::new("reserve", &["order.created"], move |mut ctx, event| {
        let log = a.clone();
        async move {
            l(&log, "reserve");
            ctx.data.insert("order".into(), event.payload["id"].clone());
            ctx.publish("inventory.reserve", json!({})).await?;
            Ok(ctx)
        }
    })
    .unwrap()
    .starts()
    .compensation(move |_| {
        let log = b.clone();
        async move { l(&log, "release") }
    });
    let charge = Step::new("charge", &["inventory.reserved"], move |ctx, _| {
        let log = c.clone();
        async move {
            l(&log, "charge");
            Ok(ctx)
        }
    })
    .unwrap()
    .compensation(move |_| {
        let log = d.clone();
        async move { l(&log, "refund") }
    });
    let ship = Step::new("ship", &["payment.*"], move |mut ctx, _| {
        let log = e.clone();
        async move {
            l(&log, "ship");
            if slow_ship {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if fail_ship {
                return Err("carrier refused".into());
            }
            ctx.complete();
            Ok(ctx)
        }
    })
    .unwrap()
    .timeout(Duration::from_millis(100));
    SagaBuilder::new(client, "process_order")
        .step(reserve)
        .step(charge)
        .step(ship)
        .start()
        .await
        .unwrap()
}

async fn publish(client: &Client, topic: &str, saga: &str) {
    let mut event = Event::new(topic, json!({"id": 7})).unwrap();
    event.correlation_id = Some(saga.to_string());
    client.publish_with(event).await.unwrap();
}

async fn history(client: &Client, stream: &str) -> Vec<(String, Option<String>)> {
    let page = client.read_stream(stream, 0, 1000).await.unwrap();
    page.entries
        .into_iter()
        .map(|e| (e.event.topic, e.event.correlation_id))
        .collect()
}

async fn compensates_in_reverse(slow_ship: bool) {
    let client = Client::in_process(router());
    let log = Log::default();
    let mut reserves = client.subscribe("inventory.reserve").start().await.unwrap();
    let saga = order_saga(&client, &log, !slow_ship, slow_ship).await;
    publish(&client, "order.created", "order-1").await;
    publish(&client, "inventory.reserved", "order-1").await;
    publish(&client, "payment.completed", "order-1").await;
    let state = saga.wait("order-1", WAIT).await.unwrap();
    assert_eq!(state.status, "compensated");
    assert_eq!(state.compensated, ["charge", "reserve"]);
    assert_eq!(
        *log.lock(),
        ["reserve", "charge", "ship", "refund", "release"]
    );
    let published = tokio::time::timeout(WAIT, reserves.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.event.correlation_id.as_deref(), Some("order-1"));
    let got = history(&client, &saga.stream("order-1")).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "saga.started",
            "saga.step",
            "saga.step",
            "saga.compensating",
            "saga.compensation_done",
            "saga.compensation_done",
            "saga.compensated",
        ]
    );
    assert!(
        got.iter().all(|(_, c)| c.as_deref() == Some("order-1")),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_failing_step_compensates_the_earlier_steps_in_reverse() {
    compensates_in_reverse(false).await;
}

#[tokio::test]
async fn a_step_past_its_timeout_fails_and_compensates() {
    compensates_in_reverse(true).await;
}

#[tokio::test]
async fn a_saga_whose_client_was_dropped_mid_way_resumes_in_a_new_client() {
    let router = router();
    let log = Log::default();
    let first = Client::in_process(router.clone());
    let saga = order_saga(&first, &log, false, false).await;
    publish(&first, "order.created", "order-2").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while saga.state("order-2").map(|s| s.steps) != Some(vec!["reserve".to_string()]) {
        assert!(tokio::time::Instant::now() < deadline, "step 1 not stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(saga);
    first.close().await;
    drop(first);

    let second = Client::in_process(router);
    publish(&second, "inventory.reserved", "order-2").await;
    publish(&second, "payment.completed", "order-2").await;
    let resumed = order_saga(&second, &log, false, false).await;
    let state = resumed.wait("order-2", WAIT).await.unwrap();
    assert_eq!(state.status, "completed");
    assert_eq!(state.steps, ["reserve", "charge", "ship"]);
    assert_eq!(state.data["order"], json!(7));
    assert_eq!(*log.lock(), ["reserve", "charge", "ship"]);
}

#[tokio::test]
async fn a_saga_waiting_past_its_step_timeout_compensates() {
    let client = Client::in_process(router());
    let log = Log::default();
    let (a, b) = (log.clone(), log.clone());
    let reserve = Step::new("reserve", &["order.created"], move |ctx, _| {
        let log = a.clone();
        async move {
            log.lock().push("reserve".into());
            Ok(ctx)
        }
    })
    .unwrap()
    .starts()
    .compensation(move |_| {
        let log = b.clone();
        async move { log.lock().push("release".into()) }
    });
    let never = Step::new("charge", &["inventory.reserved"], |ctx, _| async move {
        Ok(ctx)
    })
    .unwrap();
    let saga = SagaBuilder::new(&client, "stalled")
        .step(reserve)
        .step(never)
        .step_timeout(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    publish(&client, "order.created", "order-3").await;
    let state = saga.wait("order-3", WAIT).await.unwrap();
    assert_eq!(state.status, "compensated");
    assert_eq!(*log.lock(), ["reserve", "release"]);
}
