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

/// The `payload.n` of the events `router` holds in history on `topic`, in
/// storage order.
async fn stored_numbers(router: &RouterProcess, topic: &str) -> Vec<u64> {
    let history: Value = reqwest::get(format!(
        "{}/api/v1/events?topic={topic}&limit=10000",
        router.http_url()
    ))
    .await
    .expect("GET history")
    .json()
    .await
    .expect("JSON");
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"]["payload"]["n"].as_u64())
        .collect()
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
    let stored = stored_numbers(&router, "pipe.x").await;
    let sent: Vec<u64> = (0..N as u64).filter(|&n| n != 77).collect();
    assert_eq!(stored, sent, "history holds the events in frame order");
}

#[tokio::test]
async fn pipelined_batches_and_single_publishes_keep_frame_order() {
    let redis = RedisServer::start();
    let router = RouterProcess::start(&["--redis", &redis.url()]);
    let (mut ws, _) = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .expect("connect");
    // Batches of 10 (every fifth one atomic) and single publishes, sent at
    // once; numbered in the order they are sent.
    let event =
        |n: u64| json!({ "type": "mixed.x", "key": "one-partition", "payload": { "n": n } });
    let mut frames = Vec::new();
    let mut n = 0u64;
    for f in 0..100u64 {
        if f % 2 == 0 {
            let events: Vec<Value> = (n..n + 10).map(event).collect();
            n += 10;
            frames.push(
                json!({ "op": "publish_batch", "id": f, "events": events, "atomic": f % 10 == 0 }),
            );
        } else {
            frames.push(json!({ "op": "publish", "id": f, "event": event(n) }));
            n += 1;
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
    for f in 0..100u64 {
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["id"], json!(f), "answers in frame order: {answer}");
        assert_eq!(answer["op"], "ok", "{answer}");
        if f % 2 == 0 {
            assert_eq!(
                answer["event_ids"].as_array().map(Vec::len),
                Some(10),
                "{answer}"
            );
        }
    }
    let execs = redis.exec_calls();
    println!("100 frames ({n} events) in {execs} transactions");
    assert!(
        execs > 0 && execs < 50,
        "{execs} transactions for 100 frames"
    );
    let stored = stored_numbers(&router, "mixed.x").await;
    assert_eq!(stored, (0..n).collect::<Vec<_>>(), "stored in frame order");
}

/// Publishes under way while Redis stalls (`SIGSTOP`) are each answered
/// within the command timeout's bound, in frame order, with `ok` or
/// `unavailable`; after `SIGCONT` the connection publishes again, and
/// every event answered `ok` is stored.
#[tokio::test]
async fn pipelined_publishes_across_a_redis_stall_are_each_answered_and_none_acknowledged_is_lost()
{
    let redis = RedisServer::start();
    let router =
        RouterProcess::start(&["--redis", &redis.url(), "--redis-command-timeout", "300ms"]);
    let (ws, _) = tokio_tungstenite::connect_async(router.ws_url())
        .await
        .expect("connect");
    let (mut sink, mut stream) = ws.split();
    let event =
        |n: u64| json!({ "type": "stall.x", "key": format!("k{}", n % 8), "payload": { "n": n } });
    // Frames: batches of 8 and single publishes, sent while the reader
    // reads, with Redis stopped for 2 s in the middle.
    const FRAMES: u64 = 300;
    let sender = tokio::spawn(async move {
        let mut n = 0u64;
        for f in 0..FRAMES {
            let frame = if f % 2 == 0 {
                let events: Vec<Value> = (n..n + 8).map(event).collect();
                n += 8;
                json!({ "op": "publish_batch", "id": f, "events": events })
            } else {
                n += 1;
                json!({ "op": "publish", "id": f, "event": event(n - 1) })
            };
            sink.send(Message::text(frame.to_string()))
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink
    });
    let stall = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.stop_signal("STOP");
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.stop_signal("CONT");
    };
    let read = async {
        let mut answers = Vec::new();
        while answers.len() < FRAMES as usize {
            answers.push(next_json(&mut stream).await);
        }
        answers
    };
    let (answers, ()) = tokio::join!(read, stall);
    let mut sink = sender.await.expect("sender");
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut n = 0u64;
    for (f, answer) in answers.iter().enumerate() {
        assert_eq!(answer["id"], json!(f), "answers in frame order: {answer}");
        let events: Vec<u64> = if f % 2 == 0 {
            n += 8;
            (n - 8..n).collect()
        } else {
            n += 1;
            vec![n - 1]
        };
        match answer["op"].as_str() {
            Some("ok") => acked.extend(events),
            Some("error") => {
                assert_eq!(answer["code"], "unavailable", "{answer}");
                refused += 1;
            }
            _ => panic!("unexpected answer {answer}"),
        }
    }
    println!(
        "{FRAMES} frames across a 2 s Redis stall: {} events acknowledged, {refused} frames refused",
        acked.len()
    );
    assert!(refused > 0, "the stall was felt by some publishes");
    assert!(
        answers.last().is_some_and(|a| a["op"] == "ok"),
        "publishing resumed after the stall"
    );
    // The connection still works after the stall.
    sink.send(Message::text(
        json!({ "op": "publish", "id": "after", "event": event(n) }).to_string(),
    ))
    .await
    .expect("send");
    let after = next_json(&mut stream).await;
    assert_eq!(after["op"], "ok", "{after}");
    acked.push(n);
    let stored: std::collections::HashSet<u64> = stored_numbers(&router, "stall.x")
        .await
        .into_iter()
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
}
