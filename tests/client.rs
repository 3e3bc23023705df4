//! The Rust client against a real server (`server::run` on 127.0.0.1:0 over
//! the memory broker), restarted on the same port to cut connections, and
//! in-process. A few cases use a scripted WebSocket peer to produce what a
//! healthy server never does (repeated delivery ids, silence).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::client::{
    QUIET, WAIT, fast_reconnect, next, nothing_more, wait_until_connected, wait_until_disconnected,
};
use event_router::broker::MemoryBroker;
use event_router::client::{
    Client, ClientError, ConnectionState, HANDLER_ERROR_CODE, Received, ReconnectPolicy,
};
use event_router::server::{self, ServerConfig};
use event_router::{Event, Router, RouterConfig};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn new_router() -> Arc<Router> {
    Router::new(Arc::new(MemoryBroker::default()), RouterConfig::default())
}

struct TestServer {
    addr: SocketAddr,
    token: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(router: Arc<Router>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestServer::serve(listener, router)
    }

    /// Binds `addr` again (retrying briefly while the old socket lets go).
    async fn start_on(addr: SocketAddr, router: Arc<Router>) -> TestServer {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(addr).await {
                return TestServer::serve(listener, router);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not bind {addr} again");
    }

    fn serve(listener: TcpListener, router: Arc<Router>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let config = ServerConfig {
            shutdown_grace: Duration::from_secs(1),
            ..ServerConfig::default()
        };
        let task = tokio::spawn(server::run(listener, config, router, token.clone()));
        TestServer { addr, token, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn stop(self) -> SocketAddr {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
        self.addr
    }
}

async fn connect(url: &str) -> Client {
    Client::builder()
        .url(url)
        .reconnect(fast_reconnect())
        .publish_timeout(WAIT)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_published_event_reaches_a_live_subscriber() {
    let server = TestServer::start(new_router()).await;
    let client = connect(&server.url()).await;
    let mut sub = client
        .subscribe("task.*")
        .filter(json!({"payload.n": {"$gt": 1}}))
        .start()
        .await
        .unwrap();
    client
        .publish("task.created", json!({"n": 1}))
        .await
        .unwrap();
    let id = client
        .publish("task.created", json!({"n": 2}))
        .await
        .unwrap();
    let got = next(&mut sub).await;
    assert_eq!(got.event.id, id);
    assert_eq!(got.event.topic, "task.created");
    assert_eq!(got.attempt, 1);
    assert!(!got.is_durable());
    got.ack().await.unwrap();
    nothing_more(&mut sub).await;
    client.close().await;
    server.stop().await;
}

/// One scenario, run over any client: live + durable subscriptions, a batch,
/// a nack and its redelivery, and a request answered by `responder`.
async fn scenario(client: &Client, responder: &Client) -> Vec<String> {
    let mut seen = Vec::new();
    let mut live = client
        .subscribe(["job.*", "audit.#"])
        .start()
        .await
        .unwrap();
    let mut durable = client
        .subscribe("job.*")
        .group("scenario")
        .max_in_flight(10)
        .start()
        .await
        .unwrap();
    let ids = client
        .publish_batch(
            vec![
                Event::new("job.a", json!(1)).unwrap(),
                Event::new("job.b", json!(2)).unwrap(),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    for _ in 0..2 {
        let r = next(&mut live).await;
        seen.push(format!("live {} {}", r.event.topic, r.event.payload));
    }
    let first = next(&mut durable).await;
    seen.push(format!(
        "durable {} attempt {}",
        first.event.topic, first.attempt
    ));
    first.nack(Some(Duration::ZERO)).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..2 {
        let r = next(&mut durable).await;
        rest.push(format!("durable {} attempt {}", r.event.topic, r.attempt));
        r.ack().await.unwrap();
    }
    rest.sort();
    seen.extend(rest);
    nothing_more(&mut durable).await;
    let _responder = responder
        .respond("svc.double", |request: Event| async move {
            let n = request.payload["n"].as_i64().unwrap_or(0);
            Ok::<_, String>(json!({"doubled": n * 2}))
        })
        .await
        .unwrap();
    let reply = client
        .request("svc.double", json!({"n": 21}), WAIT)
        .await
        .unwrap();
    seen.push(format!("reply {}", reply.payload));
    seen
}

#[tokio::test]
async fn the_in_process_client_gives_the_same_results_as_websocket() {
    let server = TestServer::start(new_router()).await;
    let (a, b) = (connect(&server.url()).await, connect(&server.url()).await);
    let over_ws = scenario(&a, &b).await;
    let router = new_router();
    let (c, d) = (
        Client::in_process(router.clone()),
        Client::in_process(router),
    );
    let in_process = scenario(&c, &d).await;
    assert_eq!(over_ws, in_process);
    assert_eq!(
        over_ws,
        vec![
            "live job.a 1",
            "live job.b 2",
            "durable job.a attempt 1",
            "durable job.a attempt 2",
            "durable job.b attempt 1",
            "reply {\"doubled\":42}",
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_are_restored_after_the_server_restarts() {
    let server = TestServer::start(new_router()).await;
    let subscriber = connect(&server.url()).await;
    let mut sub = subscriber
        .subscribe("news.#")
        .filter(json!("priority:gte:7"))
        .start()
        .await
        .unwrap();
    let addr = server.stop().await;
    wait_until_disconnected(&subscriber).await;
    let server = TestServer::start_on(addr, new_router()).await;
    wait_until_connected(&subscriber).await;
    let publisher = connect(&server.url()).await;
    let mut low = Event::new("news.sports", json!("ignored")).unwrap();
    low.priority = event_router::Priority::new(3).unwrap();
    publisher.publish_with(low).await.unwrap();
    let mut high = Event::new("news.world", json!("kept")).unwrap();
    high.priority = event_router::Priority::new(9).unwrap();
    let id = publisher.publish_with(high).await.unwrap();
    let got = next(&mut sub).await;
    assert_eq!((got.event.id, got.event.payload), (id, json!("kept")));
    nothing_more(&mut sub).await;
    server.stop().await;
}

#[tokio::test]
async fn publishes_made_while_the_server_is_down_are_delivered_once_in_order_after_restart() {
    let server = TestServer::start(new_router()).await;
    let client = connect(&server.url()).await;
    let mut sub = client.subscribe("seq.n").start().await.unwrap();
    let addr = server.stop().await;
    wait_until_disconnected(&client).await;
    for n in 0..19 {
        client.publish_nowait("seq.n", json!(n)).unwrap();
    }
    // An awaited publish made while disconnected waits for the reconnect
    // and is queued behind the buffered ones.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("seq.n", json!(19)).await })
    };
    let server = TestServer::start_on(addr, new_router()).await;
    tokio::time::timeout(WAIT, client.flush())
        .await
        .expect("buffered publishes are flushed in time")
        .unwrap();
    waiting.await.unwrap().unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(next(&mut sub).await.event.payload);
    }
    assert_eq!(got, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    nothing_more(&mut sub).await;
    server.stop().await;
}

#[tokio::test]
async fn durable_deliveries_unacked_at_a_restart_are_redelivered() {
    let router = new_router();
    let server = TestServer::start(router.clone()).await;
    let worker = connect(&server.url()).await;
    let mut sub = worker
        .subscribe("work.*")
        .group("workers")
        .start()
        .await
        .unwrap();
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(worker.publish("work.item", json!(n)).await.unwrap());
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        let r = next(&mut sub).await;
        assert_eq!(r.attempt, 1);
        first.push(r);
    }
    // Same router and broker; only the server task restarts.
    let addr = server.stop().await;
    let server = TestServer::start_on(addr, router).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        let r = next(&mut sub).await;
        assert!(r.attempt >= 2, "a redelivery: {r:?}");
        again.push(r.event.id.clone());
        r.ack().await.unwrap();
    }
    again.sort();
    published.sort();
    assert_eq!(again, published);
    drop(first);
    nothing_more(&mut sub).await;
    server.stop().await;
}

#[tokio::test]
async fn handler_errors_nack_durable_deliveries_for_redelivery() {
    let server = TestServer::start(new_router()).await;
    let client = connect(&server.url()).await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let _task = client
        .subscribe("flaky.job")
        .group("flaky")
        .nack_delay(Duration::ZERO)
        .handle(move |r: Received| {
            let seen = seen.clone();
            async move {
                seen.lock().push(r.attempt);
                if r.attempt == 1 {
                    Err("first try fails")
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    client.publish("flaky.job", json!(null)).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while attempts.lock().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the failed delivery comes back");
    tokio::time::sleep(QUIET).await;
    assert_eq!(*attempts.lock(), vec![1, 2]);
    server.stop().await;
}

#[tokio::test]
async fn a_request_gets_the_reply_of_a_responder_on_another_client() {
    let server = TestServer::start(new_router()).await;
    let (asker, answerer) = (connect(&server.url()).await, connect(&server.url()).await);
    let _responder = answerer
        .respond("agent.plan", |request: Event| async move {
            match request.payload["goal"].as_str() {
                Some(goal) => Ok(json!({"plan": format!("do {goal}")})),
                None => Err("no goal"),
            }
        })
        .await
        .unwrap();
    let reply = asker
        .request("agent.plan", json!({"goal": "ship"}), WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, json!({"plan": "do ship"}));
    let e = asker
        .request("agent.plan", json!({}), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, message } if code == HANDLER_ERROR_CODE && message == "no goal"),
        "{e:?}"
    );
    let e = asker
        .request("agent.nobody", json!({}), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    server.stop().await;
}

#[tokio::test]
async fn reconnecting_gives_up_after_max_attempts_with_a_clear_error() {
    let server = TestServer::start(new_router()).await;
    let client = Client::builder()
        .url(server.url())
        .reconnect(ReconnectPolicy {
            max_attempts: Some(3),
            ..fast_reconnect()
        })
        .build()
        .await
        .unwrap();
    let mut sub = client.subscribe("a.b").start().await.unwrap();
    server.stop().await;
    let mut changes = client.state_changes();
    let state = tokio::time::timeout(
        WAIT,
        changes.wait_for(|s| matches!(s, ConnectionState::Closed(_))),
    )
    .await
    .expect("the client gives up in time")
    .unwrap()
    .clone();
    let ConnectionState::Closed(ClientError::Connection { reason, .. }) = state else {
        panic!("{state:?}")
    };
    assert!(
        reason.contains("gave up after 3 failed attempts"),
        "{reason}"
    );
    let e = client.publish("a.b", json!(1)).await.unwrap_err();
    assert!(matches!(e, ClientError::Connection { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(
        tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(sub.error(), Some(ClientError::Connection { .. })));
}

#[tokio::test]
async fn connecting_where_nothing_listens_fails_with_a_connection_error() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let e = Client::builder()
        .url(format!("ws://{addr}/ws"))
        .reconnect(ReconnectPolicy {
            max_attempts: Some(2),
            ..fast_reconnect()
        })
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Connection { url, .. } if url.contains(&addr.to_string())),
        "{e:?}"
    );
}

#[tokio::test]
async fn publishing_into_a_full_buffer_while_disconnected_fails_fast_and_retryably() {
    let server = TestServer::start(new_router()).await;
    let client = Client::builder()
        .url(server.url())
        .reconnect(fast_reconnect())
        .buffer_capacity(3)
        .build()
        .await
        .unwrap();
    server.stop().await;
    wait_until_disconnected(&client).await;
    for n in 0..3 {
        client.publish_nowait("a.b", json!(n)).unwrap();
    }
    let e = client.publish_nowait("a.b", json!(3)).unwrap_err();
    assert_eq!(e, ClientError::BufferFull { capacity: 3 });
    assert!(e.is_retryable());
    let e = tokio::time::timeout(WAIT, client.publish("a.b", json!(4)))
        .await
        .expect("a full buffer fails at once")
        .unwrap_err();
    assert_eq!(e, ClientError::BufferFull { capacity: 3 });
}

#[tokio::test]
async fn a_publish_that_times_out_while_disconnected_is_never_sent() {
    let server = TestServer::start(new_router()).await;
    let client = Client::builder()
        .url(server.url())
        .reconnect(fast_reconnect())
        .publish_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let mut sub = client.subscribe("late.#").start().await.unwrap();
    let addr = server.stop().await;
    wait_until_disconnected(&client).await;
    let e = client.publish("late.one", json!(1)).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    let server = TestServer::start_on(addr, new_router()).await;
    wait_until_connected(&client).await;
    client.publish("late.two", json!(2)).await.unwrap();
    assert_eq!(next(&mut sub).await.event.topic, "late.two");
    nothing_more(&mut sub).await;
    server.stop().await;
}

#[tokio::test]
async fn server_rejections_are_typed_errors() {
    let server = TestServer::start(new_router()).await;
    let client = connect(&server.url()).await;
    let _first = client.subscribe("x.*").group("once").start().await.unwrap();
    let e = client
        .subscribe("x.*")
        .group("once")
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, .. } if code == "already_subscribed"),
        "{e:?}"
    );
    let e = client.publish("bad..topic", json!(1)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Invalid {
                code: "invalid_topic",
                ..
            }
        ),
        "{e:?}"
    );
    let mut event = Event::new("x.y", json!(1)).unwrap();
    event.reply_to = Some("not a topic".into());
    let e = client.publish_with(event).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Publish { retryable: false, code, .. } if code == "invalid_event"),
        "{e:?}"
    );
    server.stop().await;
}

/// A scripted WebSocket peer: answers subscribes, and runs `script` on each
/// connection after the first subscribe. Returns the URL and a log of the
/// frames clients sent.
async fn scripted_peer<F, Fut>(script: F) -> (String, Arc<Mutex<Vec<Value>>>)
where
    F: Fn(usize, tokio::sync::mpsc::UnboundedSender<Value>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (seen, script) = (seen.clone(), script.clone());
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (out, mut queue) = tokio::sync::mpsc::unbounded_channel::<Value>();
                tokio::spawn(async move {
                    while let Some(v) = queue.recv().await {
                        if sink.send(Message::text(v.to_string())).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(Message::Text(text))) = stream.next().await {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    seen.lock().push(frame.clone());
                    if frame["op"] == "subscribe" {
                        let _ = out.send(json!({"op":"ok","id":frame["id"],"subscription_id":"g"}));
                        tokio::spawn(script(connection, out.clone()));
                    }
                }
            });
        }
    });
    (url, log)
}

