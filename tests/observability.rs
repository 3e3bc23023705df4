//! End-to-end tracing: a real `event-router serve` process exporting spans
//! over OTLP to a receiver built here on the `opentelemetry-proto` types.

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use common::inproc::{SseClient, WsClient};
use common::process::RouterProcess;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::{Value, json};

/// How long spans may take to reach the receiver.
const EXPORT_WAIT: Duration = Duration::from_secs(15);

/// One received span.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    service: String,
}

type Spans = Arc<Mutex<Vec<SpanRecord>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps the spans of one export request.
fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut out = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(SpanRecord {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    service: service.clone(),
                });
            }
        }
    }
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
    };
    keep(&spans, request);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// An OTLP/gRPC collector: the `TraceService` opentelemetry-proto
/// generates, served by tonic. It refuses requests without the header
/// `x-tenant: agents` (which `OTEL_EXPORTER_OTLP_HEADERS` sets).
struct GrpcCollector(Spans);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            != Some("agents")
        {
            return Err(tonic::Status::unauthenticated("no x-tenant: agents"));
        }
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1.
async fn start_grpc_receiver() -> (SocketAddr, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(GrpcCollector(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, spans)
}

/// An OTLP/HTTP protobuf receiver on 127.0.0.1: `POST /v1/traces`.
async fn start_receiver() -> (SocketAddr, Spans) {
    let spans = Spans::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, spans)
}

