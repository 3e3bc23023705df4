//! Findings of an adversarial probe, each held against a real
//! `event-router serve` process (and a real `redis-server` where Redis is
//! involved): requests reading foreign topics through `reply_to`, events
//! nested deeper than the pipeline can carry, JWTs missing configured
//! claims, bad input answered with the wrong status, and `tail` dropping
//! deliveries it cannot read.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::process::{Child, RouterProcess};
use common::redis::RedisServer;
use event_router::auth::{generate_key, sha256_hex};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);

/// The deepest payload the router accepts: serde_json reads 127 nested
/// levels, and a history listing (`{"events":[{"event":{"payload":…}}]}`)
/// puts four above the payload.
const DEPTH_LIMIT: usize = 127 - 4;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("er-hostile-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// Status and JSON body (null when not JSON); status 0 and the error when
/// no answer came in time.
async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return (0, Value::String(e.to_string())),
    };
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn ws(router: &RouterProcess, token: Option<&str>) -> Ws {
    let mut req = router.ws_url().into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake succeeds");
    ws
}

async fn send_frame(ws: &mut Ws, text: String) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The next text frame that `want` accepts, skipping others.
async fn recv_where(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if want(&v) {
                return v;
            }
        }
    }
}

async fn reply_to_id(ws: &mut Ws, id: &str) -> Value {
    recv_where(ws, |v| v["id"] == id).await
}

/// `depth` nested arrays around `1`, as text.
fn nested_text(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// How many arrays/objects `v` nests.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------- reply_to

/// `tasker` may publish and subscribe `task.*` only; `biller` publishes
/// `billing.*`; `ops` may do anything.
fn acl_router(scratch: &Scratch) -> (RouterProcess, String, String, String) {
    let (tasker, biller, ops) = (generate_key(), generate_key(), generate_key());
    let yaml = format!(
        r##"
api_keys:
  - name: tasker
    sha256: "{}"
  - name: biller
    sha256: "{}"
  - name: ops
    sha256: "{}"
acl:
  - principal: tasker
    publish: ["task.*"]
    subscribe: ["task.*"]
  - principal: biller
    publish: ["billing.*"]
  - principal: ops
    admin: true
    publish: ["#"]
    subscribe: ["#"]
"##,
        sha256_hex(&tasker),
        sha256_hex(&biller),
        sha256_hex(&ops)
    );
    let file = scratch.write("auth.yaml", yaml.as_bytes());
    (
        RouterProcess::start(&["--auth", &file]),
        tasker,
        biller,
        ops,
    )
}

#[tokio::test]
async fn a_request_whose_reply_to_the_requester_may_not_read_is_forbidden_on_websocket_and_http() {
    let scratch = Scratch::new();
    let (router, tasker, biller, _) = acl_router(&scratch);
    let mut requester = ws(&router, Some(&tasker)).await;
    send_frame(
        &mut requester,
        json!({"op":"request","id":"r1","timeout_ms":1500,
               "event":{"type":"task.q","reply_to":"billing.invoice","correlation_id":"c-777"}})
        .to_string(),
    )
    .await;
    // The other principal's event that the request would wait for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = send(
        http()
            .post(format!("{}/api/v1/events", router.http_url()))
            .bearer_auth(&biller)
            .json(
                &json!({"type":"billing.invoice","correlation_id":"c-777","payload":{"secret":42}}),
            ),
    )
    .await;
    assert_eq!(status, 202);
    let reply = reply_to_id(&mut requester, "r1").await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("billing.invoice"),
        "{reply}"
    );

    let (status, body) = send(
        http()
            .post(format!("{}/api/v1/request", router.http_url()))
            .bearer_auth(&tasker)
            .json(&json!({"timeout_ms":1500,
                          "event":{"type":"task.q","reply_to":"billing.invoice","correlation_id":"c-778"}})),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
}

