//! The operator's reconcile function and `apply -f` against a real
//! redis-server and a real `event-router serve --redis` replica: new
//! Subscriptions and EventRoutes take effect on the running replica without
//! a restart, and a WebSocket connection opened before stays open and
//! keeps receiving.

mod common;
#[path = "operator_support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use event_router::broker::Broker;
use event_router::operator::reconcile::{reconcile_route, reconcile_subscription};
use http::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use common::inproc::WsClient;
use common::process::{RouterProcess, run};
use common::redis::RedisServer;
use support::{Meta, close, context, next_call, path, prefix, route, subscription};

/// An EventRoute validating `order.#` payloads against an inline schema.
const SCHEMA_ROUTE: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: EventRoute
metadata: {name: orders-schema}
spec:
  match: {topics: ["order.#"]}
  actions:
    - validateSchema:
        type: object
        required: [amount]
        properties: {amount: {type: integer}}
"#;

/// Bound of every wait for the replica to pick a change up.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// One POST a sink received.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: Value,
}

/// An HTTP sink on a loopback port that records every POST and answers 200.
async fn start_sink() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(tx): State<mpsc::UnboundedSender<Received>>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let _ = tx.send(Received { headers, body });
                    StatusCode::OK
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

fn replica(redis: &RedisServer, prefix: &str) -> RouterProcess {
    RouterProcess::start(&[
        "--redis",
        &redis.url(),
        "--redis-key-prefix",
        prefix,
        "--redis-partitions",
        "2",
    ])
}

/// POSTs an event to the replica; returns the answer's `status`.
async fn publish(http: &reqwest::Client, base: &str, event: Value) -> String {
    let answer: Value = http
        .post(format!("{base}/api/v1/events"))
        .json(&event)
        .send()
        .await
        .expect("publish reaches the replica")
        .json()
        .await
        .expect("json answer");
    answer["status"].as_str().unwrap_or_default().to_string()
}