fn event_frame(delivery_id: &str, event: &Event) -> Value {
    json!({"op":"event","subscription_id":"g","delivery_id":delivery_id,"attempt":1,"event":event})
}

#[tokio::test]
async fn no_handler_is_invoked_twice_for_one_delivery_id() {
    let event = Event::new("dup.job", json!("once")).unwrap();
    let other = Event::new("dup.job", json!("other")).unwrap();
    let (url, log) = scripted_peer(move |_, out| {
        let frames = [
            event_frame("d1", &event),
            event_frame("d1", &event),
            event_frame("d2", &other),
            event_frame("d1", &event),
        ];
        async move {
            for frame in frames {
                let _ = out.send(frame);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    })
    .await;
    let client = connect(&url).await;
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = calls.clone();
    let _task = client
        .subscribe("dup.*")
        .group("g")
        .handle(move |r: Received| {
            let counted = counted.clone();
            async move {
                *counted.lock().entry(r.delivery_id.clone()).or_default() += 1;
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let acks = log.lock().iter().filter(|f| f["op"] == "ack").count();
            if acks >= 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("acks arrive");
    tokio::time::sleep(QUIET).await;
    let calls = calls.lock().clone();
    assert_eq!(calls, HashMap::from([("d1".into(), 1), ("d2".into(), 1)]));
    // The repeat that arrived after the ack was acked again, not handled.
    let acked: Vec<Value> = log
        .lock()
        .iter()
        .filter(|f| f["op"] == "ack")
        .map(|f| f["delivery_id"].clone())
        .collect();
    assert_eq!(acked, vec![json!("d1"), json!("d2"), json!("d1")]);
}

#[tokio::test]
async fn a_silent_connection_is_detected_by_heartbeat_and_replaced() {
    // The peer answers subscribes and then never says anything again.
    let (url, log) = scripted_peer(|_, _| async {}).await;
    let client = Client::builder()
        .url(&url)
        .reconnect(fast_reconnect())
        .heartbeat(Duration::from_millis(100), Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let _sub = client.subscribe("quiet.*").start().await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let subscribes = log.lock().iter().filter(|f| f["op"] == "subscribe").count();
            if subscribes >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client reconnects and subscribes again");
    assert!(log.lock().iter().any(|f| f["op"] == "ping"));
}
