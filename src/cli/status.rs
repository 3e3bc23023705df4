//! `event-router status`: health, readiness, counters, the replicas
//! sharing a Redis (clustered brokers), and durable subscriptions with
//! their backlog, lag and dead letters, of a running router.

use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{ApiClient, Endpoint, describe_error, print_json, print_line, table};

/// Show a router's health, readiness, counters and durable subscriptions.
///
/// Starts with the v2 design's summary (`Event Router Status: Running`,
/// Events Published, Active Subscriptions, Queue Depth, events per second,
/// error rate), then the health checks, readiness, the replicas sharing the Redis (on the Redis broker: those whose
/// membership heartbeat is recent), and a table of durable subscriptions (pending, in flight,
/// retrying, lag, dead letters, consumers). Reads GET /health, /ready,
/// /api/v1/stats, /api/v1/subscriptions and /metrics (for lag).
/// Exits 0 when the router is healthy and ready, 1 otherwise (so it can
/// serve as a readiness probe), and 1 with a message when it cannot be
/// reached.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router status\n  \
    event-router status --json | jq '.subscriptions'\n  \
    EVENT_ROUTER_URL=http://10.0.0.5:8080 event-router status")]
pub struct StatusArgs {
    /// Print everything as one JSON object: health, ready, stats, subscriptions.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

/// Health or readiness: whether the endpoint answered 2xx, and its body.
struct Probe {
    ok: bool,
    body: Value,
}

impl Probe {
    fn to_json(&self) -> Value {
        json!({"ok": self.ok, "body": self.body})
    }

    fn describe(&self, code: reqwest::StatusCode) -> String {
        let word = if self.ok { "ok" } else { "FAILING" };
        match self.body.get("status").and_then(Value::as_str) {
            Some(status) if self.ok && status != word => format!("{word} ({status})"),
            _ if self.ok => word.to_string(),
            _ => format!("{word}: {}", describe_error(code, &self.body)),
        }
    }
}

async fn probe(client: &ApiClient, path: &str) -> anyhow::Result<(Probe, reqwest::StatusCode)> {
    let response = client.send(Method::GET, client.url(path), |r| r).await?;
    let probe = Probe {
        ok: response.status.is_success(),
        body: response.body,
    };
    Ok((probe, response.status))
}

/// Prints the status.
///
/// # Errors
/// An unreachable router, or an error answer from the stats endpoints.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let client = ApiClient::new(&args.endpoint)?;
    let (health, health_code) = probe(&client, "/health").await?;
    let (ready, ready_code) = probe(&client, "/ready").await?;
    let stats = client.get("/api/v1/stats").await?;
    let mut subscriptions = subscription_list(client.get("/api/v1/subscriptions").await?);
    add_lag(&client, &mut subscriptions).await;
    let replicas = replica_list(&stats);
    let code = if health.ok && ready.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.json {
        print_json(&json!({
            "url": client.base().as_str(),
            "health": health.to_json(),
            "ready": ready.to_json(),
            "stats": stats,
            "replicas": replicas.iter().map(|node| json!({"node": node})).collect::<Vec<_>>(),
            "subscriptions": subscriptions,
        }))?;
        return Ok(code);
    }
    let mut out = summary(&stats, health.ok && ready.ok, client.base().as_str());
    out.extend([
        format!("Health: {}", health.describe(health_code)),
        format!("Ready: {}", ready.describe(ready_code)),
        format!("Details: {}", stats_line(&stats)),
        String::new(),
    ]);
    if !replicas.is_empty() {
        out.push(replica_table(
            &replicas,
            stats.pointer("/broker/node").and_then(Value::as_str),
        ));
        out.push(String::new());
    }
    if subscriptions.is_empty() {
        out.push("no durable subscriptions".into());
    } else {
        out.push(subscription_table(&subscriptions));
    }
    out.extend(sink_lines(&stats));
    print_line(&out.join("\n")).context("cannot write to stdout")?;
    Ok(code)
}

