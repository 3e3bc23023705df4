//! `event-router status`: health, readiness, counters, replicas and
//! partition owners (clustered brokers), and durable subscriptions with
//! their backlog, lag and dead letters, of a running router.

use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{ApiClient, Endpoint, describe_error, print_json, print_line, table};

/// Show a router's health, readiness, counters and durable subscriptions.
///
/// Prints the replicas and which ingest partitions each owns (on the Redis
/// broker), and a table of durable subscriptions (pending, in flight,
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
    let owners = partition_owners(&stats);
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
            "replicas": replicas_json(&owners),
            "partitions": owners.iter().map(|(p, o)| json!({"partition": p, "owner": o})).collect::<Vec<_>>(),
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
    if !owners.is_empty() {
        out.push(replica_table(&owners));
        out.push(String::new());
    }
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

/// `(partition, owner)` from the stats' `broker.partitions` (clustered
/// brokers); empty for the memory broker.
fn partition_owners(stats: &Value) -> Vec<(u64, Option<String>)> {
    stats
        .pointer("/broker/partitions")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| {
                    let owner = p.get("owner").and_then(Value::as_str).map(str::to_string);
                    Some((p.get("partition")?.as_u64()?, owner))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Owner → its partitions, owners in name order, unowned partitions last.
fn by_owner(owners: &[(u64, Option<String>)]) -> Vec<(Option<&str>, Vec<u64>)> {
    let mut map: std::collections::BTreeMap<Option<&str>, Vec<u64>> = Default::default();
    for (p, o) in owners {
        map.entry(o.as_deref()).or_default().push(*p);
    }
    let mut rows: Vec<_> = map.into_iter().collect();
    // `None` sorts first in a BTreeMap; show it last.
    let unowned_first = rows.first().is_some_and(|(o, _)| o.is_none());
    rows.rotate_left(usize::from(unowned_first));
    rows
}

/// `[{"node": ..., "partitions": [...]}]`, unowned partitions under `null`.
fn replicas_json(owners: &[(u64, Option<String>)]) -> Value {
    by_owner(owners)
        .into_iter()
        .map(|(node, parts)| json!({"node": node, "partitions": parts}))
        .collect()
}

/// `REPLICA  PARTITIONS  OWNED` rows, with ranges (`0-3,7`).
fn replica_table(owners: &[(u64, Option<String>)]) -> String {
    let rows: Vec<Vec<String>> = by_owner(owners)
        .into_iter()
        .map(|(node, parts)| {
            vec![
                node.unwrap_or("(unowned)").to_string(),
                parts.len().to_string(),
                ranges(&parts),
            ]
        })
        .collect();
    table(&["REPLICA", "PARTITIONS", "OWNED"], &rows)
}

/// `0-3,7,9-10` from sorted partition numbers.
fn ranges(parts: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let start = parts[i];
        while i + 1 < parts.len() && parts[i + 1] == parts[i] + 1 {
            i += 1;
        }
        out.push(if parts[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", parts[i])
        });
        i += 1;
    }
    out.join(",")
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
    fn replicas_list_their_partitions_as_ranges_with_unowned_last() {
        let stats = json!({"broker": {"kind": "redis", "partitions": [
            {"partition": 0, "owner": "b"}, {"partition": 1, "owner": "a"},
            {"partition": 2, "owner": "a"}, {"partition": 3, "owner": null},
            {"partition": 4, "owner": "a"}, {"partition": 5, "owner": "b"}
        ]}});
        let owners = partition_owners(&stats);
        let t = replica_table(&owners);
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["REPLICA", "PARTITIONS", "OWNED"]);
        assert_eq!(rows[1], ["a", "3", "1-2,4"]);
        assert_eq!(rows[2], ["b", "2", "0,5"]);
        assert_eq!(rows[3], ["(unowned)", "1", "3"]);
        assert_eq!(
            replicas_json(&owners)[0],
            json!({"node": "a", "partitions": [1, 2, 4]})
        );
        assert!(partition_owners(&json!({"broker": {"kind": "memory"}})).is_empty());
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
    fn stats_are_flattened_to_one_line() {
        let stats = json!({"published": 4, "broker": {"dropped": 0}, "version": "x"});
        assert_eq!(stats_line(&stats), "broker.dropped=0 published=4");
    }
}
