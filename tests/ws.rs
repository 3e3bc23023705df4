//! WebSocket v2 and seed v1 over a real loopback socket.

mod common;

use std::time::Duration;

use common::inproc::{WsClient, start_router, start_with};
use event_router::Selector;
use event_router::broker::GroupSpec;
use event_router::server::ServerConfig;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn published_events_reach_live_subscribers_with_the_documented_frame() {
    let (addr, _server, _token) = start_router().await;
    let mut sub = WsClient::connect(addr, "/ws").await;
    let sid = sub
        .subscribe(json!({"op":"subscribe","id":"s1","topics":["task.*"]}))
        .await;
    let mut publisher = WsClient::connect(addr, "/ws").await;
    let reply = publisher
        .call(json!({"op":"publish","id":"1","event":{"type":"task.created","payload":{"n":1}}}))
        .await;
    assert_eq!(reply["op"], "ok");
    assert_eq!(reply["id"], "1");
    let event_id = reply["event_id"].as_str().unwrap();

    let frame = sub.recv().await;
    assert_eq!(frame["op"], "event");
    assert_eq!(frame["subscription_id"], sid.as_str());
    assert_eq!(frame["delivery_id"], event_id);
    assert_eq!(frame["attempt"], 1);
    assert_eq!(frame["event"]["type"], "task.created");
    assert_eq!(frame["event"]["payload"], json!({"n": 1}));
}

