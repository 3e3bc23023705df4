//! `event-router purge`: delete old events from retained history over the
//! HTTP API (`POST /api/v1/events/purge`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{ApiClient, Endpoint, print_line};

/// Delete retained events older than a given age from history.
///
/// Deletes, from the router's retained history (what `export`, `replay`
/// and SSE resume read), every event whose `time` is older than
/// --older-than, optionally only those matching topic patterns and a
/// filter. Durable subscriptions keep the events already queued for them,
/// and dead letters are untouched (see `dlq purge`). Nothing is deleted
/// without --confirm.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router purge --older-than 30d --confirm\n  \
    event-router purge --older-than 12h --topic 'debug.#' --confirm\n  \
    event-router export --to 2026-11-01T00:00:00Z --output archive.jsonl   # keep a copy first")]
pub struct PurgeArgs {
    /// Delete events whose `time` is older than this age (e.g. 30d, 12h, 90m).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Duration,

    /// Really delete; without it the command refuses and deletes nothing.
    #[arg(long)]
    pub confirm: bool,

    /// Only events on topics matching PATTERN (repeatable); every topic when absent.
    #[arg(long = "topic", value_name = "PATTERN")]
    pub topics: Vec<String>,

    /// Only events matching a content filter: JSON or field:op:value (repeatable; all must hold).
    #[arg(long = "filter", value_name = "JSON_OR_SHORTHAND")]
    pub filters: Vec<String>,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

fn parse_age(text: &str) -> Result<Duration, String> {
    event_router::duration::parse_duration(text)
}

impl PurgeArgs {
    /// The `POST /api/v1/events/purge` body for a cutoff of `before`.
    fn body(&self, before: Timestamp) -> Value {
        let mut body = Map::new();
        body.insert("before".into(), json!(before.to_string()));
        if !self.topics.is_empty() {
            body.insert("topics".into(), json!(self.topics));
        }
        if !self.filters.is_empty() {
            body.insert("filter".into(), json!(self.filters));
        }
        Value::Object(body)
    }
}

/// The instant `age` before `now`.
fn cutoff(now: Timestamp, age: Duration) -> anyhow::Result<Timestamp> {
    let age = jiff::SignedDuration::try_from(age).context("--older-than is out of range")?;
    now.checked_sub(age)
        .map_err(|_| anyhow!("--older-than reaches before the earliest time"))
}

/// Purges and prints how many events were deleted.
///
/// # Errors
/// Without --confirm; an unreachable router, or the router's error.
pub async fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let before = cutoff(Timestamp::now(), args.older_than)?;
    let age = event_router::duration::format_duration(args.older_than);
    if !args.confirm {
        bail!(
            "refusing to purge without --confirm: this deletes every retained event \
             older than {age} (time before {before}){}",
            if args.topics.is_empty() && args.filters.is_empty() {
                ""
            } else {
                " that matches --topic/--filter"
            }
        );
    }
    let client = ApiClient::new(&args.endpoint)?;
    let answer = client
        .post("/api/v1/events/purge", &args.body(before))
        .await?;
    let count = answer
        .get("count")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("the router answered without a count: {answer}"))?;
    print_line(&format!(
        "purged {count} events older than {age} (before {before}) from history"
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
        args: PurgeArgs,
    }

    #[test]
    fn older_than_is_a_duration_and_sets_the_cutoff() {
        let cmd = Cmd::parse_from(["x", "--older-than", "30d", "--topic", "a.#"]);
        assert_eq!(cmd.args.older_than, Duration::from_secs(30 * 86400));
        assert!(!cmd.args.confirm);
        let now: Timestamp = "2026-03-31T00:00:00Z".parse().unwrap();
        let before = cutoff(now, cmd.args.older_than).unwrap();
        assert_eq!(before.to_string(), "2026-03-01T00:00:00Z");
        let body = cmd.args.body(before);
        assert_eq!(body["before"], "2026-03-01T00:00:00Z");
        assert_eq!(body["topics"], json!(["a.#"]));
        assert!(Cmd::try_parse_from(["x", "--older-than", "soon"]).is_err());
        assert!(Cmd::try_parse_from(["x", "--confirm"]).is_err());
    }
}
