//! The real `event-router operator` process against a fake Kubernetes API
//! server (an axum app on a loopback port, reached through a kubeconfig)
//! and a real redis-server: it takes the leader Lease, reconciles a listed
//! Subscription into Redis, writes its status, and on SIGTERM releases the
//! Lease and exits 0. Without the CRDs it exits 1 saying how to install them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use event_router::operator::ConfigStore;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use common::process::{Child, Stream};
use common::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(20);
const SUBS: &str = "/apis/eventrouter.dev/v1alpha1/subscriptions";
const ROUTES: &str = "/apis/eventrouter.dev/v1alpha1/eventroutes";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/event-router-operator";

#[derive(Clone)]
struct Fake {
    crds: bool,
    lease: Arc<Mutex<Option<Value>>>,
    patches: mpsc::UnboundedSender<(String, Value)>,
}

fn subscription() -> Value {
    json!({
        "apiVersion": "eventrouter.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {
            "name": "workers", "namespace": "agents", "uid": "u-1", "generation": 1,
            "resourceVersion": "5", "finalizers": ["eventrouter.dev/subscription-cleanup"]
        },
        "spec": {"topics": ["task.*"], "delivery": {"maxAttempts": 4}}
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "eventrouter.dev/v1alpha1", "kind": kind,
                "metadata": {"resourceVersion": "5"}, "items": items}),
    )
}

/// Answers what the operator asks: lists, never-ending watches, the Lease,
/// status patches (recorded), events.
async fn api(State(fake): State<Fake>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let watch = request.uri().query().unwrap_or("").contains("watch=true");
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if watch {
        // Hold the watch open: no changes.
        return Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
            .into_response();
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/version") => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "x",
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        (&Method::GET, SUBS) if fake.crds => list("SubscriptionList", vec![subscription()]),
        (&Method::GET, ROUTES) if fake.crds => list("EventRouteList", vec![]),
        (&Method::GET, SUBS | ROUTES) => not_found(),
        (&Method::GET, LEASE) => match fake.lease.lock().unwrap().clone() {
            Some(lease) => json_response(StatusCode::OK, &lease),
            None => not_found(),
        },
        (&Method::POST, "/apis/coordination.k8s.io/v1/namespaces/ops/leases")
        | (&Method::PUT, LEASE) => {
            let mut lease = body.clone();
            lease["metadata"]["resourceVersion"] = json!("9");
            *fake.lease.lock().unwrap() = Some(lease.clone());
            json_response(StatusCode::OK, &lease)
        }
        (&Method::PATCH, p) if p.ends_with("/status") => {
            let _ = fake.patches.send((p.to_string(), body.clone()));
            let mut obj = subscription();
            obj["status"] = body["status"].clone();
            json_response(StatusCode::OK, &obj)
        }
        (&Method::POST, p) if p.ends_with("/events") => json_response(StatusCode::CREATED, &body),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                    "message": format!("fake api: no route for {method} {path}")}),
        ),
    }
}

/// Starts the fake API server; returns a kubeconfig file pointing at it.
async fn fake_api(fake: Fake, dir: &std::path::Path) -> std::path::PathBuf {
    let app = axum::Router::new().fallback(api).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{addr}\"}}\n\
         users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u, namespace: default}}\n\
         current-context: c\n"
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config).unwrap();
    path
}

fn operator(redis: &RedisServer, prefix: &str, kubeconfig: &std::path::Path) -> Child {
    let url = redis.url();
    let kc = kubeconfig.to_string_lossy().to_string();
    Child::spawn(
        &[
            "operator",
            "--redis",
            &url,
            "--redis-key-prefix",
            prefix,
            "--lease-namespace",
            "ops",
            "--identity",
            "op-1",
            "--status-interval",
            "1s",
            "--probe-listen",
            "127.0.0.1:0",
        ],
        &[("KUBECONFIG", kc.as_str()), ("RUST_LOG", "info")],
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("er-{name}-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_leads_reconciles_into_redis_and_releases_the_lease_on_sigterm() {
    let redis = RedisServer::start();
    let (tx, mut patches) = mpsc::unbounded_channel();
    let lease = Arc::new(Mutex::new(None));
    let fake = Fake {
        crds: true,
        lease: lease.clone(),
        patches: tx,
    };
    let dir = temp_dir("operator");
    let kubeconfig = fake_api(fake, &dir).await;
    let mut child = operator(&redis, "op", &kubeconfig);

    let (path, body) = tokio::time::timeout(WAIT, patches.recv())
        .await
        .unwrap_or_else(|_| panic!("no status patch in time; output:\n{}", child.output()))
        .unwrap();
    assert_eq!(
        path,
        "/apis/eventrouter.dev/v1alpha1/namespaces/agents/subscriptions/workers/status"
    );
    assert_eq!(body["status"]["conditions"][0]["status"], "True", "{body}");
    assert_eq!(body["status"]["group"], "workers");
    assert_eq!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
        "op-1"
    );
    let store = ConfigStore::connect(&redis.url(), "op").await.unwrap();
    let doc: Value = serde_json::from_str(
        &store
            .raw("Subscription/agents/workers")
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["spec"]["delivery"]["maxAttempts"], 4);

    // Status is refreshed on the interval.
    tokio::time::timeout(WAIT, patches.recv())
        .await
        .expect("a second status update within the interval")
        .unwrap();

    // The probes answer on the port the operator printed.
    let line = tokio::task::block_in_place(|| {
        child.line_matching(Stream::Stderr, WAIT, |l| {
            l.starts_with("probes listening on ")
        })
    })
    .unwrap_or_else(|| panic!("no probe line; output:\n{}", child.output()));
    let addr = line
        .trim_start_matches("probes listening on ")
        .trim()
        .to_string();
    let healthz = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 200);
    let body: Value = readyz.json().await.unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["role"], "leader", "{body}");

    child.signal("TERM");
    // The fake API server must keep answering while this thread waits.
    let status = tokio::task::block_in_place(|| child.wait_exit(WAIT))
        .unwrap_or_else(|| panic!("operator did not stop; output:\n{}", child.output()));
    assert!(status.success(), "{status}; output:\n{}", child.output());
    assert!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"].is_null(),
        "the lease is released on the way out"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_without_crds_exits_saying_how_to_install_them() {
    let redis = RedisServer::shared();
    let (tx, _patches) = mpsc::unbounded_channel();
    let fake = Fake {
        crds: false,
        lease: Arc::default(),
        patches: tx,
    };
    let dir = temp_dir("operator-nocrd");
    let kubeconfig = fake_api(fake, &dir).await;
    let mut child = operator(redis, "nocrd", &kubeconfig);
    let status = tokio::task::block_in_place(|| child.wait_exit(WAIT))
        .unwrap_or_else(|| panic!("operator kept running; output:\n{}", child.output()));
    assert!(!status.success());
    let output = child.output();
    assert!(
        output.contains("subscriptions.eventrouter.dev") && output.contains("event-router crd"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