/// The v2 design's summary lines: state, transport, broker, the headline
/// counters (thousands separated) and rates.
fn summary(stats: &Value, up: bool, url: &str) -> Vec<String> {
    let count = |key: &str| {
        stats
            .get(key)
            .and_then(Value::as_u64)
            .map_or("-".into(), thousands)
    };
    let rate = |key: &str| stats.get(key).and_then(Value::as_f64);
    vec![
        format!(
            "Event Router Status: {}",
            if up { "Running" } else { "Degraded" }
        ),
        format!("Transport: WebSocket, HTTP, SSE at {url}"),
        format!("Broker: {}", broker_line(stats)),
        format!("Events Published: {}", count("events_published")),
        format!("Events Delivered: {}", count("events_delivered")),
        format!("Active Subscriptions: {}", count("active_subscriptions")),
        format!("Queue Depth: {}", count("queue_depth")),
        format!(
            "Events/sec: {}",
            rate("events_per_second").map_or("-".into(), |r| format!("{r:.1}"))
        ),
        format!(
            "Error Rate: {}",
            rate("error_rate").map_or("-".into(), |r| format!("{:.2}%", r * 100.0))
        ),
    ]
}

/// One line per push sink of the answering replica with its circuit
/// breaker (`sink hook: circuit open (3 failures, opened 2 times)`).
fn sink_lines(stats: &Value) -> Vec<String> {
    let Some(sinks) = stats.get("sinks").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = vec![String::new()];
    for sink in sinks {
        let name = sink["subscription"].as_str().unwrap_or("?");
        let circuit = match sink.get("circuit") {
            Some(c) => format!(
                "circuit {} ({} recent failures, opened {} times)",
                c["state"].as_str().unwrap_or("?"),
                c["recent_failures"].as_u64().unwrap_or(0),
                c["opened_total"].as_u64().unwrap_or(0)
            ),
            None => "no circuit breaker".to_string(),
        };
        out.push(format!("sink {name}: {circuit}"));
    }
    out
}

