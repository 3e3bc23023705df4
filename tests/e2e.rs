//! End to end against a real `event-router serve` process: every protocol
//! on one port (WebSocket v2 and seed v1, HTTP, SSE), bad input that must
//! leave the connection usable, durable delivery through to the DLQ, and a
//! SIGTERM that drains.
//!
//! The in-process suites (`ws.rs`, `http.rs`, `sse.rs`) go deeper on each
//! protocol; these tests show the shipped binary wires them together.

mod common;

use std::time::Duration;

use common::inproc::{SseClient, WsClient};
use common::process::RouterProcess;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(200);

async fn post(router: &RouterProcess, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", router.http_url()))
        .json(&body)
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(router: &RouterProcess, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{}{path}", router.http_url()))
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn one_event_reaches_websocket_v2_v1_and_sse_subscribers_with_their_filters() {
    let router = RouterProcess::start(&[]);
    let mut v2 = WsClient::connect(router.addr(), "/ws").await;
    v2.subscribe(json!({"op":"subscribe","topics":["task.*"],"filter":{"payload.n":{"$gte":2}}}))
        .await;
    let mut v1 = WsClient::connect(router.addr(), "/").await;
    let subscribed = v1
        .call(json!({"type":"subscribe","subscription":{"type":"pattern","pattern":"task.#"}}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut sse = SseClient::open(
        router.addr(),
        "/api/v1/events/stream?topics=task.created&filter=payload.n:lt:5",
        &[],
    )
    .await;

    let (status, low) = post(
        &router,
        "/api/v1/events",
        json!({"topic":"task.created","data":{"n":1}}),
    )
    .await;
    assert_eq!(status, 202, "{low}");
    let (status, high) = post(
        &router,
        "/api/v1/events",
        json!({"type":"task.created","payload":{"n":3}}),
    )
    .await;
    assert_eq!(status, 202, "{high}");

    let delivery = v2.recv().await;
    assert_eq!(delivery["op"], "event", "{delivery}");
    assert_eq!(delivery["event"]["id"], high["event_id"]);
    assert_eq!(v2.try_recv(QUIET).await, None, "n=1 is filtered out for v2");

    for want in [&low, &high] {
        let d = v1.recv().await;
        assert_eq!(
            (d["type"].as_str(), &d["event"]["id"]),
            (Some("event"), &want["event_id"])
        );
    }

    for want in [&low, &high] {
        let e = sse.next_event().await;
        assert_eq!(e.event.as_deref(), Some("task.created"));
        assert_eq!(
            e.id.as_ref(),
            want["event_id"].as_str().map(str::to_string).as_ref()
        );
        assert_eq!(e.json()["event"]["id"], want["event_id"]);
    }

    let (status, history) = get(&router, "/api/v1/events?topic=task.created").await;
    assert_eq!(status, 200);
    assert_eq!(
        history["events"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
}

#[tokio::test]
async fn bad_input_over_every_protocol_names_the_problem_and_the_router_keeps_serving() {
    let router =
        RouterProcess::start(&["--max-payload-bytes", "1024", "--max-frame-bytes", "8192"]);
    let mut ws = WsClient::connect(router.addr(), "/ws").await;
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "invalid_json", ""),
        (
            json!({"op":"teleport"}).to_string(),
            "unknown_op",
            "teleport",
        ),
        (
            json!({"op":"publish","event":{"type":"a..b"}}).to_string(),
            "invalid_topic",
            "a..b",
        ),
        (
            json!({"op":"publish","event":{"type":"a","priority":11}}).to_string(),
            "invalid_priority",
            "11",
        ),
        (
            json!({"op":"subscribe","topics":["a.#.b.c*"]}).to_string(),
            "invalid_pattern",
            "",
        ),
        (
            json!({"op":"subscribe","topics":["a"],"filter":{"x":{"$regex":"("}}}).to_string(),
            "invalid_filter",
            "",
        ),
        (
            json!({"op":"publish","event":{"type":"a","payload":"x".repeat(2000)}}).to_string(),
            "payload_too_large",
            "1024",
        ),
        ("y".repeat(9000), "frame_too_large", ""),
    ];
    for (frame, code, mentions) in cases {
        ws.send_text(frame.clone()).await;
        let reply = ws.recv().await;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame:.60} -> {reply}"
        );
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{code}: {message:?} should mention {mentions:?}"
        );
        assert_eq!(
            ws.call(json!({"op":"ping","id":"p"})).await,
            json!({"op":"pong","id":"p"})
        );
    }

    let (status, body) = post(
        &router,
        "/api/v1/events",
        json!({"type":"a","priority":"urgent"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_priority", "{body}");
    let (status, body) = post(
        &router,
        "/api/v1/events",
        json!({"type":"a","payload":"x".repeat(2000)}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let malformed = reqwest::Client::new()
        .post(format!("{}/api/v1/events", router.http_url()))
        .header("content-type", "application/json")
        .body("{\"type\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let response =
        SseClient::request(router.addr(), "/api/v1/events/stream?topics=a..b", &[]).await;
    assert_eq!(response.status().as_u16(), 400);

    let (status, health) = get(&router, "/health").await;
    assert_eq!(status, 200, "{health}");
    let mut fresh = WsClient::connect(router.addr(), "/ws").await;
    assert_eq!(fresh.call(json!({"op":"ping"})).await, json!({"op":"pong"}));
}

#[tokio::test]
async fn a_durable_event_nacked_to_its_limit_is_dead_lettered_and_redriven() {
    let router = RouterProcess::start(&[]);
    let created = reqwest::Client::new()
        .put(format!("{}/api/v1/subscriptions/jobs", router.http_url()))
        .json(&json!({"topics":["job.*"],"delivery":{"maxAttempts":2}}))
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(created.status().as_u16(), 201);
    let mut worker = WsClient::connect(router.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","topics":["job.*"],"group":"jobs"}))
        .await;
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    let id = publisher
        .publish(json!({"type":"job.run","payload":{"n":1}}))
        .await;

    for attempt in 1..=2 {
        let d = worker.recv().await;
        assert_eq!(
            (d["op"].as_str(), &d["event"]["id"]),
            (Some("event"), &json!(id)),
            "{d}"
        );
        assert_eq!(d["attempt"], attempt, "{d}");
        // Without an `id` a successful nack is silent.
        worker
            .send(json!({"op":"nack","delivery_id":d["delivery_id"],"delay_ms":0,"reason":"boom"}))
            .await;
    }
    let mut dead = Value::Null;
    for _ in 0..50 {
        let (_, list) = get(&router, "/api/v1/subscriptions/jobs/dlq").await;
        if list["dead_letters"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
        {
            dead = list;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entry = &dead["dead_letters"][0];
    assert_eq!(entry["event"]["id"], json!(id), "{dead}");
    assert_eq!(entry["attempts"], 2, "{dead}");
    assert!(
        entry["reason"].as_str().is_some_and(|r| r.contains("boom")),
        "{dead}"
    );

    let (status, redriven) =
        post(&router, "/api/v1/subscriptions/jobs/dlq/redrive", json!({})).await;
    assert_eq!(status, 200, "{redriven}");
    let again = worker.recv().await;
    assert_eq!(again["event"]["id"], json!(id), "{again}");
    assert_eq!(again["attempt"], 1, "a redriven event starts over: {again}");
    let reply = worker
        .call(json!({"op":"ack","id":"a","delivery_id":again["delivery_id"]}))
        .await;
    assert_eq!(reply, json!({"op":"ok","id":"a"}));
}

#[tokio::test]
async fn sigterm_closes_websockets_with_going_away_and_exits_zero() {
    let mut router = RouterProcess::start(&["--shutdown-grace", "5s"]);
    let mut ws = WsClient::connect(router.addr(), "/ws").await;
    ws.subscribe(json!({"op":"subscribe","topics":["#"]})).await;
    router.sigterm();
    let close = loop {
        match ws.next_message().await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("the socket ended without a close frame"),
        }
    };
    let code: u16 = close.expect("a close frame with a code").code.into();
    assert_eq!(code, 1001, "going away");
    let status = router
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", router.output());
}
