//! Per-principal limits (publish rate, connections) and size limits with
//! authentication on.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::inproc::{Running, start_with};
use event_router::auth::{Auth, AuthConfig, generate_key, sha256_hex};
use event_router::server::ServerConfig;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(5);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server(limits: &str, config: ServerConfig) -> (Running, String) {
    let key = generate_key();
    let yaml = format!(
        "api_keys:\n  - name: agent\n    sha256: \"{}\"\nacl:\n  - principal: agent\n    publish: [\"task.*\"]\n    subscribe: [\"task.*\"]\nlimits:\n{limits}",
        sha256_hex(&key)
    );
    let auth = Auth::from_config(&AuthConfig::from_yaml(&yaml).unwrap()).unwrap();
    let running = start_with(ServerConfig {
        auth: Arc::new(auth),
        ..config
    })
    .await;
    (running, key)
}

async fn publish(addr: SocketAddr, key: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/events"))
        .bearer_auth(key)
        .timeout(WAIT)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn ws(addr: SocketAddr, key: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .map(|(ws, _)| ws)
}

async fn call(ws: &mut Ws, v: Value) -> Value {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn event(n: u32) -> Value {
    json!({"topic": "task.x", "payload": {"n": n}})
}

#[tokio::test]
async fn rate_limit_triggers_429_with_retry_after_and_recovers() {
    let (server, key) = server(
        "  publish_rate: 5\n  publish_burst: 3\n",
        ServerConfig::default(),
    )
    .await;
    let addr = server.addr;
    for n in 0..3 {
        assert_eq!(publish(addr, &key, event(n)).await.status().as_u16(), 202);
    }
    let refused = publish(addr, &key, event(3)).await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The WebSocket path shares the principal's bucket and says how long to wait.
    let mut socket = ws(addr, &key).await.unwrap();
    let frame = call(
        &mut socket,
        json!({"op": "publish", "id": 1, "event": event(4)}),
    )
    .await;
    assert_eq!(frame["code"], "rate_limited", "{frame}");
    let wait_ms = frame["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&wait_ms), "{frame}");
    // Recovers once tokens refill (5/s): bounded retries, no timing assertion.
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if publish(addr, &key, event(5)).await.status().as_u16() == 202 {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "publishing never recovered");
    let frame = loop {
        let f = call(
            &mut socket,
            json!({"op": "publish", "id": 2, "event": event(6)}),
        )
        .await;
        if f["code"] != "rate_limited" {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(frame["op"], "ok", "{frame}");
    server.token.cancel();
}

#[tokio::test]
async fn oversize_payload_is_413_and_an_oversize_frame_is_named() {
    let (server, key) = server(
        "  publish_rate: 1000\n",
        ServerConfig {
            max_frame_bytes: 4096,
            ..ServerConfig::default()
        },
    )
    .await;
    let big = json!({"topic": "task.x", "payload": {"blob": "x".repeat(8192)}});
    let resp = publish(server.addr, &key, big.clone()).await;
    assert_eq!(resp.status().as_u16(), 413);
    let mut socket = ws(server.addr, &key).await.unwrap();
    let frame = call(&mut socket, json!({"op": "publish", "id": 1, "event": big})).await;
    assert_eq!(frame["code"], "frame_too_large", "{frame}");
    // Without credentials the size check never runs: 401 first.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/events", server.addr))
        .body("x".repeat(8192))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    server.token.cancel();
}

#[tokio::test]
async fn connections_per_principal_are_limited_and_freed_on_close() {
    let (server, key) = server(
        "  max_connections_per_principal: 2\n",
        ServerConfig::default(),
    )
    .await;
    let addr = server.addr;
    let first = ws(addr, &key).await.unwrap();
    let _second = ws(addr, &key).await.unwrap();
    match ws(addr, &key).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // SSE counts against the same limit.
    let sse = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/events/stream?topics=task.x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 429);
    let mut first = first;
    first.close(None).await.unwrap();
    let mut reconnected = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if ws(addr, &key).await.is_ok() {
            reconnected = true;
            break;
        }
    }
    assert!(reconnected, "the closed connection's slot was never freed");
    server.token.cancel();
}

#[tokio::test]
async fn subscriptions_per_connection_stay_limited_with_auth_on() {
    let (server, key) = server(
        "",
        ServerConfig {
            max_subscriptions_per_connection: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut socket = ws(server.addr, &key).await.unwrap();
    let ok = call(
        &mut socket,
        json!({"op": "subscribe", "id": 1, "topics": ["task.x"]}),
    )
    .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let refused = call(
        &mut socket,
        json!({"op": "subscribe", "id": 2, "topics": ["task.y"]}),
    )
    .await;
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    server.token.cancel();
}

/// A live subscription with `slow_consumer: disconnect` asks its
/// connection to close once it falls behind; the default drops the oldest
/// events and keeps the connection.
#[tokio::test]
async fn a_slow_consumer_with_the_disconnect_policy_is_disconnected() {
    use event_router::server::protocol::SlowConsumer;
    use event_router::server::session::{Dialect, SubscribeOptions};
    use event_router::server::{Session, SessionConfig};
    use event_router::{Event, MemoryBroker, Router, RouterConfig, Selector};

    for policy in [SlowConsumer::Disconnect, SlowConsumer::DropOldest] {
        let router = Router::new(Arc::new(MemoryBroker::default()), RouterConfig::default());
        // The client never reads: a one-frame outgoing queue and a tiny
        // live queue fill at once.
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let config = SessionConfig {
            live_queue_capacity: 2,
            live_queue_max_bytes: 0,
            max_subscriptions: 10,
            patterns: Default::default(),
        };
        let mut session = Session::new(router.clone(), config, tx);
        session
            .subscribe(SubscribeOptions {
                selector: Selector::parse(&["o.#"], None).unwrap(),
                group: None,
                max_in_flight: None,
                dialect: Dialect::V2,
                resume_after: None,
                slow_consumer: policy,
            })
            .await
            .unwrap();
        for n in 0..20 {
            router
                .publish(Event::new("o.x", json!(n)).unwrap())
                .await
                .unwrap();
        }
        let token = session.disconnect_token();
        let disconnected = tokio::time::timeout(Duration::from_secs(1), token.cancelled())
            .await
            .is_ok();
        assert_eq!(
            disconnected,
            policy == SlowConsumer::Disconnect,
            "policy {policy:?}"
        );
    }
}

/// Over a real WebSocket the subscribe frame carries the policy and an
/// unknown policy is refused by name.
#[tokio::test]
async fn the_slow_consumer_policy_is_part_of_the_subscribe_frame() {
    let (server, key) = server("", ServerConfig::default()).await;
    let mut socket = ws(server.addr, &key).await.unwrap();
    let ok = call(
        &mut socket,
        json!({"op": "subscribe", "id": 1, "topics": ["task.x"], "slow_consumer": "disconnect"}),
    )
    .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let bad = call(
        &mut socket,
        json!({"op": "subscribe", "id": 2, "topics": ["task.x"], "slow_consumer": "block"}),
    )
    .await;
    assert_eq!(bad["code"], "invalid_frame", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("block"), "{bad}");
    server.token.cancel();
}