#[tokio::test]
async fn batches_publish_in_order_and_unsubscribe_stops_deliveries() {
    let (addr, _server, _token) = start_router().await;
    let mut sub = WsClient::connect(addr, "/ws").await;
    let sid = sub
        .subscribe(json!({"op":"subscribe","topics":["b.#"]}))
        .await;
    let mut publisher = WsClient::connect(addr, "/ws").await;
    let reply = publisher
        .call(json!({"op":"publish_batch","id":"b","atomic":true,
                     "events":[{"type":"b.one"},{"type":"b.two"},{"type":"b.three"}]}))
        .await;
    let ids: Vec<Value> = reply["event_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert_eq!(&sub.recv().await["event"]["id"], id);
    }
    let reply = sub
        .call(json!({"op":"unsubscribe","id":"u","subscription_id":sid}))
        .await;
    assert_eq!(reply, json!({"op":"ok","id":"u"}));
    publisher.publish(json!({"type":"b.four"})).await;
    assert_eq!(sub.try_recv(QUIET).await, None);
}

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_the_connection_stays_usable() {
    let server = start_with(ServerConfig {
        max_frame_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let mut ws = WsClient::connect(server.addr, "/ws").await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid_json"),
        ("[1,2,3]".into(), "invalid_frame"),
        (json!({"op":"teleport","id":"x"}).to_string(), "unknown_op"),
        (
            json!({"op":"publish","id":"x"}).to_string(),
            "invalid_frame",
        ),
        (
            json!({"op":"publish","id":"x","event":{"type":"bad topic"}}).to_string(),
            "invalid_topic",
        ),
        (
            json!({"op":"publish","id":"x","event":{"payload":1}}).to_string(),
            "invalid_event",
        ),
        (
            json!({"op":"publish","id":"x","event":{"type":"a","priority":42}}).to_string(),
            "invalid_priority",
        ),
        (
            json!({"op":"subscribe","id":"x","topics":["a.b*"]}).to_string(),
            "invalid_pattern",
        ),
        (
            json!({"op":"subscribe","id":"x","topics":["a"],"pattern":"(unclosed"}).to_string(),
            "invalid_pattern",
        ),
        (
            json!({"op":"subscribe","id":"x","topics":["a"],"filter":{"payload.x":{"$nope":1}}})
                .to_string(),
            "invalid_filter",
        ),
        (
            json!({"op":"subscribe","id":"x","topics":["a"],"filter":"priority:zz:5"}).to_string(),
            "invalid_filter",
        ),
        (json!({"op":"ack","id":"x"}).to_string(), "invalid_frame"),
        (
            json!({"op":"publish","id":"x","event":{"type":"a","payload":"y".repeat(5000)}})
                .to_string(),
            "frame_too_large",
        ),
    ];
    for (frame, code) in cases {
        ws.send_text(frame.clone()).await;
        let reply = ws.recv().await;
        assert_eq!(reply["op"], "error", "{frame:.80} -> {reply}");
        assert_eq!(reply["code"], code, "{frame:.80} -> {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        let pong = ws.call(json!({"op":"ping","id":"alive"})).await;
        assert_eq!(pong, json!({"op":"pong","id":"alive"}), "after {frame:.80}");
    }
    let e = ws
        .call(json!({"op":"publish","id":"named","event":{"type":"a","priority":42}}))
        .await;
    assert_eq!(e["id"], "named");
    assert!(e["message"].as_str().unwrap().contains("42"), "{e}");
}

#[tokio::test]
async fn a_frame_far_over_the_limit_closes_with_1009_naming_the_limit_and_the_server_stays_up() {
    // The default limit (2 MiB) and the 5 MB frame a user first tried.
    let server = start_with(ServerConfig::default()).await;
    let url = format!("ws://{}/ws", server.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    // Like WebSocket libraries, read while the frame is written: the router
    // closes before reading all of it, so the write itself may fail.
    let writer = tokio::spawn(async move {
        let _ = sink.send(Message::Text("x".repeat(5_000_000).into())).await;
        sink
    });
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time");
    drop(writer.await);
    let close = close.expect("the close frame carries a status");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(
        close
            .reason
            .contains(&ServerConfig::default().max_frame_bytes.to_string()),
        "{close:?}"
    );
    let mut again = WsClient::connect(server.addr, "/ws").await;
    assert_eq!(again.call(json!({"op":"ping"})).await, json!({"op":"pong"}));
    let (http, base) = common::inproc::http(server.addr);
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert!(health.status().is_success());
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let server = start_with(ServerConfig {
        max_subscriptions_per_connection: 2,
        ..ServerConfig::default()
    })
    .await;
    let mut ws = WsClient::connect(server.addr, "/ws").await;
    ws.subscribe(json!({"op":"subscribe","topics":["a"]})).await;
    ws.subscribe(json!({"op":"subscribe","topics":["b"]})).await;
    let reply = ws
        .call(json!({"op":"subscribe","id":"3","topics":["c"]}))
        .await;
    assert_eq!(reply["code"], "too_many_subscriptions");
    assert_eq!(ws.call(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn durable_ack_completes_and_nack_redelivers_with_the_next_attempt() {
    let server = start_with(ServerConfig::default()).await;
    let mut worker = WsClient::connect(server.addr, "/ws").await;
    let sid = worker
        .subscribe(
            json!({"op":"subscribe","topics":["job.#"],"group":"workers","max_in_flight":10}),
        )
        .await;
    assert_eq!(sid, "workers");
    let mut publisher = WsClient::connect(server.addr, "/ws").await;
    let first = publisher.publish(json!({"type":"job.a"})).await;
    let second = publisher.publish(json!({"type":"job.b"})).await;

    let d1 = worker.recv().await;
    let d2 = worker.recv().await;
    assert_eq!(d1["event"]["id"], first.as_str());
    assert_eq!(d2["event"]["id"], second.as_str());
    let ack = worker
        .call(json!({"op":"ack","id":"a","delivery_id":d1["delivery_id"]}))
        .await;
    assert_eq!(ack, json!({"op":"ok","id":"a"}));
    worker
        .send(json!({"op":"nack","delivery_id":d2["delivery_id"],"delay_ms":0,"reason":"busy"}))
        .await;
    let again = worker.recv().await;
    assert_eq!(again["op"], "event");
    assert_eq!(again["event"]["id"], second.as_str());
    assert_eq!(again["attempt"], 2);
    worker
        .send(json!({"op":"ack","delivery_id":again["delivery_id"]}))
        .await;
    assert_eq!(
        worker.try_recv(QUIET).await,
        None,
        "a successful ack without id is silent"
    );
    let info = server
        .router
        .broker()
        .subscription("workers")
        .await
        .unwrap();
    assert_eq!((info.acked, info.in_flight, info.pending), (2, 0, 0));
}

#[tokio::test]
async fn in_flight_deliveries_go_to_another_connection_when_the_first_disconnects() {
    let server = start_with(ServerConfig::default()).await;
    let mut first = WsClient::connect(server.addr, "/ws").await;
    first
        .subscribe(json!({"op":"subscribe","topics":["job.#"],"group":"g"}))
        .await;
    let mut publisher = WsClient::connect(server.addr, "/ws").await;
    let id = publisher.publish(json!({"type":"job.x"})).await;
    assert_eq!(first.recv().await["event"]["id"], id.as_str());
    first.close().await;

    let mut second = WsClient::connect(server.addr, "/ws").await;
    second
        .subscribe(json!({"op":"subscribe","topics":["job.#"],"group":"g"}))
        .await;
    let redelivered = second.recv().await;
    assert_eq!(redelivered["event"]["id"], id.as_str());
    second
        .send(json!({"op":"ack","delivery_id":redelivered["delivery_id"]}))
        .await;
}

#[tokio::test]
async fn durable_deliveries_come_highest_priority_first() {
    let server = start_with(ServerConfig::default()).await;
    let selector = Selector::parse(&["p.#"], None).unwrap();
    server
        .router
        .broker()
        .ensure_subscription(GroupSpec::new("prio", selector))
        .await
        .unwrap();
    let mut publisher = WsClient::connect(server.addr, "/ws").await;
    for (n, priority) in [(1, json!("low")), (2, json!(9)), (3, json!("normal"))] {
        publisher
            .publish(json!({"type":"p.x","priority":priority,"payload":n}))
            .await;
    }
    let mut worker = WsClient::connect(server.addr, "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","topics":["p.#"],"group":"prio","max_in_flight":1}))
        .await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = worker.recv().await;
        order.push(d["event"]["priority"].as_u64().unwrap());
        worker
            .send(json!({"op":"ack","delivery_id":d["delivery_id"]}))
            .await;
    }
    assert_eq!(order, vec![9, 5, 3]);
}

#[tokio::test]
async fn a_request_is_answered_by_a_responder_on_another_connection() {
    let (addr, _server, _token) = start_router().await;
    let mut responder = WsClient::connect(addr, "/ws").await;
    responder
        .subscribe(json!({"op":"subscribe","topics":["svc.add"]}))
        .await;
    let mut client = WsClient::connect(addr, "/ws").await;
    client
        .send(json!({"op":"request","id":"r1","event":{"type":"svc.add","payload":[2,3]},"timeout_ms":5000}))
        .await;
    let request = responder.recv().await["event"].clone();
    let reply = json!({"type": request["reply_to"], "correlation_id": request["correlation_id"], "payload": 5});
    responder.publish(reply).await;
    let answer = client.recv().await;
    assert_eq!(answer["op"], "ok");
    assert_eq!(answer["id"], "r1");
    assert_eq!(answer["response"]["payload"], 5);

    let timeout = client
        .call(json!({"op":"request","id":"r2","event":{"type":"svc.nobody"},"timeout_ms":50}))
        .await;
    assert_eq!(
        (timeout["code"].as_str(), timeout["id"].as_str()),
        (Some("timeout"), Some("r2"))
    );
}

#[tokio::test]
async fn v1_clients_publish_subscribe_and_ping_with_v1_shapes() {
    let (addr, _server, _token) = start_router().await;
    let mut v1 = WsClient::connect(addr, "/").await;
    let subscribed = v1
        .call(json!({"type":"subscribe","subscription":{"type":"filtered",
            "event_types":["task.created"],"priorities":["high","critical"]}}))
        .await;
    assert_eq!(subscribed["type"], "subscribed");
    let sid = subscribed["subscription_id"].as_str().unwrap().to_string();

    let published = v1
        .call(
            json!({"type":"publish_event","event":{"type":"task.created","priority":"low",
            "source":"planner","payload":{"n":0}}}),
        )
        .await;
    assert_eq!(published["type"], "event_published");
    let published = v1
        .call(
            json!({"type":"publish_event","event":{"type":"task.created","priority":"high",
            "source":"planner","target":"w1","payload":{"n":1},"metadata":{"m":true}}}),
        )
        .await;
    assert_eq!(published["type"], "event_published");
    assert!(published["timestamp"].is_string());
    let event_id = published["event_id"].as_str().unwrap();

    let delivery = v1.recv().await;
    assert_eq!(delivery["type"], "event");
    assert_eq!(delivery["subscription_id"], sid.as_str());
    let e = &delivery["event"];
    assert_eq!(e["id"], event_id);
    assert_eq!(e["type"], "task.created");
    assert_eq!(e["priority"], "high");
    assert_eq!(
        (e["source"].as_str(), e["target"].as_str()),
        (Some("planner"), Some("w1"))
    );
    assert_eq!(e["payload"], json!({"n": 1}));
    assert_eq!(e["metadata"], json!({"m": true}));
    assert!(e["timestamp"].is_string());

    let pong = v1.call(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");
    assert!(pong["timestamp"].is_string());

    let error = v1
        .call(json!({"type":"publish_event","event":{"type":"a..b"}}))
        .await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "invalid_topic");
    assert!(error["error"].as_str().unwrap().contains("a..b"));
    let error = v1.call(json!({"type":"warp"})).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("unknown_type"))
    );
}

#[tokio::test]
async fn v1_pattern_all_and_conditional_subscriptions_select_events() {
    let (addr, _server, _token) = start_router().await;
    let mut v1 = WsClient::connect(addr, "/ws").await;
    let mut subs = Vec::new();
    for sub in [
        json!({"type":"all"}),
        json!({"type":"pattern","pattern":"task.*"}),
        json!({"type":"conditional","conditions":{"payload.n":{"$gt":5}}}),
    ] {
        let r = v1
            .call(json!({"type":"subscribe","subscription":sub}))
            .await;
        subs.push(r["subscription_id"].as_str().unwrap().to_string());
    }
    let mut publisher = WsClient::connect(addr, "/ws").await;
    publisher
        .publish(json!({"type":"task.done","payload":{"n":9}}))
        .await;
    let mut got: Vec<String> = Vec::new();
    for _ in 0..3 {
        let d = v1.recv().await;
        assert_eq!(d["type"], "event");
        got.push(d["subscription_id"].as_str().unwrap().to_string());
    }
    got.sort();
    subs.sort();
    assert_eq!(got, subs);
    publisher
        .publish(json!({"type":"other.thing","payload":{"n":1}}))
        .await;
    let d = v1.recv().await;
    assert_eq!(d["event"]["type"], "other.thing");
    assert_eq!(v1.try_recv(QUIET).await, None, "only `all` matches");
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away_and_run_returns() {
    let server = start_with(ServerConfig::default()).await;
    let mut ws = WsClient::connect(server.addr, "/ws").await;
    assert_eq!(ws.call(json!({"op":"ping"})).await["op"], "pong");
    server.token.cancel();
    loop {
        match ws.next_message().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Some(Message::Close(None)) | None => panic!("expected a 1001 close frame"),
            Some(_) => {}
        }
    }
    tokio::time::timeout(Duration::from_secs(5), server.handle)
        .await
        .expect("run returns within the grace")
        .expect("server task")
        .expect("clean shutdown");
}
