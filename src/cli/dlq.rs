//! `event-router dlq`: list, redrive and purge a durable subscription's
//! dead-letter queue over the HTTP API.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use reqwest::Url;
use serde_json::{Value, json};

use super::{ApiClient, Endpoint, print_json, print_line, table};

/// Inspect and act on a durable subscription's dead-letter queue.
///
/// Events that exhausted their delivery attempts wait in the dead-letter
/// queue with the reason and attempt history. `list` shows them, `redrive`
/// moves them back into the subscription with fresh attempts, `purge`
/// deletes them.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router dlq list workers\n  \
    event-router dlq redrive workers --ids 0196f5c2-...,0196f5c3-...\n  \
    event-router dlq purge workers --all")]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter operations.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    List(ListArgs),
    Redrive(RedriveArgs),
    Purge(PurgeArgs),
}

/// List dead letters of SUBSCRIPTION, oldest first (GET .../dlq).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  event-router dlq list workers --limit 20 --json")]
pub struct ListArgs {
    /// The durable subscription.
    pub subscription: String,

    /// Most entries to show.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,

    /// Print the router's answer as JSON (events, reasons, attempt history).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

/// Move dead letters of SUBSCRIPTION back into it with fresh attempts
/// (POST .../dlq/redrive); all of them unless --ids is given.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router dlq redrive workers\n  \
    event-router dlq redrive workers --ids ID1,ID2")]
pub struct RedriveArgs {
    /// The durable subscription.
    pub subscription: String,

    /// Only these dead-letter entry ids (comma-separated or repeated).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub ids: Vec<String>,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

/// Delete dead letters of SUBSCRIPTION (POST .../dlq/purge): the entries
/// given by --ids, or every entry with --all.
#[derive(Debug, clap::Args)]
#[command(
    group = clap::ArgGroup::new("which").required(true).args(["ids", "all"]),
    after_help = "Examples:\n  \
    event-router dlq purge workers --ids ID1,ID2\n  \
    event-router dlq purge workers --all"
)]
pub struct PurgeArgs {
    /// The durable subscription.
    pub subscription: String,

    /// Only these dead-letter entry ids (comma-separated or repeated).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub ids: Vec<String>,

    /// Delete every entry.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

/// Runs one dead-letter operation.
///
/// # Errors
/// An unreachable router, or the router's error (e.g. an unknown subscription).
pub async fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    match args.command {
        DlqCommand::List(a) => list(a).await,
        DlqCommand::Redrive(a) => {
            act(&a.endpoint, &a.subscription, "redrive", &a.ids, "redrove").await
        }
        DlqCommand::Purge(a) => act(&a.endpoint, &a.subscription, "purge", &a.ids, "purged").await,
    }
}

/// `/api/v1/subscriptions/{name}/dlq[/{action}]`, with the name encoded.
fn dlq_url(client: &ApiClient, subscription: &str, action: Option<&str>) -> anyhow::Result<Url> {
    let mut url = client.url("/api/v1/subscriptions");
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| anyhow!("--url {} cannot take a path", client.base()))?;
        segments.push(subscription).push("dlq");
        if let Some(action) = action {
            segments.push(action);
        }
    }
    Ok(url)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.endpoint)?;
    let mut url = dlq_url(&client, &args.subscription, None)?;
    url.set_query(Some(&format!("limit={}", args.limit)));
    let body = client.get_url(url).await?;
    if args.json {
        print_json(&body)?;
        return Ok(ExitCode::SUCCESS);
    }
    let entries = match &body {
        Value::Array(items) => items.clone(),
        other => other
            .get("dead_letters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    let text = if entries.is_empty() {
        format!("no dead letters in {}", args.subscription)
    } else {
        entries_table(&entries)
    };
    print_line(&text).context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn entries_table(entries: &[Value]) -> String {
    let field = |entry: &Value, pointer: &str| match entry.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                field(e, "/id"),
                field(e, "/event/type"),
                field(e, "/attempts"),
                field(e, "/dead_lettered_at"),
                field(e, "/reason"),
            ]
        })
        .collect();
    table(
        &["ID", "TOPIC", "ATTEMPTS", "DEAD-LETTERED", "REASON"],
        &rows,
    )
}

async fn act(
    endpoint: &Endpoint,
    subscription: &str,
    action: &str,
    ids: &[String],
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(endpoint)?;
    let url = dlq_url(&client, subscription, Some(action))?;
    let body = if ids.is_empty() {
        json!({})
    } else {
        json!({ "ids": ids })
    };
    let response = client
        .send(reqwest::Method::POST, url.clone(), |r| r.json(&body))
        .await?;
    let answer = super::expect_success(&reqwest::Method::POST, &url, response)?;
    match count_of(&answer) {
        Some(n) => print_line(&format!("{verb} {n} dead letters of {subscription}"))
            .context("cannot write to stdout")?,
        None => print_json(&answer)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The count in an answer like `{"redriven": 3}` or a bare number.
fn count_of(answer: &Value) -> Option<u64> {
    match answer {
        Value::Number(n) => n.as_u64(),
        Value::Object(map) => map.values().find_map(Value::as_u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_subscription_name() {
        let client = ApiClient::new(&Endpoint {
            url: "http://127.0.0.1:9".into(),
        })
        .unwrap();
        let url = dlq_url(&client, "workers", Some("redrive")).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/api/v1/subscriptions/workers/dlq/redrive"
        );
        let url = dlq_url(&client, "a/b", None).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/api/v1/subscriptions/a%2Fb/dlq"
        );
    }

    #[test]
    fn counts_are_read_from_common_answer_shapes() {
        assert_eq!(count_of(&json!({"redriven": 3})), Some(3));
        assert_eq!(count_of(&json!(2)), Some(2));
        assert_eq!(count_of(&json!({"status": "ok"})), None);
    }

    #[test]
    fn entries_show_id_topic_attempts_and_reason() {
        let t = entries_table(&[json!({"id":"d1","event":{"type":"task.x"},"attempts":5,
            "dead_lettered_at":"2026-01-01T00:00:00Z","reason":"nack: boom"})]);
        assert!(
            t.lines().nth(1).unwrap().starts_with("d1  task.x  5"),
            "{t}"
        );
        assert!(t.ends_with("nack: boom"), "{t}");
    }
}
