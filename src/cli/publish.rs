//! `event-router publish`: publish one event through `POST /api/v1/events`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use super::{ApiClient, Endpoint, print_json, print_line};

/// Publish one event and print its id.
///
/// The payload is any JSON value (`-` reads it from stdin; none means
/// `null`). The router answers 202 with the event id, which is printed on
/// stdout. An unreachable router or a rejected event prints the reason on
/// stderr and exits 1.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router publish task.created '{\"id\":42,\"title\":\"write docs\"}'\n  \
    event-router publish agent.failed '\"timeout\"' --priority critical --source agent-7\n  \
    echo '{\"n\":1}' | event-router publish metrics.tick - --ttl 60 --header traceparent=00-...\n  \
    event-router publish task.done --url http://router.internal:8080")]
pub struct PublishArgs {
    /// The topic (event type): dot-separated segments of [A-Za-z0-9_-].
    #[arg(value_name = "TOPIC")]
    pub topic: String,

    /// The payload as JSON; `-` reads it from stdin. Default: null.
    #[arg(value_name = "JSON_PAYLOAD")]
    pub payload: Option<String>,

    /// Priority 1..=10 or a name: lowest, low, normal, high, critical, system [default: 5].
    #[arg(short, long, value_name = "P")]
    pub priority: Option<String>,

    /// The producer, e.g. an agent name.
    #[arg(short, long, value_name = "S")]
    pub source: Option<String>,

    /// Direct addressing: the intended consumer.
    #[arg(long, value_name = "T")]
    pub target: Option<String>,

    /// Ordering/partition key.
    #[arg(short, long, value_name = "K")]
    pub key: Option<String>,

    /// Seconds after which the event expires and is no longer delivered.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,

    /// Correlation id (request/response chains).
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,

    /// A string header, `name=value` (repeatable), e.g. traceparent=00-....
    #[arg(short = 'H', long = "header", value_name = "K=V", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Print the router's whole answer as JSON instead of the event id.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("header {text:?} must be name=value")),
    }
}

impl PublishArgs {
    /// The event JSON this command publishes.
    ///
    /// # Errors
    /// A payload that is not JSON, or stdin that cannot be read.
    pub fn event(&self) -> anyhow::Result<Value> {
        event_router::topic::validate_topic(&self.topic)
            .with_context(|| format!("invalid topic {:?}", self.topic))?;
        let payload = match self.payload.as_deref() {
            None => Value::Null,
            Some("-") => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the payload from stdin")?;
                parse_payload(&text)?
            }
            Some(text) => parse_payload(text)?,
        };
        let mut event = Map::new();
        event.insert("type".into(), json!(self.topic));
        event.insert("payload".into(), payload);
        if let Some(p) = &self.priority {
            let value = p.parse::<u8>().map_or_else(|_| json!(p), |n| json!(n));
            event.insert("priority".into(), value);
        }
        let optional = [
            ("source", &self.source),
            ("target", &self.target),
            ("key", &self.key),
            ("correlation_id", &self.correlation_id),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                event.insert(name.into(), json!(v));
            }
        }
        if let Some(ttl) = self.ttl {
            event.insert("ttl".into(), json!(ttl));
        }
        if !self.headers.is_empty() {
            let headers: BTreeMap<_, _> = self.headers.iter().cloned().collect();
            event.insert("headers".into(), json!(headers));
        }
        Ok(Value::Object(event))
    }
}

fn parse_payload(text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(e) => bail!(
            "the payload is not valid JSON ({e}); quote plain text as a JSON string, e.g. '\"hello\"'"
        ),
    }
}

/// Publishes the event and prints its id.
///
/// # Errors
/// Bad arguments, an unreachable router, or the router's rejection.
pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let client = ApiClient::new(&args.endpoint)?;
    let event = args.event()?;
    let receipt = client.post("/api/v1/events", &event).await?;
    if args.json {
        print_json(&receipt)?;
        return Ok(ExitCode::SUCCESS);
    }
    let id = receipt
        .get("event_id")
        .and_then(Value::as_str)
        .context("the router's answer has no event_id")?;
    if let Some(status) = receipt.get("status").and_then(Value::as_str)
        && status != "published"
    {
        eprintln!("note: the router reports the event as {status}");
    }
    print_line(id).context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        publish: PublishArgs,
    }

    fn event(argv: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["publish"];
        all.extend_from_slice(argv);
        Wrapper::try_parse_from(all)?.publish.event()
    }

    #[test]
    fn flags_map_to_event_fields() {
        let e = event(&[
            "task.created",
            r#"{"id":1}"#,
            "--priority",
            "critical",
            "--source",
            "a1",
            "--ttl",
            "30",
            "-H",
            "traceparent=00-x",
            "--key",
            "k",
        ])
        .unwrap();
        assert_eq!(
            e,
            json!({"type":"task.created","payload":{"id":1},"priority":"critical","source":"a1",
                   "ttl":30,"headers":{"traceparent":"00-x"},"key":"k"})
        );
        let e = event(&["t", "--priority", "7"]).unwrap();
        assert_eq!(e["priority"], json!(7));
        assert_eq!(e["payload"], Value::Null);
    }

    #[test]
    fn bad_payload_and_topic_are_explained() {
        let err = event(&["task.created", "hello"]).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = event(&["bad topic"]).unwrap_err().to_string();
        assert!(err.contains("invalid topic"), "{err}");
        assert!(
            Wrapper::try_parse_from(["publish", "t", "-H", "novalue"]).is_err(),
            "header without = must be rejected"
        );
    }
}
