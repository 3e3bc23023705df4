//! `/metrics` of a real `event-router serve` process: values after an
//! event's life, the real `promtool check metrics`, and the Grafana
//! dashboard's queries against what is exported.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::inproc::WsClient;
use common::process::RouterProcess;
use serde_json::{Value, json};

const SUBSCRIPTION: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: Subscription
metadata: {name: workers}
spec:
  topics: ["job.#"]
  delivery:
    mode: durable
    maxAttempts: 2
    backoff: {initial: 10ms, max: 10ms, multiplier: 1, jitter: 0}
    deadLetter: true
"#;

fn start() -> (RouterProcess, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "er-metrics-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("subscription.yaml");
    std::fs::write(&file, SUBSCRIPTION).unwrap();
    let router = RouterProcess::start(&["-f", file.to_str().unwrap()]);
    (router, dir)
}

async fn scrape(router: &RouterProcess, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", router.http_url()));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.text().await.unwrap())
}

/// The value of the sample written exactly as `series` (name plus labels).
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
}

/// Runs the real `promtool check metrics` on `body`; returns its exit code and output.
fn promtool(body: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: scripts/test.sh installs it (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_an_event_life_and_pass_promtool() {
    let (router, dir) = start();
    let mut worker = WsClient::connect(router.addr(), "/ws").await;
    worker
        .subscribe(json!({"op":"subscribe","id":"s","topics":["job.#"],"group":"workers"}))
        .await;
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    publisher.publish(json!({"type":"job.ok"})).await;
    publisher.publish(json!({"type":"job.fail"})).await;
    let mut fails = 0;
    let mut acked = 0;
    while fails < 2 || acked < 1 {
        let d = worker.recv().await;
        if d["event"]["type"] == "job.ok" {
            worker
                .send(json!({"op":"ack","delivery_id":d["delivery_id"]}))
                .await;
            acked += 1;
        } else {
            worker
                .send(json!({"op":"nack","delivery_id":d["delivery_id"],"delay_ms":0}))
                .await;
            fails += 1;
        }
    }
    publisher.publish(json!({"type":"job.held"})).await;
    let held = worker.recv().await;
    assert_eq!(held["event"]["type"], "job.held");

    // The nack is one-way: scrape until the dead letter shows.
    let mut body = String::new();
    for _ in 0..50 {
        body = scrape(&router, None).await.1;
        if body.contains("event_router_dead_letter_queue_depth{subscription=\"workers\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let w = "{subscription=\"workers\"}";
    assert_eq!(sample(&body, "event_router_published_total"), 3.0);
    assert_eq!(
        sample(&body, &format!("event_router_delivered_total{w}")),
        4.0
    );
    assert_eq!(sample(&body, &format!("event_router_acked_total{w}")), 1.0);
    assert_eq!(sample(&body, &format!("event_router_nacked_total{w}")), 2.0);
    assert_eq!(
        sample(&body, &format!("event_router_retried_total{w}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("event_router_dead_lettered_total{w}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("event_router_dead_letter_queue_depth{w}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("event_router_subscription_in_flight{w}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("event_router_subscription_pending{w}")),
        0.0
    );
    assert_eq!(
        sample(&body, &format!("event_router_subscription_lag_seconds{w}")),
        0.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("event_router_publish_to_deliver_seconds_count{w}")
        ),
        4.0
    );
    assert_eq!(
        sample(&body, "event_router_publish_duration_seconds_count"),
        3.0
    );
    assert_eq!(sample(&body, "event_router_subscriptions"), 1.0);
    // No span export configured, so none dropped.
    assert_eq!(sample(&body, "event_router_trace_spans_dropped_total"), 0.0);
    assert_eq!(
        sample(&body, "event_router_connections{transport=\"websocket\"}"),
        2.0
    );

    let (code, output) = promtool(&body);
    assert_eq!(
        code,
        Some(0),
        "promtool check metrics failed:\n{output}\n--- metrics:\n{body}"
    );
    assert!(
        output.trim().is_empty(),
        "promtool lint findings:\n{output}"
    );

    let (content_type, _) = scrape(&router, None).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (content_type, openmetrics) =
        scrape(&router, Some("application/openmetrics-text; version=1.0.0")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE event_router_published counter"));
    drop(router);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_dropped_by_a_full_export_buffer_are_counted() {
    // A collector that takes connections (the kernel's backlog does) and
    // never answers: the first export waits for its timeout while the
    // one-span buffer fills.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let router = RouterProcess::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
        ],
    );
    let mut publisher = WsClient::connect(router.addr(), "/ws").await;
    let mut body = String::new();
    for _ in 0..50 {
        // Four spans or more each (validate, receive, route, store).
        publisher.publish(json!({"type":"job.ok"})).await;
        body = scrape(&router, None).await.1;
        if sample(&body, "event_router_trace_spans_dropped_total") > 0.0 {
            break;
        }
    }
    assert!(
        sample(&body, "event_router_trace_spans_dropped_total") > 0.0,
        "{body}"
    );
    let (code, output) = promtool(&body);
    assert_eq!(code, Some(0), "promtool check metrics failed:\n{output}");
    drop(router);
    drop(collector);
}

/// Metric names a PromQL expression reads, with histogram series suffixes
/// mapped to their family.
fn queried_families(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"event_router_[a-z_]+").unwrap();
    re.find_iter(expr)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| base.ends_with("_seconds"))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_exactly_the_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/event-router.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            exprs += 1;
            queried.extend(queried_families(expr));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["definition"].as_str() {
            queried.extend(queried_families(q));
        }
    }
    assert!(exprs > 10, "the dashboard has {exprs} queries");

    let (router, dir) = start();
    let (_, body) = scrape(&router, None).await;
    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let (code, output) = promtool(&body);
    assert_eq!(
        code,
        Some(0),
        "promtool on a fresh router:\n{output}\n{body}"
    );
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}"
    );
    let unused: Vec<_> = exported.difference(&queried).collect();
    assert!(
        unused.is_empty(),
        "exported metrics without a dashboard panel: {unused:?}"
    );
    drop(router);
    let _ = std::fs::remove_dir_all(dir);
}
