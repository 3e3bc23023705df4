//! Server-sent events over a real loopback socket.

mod common;

use std::time::Duration;

use common::inproc::{SseClient, WsClient, http, start_with};
use event_router::server::ServerConfig;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(200);

async fn publish(addr: std::net::SocketAddr, event: Value) -> String {
    let (client, base) = http(addr);
    let body: Value = client
        .post(format!("{base}/api/v1/events"))
        .json(&event)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["event_id"].as_str().expect("event_id").to_string()
}

#[tokio::test]
async fn live_streams_deliver_matching_events_named_by_topic_with_the_event_id() {
    let server = start_with(ServerConfig::default()).await;
    let mut stream =
        SseClient::open(server.addr, "/api/v1/events/stream?topics=a.*,b.%23", &[]).await;
    publish(server.addr, json!({"type":"c.x"})).await;
    let a = publish(server.addr, json!({"type":"a.x","payload":{"n":1}})).await;
    let b = publish(server.addr, json!({"type":"b.y.z"})).await;

    let first = stream.next_event().await;
    assert_eq!(first.event.as_deref(), Some("a.x"));
    assert_eq!(first.id.as_deref(), Some(a.as_str()));
    let data = first.json();
    assert_eq!(data["delivery_id"], a.as_str());
    assert_eq!(data["attempt"], 1);
    assert!(data["subscription_id"].is_string());
    assert_eq!(data["event"]["payload"], json!({"n": 1}));
    let second = stream.next_event().await;
    assert_eq!(second.id.as_deref(), Some(b.as_str()));
    assert!(stream.try_next_event(QUIET).await.is_none());

    let (client, base) = http(server.addr);
    let stats: Value = client
        .get(format!("{base}/api/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["connections"]["sse"], 1);
}

#[tokio::test]
async fn shorthand_filters_are_anded_and_json_filters_are_accepted() {
    let server = start_with(ServerConfig::default()).await;
    let mut shorthand = SseClient::open(
        server.addr,
        "/api/v1/events/stream?topics=t.%23&filter=priority:gt:5&filter=source:eq:alpha",
        &[],
    )
    .await;
    let doc = urlencode(r#"{"payload.n":{"$gte":10}}"#);
    let mut document = SseClient::open(
        server.addr,
        &format!("/api/v1/events/stream?topics=t.%23&filter={doc}"),
        &[],
    )
    .await;
    publish(
        server.addr,
        json!({"type":"t.x","priority":9,"source":"beta","payload":{"n":1}}),
    )
    .await;
    publish(
        server.addr,
        json!({"type":"t.x","priority":3,"source":"alpha","payload":{"n":2}}),
    )
    .await;
    let both = publish(
        server.addr,
        json!({"type":"t.x","priority":8,"source":"alpha","payload":{"n":10}}),
    )
    .await;
    assert_eq!(
        shorthand.next_event().await.id.as_deref(),
        Some(both.as_str())
    );
    assert!(shorthand.try_next_event(QUIET).await.is_none());
    assert_eq!(
        document.next_event().await.id.as_deref(),
        Some(both.as_str())
    );
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn bad_stream_queries_get_400_json_errors() {
    let server = start_with(ServerConfig::default()).await;
    for (query, code) in [
        ("topics=a..b", "invalid_pattern"),
        ("", "invalid_pattern"),
        ("topics=a&filter=priority:zz:1", "invalid_filter"),
        ("topics=a&group=w&max_in_flight=0", "invalid_query"),
    ] {
        let response =
            SseClient::request(server.addr, &format!("/api/v1/events/stream?{query}"), &[]).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
}

#[tokio::test]
async fn durable_streams_are_acked_over_http_and_unacked_deliveries_return_on_disconnect() {
    let server = start_with(ServerConfig::default()).await;
    let (client, base) = http(server.addr);
    let mut stream = SseClient::open(
        server.addr,
        "/api/v1/events/stream?topics=job.%23&group=sse-workers&max_in_flight=5",
        &[],
    )
    .await;
    let first = publish(server.addr, json!({"type":"job.one"})).await;
    let second = publish(server.addr, json!({"type":"job.two"})).await;

    let d1 = stream.next_event().await.json();
    assert_eq!(d1["subscription_id"], "sse-workers");
    assert_eq!(d1["event"]["id"], first.as_str());
    let d2 = stream.next_event().await.json();
    assert_eq!(d2["event"]["id"], second.as_str());
    let ack = client
        .post(format!("{base}/api/v1/subscriptions/sse-workers/ack"))
        .json(&json!({"delivery_id": d1["delivery_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    let ack: Value = ack.json().await.unwrap();
    assert_eq!(ack["status"], "acked");
    drop(stream);

    let mut again = SseClient::open(
        server.addr,
        "/api/v1/events/stream?topics=job.%23&group=sse-workers",
        &[],
    )
    .await;
    let redelivered = again.next_event().await.json();
    assert_eq!(redelivered["event"]["id"], second.as_str());
    assert!(
        again.try_next_event(QUIET).await.is_none(),
        "the acked event is not redelivered"
    );
}

#[tokio::test]
async fn resuming_with_last_event_id_delivers_missed_events_exactly_once() {
    let server = start_with(ServerConfig::default()).await;
    let path = "/api/v1/events/stream?topics=r.%23";
    let mut stream = SseClient::open(server.addr, path, &[]).await;
    let seen = publish(server.addr, json!({"type":"r.a","payload":1})).await;
    assert_eq!(stream.next_event().await.id.as_deref(), Some(seen.as_str()));
    drop(stream);

    let mut missed = Vec::new();
    for n in 2..=4 {
        missed.push(publish(server.addr, json!({"type":"r.a","payload":n})).await);
    }
    publish(server.addr, json!({"type":"other.a"})).await;
    let mut resumed = SseClient::open(server.addr, path, &[("Last-Event-ID", seen.as_str())]).await;
    let later = publish(server.addr, json!({"type":"r.a","payload":5})).await;
    missed.push(later);
    let mut got = Vec::new();
    for _ in 0..missed.len() {
        got.push(resumed.next_event().await.id.expect("event id"));
    }
    assert_eq!(got, missed);
    assert!(
        resumed.try_next_event(QUIET).await.is_none(),
        "nothing twice"
    );

    let mut by_query = SseClient::open(
        server.addr,
        &format!("{path}&last_event_id={}", missed[2]),
        &[],
    )
    .await;
    assert_eq!(
        by_query.next_event().await.id.as_deref(),
        Some(missed[3].as_str())
    );
}

#[tokio::test]
async fn streams_end_when_the_server_shuts_down() {
    let server = start_with(ServerConfig::default()).await;
    let mut stream = SseClient::open(server.addr, "/api/v1/events/stream?topics=x", &[]).await;
    let mut ws = WsClient::connect(server.addr, "/ws").await;
    ws.publish(json!({"type":"x"})).await;
    assert!(stream.next_event().await.id.is_some());
    server.token.cancel();
    loop {
        match stream.next_raw().await {
            None => break,
            Some(block) => assert!(block.event.is_none(), "no events after shutdown"),
        }
    }
    tokio::time::timeout(Duration::from_secs(5), server.handle)
        .await
        .expect("run returns")
        .unwrap()
        .unwrap();
}
