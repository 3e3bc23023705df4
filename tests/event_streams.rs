//! Event streams over the wire: WebSocket `append`/`read_stream`/
//! `subscribe_stream` and the HTTP endpoints on an in-process router (memory
//! broker), then real `event-router serve --redis` processes against a real
//! `redis-server`: a follower that resumes across a router restart sees
//! every version once, and streams survive a Redis restart with persistence.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::inproc::{WsClient, http, start_router};
use common::process::RouterProcess;
use common::redis::RedisServer;
use serde_json::{Value, json};

fn append(stream: &str, n: u64, expected: Option<u64>) -> Value {
    let mut frame = json!({
        "op": "append", "id": format!("a{n}"), "stream": stream,
        "event": {"type": "order.changed", "payload": {"n": n}},
    });
    if let Some(v) = expected {
        frame["expected_version"] = json!(v);
    }
    frame
}

/// Receives `stream_event` frames until `count` arrived; returns versions.
async fn stream_versions(ws: &mut WsClient, count: usize) -> Vec<u64> {
    let mut versions = Vec::new();
    while versions.len() < count {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "stream_event", "{frame}");
        assert_eq!(
            frame["event"]["payload"]["n"], frame["version"],
            "payload n is the version in these tests: {frame}"
        );
        versions.push(frame["version"].as_u64().expect("version"));
    }
    versions
}

#[tokio::test]
async fn websocket_append_read_and_conflict_frames_have_the_documented_shapes() {
    let (addr, _server, token) = start_router().await;
    let mut ws = WsClient::connect(addr, "/ws").await;
    let ok = ws.call(append("order-1", 1, Some(0))).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(
        (ok["id"].as_str(), ok["version"].as_u64()),
        (Some("a1"), Some(1))
    );
    assert_eq!(ok["stream"], "order-1");
    assert!(ok["event_id"].is_string());
    let conflict = ws.call(append("order-1", 2, Some(0))).await;
    assert_eq!(conflict["op"], "error");
    assert_eq!(conflict["code"], "version_conflict");
    assert_eq!(conflict["current_version"], 1);
    assert!(conflict["message"].as_str().unwrap().contains("version 1"));
    ws.call(append("order-1", 2, Some(1))).await;
    let read = ws
        .call(json!({"op":"read_stream","id":"r","stream":"order-1","from_version":2}))
        .await;
    assert_eq!(read["version"], 2);
    assert_eq!(read["entries"].as_array().unwrap().len(), 1);
    assert_eq!(read["entries"][0]["version"], 2);
    assert_eq!(read["entries"][0]["event"]["payload"]["n"], 2);
    let bad = ws.call(append("no spaces", 1, None)).await;
    assert_eq!(bad["code"], "invalid_stream");
    let bad = ws
        .call(json!({"op":"append","stream":"s","event":{"payload":1}}))
        .await;
    assert_eq!(bad["op"], "error", "an event without a type is refused");
    token.cancel();
}

#[tokio::test]
async fn websocket_concurrent_appends_with_the_same_expected_version_have_one_winner() {
    let (addr, _server, token) = start_router().await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(WsClient::connect(addr, "/ws").await);
    }
    let replies = futures::future::join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(n, ws)| ws.call(append("race", n as u64, Some(0)))),
    )
    .await;
    let winners = replies.iter().filter(|r| r["op"] == "ok").count();
    assert_eq!(winners, 1, "{replies:?}");
    for r in replies.iter().filter(|r| r["op"] != "ok") {
        assert_eq!(
            (&r["code"], &r["current_version"]),
            (&json!("version_conflict"), &json!(1))
        );
    }
    token.cancel();
}

#[tokio::test]
async fn websocket_stream_subscription_catches_up_then_goes_live_and_unsubscribes() {
    let (addr, _server, token) = start_router().await;
    let mut writer = WsClient::connect(addr, "/ws").await;
    for n in 1..=3 {
        assert_eq!(writer.call(append("order-7", n, None)).await["op"], "ok");
    }
    let mut reader = WsClient::connect(addr, "/ws").await;
    let sub = reader
        .subscribe(json!({"op":"subscribe_stream","id":"s","stream":"order-7","from_version":2}))
        .await;
    assert_eq!(stream_versions(&mut reader, 2).await, vec![2, 3]);
    for n in 4..=6 {
        writer.call(append("order-7", n, None)).await;
    }
    assert_eq!(stream_versions(&mut reader, 3).await, vec![4, 5, 6]);
    let ok = reader
        .call(json!({"op":"unsubscribe","id":"u","subscription_id":sub}))
        .await;
    assert_eq!(ok["op"], "ok");
    writer.call(append("order-7", 7, None)).await;
    assert!(reader.try_recv(Duration::from_millis(300)).await.is_none());
    token.cancel();
}

