//! `event-router replay`: queue retained events from history into a durable
//! subscription for redelivery, over the HTTP API.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use reqwest::{Method, Url};
use serde_json::{Map, Value, json};

use super::{ApiClient, Endpoint, print_line};

/// Redeliver retained events into a durable subscription.
///
/// Reads the router's retained history (by topic pattern, filter and time
/// range on each event's `time`) and queues the matching events into
/// SUBSCRIPTION, oldest first, as new deliveries with fresh attempts. The
/// subscription's own topics and filter are not applied again: the
/// selection here decides. Events older than the history retention are gone
/// and cannot be replayed.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router replay workers --topic 'task.*' --from 2026-11-23T09:00:00Z\n  \
    event-router replay workers --topic task.created --filter priority:gte:7 --limit 500\n  \
    event-router replay audit                     # every retained event")]
pub struct ReplayArgs {
    /// The durable subscription to queue the events into.
    pub subscription: String,

    /// Topic pattern of the events to replay (repeatable); every topic when absent.
    #[arg(long = "topic", value_name = "PATTERN")]
    pub topics: Vec<String>,

    /// Content filter: JSON or field:op:value (repeatable; all must hold).
    #[arg(long = "filter", value_name = "JSON_OR_SHORTHAND")]
    pub filters: Vec<String>,

    /// Only events whose `time` is at or after this RFC 3339 timestamp.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,

    /// Only events whose `time` is before this RFC 3339 timestamp.
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,

    /// Most events to queue, oldest first (default: every matching retained event).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

impl ReplayArgs {
    /// The `POST .../replay` body.
    fn body(&self) -> Value {
        let mut body = Map::new();
        if !self.topics.is_empty() {
            body.insert("topics".into(), json!(self.topics));
        }
        if !self.filters.is_empty() {
            body.insert("filter".into(), json!(self.filters));
        }
        for (key, value) in [("from", &self.from), ("to", &self.to)] {
            if let Some(value) = value {
                body.insert(key.into(), json!(value));
            }
        }
        if let Some(limit) = self.limit {
            body.insert("limit".into(), json!(limit));
        }
        Value::Object(body)
    }
}

/// `/api/v1/subscriptions/{name}/replay`, with the name encoded.
fn replay_url(client: &ApiClient, subscription: &str) -> anyhow::Result<Url> {
    let mut url = client.url("/api/v1/subscriptions");
    url.path_segments_mut()
        .map_err(|()| anyhow!("--url {} cannot take a path", client.base()))?
        .push(subscription)
        .push("replay");
    Ok(url)
}

/// Runs the replay and prints how many events were queued.
///
/// # Errors
/// An unreachable router, or the router's error (an unknown subscription,
/// an invalid pattern, filter or timestamp).
pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let client = ApiClient::new(&args.endpoint)?;
    let url = replay_url(&client, &args.subscription)?;
    let body = args.body();
    let response = client
        .send(Method::POST, url.clone(), |r| r.json(&body))
        .await?;
    let answer = super::expect_success(&Method::POST, &url, response)?;
    let count = answer
        .get("count")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("the router answered without a count: {answer}"))?;
    print_line(&format!(
        "queued {count} events into {} for redelivery",
        args.subscription
    ))
    .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ReplayArgs,
    }

    #[test]
    fn the_body_holds_only_what_was_given() {
        let cmd = Cmd::parse_from(["replay", "workers"]);
        assert_eq!(cmd.args.body(), json!({}));
        let cmd = Cmd::parse_from([
            "replay",
            "workers",
            "--topic",
            "task.*",
            "--topic",
            "agent.#",
            "--filter",
            "priority:gte:7",
            "--from",
            "2026-11-23T09:00:00Z",
            "--limit",
            "5",
        ]);
        assert_eq!(
            cmd.args.body(),
            json!({"topics": ["task.*", "agent.#"], "filter": ["priority:gte:7"],
                   "from": "2026-11-23T09:00:00Z", "limit": 5})
        );
    }

    #[test]
    fn a_zero_limit_is_refused_by_the_parser() {
        assert!(Cmd::try_parse_from(["replay", "w", "--limit", "0"]).is_err());
    }

    #[test]
    fn the_url_encodes_the_subscription_name() {
        let client = ApiClient::new(&Endpoint {
            url: "http://127.0.0.1:9".into(),
        })
        .unwrap();
        assert_eq!(
            replay_url(&client, "a/b").unwrap().as_str(),
            "http://127.0.0.1:9/api/v1/subscriptions/a%2Fb/replay"
        );
    }
}
