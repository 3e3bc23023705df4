//! Event-time windows over a real subscription (in-process client and
//! router): windows close on the event clock, late events are dropped,
//! counted and reported, and open windows flush when events stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_router::client::{Client, WindowClock, WindowConfig, Windows};
use event_router::{Event, Router, RouterConfig};
use jiff::Timestamp;
use serde_json::json;

#[tokio::test]
async fn windows_over_a_subscription_close_on_event_time_and_report_late_events() {
    let broker = Arc::new(event_router::broker::MemoryBroker::default());
    let client = Client::in_process(Router::new(broker, RouterConfig::default()));
    let sub = client.subscribe("metrics.*").start().await.unwrap();
    let config = WindowConfig {
        lateness: Duration::ZERO,
        clock: WindowClock::Event,
        idle: Some(Duration::from_millis(300)),
        ..WindowConfig::tumbling(Duration::from_secs(1))
    };
    let reported = Arc::new(Mutex::new(Vec::new()));
    let sink = reported.clone();
    let mut windows = Windows::new(sub, config)
        .unwrap()
        .on_late(move |e| sink.lock().unwrap().push(e.payload["n"].clone()));
    let base = 1_700_000_000_000_i64;
    for (n, offset) in [(1, 0), (2, 500), (3, 1200), (4, 100), (5, 1500)] {
        let mut e = Event::new("metrics.cpu", json!({"n": n})).unwrap();
        e.time = Timestamp::from_millisecond(base + offset).unwrap();
        client.publish_with(e).await.unwrap();
    }
    let wait = Duration::from_secs(5);
    let ns = |w: &event_router::client::Window| -> Vec<i64> {
        w.events
            .iter()
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect()
    };
    let first = tokio::time::timeout(wait, windows.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.start.as_millisecond(), base);
    assert_eq!(first.end.as_millisecond(), base + 1000);
    assert_eq!(ns(&first), vec![1, 2]);
    let second = tokio::time::timeout(wait, windows.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.start.as_millisecond(), base + 1000);
    assert_eq!(ns(&second), vec![3, 5], "flushed after idle");
    assert_eq!(windows.late(), 1);
    assert_eq!(*reported.lock().unwrap(), vec![json!(4)]);
}