/// Waits until `done` holds for the received spans, or panics with them.
async fn wait_for(
    spans: &Spans,
    what: &str,
    done: impl Fn(&[SpanRecord]) -> bool,
) -> Vec<SpanRecord> {
    let deadline = Instant::now() + EXPORT_WAIT;
    loop {
        let now = spans.lock().unwrap().clone();
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not received within {EXPORT_WAIT:?}; spans: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SUBSCRIPTION: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: Subscription
metadata: {name: traced}
spec:
  topics: ["otel.#"]
  delivery:
    mode: durable
    maxAttempts: 2
    ackTimeout: 30s
    backoff: {initial: 10ms, max: 10ms, multiplier: 1, jitter: 0}
    deadLetter: true
"#;

/// A group whose deliveries time out after a second and are then
/// dead-lettered.
const TIMED_OUT: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: Subscription
metadata: {name: timed}
spec:
  topics: ["late.#"]
  delivery:
    mode: durable
    maxAttempts: 1
    ackTimeout: 1s
    deadLetter: true
"#;

fn otel_env(endpoint: &str, protocol: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        ("OTEL_SERVICE_NAME", "router-under-test".to_string()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("RUST_LOG", "info,event_router::telemetry=debug".to_string()),
    ]
}

fn start_router(dir: &std::path::Path, env: &[(&'static str, String)]) -> RouterProcess {
    let file = dir.join("subscription.yaml");
    std::fs::write(&file, SUBSCRIPTION).unwrap();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    RouterProcess::start_with_env(&["-f", file.to_str().unwrap()], &env)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("er-observability-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn by_name<'a>(spans: &'a [SpanRecord], trace: &str, name: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect()
}

fn one<'a>(spans: &'a [SpanRecord], trace: &str, name: &str) -> &'a SpanRecord {
    let found = by_name(spans, trace, name);
    assert_eq!(
        found.len(),
        1,
        "expected one {name} span in trace {trace}: {spans:#?}"
    );
    found[0]
}

/// The trace id and parent span id of a `traceparent` value.
fn traceparent(value: &Value) -> (String, String) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent: {value}"));
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 4, "{text}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_publish_through_retry_to_dead_letter() {
    let (receiver, sink) = start_receiver().await;
    let dir = temp_dir("trace");
    let router = start_router(
        &dir,
        &otel_env(&format!("http://{receiver}"), "http/protobuf"),
    );

    let mut worker = WsClient::connect(router.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","id":"s","topics":["otel.#"],"group":"traced"}))
        .await;
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    let event_id = publisher
        .publish(json!({"type":"otel.check","payload":{"n":1}}))
        .await;

    let first = worker.recv().await;
    assert_eq!(first["event"]["id"], event_id.as_str());
    assert_eq!(first["attempt"], 1);
    let (trace, first_parent) = traceparent(&first["event"]["headers"]["traceparent"]);
    worker
        .send(json!({"op":"nack","delivery_id":first["delivery_id"],"delay_ms":0,"reason":"busy"}))
        .await;
    let second = worker.recv().await;
    assert_eq!(second["attempt"], 2);
    let (second_trace, second_parent) = traceparent(&second["event"]["headers"]["traceparent"]);
    assert_eq!(
        second_trace, trace,
        "the redelivery stays in the event's trace"
    );
    worker
        .send(json!({"op":"nack","delivery_id":second["delivery_id"],"delay_ms":0,"reason":"still busy"}))
        .await;

    let spans = wait_for(&sink, "the dead_letter span", |s| {
        s.iter()
            .any(|s| s.name == "dead_letter" && s.trace_id == trace)
            && s.iter()
                .filter(|s| s.name == "nack" && s.trace_id == trace)
                .count()
                == 2
    })
    .await;
    assert!(
        spans
            .iter()
            .all(|s| s.service.contains("router-under-test")),
        "{spans:#?}"
    );

    let validate = one(&spans, &trace, "validate");
    let receive = one(&spans, &trace, "receive");
    let route = one(&spans, &trace, "route");
    let store = one(&spans, &trace, "store");
    let dead = one(&spans, &trace, "dead_letter");
    let delivers = by_name(&spans, &trace, "deliver");
    let nacks = by_name(&spans, &trace, "nack");
    assert_eq!(delivers.len(), 2, "{spans:#?}");
    assert_eq!(nacks.len(), 2, "{spans:#?}");

    // validate started the trace (WebSocket publish without traceparent).
    assert_eq!(validate.parent, "", "validate is the root: {validate:?}");
    assert_eq!(receive.parent, validate.span_id);
    assert_eq!(route.parent, receive.span_id);
    assert_eq!(store.parent, receive.span_id);
    for deliver in &delivers {
        assert_eq!(
            deliver.parent, receive.span_id,
            "deliver is a child of receive"
        );
    }
    // Each delivered copy names its deliver span as parent, and each nack
    // is a child of the deliver span of the delivery it rejects.
    let deliver_ids: Vec<&str> = delivers.iter().map(|d| d.span_id.as_str()).collect();
    assert!(
        deliver_ids.contains(&first_parent.as_str()),
        "{first_parent} in {deliver_ids:?}"
    );
    assert!(deliver_ids.contains(&second_parent.as_str()));
    let mut nack_parents: Vec<&str> = nacks.iter().map(|n| n.parent.as_str()).collect();
    nack_parents.sort_unstable();
    let mut expected = vec![first_parent.as_str(), second_parent.as_str()];
    expected.sort_unstable();
    assert_eq!(nack_parents, expected);
    // The last nack exhausted the attempts: dead_letter is its child.
    let last_nack = nacks.iter().find(|n| n.parent == second_parent).unwrap();
    assert_eq!(dead.parent, last_nack.span_id);

    // The log line of the dead-lettering carries the trace id.
    let log = router.output();
    let line = log
        .lines()
        .find(|l| l.contains("event dead-lettered"))
        .unwrap_or_else(|| panic!("no dead-letter log line in:\n{log}"));
    let json_line: Value = serde_json::from_str(line.trim_start_matches("[stderr] ")).unwrap();
    assert_eq!(json_line["trace_id"], trace.as_str(), "{line}");
    assert_eq!(json_line["subscription"], "traced");

    // An HTTP publish with a W3C traceparent header joins the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/events", router.http_url()))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("x-request-id", "req-42")
        .json(&json!({"type":"otel.http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let delivered = worker.recv().await;
    let (delivered_trace, _) = traceparent(&delivered["event"]["headers"]["traceparent"]);
    assert_eq!(delivered_trace, caller_trace);
    let spans = wait_for(&sink, "the HTTP publish's deliver span", |s| {
        s.iter()
            .any(|s| s.trace_id == caller_trace && s.name == "deliver")
    })
    .await;
    let request = one(&spans, caller_trace, "request");
    assert_eq!(request.parent, caller_span);
    let receive = one(&spans, caller_trace, "receive");
    let validate = one(&spans, caller_trace, "validate");
    assert_eq!(validate.parent, request.span_id);
    assert_eq!(receive.parent, validate.span_id);
    let log = router.output();
    let line = log
        .lines()
        .find(|l| l.contains("request finished") && l.contains("req-42"))
        .unwrap_or_else(|| panic!("no request log line in:\n{log}"));
    let json_line: Value = serde_json::from_str(line.trim_start_matches("[stderr] ")).unwrap();
    assert_eq!(json_line["request_id"], "req-42", "{line}");
    assert_eq!(json_line["trace_id"], caller_trace, "{line}");

    // A structured CloudEvent's `traceparent` attribute is the parent too.
    let ce_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/events", router.http_url()))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({
                "specversion": "1.0", "id": "ce-1", "source": "test", "type": "otel.ce",
                "traceparent": format!("00-{ce_trace}-b7ad6b7169203331-01")
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let delivered = worker.recv().await;
    assert_eq!(delivered["event"]["id"], "ce-1");
    let (delivered_trace, _) = traceparent(&delivered["event"]["headers"]["traceparent"]);
    assert_eq!(delivered_trace, ce_trace);
    let spans = wait_for(&sink, "the CloudEvent's receive span", |s| {
        s.iter()
            .any(|s| s.trace_id == ce_trace && s.name == "receive")
    })
    .await;
    assert_eq!(one(&spans, ce_trace, "validate").parent, "b7ad6b7169203331");
    drop(router);
    let _ = std::fs::remove_dir_all(dir);
}

/// Acks over HTTP (of an SSE stream's deliveries) find their delivery's
/// span in the router's in-flight table; acks and nacks over a WebSocket
/// come with the context the session kept. Both are children of `deliver`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_over_http_and_over_websocket_are_children_of_their_deliver_span() {
    let (receiver, sink) = start_receiver().await;
    let dir = temp_dir("http-ack");
    let router = start_router(
        &dir,
        &otel_env(&format!("http://{receiver}"), "http/protobuf"),
    );
    let mut stream = SseClient::open(
        router.addr(),
        "/api/v1/events/stream?topics=otel.%23&group=sse-traced",
        &[],
    )
    .await;
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    publisher.publish(json!({"type":"otel.sse"})).await;
    let delivered = stream.next_event().await.json();
    let (sse_trace, sse_parent) = traceparent(&delivered["event"]["headers"]["traceparent"]);
    let acked = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/subscriptions/sse-traced/ack",
            router.http_url()
        ))
        .json(&json!({"delivery_id": delivered["delivery_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status(), 200);
    drop(stream);

    let mut worker = WsClient::connect(router.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","id":"w","topics":["otel.ws"],"group":"ws-traced"}))
        .await;
    publisher.publish(json!({"type":"otel.ws"})).await;
    let first = worker.recv().await;
    let (ws_trace, _) = traceparent(&first["event"]["headers"]["traceparent"]);
    worker
        .send(json!({"op":"nack","delivery_id":first["delivery_id"],"delay_ms":0}))
        .await;
    let second = worker.recv().await;
    worker
        .send(json!({"op":"ack","delivery_id":second["delivery_id"]}))
        .await;

    let spans = wait_for(&sink, "the HTTP ack and the WebSocket nack and ack", |s| {
        s.iter().any(|s| s.trace_id == sse_trace && s.name == "ack")
            && s.iter().any(|s| s.trace_id == ws_trace && s.name == "ack")
            && s.iter().any(|s| s.trace_id == ws_trace && s.name == "nack")
    })
    .await;
    let deliver = one(&spans, &sse_trace, "deliver");
    assert_eq!(
        deliver.span_id, sse_parent,
        "the stream carried its deliver span"
    );
    assert_eq!(one(&spans, &sse_trace, "ack").parent, deliver.span_id);
    let delivers = by_name(&spans, &ws_trace, "deliver");
    assert_eq!(delivers.len(), 2, "{spans:#?}");
    for (settled, delivery) in [("nack", &first), ("ack", &second)] {
        let (_, parent) = traceparent(&delivery["event"]["headers"]["traceparent"]);
        assert_eq!(one(&spans, &ws_trace, settled).parent, parent, "{settled}");
        assert!(delivers.iter().any(|d| d.span_id == parent), "{spans:#?}");
    }
    drop(router);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_protocol_exports_the_trace_to_a_grpc_collector() {
    let (addr, sink) = start_grpc_receiver().await;
    let dir = temp_dir("grpc");
    let mut env = otel_env(&format!("http://{addr}"), "grpc");
    env.push(("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=agents".to_string()));
    let router = start_router(&dir, &env);
    let mut worker = WsClient::connect(router.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","id":"s","topics":["otel.#"],"group":"traced"}))
        .await;
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    publisher.publish(json!({"type":"otel.grpc"})).await;
    let delivered = worker.recv().await;
    let (trace, _) = traceparent(&delivered["event"]["headers"]["traceparent"]);
    worker
        .send(json!({"op":"ack","delivery_id":delivered["delivery_id"]}))
        .await;
    let spans = wait_for(&sink, "the event's ack span over gRPC", |s| {
        s.iter().any(|s| s.trace_id == trace && s.name == "ack")
    })
    .await;
    let receive = one(&spans, &trace, "receive");
    let deliver = one(&spans, &trace, "deliver");
    assert_eq!(deliver.parent, receive.span_id);
    assert_eq!(one(&spans, &trace, "ack").parent, deliver.span_id);
    assert!(receive.service.contains("router-under-test"), "{receive:?}");
    drop(router);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_blocks_events_and_shutdown_is_bounded() {
    // A port that refuses connections.
    let closed = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let dir = temp_dir("dead");
    let mut router = start_router(&dir, &otel_env(&format!("http://{addr}"), "http/protobuf"));
    let mut worker = WsClient::connect(router.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","id":"s","topics":["otel.#"],"group":"traced"}))
        .await;
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    for n in 0..20 {
        publisher
            .publish(json!({"type":"otel.dead","payload":{"n":n}}))
            .await;
    }
    for _ in 0..20 {
        let d = worker.recv().await;
        assert_eq!(d["op"], "event");
        worker
            .send(json!({"op":"ack","delivery_id":d["delivery_id"]}))
            .await;
    }
    router.sigterm();
    let status = router.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}; output:\n{}",
        router.output()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn observability_manifests_render_with_kustomize_and_wire_collector_to_jaeger() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/observability");
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", dir])
        .output()
        .expect("kubectl not found: install kubectl (client only) to render deploy/observability");
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = rendered
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}")))
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(name))
            })
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{rendered}"))
    };
    for (kind, name) in [
        ("Namespace", "observability"),
        ("Deployment", "jaeger"),
        ("Service", "jaeger"),
        ("Deployment", "otel-collector"),
        ("Service", "otel-collector"),
    ] {
        find(kind, name);
    }
    assert!(
        docs.iter()
            .filter(|d| d["kind"] != "Namespace")
            .all(|d| d["metadata"]["namespace"] == "observability")
    );
    // The collector receives OTLP on both transports and exports to Jaeger.
    let config = find("ConfigMap", "otel-collector-config");
    let config: Value =
        serde_saphyr::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert!(config["receivers"]["otlp"]["protocols"]["grpc"].is_object());
    assert!(config["receivers"]["otlp"]["protocols"]["http"].is_object());
    assert_eq!(
        config["exporters"]["otlp/jaeger"]["endpoint"],
        "jaeger:4317"
    );
    assert_eq!(
        config["service"]["pipelines"]["traces"]["receivers"],
        json!(["otlp"])
    );
    // The collector mounts the generated (hash-suffixed) ConfigMap.
    let collector = find("Deployment", "otel-collector");
    let mounted = collector["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
        .as_str()
        .unwrap();
    assert_eq!(
        mounted,
        find("ConfigMap", "otel-collector-config")["metadata"]["name"]
            .as_str()
            .unwrap()
    );
    let jaeger = find("Service", "jaeger");
    let ports: Vec<i64> = jaeger["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert!(ports.contains(&4317) && ports.contains(&16686), "{ports:?}");
}

/// `serve --redis` replica exporting spans as `service`.
fn start_replica(
    redis_url: &str,
    node: &str,
    file: &std::path::Path,
    receiver: SocketAddr,
) -> RouterProcess {
    let mut env = otel_env(&format!("http://{receiver}"), "http/protobuf");
    env.retain(|(k, _)| *k != "OTEL_SERVICE_NAME");
    env.push(("OTEL_SERVICE_NAME", node.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    RouterProcess::start_with_env(
        &[
            "--redis",
            redis_url,
            "--node-id",
            node,
            "--redis-membership-ttl",
            "1s",
            "--shutdown-grace",
            "1s",
            "-f",
            file.to_str().unwrap(),
        ],
        &env,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_replica_and_dead_letter_on_another_is_one_trace_and_status_shows_owners() {
    let redis = common::redis::RedisServer::start();
    let (receiver, sink) = start_receiver().await;
    let dir = temp_dir("redis");
    let file = dir.join("subscription.yaml");
    std::fs::write(&file, format!("{SUBSCRIPTION}---{TIMED_OUT}")).unwrap();
    let a_name = format!("replica-a-{}", std::process::id());
    let b_name = format!("replica-b-{}", std::process::id());
    let a = start_replica(&redis.url(), &a_name, &file, receiver);
    let b = start_replica(&redis.url(), &b_name, &file, receiver);

    let mut worker = WsClient::connect(b.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","id":"s","topics":["otel.#"],"group":"traced"}))
        .await;
    let mut publisher = WsClient::connect(a.addr(), "/ws").await;
    let event_id = publisher
        .publish(json!({"type":"otel.redis","key":"k1"}))
        .await;
    let first = worker.recv().await;
    assert_eq!(first["event"]["id"], event_id.as_str());
    let (trace, _) = traceparent(&first["event"]["headers"]["traceparent"]);
    worker
        .send(json!({"op":"nack","delivery_id":first["delivery_id"],"delay_ms":0}))
        .await;
    let second = worker.recv().await;
    assert_eq!(second["attempt"], 2);
    worker
        .send(json!({"op":"nack","delivery_id":second["delivery_id"],"delay_ms":0}))
        .await;

    let spans = wait_for(&sink, "the dead_letter span on replica B", |s| {
        s.iter()
            .any(|s| s.name == "dead_letter" && s.trace_id == trace)
    })
    .await;
    let receive = one(&spans, &trace, "receive");
    assert!(receive.service.contains(&a_name), "{receive:?}");
    let delivers = by_name(&spans, &trace, "deliver");
    assert_eq!(delivers.len(), 2, "{spans:#?}");
    for d in &delivers {
        assert!(d.service.contains(&b_name), "{d:?}");
        assert_eq!(
            d.parent, receive.span_id,
            "B's deliver is a child of A's receive"
        );
    }
    let nacks = by_name(&spans, &trace, "nack");
    assert_eq!(nacks.len(), 2);
    let dead = one(&spans, &trace, "dead_letter");
    assert!(nacks.iter().any(|n| n.span_id == dead.parent), "{spans:#?}");

    // An ack timeout on B dead-letters outside any span: the dead letter
    // still joins the event's trace, under A's receive.
    worker
        .subscribe(json!({"op":"subscribe","id":"t","topics":["late.#"],"group":"timed"}))
        .await;
    publisher.publish(json!({"type":"late.redis"})).await;
    let held = worker.recv().await;
    assert_eq!(held["event"]["type"], "late.redis", "{held}");
    let (late_trace, _) = traceparent(&held["event"]["headers"]["traceparent"]);
    let spans = wait_for(
        &sink,
        "the ack-timeout dead_letter span on replica B",
        |s| {
            s.iter()
                .any(|s| s.name == "dead_letter" && s.trace_id == late_trace)
        },
    )
    .await;
    let dead = one(&spans, &late_trace, "dead_letter");
    assert!(dead.service.contains(&b_name), "{dead:?}");
    assert_eq!(
        dead.parent,
        one(&spans, &late_trace, "receive").span_id,
        "{spans:#?}"
    );

    // status: both replicas, from the membership heartbeats.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = common::process::run(
            &["status", "--json", "--url", &a.http_url()],
            Duration::from_secs(20),
        );
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        let status: Value = serde_json::from_str(&out.stdout).unwrap();
        let replicas: Vec<&str> = status["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["node"].as_str())
            .collect();
        if replicas.contains(&a_name.as_str()) && replicas.contains(&b_name.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never listed both replicas: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = common::process::run(&["status", "--url", &a.http_url()], Duration::from_secs(20));
    assert!(
        text.stdout.contains("REPLICA") && text.stdout.contains(&b_name),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("LAG-S"), "{}", text.stdout);

    // The same replicas and a Redis round trip in /metrics.
    let body = reqwest::get(format!("{}/metrics", a.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let replicas: usize = body
        .lines()
        .find_map(|l| l.strip_prefix("event_router_replicas "))
        .unwrap_or_else(|| panic!("{body}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(replicas, 2, "{body}");
    let rtt: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("event_router_redis_round_trip_seconds "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rtt > 0.0, "{body}");
    drop((a, b, redis));
    let _ = std::fs::remove_dir_all(dir);
}
