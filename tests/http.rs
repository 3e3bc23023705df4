//! The REST API: mostly through `tower::ServiceExt::oneshot` on
//! `server::app`, plus a real socket where deliveries are involved.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::inproc::{WsClient, http, start_with};
use event_router::broker::MemoryBroker;
use event_router::server::{self, AppState, ServerConfig};
use event_router::{Router, RouterConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct App {
    router: Arc<Router>,
    app: axum::Router,
    token: CancellationToken,
}

fn app_with(config: ServerConfig) -> App {
    let router = Router::new(Arc::new(MemoryBroker::default()), RouterConfig::default());
    let token = CancellationToken::new();
    let state = AppState::new(router.clone(), config, token.clone());
    App {
        router,
        app: server::app(state),
        token,
    }
}

fn app() -> App {
    app_with(ServerConfig::default())
}

impl App {
    async fn call(&self, req: Request<Body>) -> (StatusCode, Value) {
        let response = tokio::time::timeout(Duration::from_secs(5), self.app.clone().oneshot(req))
            .await
            .expect("response in time")
            .expect("infallible service");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, body)
    }

    async fn json(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(req).await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn history(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].clone())
            .collect()
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn publishing_our_json_returns_202_with_id_status_and_timestamp() {
    let a = app();
    let (status, body) = a
        .json(
            "POST",
            "/api/v1/events",
            json!({"type":"task.created","payload":{"n":1}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "published");
    assert!(body["timestamp"].is_string());
    let id = body["event_id"].as_str().unwrap();
    let events = a.history("topic=task.*").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id);
}

#[tokio::test]
async fn cloudevents_structured_mode_maps_attributes_and_extensions() {
    let a = app();
    let ce = json!({
        "specversion":"1.0","id":"ce-1","source":"/billing","type":"invoice.paid",
        "time":"2024-05-01T12:00:00Z","datacontenttype":"application/json","data":{"amount":10},
        "priority":"high","correlationid":"corr-1","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "subject":"inv-9"
    });
    let req = Request::post("/api/v1/events")
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(Body::from(ce.to_string()))
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["event_id"], "ce-1");
    let e = &a.history("topic=invoice.paid").await[0];
    assert_eq!(e["source"], "/billing");
    assert_eq!(e["time"], "2024-05-01T12:00:00Z");
    assert_eq!(e["payload"], json!({"amount": 10}));
    assert_eq!(e["priority"], 7);
    assert_eq!(e["correlation_id"], "corr-1");
    assert!(
        e["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0af7")
    );
    assert_eq!(e["metadata"]["subject"], "inv-9");
    assert_eq!(e["datacontenttype"], "application/json");
}

#[tokio::test]
async fn cloudevents_binary_mode_reads_ce_headers_and_the_body_as_data() {
    let a = app();
    let req = Request::post("/api/v1/events")
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/sensor")
        .header("ce-type", "reading.taken")
        .header("ce-priority", "9")
        .header("ce-ttl", "3600")
        .header("ce-replyto", "reading.ack")
        .body(Body::from(r#"{"celsius":21.5}"#))
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let e = &a.history("topic=reading.%23").await[0];
    assert_eq!(e["id"], "bin-1");
    assert_eq!(e["source"], "/sensor");
    assert_eq!(e["payload"], json!({"celsius": 21.5}));
    assert_eq!(
        (e["priority"].as_u64(), e["ttl"].as_u64()),
        (Some(9), Some(3600))
    );
    assert_eq!(e["reply_to"], "reading.ack");
}

#[tokio::test]
async fn batches_accept_objects_arrays_and_cloudevents_batches() {
    let a = app();
    let (status, body) = a
        .json(
            "POST",
            "/api/v1/events/batch",
            json!({"events":[{"type":"b.one"},{"type":"b.two"}],"atomic":true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(body["results"][0]["status"], "published");
    let (status, _) = a
        .json("POST", "/api/v1/events/batch", json!([{"type":"b.three"}]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let batch = json!([
        {"specversion":"1.0","id":"c1","source":"/s","type":"b.four"},
        {"specversion":"1.0","id":"c2","source":"/s","type":"b.five","data":"x"}
    ]);
    let req = Request::post("/api/v1/events/batch")
        .header("content-type", "application/cloudevents-batch+json")
        .body(Body::from(batch.to_string()))
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["results"][1]["event_id"], "c2");
    let topics: Vec<Value> = a
        .history("topic=b.*")
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        topics,
        vec!["b.one", "b.two", "b.three", "b.four", "b.five"]
    );

    let (status, body) = a
        .json(
            "POST",
            "/api/v1/events/batch",
            json!([{"type":"ok"},{"type":"no..pe"}]),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_topic");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]")
    );
}

#[tokio::test]
async fn history_filters_by_topic_pattern_filter_time_and_pages_by_cursor() {
    let a = app();
    for (topic, n, time) in [
        ("h.a", 1, "2024-01-01T00:00:00Z"),
        ("h.b", 2, "2024-01-02T00:00:00Z"),
        ("x.a", 3, "2024-01-03T00:00:00Z"),
        ("h.c", 4, "2024-01-04T00:00:00Z"),
    ] {
        a.json(
            "POST",
            "/api/v1/events",
            json!({"type":topic,"payload":{"n":n},"time":time}),
        )
        .await;
    }
    let n = |events: Vec<Value>| -> Vec<i64> {
        events
            .iter()
            .map(|e| e["payload"]["n"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(n(a.history("topic=h.*").await), vec![1, 2, 4]);
    assert_eq!(
        n(a.history("topic=h.*&filter=payload.n:gt:1").await),
        vec![2, 4]
    );
    assert_eq!(n(a.history("topic=h.a,x.%23").await), vec![1, 3]);
    assert_eq!(
        n(
            a.history("from=2024-01-02T00:00:00Z&to=2024-01-04T00:00:00Z")
                .await
        ),
        vec![2, 3]
    );
    let (_, page) = a.get("/api/v1/events?limit=2").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().unwrap();
    assert_eq!(n(a.history(&format!("after={after}")).await), vec![3, 4]);

    let (status, body) = a.get("/api/v1/events?from=yesterday").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");
    let (status, body) = a.get("/api/v1/events?topic=a..b").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_pattern");
}

#[tokio::test]
async fn stats_report_broker_counters_and_connections() {
    let a = app();
    a.json("POST", "/api/v1/events", json!({"type":"s.x"}))
        .await;
    let (status, body) = a.get("/api/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["broker"]["published"], 1);
    assert_eq!(body["connections"], json!({"websocket": 0, "sse": 0}));
}

#[tokio::test]
async fn stats_have_the_v2_designs_fields_first() {
    let a = app();
    let (status, _) = a
        .json(
            "PUT",
            "/api/v1/subscriptions/jobs",
            json!({"topics":["job.*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for n in 0..3 {
        a.json(
            "POST",
            "/api/v1/events",
            json!({"type":"job.run","payload":n}),
        )
        .await;
    }
    let (status, body) = a.get("/api/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events_published"], 3, "{body}");
    assert_eq!(body["events_delivered"], 0, "{body}");
    assert_eq!(body["active_subscriptions"], 1, "{body}");
    assert_eq!(body["queue_depth"], 3, "{body}");
    assert_eq!(body["error_rate"], 0.0, "{body}");
    assert!(body["events_per_second"].as_f64().is_some(), "{body}");
}

#[tokio::test]
async fn subscriptions_are_created_read_listed_and_deleted() {
    let a = app();
    let spec = json!({"topics":["order.*"],"filter":{"priority":{"$gte":5}},
                      "delivery":{"maxAttempts":3,"ackTimeout":"10s"}});
    let (status, body) = a
        .json("PUT", "/api/v1/subscriptions/orders", spec.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["max_attempts"], 3);
    let (status, _) = a.json("PUT", "/api/v1/subscriptions/orders", spec).await;
    assert_eq!(status, StatusCode::OK);

    a.json(
        "POST",
        "/api/v1/events",
        json!({"type":"order.new","priority":7}),
    )
    .await;
    a.json(
        "POST",
        "/api/v1/events",
        json!({"type":"order.new","priority":1}),
    )
    .await;
    let (status, info) = a.get("/api/v1/subscriptions/orders").await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "pending",
        "in_flight",
        "retrying",
        "dead_letters",
        "consumers",
        "delivered",
        "acked",
    ] {
        assert!(info[field].is_u64(), "{field} missing: {info}");
    }
    assert_eq!(info["pending"], 1);
    let (_, list) = a.get("/api/v1/subscriptions").await;
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 1);

    let (status, body) = a
        .json(
            "PUT",
            "/api/v1/subscriptions/bad",
            json!({"topics":["a"],"delivery":{"mode":"live"}}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_subscription",
    );
    let (status, body) = a
        .json(
            "PUT",
            "/api/v1/subscriptions/bad",
            json!({"topics":["a"],"bogus":1}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");

    let req = Request::delete("/api/v1/subscriptions/orders")
        .body(Body::empty())
        .unwrap();
    assert_eq!(a.call(req).await.0, StatusCode::NO_CONTENT);
    let (status, body) = a.get("/api/v1/subscriptions/orders").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_subscription");
    let req = Request::delete("/api/v1/subscriptions/orders")
        .body(Body::empty())
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_subscription");
}

#[tokio::test]
async fn nacked_events_reach_the_dlq_after_max_attempts_and_can_be_redriven_and_purged() {
    let server = start_with(ServerConfig::default()).await;
    let (client, base) = http(server.addr);
    let put = client
        .put(format!("{base}/api/v1/subscriptions/jobs"))
        .json(&json!({"topics":["job.#"],"delivery":{"maxAttempts":2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let mut worker = WsClient::connect(server.addr, "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","topics":["job.#"],"group":"jobs"}))
        .await;
    let id = worker.publish(json!({"type":"job.fail"})).await;

    fail_twice(&mut worker, &id).await;

    let dlq: Value = wait_for_dlq(&client, &base, 1).await;
    let entry = &dlq["dead_letters"][0];
    assert_eq!(entry["event"]["id"], id.as_str());
    assert_eq!(entry["attempts"], 2);
    assert!(
        entry["reason"].as_str().unwrap().contains("boom"),
        "{entry}"
    );

    let redrive: Value = client
        .post(format!("{base}/api/v1/subscriptions/jobs/dlq/redrive"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(redrive["count"], 1);
    fail_twice(&mut worker, &id).await;
    let dlq = wait_for_dlq(&client, &base, 1).await;
    let dl_id = dlq["dead_letters"][0]["id"].as_str().unwrap().to_string();
    let purge: Value = client
        .post(format!("{base}/api/v1/subscriptions/jobs/dlq/purge"))
        .json(&json!({"ids":[dl_id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purge["count"], 1);
    wait_for_dlq(&client, &base, 0).await;
}

async fn fail_twice(worker: &mut WsClient, id: &str) {
    for attempt in 1..=2 {
        let d = worker.recv().await;
        assert_eq!(
            (d["event"]["id"].as_str(), d["attempt"].as_u64()),
            (Some(id), Some(attempt))
        );
        worker.send(client_nack(&d)).await;
    }
}

fn client_nack(delivery: &Value) -> Value {
    json!({"op":"nack","delivery_id":delivery["delivery_id"],"delay_ms":0,"reason":"boom"})
}

async fn wait_for_dlq(client: &reqwest::Client, base: &str, want: usize) -> Value {
    for _ in 0..100 {
        let dlq: Value = client
            .get(format!("{base}/api/v1/subscriptions/jobs/dlq?limit=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if dlq["dead_letters"].as_array().unwrap().len() == want {
            return dlq;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("dead-letter queue never held {want} entries");
}

#[tokio::test]
async fn http_ack_and_nack_of_unknown_deliveries_are_404s() {
    let a = app();
    a.json("PUT", "/api/v1/subscriptions/w", json!({"topics":["a"]}))
        .await;
    let (status, body) = a
        .json(
            "POST",
            "/api/v1/subscriptions/w/ack",
            json!({"delivery_id":"nope"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_delivery");
    let (status, body) = a
        .json(
            "POST",
            "/api/v1/subscriptions/missing/nack",
            json!({"delivery_id":"nope"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_subscription");
    let (status, body) = a
        .json(
            "POST",
            "/api/v1/subscriptions/w/ack",
            json!({"wrong":"shape"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");
}

#[tokio::test]
async fn oversize_bodies_get_413_in_our_error_shape() {
    let a = app_with(ServerConfig {
        max_frame_bytes: 1024,
        ..ServerConfig::default()
    });
    let big = json!({"type":"a","payload":"x".repeat(4096)});
    let (status, body) = a.json("POST", "/api/v1/events", big.clone()).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let (status, body) = a.json("PUT", "/api/v1/subscriptions/x", big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
}

#[tokio::test]
async fn errors_use_one_json_shape_with_the_right_status() {
    let a = app();
    let req = Request::post("/api/v1/events")
        .header("content-type", "application/json")
        .body(Body::from("{nope"))
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_json");
    let (status, body) = a
        .json(
            "POST",
            "/api/v1/events",
            json!({"type":"a","priority":"urgent"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_priority");
    let (status, body) = a.json("POST", "/api/v1/events", json!({"payload":1})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_event");
    let (status, body) = a.get("/no/such/route").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let req = Request::delete("/api/v1/stats")
        .body(Body::empty())
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let req = Request::post("/api/v1/request")
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = a.call(req).await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

#[tokio::test]
async fn requests_over_http_get_the_reply_or_time_out_with_504() {
    let server = start_with(ServerConfig::default()).await;
    let (client, base) = http(server.addr);
    let mut responder = WsClient::connect(server.addr, "/ws").await;
    responder
        .subscribe(json!({"op":"subscribe","topics":["svc.time"]}))
        .await;
    let call = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/api/v1/request"))
                .json(&json!({"event":{"type":"svc.time"},"timeout_ms":5000}))
                .send()
                .await
                .unwrap()
        }
    });
    let request = responder.recv().await["event"].clone();
    responder
        .publish(json!({"type":request["reply_to"],"correlation_id":request["correlation_id"],"payload":"noon"}))
        .await;
    let response = call.await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["response"]["payload"], "noon");

    let response = client
        .post(format!("{base}/api/v1/request"))
        .json(&json!({"event":{"type":"svc.nobody"},"timeout_ms":50}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout");
}

#[tokio::test]
async fn health_has_the_designs_shape_and_ready_turns_503_on_shutdown() {
    let a = app();
    let (status, body) = a.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(
        body["checks"],
        json!({"transport":"ok","persistence":"ok","queue":"ok"})
    );
    assert_eq!(
        a.get("/ready").await,
        (StatusCode::OK, json!({"status":"ready"}))
    );
    a.token.cancel();
    let (status, body) = a.get("/ready").await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    let (status, body) = a.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["transport"], "shutting down", "{body}");
    assert_eq!(
        a.get("/live").await,
        (StatusCode::OK, json!({"status":"alive"}))
    );
}

#[tokio::test]
async fn a_failing_check_makes_health_unhealthy_with_503() {
    let a = app();
    a.router.broker().close().await;
    let (status, body) = a.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["checks"]["transport"], "ok", "{body}");
    assert_ne!(body["checks"]["persistence"], "ok", "{body}");
    assert_eq!(a.get("/live").await.0, StatusCode::OK);
}

#[tokio::test]
async fn openapi_json_lists_every_http_path() {
    let a = app();
    let (status, doc) = a.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/events",
        "/api/v1/events/batch",
        "/api/v1/events/purge",
        "/api/v1/events/stream",
        "/api/v1/request",
        "/api/v1/stats",
        "/api/v1/whoami",
        "/api/v1/subscribers",
        "/api/v1/subscriptions",
        "/api/v1/subscriptions/{name}",
        "/api/v1/subscriptions/{name}/ack",
        "/api/v1/subscriptions/{name}/nack",
        "/api/v1/subscriptions/{name}/dlq",
        "/api/v1/subscriptions/{name}/dlq/redrive",
        "/api/v1/subscriptions/{name}/dlq/purge",
        "/api/v1/subscriptions/{name}/replay",
        "/health",
        "/live",
        "/ready",
    ] {
        assert!(paths.contains_key(path), "{path} missing from openapi.json");
    }
    assert!(paths["/api/v1/subscriptions/{name}"].get("put").is_some());
    assert!(paths["/api/v1/events"].get("get").is_some());
    let _ = &a.router;
}

#[tokio::test]
async fn replay_queues_retained_events_into_a_subscription_by_topic_filter_and_time() {
    let a = app();
    let (status, _) = a
        .json(
            "PUT",
            "/api/v1/subscriptions/audit",
            json!({"topics":["audit.none"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for (topic, priority) in [("task.a", 3), ("task.b", 8), ("other.c", 9)] {
        let (status, body) = a
            .json(
                "POST",
                "/api/v1/events",
                json!({"type": topic, "priority": priority, "data": {}}),
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
    }
    let replay = |body: Value| a.json("POST", "/api/v1/subscriptions/audit/replay", body);

    let (status, body) = replay(json!({"topics":["task.*"],"filter":"priority:gte:5"})).await;
    assert_eq!(
        (status, &body["count"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let (_, body) = replay(json!({"topics":["task.*"]})).await;
    assert_eq!(body["count"], 2, "{body}");
    let (_, body) = replay(json!({"from":"2100-01-01T00:00:00Z"})).await;
    assert_eq!(body["count"], 0, "nothing retained after 2100: {body}");
    let (_, body) = replay(json!({"limit": 1})).await;
    assert_eq!(body["count"], 1, "{body}");
    let (status, body) = a
        .call(
            Request::post("/api/v1/subscriptions/audit/replay")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, &body["count"]),
        (StatusCode::OK, &json!(3)),
        "{body}"
    );
    let (_, info) = a.get("/api/v1/subscriptions/audit").await;
    assert_eq!(info["pending"], 1 + 2 + 1 + 3, "{info}");

    let (status, body) = replay(json!({"from":"yesterday"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");
    let (status, body) = replay(json!({"topics":["task.*"],"filter":"priority:zz:1"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_filter");
    let (status, body) = replay(json!({"limit": 0})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");
    let (status, body) = replay(json!({"topic":"misspelt"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");
    let (status, body) = a
        .json("POST", "/api/v1/subscriptions/nobody/replay", json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_subscription");
}
