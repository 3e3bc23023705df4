//! Fixtures for the operator tests: test objects, a Kubernetes API server
//! mocked with `tower_test::mock::pair` (the kube/controller-rs pattern),
//! and an operator [`Context`] over a real redis-server.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use event_router::broker::{Broker, RedisBroker, RedisBrokerConfig};
use event_router::operator::{ConfigStore, Context, EventRoute, Subscription};
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// How long a test waits for the reconciler's next API call.
pub const WAIT: Duration = Duration::from_secs(10);

/// The mock API server's side of the client.
pub type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A unique Redis key prefix, so tests can share one redis-server.
pub fn prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{test}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A kube client whose every request goes to the returned handle.
pub fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// An operator context over `redis_url` with key prefix `prefix`, and its
/// mock API server.
pub async fn context(redis_url: &str, prefix: &str) -> (Arc<Context>, ApiHandle, Arc<RedisBroker>) {
    let (client, handle) = mock_client();
    let store = ConfigStore::connect(redis_url, prefix)
        .await
        .expect("config store");
    let mut config = RedisBrokerConfig::new(redis_url);
    config.key_prefix = prefix.to_string();
    config.partitions = 2;
    let broker = Arc::new(RedisBroker::connect(config).await.expect("redis broker"));
    let ctx = Context::new(client, store, broker.clone());
    (Arc::new(ctx), handle, broker)
}

/// What a test object looks like.
#[derive(Debug, Clone)]
pub struct Meta {
    pub name: &'static str,
    pub namespace: &'static str,
    pub generation: i64,
    pub finalized: bool,
    pub deleting: bool,
}

impl Meta {
    /// A live, finalized object at generation 1.
    pub fn new(name: &'static str, namespace: &'static str) -> Meta {
        Meta {
            name,
            namespace,
            generation: 1,
            finalized: true,
            deleting: false,
        }
    }

    fn json(&self, finalizer: &str) -> Value {
        let mut meta = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": format!("uid-{}-{}", self.namespace, self.name),
            "generation": self.generation,
            "resourceVersion": "1",
            "creationTimestamp": "2026-11-23T10:00:00Z",
        });
        if self.finalized {
            meta["finalizers"] = json!([finalizer]);
        }
        if self.deleting {
            meta["deletionTimestamp"] = json!("2026-11-23T11:00:00Z");
        }
        meta
    }
}

/// A `Subscription` object with `spec` and optional `status`.
pub fn subscription(meta: &Meta, spec: Value, status: Option<Value>) -> Subscription {
    let mut doc = json!({
        "apiVersion": "eventrouter.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": meta.json(event_router::operator::SUBSCRIPTION_FINALIZER),
        "spec": spec,
    });
    if let Some(s) = status {
        doc["status"] = s;
    }
    serde_json::from_value(doc).expect("valid Subscription")
}

/// An `EventRoute` object with `spec`.
pub fn route(meta: &Meta, spec: Value, status: Option<Value>) -> EventRoute {
    let mut doc = json!({
        "apiVersion": "eventrouter.dev/v1alpha1",
        "kind": "EventRoute",
        "metadata": meta.json(event_router::operator::ROUTE_FINALIZER),
        "spec": spec,
    });
    if let Some(s) = status {
        doc["status"] = s;
    }
    serde_json::from_value(doc).expect("valid EventRoute")
}

/// One request the reconciler made, with its JSON body.
#[derive(Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Answers 200 with `body`.
    pub fn ok(self, body: &Value) {
        self.status(200, body);
    }

    /// Answers with `code` and `body` (a `Status` object for errors).
    pub fn status(self, code: u16, body: &Value) {
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers a status patch with `obj` carrying the patched status.
    pub fn status_of<K: serde::Serialize>(self, obj: &K) {
        let mut answer = serde_json::to_value(obj).expect("json");
        answer["status"] = self.body["status"].clone();
        self.ok(&answer);
    }

    /// Answers 200 echoing the request body (what a create returns).
    pub fn echo(self) {
        let body = self.body.clone();
        self.ok(&body);
    }

    /// Asserts method and path; returns self for the body.
    pub fn expect(self, method: Method, path: &str) -> Call {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "unexpected API call; body: {}",
            self.body
        );
        self
    }
}

/// The reconciler's next API call, within [`WAIT`].
pub async fn next_call(handle: &mut ApiHandle) -> Call {
    let (request, respond) = tokio::time::timeout(WAIT, handle.next_request())
        .await
        .expect("the reconciler made no API call in time")
        .expect("the client was dropped before the expected call");
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json request body")
    };
    Call {
        method,
        path,
        body,
        respond,
    }
}

/// Asserts that the reconciler makes no further API call: all clients
/// are gone (`ctx` must have been dropped by the caller).
pub async fn no_more_calls(mut handle: ApiHandle) {
    match tokio::time::timeout(Duration::from_secs(2), handle.next_request()).await {
        Ok(None) => {}
        Ok(Some((request, _))) => panic!(
            "unexpected extra API call {} {}",
            request.method(),
            request.uri()
        ),
        Err(_) => panic!("a kube client is still alive; drop the context first"),
    }
}

/// Path of a namespaced custom resource (`plural`) or its subresource.
pub fn path(plural: &str, ns: &str, name: &str, sub: &str) -> String {
    let base = format!("/apis/eventrouter.dev/v1alpha1/namespaces/{ns}/{plural}/{name}");
    if sub.is_empty() {
        base
    } else {
        format!("{base}/{sub}")
    }
}

/// Closes the broker (background tasks stop at once).
pub async fn close(broker: Arc<RedisBroker>) {
    broker.close().await;
}
