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
