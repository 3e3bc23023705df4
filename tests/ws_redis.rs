//! WebSocket publishing on the Redis broker, against a real
//! `event-router serve --redis` process and a real `redis-server`: a
//! connection's single publishes are under way together (one round trip
//! to Redis no longer bounds a connection), yet answered, stored and
//! ordered as the frames were sent.

mod common;

use std::time::Duration;

use common::process::RouterProcess;
use common::redis::RedisServer;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// The next text frame as JSON, within [`WAIT`].
async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

#[tokio::test]
async fn pipelined_publishes_on_one_connection_are_answered_and_stored_in_frame_order() {
    let redis = RedisServer::start();
    let router = RouterProcess::start(&["--redis", &redis.url()]);
    let (mut ws, _) = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .expect("connect");
    // 300 publishes sent without waiting, one invalid among them, and a
    // ping after the first 150: every frame gets its answer, in order.
    const N: usize = 300;
    let mut frames = Vec::new();
    for n in 0..N {
        let event = if n == 77 {
            json!({ "type": "not a topic!", "payload": { "n": n } })
        } else {
            json!({ "type": "pipe.x", "key": "one-partition", "payload": { "n": n } })
        };
        frames.push(json!({ "op": "publish", "id": n, "event": event }));
        if n == 149 {
            frames.push(json!({ "op": "ping", "id": "ping" }));
        }
    }
    redis.command("CONFIG RESETSTAT");
    let text: Vec<Message> = frames
        .iter()
        .map(|f| Message::text(f.to_string()))
        .collect();
    ws.send_all(&mut futures::stream::iter(text.into_iter().map(Ok)))
        .await
        .expect("send");
    let mut answers = Vec::new();
    while answers.len() < N + 1 {
        answers.push(next_json(&mut ws).await);
    }
    let ids: Vec<Value> = answers.iter().map(|a| a["id"].clone()).collect();
    let mut expected: Vec<Value> = (0..N).map(|n| json!(n)).collect();
    expected.insert(150, json!("ping"));
    assert_eq!(ids, expected, "answers in frame order");
    for (i, answer) in answers.iter().enumerate() {
        match &answer["id"] {
            Value::String(_) => assert_eq!(answer["op"], "pong", "{answer}"),
            id if *id == json!(77) => {
                assert_eq!(answer["op"], "error", "{answer}");
                assert_eq!(answer["code"], "invalid_topic", "{answer}");
            }
            _ => assert_eq!(answer["op"], "ok", "frame {i}: {answer}"),
        }
    }
    // Under way together: far fewer transactions than publishes (one
    // publish per round trip would have cost one `EXEC` each).
    let execs = redis.exec_calls();
    println!("{N} publishes on one connection in {execs} transactions");
    assert!(
        execs > 0 && execs < N as u64 / 2,
        "{execs} transactions for {N} publishes"
    );
    // Stored in frame order (one key: one partition's history).
    let history: Value = reqwest::get(format!(
        "{}/api/v1/events?topic=pipe.x&limit=1000",
        router.http_url()
    ))
    .await
    .expect("GET history")
    .json()
    .await
    .expect("JSON");
    let stored: Vec<u64> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"]["payload"]["n"].as_u64())
        .collect();
    let sent: Vec<u64> = (0..N as u64).filter(|&n| n != 77).collect();
    assert_eq!(stored, sent, "history holds the events in frame order");
}
