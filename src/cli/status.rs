//! `event-router status`: health, readiness, counters and durable
//! subscriptions of a running router.

use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{ApiClient, Endpoint, describe_error, print_json, print_line, table};

/// Show a router's health, readiness, counters and durable subscriptions.
///
/// Prints a table of durable subscriptions (pending, in flight, retrying,
/// dead letters, consumers). Reads GET /health, /ready, /api/v1/stats and /api/v1/subscriptions.
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
    let subscriptions = subscription_list(client.get("/api/v1/subscriptions").await?);
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
            "subscriptions": subscriptions,
        }))?;
        return Ok(code);
    }
    let mut out = vec![
        format!("router:  {}", client.base()),
        format!("health:  {}", health.describe(health_code)),
        format!("ready:   {}", ready.describe(ready_code)),
        format!("broker:  {}", broker_line(&stats)),
        format!("stats:   {}", stats_line(&stats)),
        String::new(),
    ];
    if subscriptions.is_empty() {
        out.push("no durable subscriptions".into());
    } else {
        out.push(subscription_table(&subscriptions));
    }
    print_line(&out.join("\n")).context("cannot write to stdout")?;
    Ok(code)
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

const COLUMNS: [(&str, &str); 8] = [
    ("PENDING", "pending"),
    ("IN-FLIGHT", "in_flight"),
    ("RETRYING", "retrying"),
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

/// `published=12 dropped=0 ...` from the numeric fields of the stats
/// answer, nested objects flattened with dots.
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
                .eq(["workers", "3", "1", "0", "2", "1", "9", "6", "0"])
        );
        assert_eq!(subscription_list(json!([{"name": "x"}])).len(), 1);
    }

    #[test]
    fn stats_are_flattened_to_one_line() {
        let stats = json!({"published": 4, "broker": {"dropped": 0}, "version": "x"});
        assert_eq!(stats_line(&stats), "broker.dropped=0 published=4");
    }
}