#[tokio::test]
async fn http_appends_with_201_conflicts_with_409_and_reads_by_version() {
    let (addr, _server, token) = start_router().await;
    let (client, base) = http(addr);
    let url = format!("{base}/api/v1/streams/order-9/events");
    for n in 1..=3u64 {
        let r = client
            .post(&url)
            .json(
                &json!({"event":{"type":"order.changed","payload":{"n":n}},"expected_version":n-1}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["version"], n);
    }
    let r = client
        .post(&url)
        .json(&json!({"event":{"type":"order.changed"},"expected_version":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_conflict");
    assert_eq!(body["error"]["current_version"], 3);
    let body: Value = client
        .get(format!("{url}?from_version=2&limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["entries"].as_array().unwrap().len(), 1);
    assert_eq!(body["entries"][0]["version"], 2);
    let r = client
        .get(format!("{base}/api/v1/streams/a%20b/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let spec: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/api/v1/streams/{stream}/events"]["post"].is_object());
    token.cancel();
}

async fn connect(addr: SocketAddr) -> WsClient {
    WsClient::connect(addr, "/ws").await
}

/// A follower on router A while router B appends; A is killed mid-stream,
/// restarted, and the client resumes from its last version + 1: versions
/// 1..=40 arrive exactly once, in order.
#[tokio::test]
async fn redis_stream_follower_resumes_across_a_router_restart_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut a = RouterProcess::start(&["--redis", &url]);
    let b = RouterProcess::start(&["--redis", &url]);
    let mut writer = connect(b.addr()).await;
    for n in 1..=10 {
        assert_eq!(writer.call(append("order-r", n, None)).await["op"], "ok");
    }
    let mut reader = connect(a.addr()).await;
    reader
        .subscribe(json!({"op":"subscribe_stream","stream":"order-r","from_version":1}))
        .await;
    let mut got = stream_versions(&mut reader, 10).await;
    for n in 11..=20 {
        writer.call(append("order-r", n, None)).await;
    }
    got.extend(stream_versions(&mut reader, 10).await);
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    for n in 21..=30 {
        writer.call(append("order-r", n, None)).await;
    }
    let a = RouterProcess::start(&["--redis", &url]);
    let mut reader = connect(a.addr()).await;
    let next = got.last().unwrap() + 1;
    reader
        .subscribe(json!({"op":"subscribe_stream","stream":"order-r","from_version":next}))
        .await;
    for n in 31..=40 {
        writer.call(append("order-r", n, None)).await;
    }
    got.extend(stream_versions(&mut reader, 20).await);
    assert_eq!(got, (1..=40).collect::<Vec<u64>>());
    assert!(reader.try_recv(Duration::from_millis(300)).await.is_none());
}

/// Concurrent appends through two replicas expecting the same version:
/// one wins per round.
#[tokio::test]
async fn redis_concurrent_appends_through_two_replicas_have_one_winner_per_round() {
    let redis = RedisServer::start();
    let a = RouterProcess::start(&["--redis", &redis.url()]);
    let b = RouterProcess::start(&["--redis", &redis.url()]);
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(connect(if i % 2 == 0 { a.addr() } else { b.addr() }).await);
    }
    for round in 0..3u64 {
        let replies = futures::future::join_all(
            clients
                .iter_mut()
                .map(|ws| ws.call(append("race", round + 1, Some(round)))),
        )
        .await;
        let won: Vec<&Value> = replies.iter().filter(|r| r["op"] == "ok").collect();
        assert_eq!(won.len(), 1, "round {round}: {replies:?}");
        assert_eq!(won[0]["version"], round + 1);
    }
    let mut ws = connect(a.addr()).await;
    let read = ws.call(json!({"op":"read_stream","stream":"race"})).await;
    let versions: BTreeSet<u64> = read["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, BTreeSet::from([1, 2, 3]));
}

/// With Redis persistence on, a stream survives a Redis restart and
/// appends continue at the next version.
#[tokio::test]
async fn redis_streams_survive_a_redis_restart_with_persistence() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let router = RouterProcess::start(&["--redis", &redis.url()]);
    let mut ws = connect(router.addr()).await;
    for n in 1..=3 {
        ws.call(append("order-p", n, None)).await;
    }
    redis.restart();
    let mut reply = Value::Null;
    for _ in 0..50 {
        reply = ws.call(append("order-p", 4, Some(3))).await;
        if reply["op"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply["version"], 4, "{reply}");
    let read = ws
        .call(json!({"op":"read_stream","stream":"order-p"}))
        .await;
    assert_eq!(read["version"], 4);
}