#[tokio::test]
async fn a_request_without_reply_to_still_gets_its_reply_for_a_restricted_principal() {
    let scratch = Scratch::new();
    let (router, tasker, _, ops) = acl_router(&scratch);
    let mut responder = ws(&router, Some(&ops)).await;
    send_frame(
        &mut responder,
        json!({"op":"subscribe","id":"s","topics":["task.q"]}).to_string(),
    )
    .await;
    assert_eq!(reply_to_id(&mut responder, "s").await["op"], "ok");
    let mut requester = ws(&router, Some(&tasker)).await;
    send_frame(
        &mut requester,
        json!({"op":"request","id":"r","timeout_ms":5000,"event":{"type":"task.q","payload":"ping"}})
            .to_string(),
    )
    .await;
    let request = recv_where(&mut responder, |v| v["op"] == "event").await;
    let event = &request["event"];
    send_frame(
        &mut responder,
        json!({"op":"publish","id":"p","event":{"type":event["reply_to"],
               "correlation_id":event["correlation_id"],"payload":"pong"}})
        .to_string(),
    )
    .await;
    let reply = reply_to_id(&mut requester, "r").await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(reply["response"]["payload"], "pong", "{reply}");
}

// ------------------------------------------------------------------ depth

async fn publish_plain(router: &RouterProcess, topic: &str, depth: usize) -> (u16, Value) {
    let body = format!(r#"{{"type":"{topic}","payload":{}}}"#, nested_text(depth));
    send(
        http()
            .post(format!("{}/api/v1/events", router.http_url()))
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

async fn publish_structured(router: &RouterProcess, topic: &str, depth: usize) -> (u16, Value) {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{}","source":"/t","type":"{topic}","data":{}}}"#,
        uuid::Uuid::new_v4(),
        nested_text(depth)
    );
    send(
        http()
            .post(format!("{}/api/v1/events", router.http_url()))
            .header("content-type", "application/cloudevents+json")
            .body(body),
    )
    .await
}

async fn publish_binary(router: &RouterProcess, topic: &str, depth: usize) -> (u16, Value) {
    send(
        http()
            .post(format!("{}/api/v1/events", router.http_url()))
            .header("ce-specversion", "1.0")
            .header("ce-id", uuid::Uuid::new_v4().to_string())
            .header("ce-source", "/t")
            .header("ce-type", topic)
            .header("content-type", "application/json")
            .body(nested_text(depth)),
    )
    .await
}

/// Publishes a payload of each depth through every ingest path; events at
/// the limit come back whole from a durable subscription and from history,
/// one level deeper is refused with 400 `too_deep`.
async fn depth_limit_holds(router: &RouterProcess) {
    let group = format!("deep{}", uuid::Uuid::new_v4().simple());
    let mut consumer = ws(router, None).await;
    send_frame(
        &mut consumer,
        json!({"op":"subscribe","id":"s","topics":["deep.#"],"group":group}).to_string(),
    )
    .await;
    assert_eq!(reply_to_id(&mut consumer, "s").await["op"], "ok");

    let deeper = DEPTH_LIMIT + 1;
    for (what, (status, body)) in [
        ("json", publish_plain(router, "deep.json", deeper).await),
        (
            "structured",
            publish_structured(router, "deep.structured", deeper).await,
        ),
        (
            "binary",
            publish_binary(router, "deep.binary", deeper).await,
        ),
        (
            "binary 127",
            publish_binary(router, "deep.binary", 127).await,
        ),
    ] {
        assert_eq!((status, code(&body)), (400, "too_deep"), "{what}: {body}");
    }
    let mut publisher = ws(router, None).await;
    let frames = [
        format!(
            r#"{{"op":"publish","id":"w","event":{{"type":"deep.ws","payload":{}}}}}"#,
            nested_text(deeper)
        ),
        format!(
            r#"{{"op":"publish_batch","id":"w","events":[{{"type":"deep.ws","payload":{}}}]}}"#,
            nested_text(deeper)
        ),
    ];
    for frame in frames {
        send_frame(&mut publisher, frame).await;
        let reply = reply_to_id(&mut publisher, "w").await;
        assert_eq!(reply["code"], "too_deep", "{reply}");
    }

    for (what, (status, body)) in [
        (
            "json",
            publish_plain(router, "deep.json", DEPTH_LIMIT).await,
        ),
        (
            "structured",
            publish_structured(router, "deep.structured", DEPTH_LIMIT).await,
        ),
        (
            "binary",
            publish_binary(router, "deep.binary", DEPTH_LIMIT).await,
        ),
    ] {
        assert_eq!(status, 202, "{what}: {body}");
    }
    let frames = [
        format!(
            r#"{{"op":"publish","id":"a","event":{{"type":"deep.ws","payload":{}}}}}"#,
            nested_text(DEPTH_LIMIT)
        ),
        format!(
            r#"{{"op":"publish_batch","id":"b","events":[{{"type":"deep.batch","payload":{}}}]}}"#,
            nested_text(DEPTH_LIMIT)
        ),
    ];
    for (id, frame) in ["a", "b"].into_iter().zip(frames) {
        send_frame(&mut publisher, frame).await;
        let reply = reply_to_id(&mut publisher, id).await;
        assert_eq!(reply["op"], "ok", "{reply}");
    }

    let mut topics = Vec::new();
    for _ in 0..5 {
        let delivery = recv_where(&mut consumer, |v| v["op"] == "event").await;
        assert_eq!(depth(&delivery["event"]["payload"]), DEPTH_LIMIT);
        topics.push(delivery["event"]["type"].as_str().unwrap().to_string());
        send_frame(
            &mut consumer,
            json!({"op":"ack","delivery_id":delivery["delivery_id"]}).to_string(),
        )
        .await;
    }
    topics.sort();
    assert_eq!(
        topics,
        [
            "deep.batch",
            "deep.binary",
            "deep.json",
            "deep.structured",
            "deep.ws"
        ]
    );

    let (status, history) = send(http().get(format!(
        "{}/api/v1/events?topic=deep.%23",
        router.http_url()
    )))
    .await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 5, "{history}");
    for entry in events {
        assert_eq!(depth(&entry["event"]["payload"]), DEPTH_LIMIT);
    }
}

#[tokio::test]
async fn an_event_at_the_depth_limit_round_trips_and_one_deeper_is_refused_on_the_memory_broker() {
    let router = RouterProcess::start(&[]);
    depth_limit_holds(&router).await;
}

#[tokio::test]
async fn an_event_at_the_depth_limit_round_trips_and_one_deeper_is_refused_on_redis() {
    let redis = RedisServer::start();
    let router = RouterProcess::start(&["--redis", &redis.url()]);
    depth_limit_holds(&router).await;
}

// -------------------------------------------------------------------- JWT

const SECRET: &[u8] = b"a-test-secret-of-enough-bytes-0123456789";

fn token(header: jsonwebtoken::Header, claims: Value) -> String {
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_missing_a_configured_claim_or_with_a_crit_header_get_401() {
    let scratch = Scratch::new();
    let secret = scratch.write("jwt.secret", SECRET);
    let yaml = format!(
        "jwt:\n  hs256_secret_file: {secret}\n  audience: event-router\n  issuer: agents.test\n\
         acl:\n  - principal: agent-7\n    publish: [\"task.*\"]\n"
    );
    let file = scratch.write("auth.yaml", yaml.as_bytes());
    let router = RouterProcess::start(&["--auth", &file]);
    let exp = jiff::Timestamp::now().as_second() + 600;
    let hs256 = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let mut crit = hs256.clone();
    crit.crit = Some(vec!["x-unknown".into()]);
    let cases = [
        (
            "complete",
            token(
                hs256.clone(),
                json!({"sub":"agent-7","aud":"event-router","iss":"agents.test","exp":exp}),
            ),
            202,
        ),
        (
            "no aud",
            token(
                hs256.clone(),
                json!({"sub":"agent-7","iss":"agents.test","exp":exp}),
            ),
            401,
        ),
        (
            "no iss",
            token(
                hs256.clone(),
                json!({"sub":"agent-7","aud":"event-router","exp":exp}),
            ),
            401,
        ),
        (
            "crit",
            token(
                crit,
                json!({"sub":"agent-7","aud":"event-router","iss":"agents.test","exp":exp}),
            ),
            401,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, jwt, want) in cases {
        let (status, body) = send(
            http()
                .post(format!("{}/api/v1/events", router.http_url()))
                .bearer_auth(&jwt)
                .json(&json!({"type":"task.x"})),
        )
        .await;
        if status != want || (want == 401 && code(&body) != "unauthorized") {
            wrong.push(format!("{what}: want {want}, got {status} {body}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// -------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_gets_the_status_and_code_the_docs_promise() {
    let router = RouterProcess::start(&[]);
    let url = router.http_url();
    let events = format!("{url}/api/v1/events");
    let cases = [
        (
            "text/xml body",
            http()
                .post(&events)
                .header("content-type", "text/xml")
                .body(r#"{"type":"a.b"}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "structured without specversion",
            http()
                .post(&events)
                .header("content-type", "application/cloudevents+json")
                .body(r#"{"id":"1","source":"/s","type":"a.b"}"#),
            400,
            "invalid_event",
        ),
        (
            "ce-specversion 2.0, text body",
            http()
                .post(&events)
                .header("ce-specversion", "2.0")
                .header("ce-type", "a.b")
                .body("not json"),
            400,
            "unsupported_specversion",
        ),
        (
            "ce-specversion 2.0, JSON body",
            http()
                .post(&events)
                .header("ce-specversion", "2.0")
                .header("ce-type", "a.b")
                .header("content-type", "application/json")
                .body("{}"),
            400,
            "unsupported_specversion",
        ),
        (
            "data_base64 not base64",
            http()
                .post(&events)
                .header("content-type", "application/cloudevents+json")
                .body(r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data_base64":"!!!"}"#),
            400,
            "invalid_event",
        ),
        (
            "after not a cursor",
            http().get(format!("{events}?after=zzz")),
            400,
            "invalid_query",
        ),
        (
            "from out of range",
            http().get(format!("{events}?from=9999-12-31T23:59:59Z")),
            400,
            "invalid_query",
        ),
        (
            "time out of range",
            http()
                .post(&events)
                .json(&json!({"type":"a.b","time":"9999-12-31T23:59:59Z"})),
            400,
            "invalid_event",
        ),
        (
            "timeout_ms over the maximum",
            http()
                .post(format!("{url}/api/v1/request"))
                .json(&json!({"event":{"type":"a.b"},"timeout_ms":300_001})),
            400,
            "bad_request",
        ),
    ];
    // Every case is tried, so that a failure lists all wrong answers.
    let mut wrong = Vec::new();
    for (what, req, status, want) in cases {
        let (got, body) = send(req).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if (got, code(&body)) != (status, want)
            || (what.contains("out of range") && !message.contains("out of range"))
        {
            wrong.push(format!("{what}: want {status} {want}, got {got} {body}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Good input still passes.
    let (status, body) = send(
        http()
            .post(&events)
            .header("content-type", "application/cloudevents+json")
            .body(
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data_base64":"aGk="}"#,
            ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, page) = send(http().get(format!("{events}?topic=a.b"))).await;
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_after"].as_str().unwrap();
    let (status, body) = send(http().get(format!("{events}?after={cursor}"))).await;
    assert_eq!(status, 200, "{body}");

    let mut client = ws(&router, None).await;
    send_frame(
        &mut client,
        json!({"op":"request","id":"t","event":{"type":"a.b"},"timeout_ms":300_001}).to_string(),
    )
    .await;
    let reply = reply_to_id(&mut client, "t").await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
}

// ------------------------------------------------------------------- tail

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_names_a_delivery_it_cannot_read_instead_of_dropping_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let subscribe = ws.next().await.unwrap().unwrap();
        let subscribe: Value = serde_json::from_str(subscribe.to_text().unwrap()).unwrap();
        let ok = json!({"op":"ok","id":subscribe["id"],"subscription_id":"s1"});
        ws.send(Message::text(ok.to_string())).await.unwrap();
        // Nested past what any JSON parser with serde_json's limit reads.
        let deep = format!(
            r#"{{"op":"event","subscription_id":"s1","delivery_id":"d-deep","attempt":1,"event":{{"id":"e-deep","type":"a.b","time":"2026-01-01T00:00:00Z","priority":5,"payload":{}}}}}"#,
            nested_text(130)
        );
        ws.send(Message::text(deep)).await.unwrap();
        let fine = json!({"op":"event","subscription_id":"s1","delivery_id":"d-ok","attempt":1,
                          "event":{"id":"e-ok","type":"a.b","time":"2026-01-01T00:00:00Z","priority":5}});
        ws.send(Message::text(fine.to_string())).await.unwrap();
        // Hold the socket until tail closes it.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let url = format!("http://{addr}");
    let mut tail = Child::spawn(&["tail", "--url", &url, "-n", "1", "a.b"], &[]);
    let status = tail.wait_exit(WAIT).expect("tail exits after one event");
    std::thread::sleep(Duration::from_millis(50));
    let out = tail.output();
    assert!(status.success(), "{out}");
    assert!(out.contains("a.b"), "the readable event is printed: {out}");
    assert!(
        out.contains("d-deep") && out.contains("e-deep"),
        "the unreadable delivery is named: {out}"
    );
    server.abort();
}
