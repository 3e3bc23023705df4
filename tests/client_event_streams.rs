//! The Rust client's event stream calls, over WebSocket to an in-process
//! server and in-process without a socket: the same versions, conflicts
//! and reads.

mod common;

use common::inproc::start_with;
use event_router::client::Client;
use event_router::server::ServerConfig;
use event_router::{Event, Router, RouterConfig};
use serde_json::json;

async fn exercise(client: &Client) {
    let e = |n: u64| Event::new("order.changed", json!({"n": n})).unwrap();
    let first = client.append("order-c", e(1), Some(0)).await.unwrap();
    assert_eq!((first.stream.as_str(), first.version), ("order-c", 1));
    client.append("order-c", e(2), None).await.unwrap();
    let err = client.append("order-c", e(3), Some(1)).await.unwrap_err();
    assert!(
        err.to_string().contains("version_conflict") && err.to_string().contains("version 2"),
        "{err}"
    );
    let page = client.read_stream("order-c", 2, 0).await.unwrap();
    assert_eq!(page.version, 2);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].event.payload["n"], 2);
    let err = client.read_stream("bad name", 0, 0).await.unwrap_err();
    assert!(err.to_string().contains("invalid_stream"), "{err}");
}

#[tokio::test]
async fn client_appends_and_reads_event_streams_over_websocket() {
    let running = start_with(ServerConfig::default()).await;
    let client = Client::connect(format!("ws://{}/ws", running.addr))
        .await
        .unwrap();
    exercise(&client).await;
    client.close().await;
    running.token.cancel();
}

#[tokio::test]
async fn client_appends_and_reads_event_streams_in_process() {
    let broker = std::sync::Arc::new(event_router::broker::MemoryBroker::default());
    let router = Router::new(broker, RouterConfig::default());
    let client = Client::in_process(router);
    exercise(&client).await;
}

/// Payloads sealed by one client travel through the router encrypted,
/// route on the envelope (priority filter), open with the key and fail
/// with a typed error under another key.
#[tokio::test]
async fn sealed_payloads_cross_the_router_encrypted_and_open_only_with_the_key() {
    use event_router::client::{DecryptionError, PayloadCipher};

    let running = start_with(ServerConfig::default()).await;
    let client = Client::connect(format!("ws://{}/ws", running.addr))
        .await
        .unwrap();
    let mut high = client
        .subscribe("sensitive")
        .filter(json!({"priority": {"$gte": 7}}))
        .start()
        .await
        .unwrap();
    let mut by_payload = client
        .subscribe("sensitive")
        .filter(json!({"payload.ssn": {"$exists": true}}))
        .start()
        .await
        .unwrap();
    let cipher = PayloadCipher::new("k1", &[9; 32]);
    let mut event = Event::new("sensitive", json!({"ssn": "123-45-6789"})).unwrap();
    event.priority = event_router::Priority::new(9).unwrap();
    cipher.seal(&mut event).unwrap();
    client.publish_with(event).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), high.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!got.event.payload.to_string().contains("123-45-6789"));
    assert_eq!(cipher.open(&got.event).unwrap()["ssn"], "123-45-6789");
    let wrong = PayloadCipher::new("k1", &[8; 32]);
    assert!(matches!(
        wrong.open(&got.event),
        Err(DecryptionError::Failed { .. })
    ));
    let none = tokio::time::timeout(std::time::Duration::from_millis(300), by_payload.recv()).await;
    assert!(none.is_err(), "a payload filter matched an encrypted event");
    client.close().await;
    running.token.cancel();
}

/// A follower hands out what is there, then each append, once and in
/// order; one started later from version 3 begins there; an invalid name
/// ends the follower with the server's error.
async fn follow(client: &Client) {
    let wait = std::time::Duration::from_secs(5);
    let e = |n: u64| Event::new("order.changed", json!({"n": n})).unwrap();
    for n in 1..=3 {
        client
            .append("order-live", e(n), Some(n - 1))
            .await
            .unwrap();
    }
    let mut all = client.subscribe_stream("order-live", 0).unwrap();
    let mut late = client.subscribe_stream("order-live", 3).unwrap();
    let appender = {
        let client = client.clone();
        tokio::spawn(async move {
            for n in 4..=6 {
                client
                    .append("order-live", e(n), Some(n - 1))
                    .await
                    .unwrap();
            }
        })
    };
    let mut versions = Vec::new();
    for _ in 1..=6 {
        let entry = tokio::time::timeout(wait, all.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(entry.event.payload["n"], json!(entry.version));
        versions.push(entry.version);
    }
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    let mut versions = Vec::new();
    for _ in 3..=6 {
        let entry = tokio::time::timeout(wait, late.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        versions.push(entry.version);
    }
    assert_eq!(versions, vec![3, 4, 5, 6]);
    appender.await.unwrap();
    let quiet = std::time::Duration::from_millis(300);
    assert!(tokio::time::timeout(quiet, all.recv()).await.is_err());
    let mut bad = client.subscribe_stream("bad name", 0).unwrap();
    let err = tokio::time::timeout(wait, bad.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("invalid_stream"), "{err}");
    assert!(
        tokio::time::timeout(wait, bad.recv())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn client_follows_an_event_stream_over_websocket() {
    let running = start_with(ServerConfig::default()).await;
    let client = Client::connect(format!("ws://{}/ws", running.addr))
        .await
        .unwrap();
    follow(&client).await;
    client.close().await;
    running.token.cancel();
}

#[tokio::test]
async fn client_follows_an_event_stream_in_process() {
    let broker = std::sync::Arc::new(event_router::broker::MemoryBroker::default());
    let router = Router::new(broker, RouterConfig::default());
    let client = Client::in_process(router);
    follow(&client).await;
}

/// More entries than one page and than the follower's buffer, read by a
/// slow reader: every version once, in order.
#[tokio::test]
async fn a_follower_reads_many_pages_in_order_for_a_slow_reader() {
    let broker = std::sync::Arc::new(event_router::broker::MemoryBroker::default());
    let client = Client::in_process(Router::new(broker, RouterConfig::default()));
    let mut follower = client.subscribe_stream("order-long", 0).unwrap();
    for n in 1..=2500_u64 {
        let e = Event::new("order.changed", json!({"n": n})).unwrap();
        client.append("order-long", e, Some(n - 1)).await.unwrap();
    }
    let wait = std::time::Duration::from_secs(10);
    for n in 1..=2500_u64 {
        if n % 500 == 0 {
            tokio::task::yield_now().await;
        }
        let entry = tokio::time::timeout(wait, follower.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (entry.version, entry.event.payload["n"].as_u64()),
            (n, Some(n))
        );
    }
    assert_eq!(follower.last_version(), 2500);
}