/// Publishes `event` until the replica answers `want` (it reloaded), within
/// [`RELOAD_WAIT`].
async fn publish_until(http: &reqwest::Client, base: &str, event: Value, want: &str) {
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let status = publish(http, base, event.clone()).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica still answers {status:?} instead of {want:?} after {RELOAD_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciled_subscription_and_route_take_effect_on_a_running_replica() {
    let redis = RedisServer::start();
    let prefix = prefix("replica");
    let server = replica(&redis, &prefix);
    let pid = server.pid();
    let base = server.http_url();
    let http = reqwest::Client::new();

    // A connection opened before any config exists.
    let mut ws = WsClient::connect(server.addr(), "/ws").await;
    ws.subscribe(json!({"op": "subscribe", "id": "s", "topics": ["invoice.#"]}))
        .await;
    assert_eq!(
        publish(&http, &base, json!({"type": "debug.x"})).await,
        "published"
    );

    let (sink_addr, mut posts) = start_sink().await;
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;

    let sub = subscription(
        &Meta::new("billing", "shop"),
        json!({
            "topics": ["invoice.#"],
            "delivery": {"maxAttempts": 3, "backoff": {"initial": "50ms"}},
            "sink": {"uri": format!("http://{sink_addr}/hook")}
        }),
        None,
    );
    let task = tokio::spawn(reconcile_subscription(Arc::new(sub.clone()), ctx.clone()));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("subscriptions", "shop", "billing", "status"),
    );
    assert_eq!(call.body["status"]["conditions"][0]["status"], "True");
    call.status_of(&sub);
    task.await.unwrap().unwrap();

    let drop_debug = route(
        &Meta::new("drop-debug", "shop"),
        json!({"match": {"topics": ["debug.#"]}, "actions": [{"drop": true}]}),
        None,
    );
    let task = tokio::spawn(reconcile_route(Arc::new(drop_debug.clone()), ctx.clone()));
    next_call(&mut handle)
        .await
        .expect(
            Method::PATCH,
            &path("eventroutes", "shop", "drop-debug", "status"),
        )
        .status_of(&drop_debug);
    task.await.unwrap().unwrap();

    // The route is in force on the replica: it now drops debug events.
    publish_until(&http, &base, json!({"type": "debug.x"}), "dropped").await;

    // The push sink runs on the replica: it POSTs the event as a binary
    // CloudEvent with the trace context, and the 2xx acks it.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let status = publish(
        &http,
        &base,
        json!({"type": "invoice.paid", "payload": {"amount": 42}, "headers": {"traceparent": trace}}),
    )
    .await;
    assert_eq!(status, "published");
    let post = tokio::time::timeout(RELOAD_WAIT, posts.recv())
        .await
        .expect("the sink got a POST in time")
        .expect("sink open");
    assert_eq!(post.headers["ce-type"], "invoice.paid");
    assert_eq!(post.headers["ce-specversion"], "1.0");
    assert_eq!(post.headers["ce-subscription"], "billing");
    // Same trace (the id may name a push span as the new parent).
    let forwarded = post.headers["traceparent"].to_str().unwrap();
    assert_eq!(
        forwarded.split('-').nth(1),
        trace.split('-').nth(1),
        "{forwarded}"
    );
    assert_eq!(post.body, json!({"amount": 42}));

    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let info = broker.subscription("billing").await.unwrap();
        if info.acked >= 1 && info.pending == 0 && info.in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "delivery never acked: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The connection from before the reloads is still open and live.
    let frame = ws.recv().await;
    assert_eq!(frame["op"], "event", "{frame}");
    assert_eq!(frame["event"]["type"], "invoice.paid");
    assert_eq!(ws.call(json!({"op": "ping"})).await["op"], "pong");
    assert_eq!(server.pid(), pid, "same process, no restart");

    drop(ctx);
    close(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_cli_writes_config_that_a_running_replica_picks_up() {
    let redis = RedisServer::start();
    let prefix = prefix("apply");
    let server = replica(&redis, &prefix);
    let base = server.http_url();
    let http = reqwest::Client::new();
    let mut ws = WsClient::connect(server.addr(), "/ws").await;
    ws.subscribe(json!({"op": "subscribe", "id": "s", "topics": ["audit.#"]}))
        .await;

    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/eventroute.yaml"
    );
    let url = redis.url();
    let args = [
        "apply",
        "--redis",
        url.as_str(),
        "--redis-key-prefix",
        prefix.as_str(),
        "-f",
        example,
    ];
    let first = run(&args, Duration::from_secs(30));
    assert!(first.success(), "{}{}", first.stdout, first.stderr);
    assert_eq!(
        first.stdout.trim(),
        "eventroute.eventrouter.dev/escalate-agent-failures created"
    );
    let again = run(&args, Duration::from_secs(30));
    assert_eq!(
        again.stdout.trim(),
        "eventroute.eventrouter.dev/escalate-agent-failures unchanged"
    );

    // The example route copies agent.failed to audit.agent-failed.
    let deadline = Instant::now() + RELOAD_WAIT;
    let copy = loop {
        publish(
            &http,
            &base,
            json!({"type": "agent.failed", "payload": {"id": 1}}),
        )
        .await;
        if let Some(frame) = ws.try_recv(Duration::from_millis(200)).await {
            break frame;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never applied the route"
        );
    };
    assert_eq!(copy["event"]["type"], "audit.agent-failed");
    assert_eq!(copy["event"]["priority"], 9);

    // An invalid document is refused, naming it, and nothing is written.
    let dir = std::env::temp_dir().join(format!("er-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {name: w}\n\
         spec: {topics: [\"a.*\"], filter: {n: {$nope: 1}}}\n",
    )
    .unwrap();
    let bad_path = bad.to_string_lossy().to_string();
    let refused = run(
        &[
            "apply",
            "--redis",
            url.as_str(),
            "--redis-key-prefix",
            prefix.as_str(),
            "-f",
            bad_path.as_str(),
        ],
        Duration::from_secs(30),
    );
    assert!(!refused.success());
    assert!(
        refused.stderr.contains("Subscription/w") && refused.stderr.contains("$nope"),
        "{}",
        refused.stderr
    );

    // A route with an inline JSON Schema: a payload that fails it is
    // rejected at publish with a clear error, one that passes is stored.
    let schema = dir.join("schema.yaml");
    std::fs::write(&schema, SCHEMA_ROUTE).unwrap();
    let schema_path = schema.to_string_lossy().to_string();
    let applied = run(
        &[
            "apply",
            "--redis",
            url.as_str(),
            "--redis-key-prefix",
            prefix.as_str(),
            "-f",
            schema_path.as_str(),
        ],
        Duration::from_secs(30),
    );
    assert!(applied.success(), "{}", applied.stderr);
    let deadline = Instant::now() + RELOAD_WAIT;
    let rejection = loop {
        let response = http
            .post(format!("{base}/api/v1/events"))
            .json(&json!({"type": "order.created", "payload": {"amount": "ten"}}))
            .send()
            .await
            .unwrap();
        if response.status() == reqwest::StatusCode::BAD_REQUEST {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the schema route never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rejection["error"]["code"], "invalid_event");
    let message = rejection["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("orders-schema") && message.contains("/amount"),
        "{message}"
    );
    assert_eq!(
        publish(
            &http,
            &base,
            json!({"type": "order.created", "payload": {"amount": 10}})
        )
        .await,
        "published"
    );

    // `--delete` removes the route; the replica stops applying it.
    let deleted = run(
        &[
            "apply",
            "--redis",
            url.as_str(),
            "--redis-key-prefix",
            prefix.as_str(),
            "-f",
            schema_path.as_str(),
            "--delete",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(
        deleted.stdout.trim(),
        "eventroute.eventrouter.dev/orders-schema deleted"
    );
    publish_until(
        &http,
        &base,
        json!({"type": "order.created", "payload": {"amount": "ten"}}),
        "published",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