/// `10234` as `10,234`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The subscription entries, whether the router answers with a list or
/// with `{"subscriptions": [...]}`.
fn subscription_list(body: Value) -> Vec<Value> {
    match body {
        Value::Array(items) => items,
        Value::Object(mut map) => match map.remove("subscriptions") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// A subscription's name: `name`, or `spec.name` as in the broker's info.
fn subscription_name(entry: &Value) -> String {
    entry
        .get("name")
        .or_else(|| entry.pointer("/spec/name"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

const COLUMNS: [(&str, &str); 9] = [
    ("PENDING", "pending"),
    ("IN-FLIGHT", "in_flight"),
    ("RETRYING", "retrying"),
    ("LAG-S", "lag_seconds"),
    ("DLQ", "dead_letters"),
    ("CONSUMERS", "consumers"),
    ("DELIVERED", "delivered"),
    ("ACKED", "acked"),
    ("EXPIRED", "expired"),
];

fn subscription_table(entries: &[Value]) -> String {
    let mut header = vec!["SUBSCRIPTION"];
    header.extend(COLUMNS.iter().map(|(h, _)| *h));
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            let mut row = vec![subscription_name(entry)];
            row.extend(COLUMNS.iter().map(|(_, key)| {
                entry
                    .get(*key)
                    .map_or_else(|| "-".to_string(), Value::to_string)
            }));
            row
        })
        .collect();
    table(&header, &rows)
}

/// Node ids from the stats' `broker.replicas` (clustered brokers); empty
/// for the memory broker.
fn replica_list(stats: &Value) -> Vec<String> {
    stats
        .pointer("/broker/replicas")
        .and_then(Value::as_array)
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `REPLICA  ANSWERING` rows: every replica, the one that answered marked.
fn replica_table(replicas: &[String], answering: Option<&str>) -> String {
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|node| {
            let mark = if Some(node.as_str()) == answering {
                "yes"
            } else {
                ""
            };
            vec![node.clone(), mark.to_string()]
        })
        .collect();
    table(&["REPLICA", "ANSWERING"], &rows)
}

/// Adds `lag_seconds` (from `event_router_subscription_lag_seconds` on
/// `/metrics`) to each subscription entry; leaves it out when the router
/// has no metrics.
async fn add_lag(client: &ApiClient, subscriptions: &mut [Value]) {
    if subscriptions.is_empty() {
        return;
    }
    let Ok(response) = client
        .send(Method::GET, client.url("/metrics"), |r| r)
        .await
    else {
        return;
    };
    let Value::String(text) = response.body else {
        return;
    };
    let lags = lag_samples(&text);
    for entry in subscriptions.iter_mut() {
        let name = subscription_name(entry);
        if let (Some(lag), Value::Object(map)) = (lags.get(&name), entry) {
            // Whole seconds: the table is for reading, `--json` for tools.
            map.insert("lag_seconds".into(), json!(lag.max(0.0).round() as u64));
        }
    }
}

/// `subscription → lag seconds` from Prometheus text.
fn lag_samples(text: &str) -> std::collections::HashMap<String, f64> {
    const PREFIX: &str = "event_router_subscription_lag_seconds{subscription=\"";
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(PREFIX)?;
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `redis (node NAME)` or `memory`, from the stats' `broker.kind`/`node`.
fn broker_line(stats: &Value) -> String {
    let broker = stats.get("broker");
    let field = |k: &str| broker.and_then(|b| b.get(k)).and_then(Value::as_str);
    match (field("kind"), field("node")) {
        (Some(kind), Some(node)) => format!("{kind} (node {node})"),
        (Some(kind), None) => kind.to_string(),
        _ => "-".to_string(),
    }
}

/// `published=12 dropped=0 ...` from the numeric fields of the stats
/// answer, nested objects flattened with dots.
fn stats_line(stats: &Value) -> String {
    fn walk(prefix: &str, map: &Map<String, Value>, out: &mut Vec<String>) {
        for (key, value) in map {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Number(n) => out.push(format!("{name}={n}")),
                Value::Bool(b) => out.push(format!("{name}={b}")),
                Value::Object(inner) => walk(&name, inner, out),
                _ => {}
            }
        }
    }
    let mut parts = Vec::new();
    if let Value::Object(map) = stats {
        walk("", map, &mut parts);
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_table_reads_broker_info_shape() {
        let body = json!({"subscriptions": [
            {"spec": {"name": "workers"}, "pending": 3, "in_flight": 1, "retrying": 0,
             "dead_letters": 2, "consumers": 1, "delivered": 9, "acked": 6, "expired": 0}
        ]});
        let list = subscription_list(body);
        let t = subscription_table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("SUBSCRIPTION  PENDING  IN-FLIGHT"),
            "{t}"
        );
        assert!(lines[1].starts_with("workers"), "{t}");
        assert!(
            lines[1]
                .split_whitespace()
                .eq(["workers", "3", "1", "0", "-", "2", "1", "9", "6", "0"]),
            "{t}"
        );
        assert_eq!(subscription_list(json!([{"name": "x"}])).len(), 1);
    }

    #[test]
    fn replicas_are_listed_with_the_answering_one_marked() {
        let stats = json!({"broker": {"kind": "redis", "node": "b", "replicas": ["a", "b"]}});
        let replicas = replica_list(&stats);
        let t = replica_table(&replicas, Some("b"));
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["REPLICA", "ANSWERING"]);
        assert_eq!(rows[1], ["a"]);
        assert_eq!(rows[2], ["b", "yes"]);
        assert!(replica_list(&json!({"broker": {"kind": "memory"}})).is_empty());
    }

    #[test]
    fn lag_comes_from_the_metrics_text() {
        let text = "# TYPE event_router_subscription_lag_seconds gauge\n\
                    event_router_subscription_lag_seconds{subscription=\"workers\"} 12.4\n\
                    event_router_subscription_pending{subscription=\"workers\"} 3\n";
        let lags = lag_samples(text);
        assert_eq!(lags.len(), 1);
        assert_eq!(lags["workers"], 12.4);
    }

    #[test]
    fn summary_reads_like_the_designs_cli_example() {
        let stats = json!({"events_published": 10234, "events_delivered": 10100,
            "active_subscriptions": 45, "queue_depth": 123, "error_rate": 0.01,
            "events_per_second": 12.34, "broker": {"kind": "memory"}});
        let lines = summary(&stats, true, "http://127.0.0.1:8080/");
        assert_eq!(lines[0], "Event Router Status: Running");
        assert!(
            lines.contains(&"Events Published: 10,234".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"Active Subscriptions: 45".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"Queue Depth: 123".to_string()), "{lines:?}");
        assert!(lines.contains(&"Events/sec: 12.3".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"Error Rate: 1.00%".to_string()),
            "{lines:?}"
        );
        assert_eq!(
            summary(&stats, false, "u")[0],
            "Event Router Status: Degraded"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn stats_are_flattened_to_one_line() {
        let stats = json!({"published": 4, "broker": {"dropped": 0}, "version": "x"});
        assert_eq!(stats_line(&stats), "broker.dropped=0 published=4");
    }
}
