//! `event-router export`: write retained events, selected by time range,
//! topics and filter, as JSON lines or CloudEvents, read page by page from
//! the HTTP API (`GET /api/v1/events`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use event_router::event::Event;
use event_router::server::cloudevents;
use serde_json::Value;

use super::{ApiClient, Endpoint};

/// Events asked for per page (the API's largest page is 10 000).
const PAGE: u64 = 1000;
/// Least time between two progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How each exported event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One event per line in the router's JSON envelope (`publish` reads it back).
    Json,
    /// One structured-mode CloudEvent 1.0 per line (`specversion`, `data`, extensions).
    Cloudevents,
}

/// Write retained events to a file or stdout, one JSON object per line.
///
/// Reads the router's retained history (oldest first) by topic pattern,
/// content filter and time range on each event's `time`. Progress (events
/// written so far) goes to stderr about once a second and when done, so
/// stdout carries only events. Only events still within the history
/// retention can be exported.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router export --format json --output events.json\n  \
    event-router export --topic 'task.*' --from 2026-11-01T00:00:00Z --to 2026-11-02T00:00:00Z\n  \
    event-router export --filter priority:gte:7 --format cloudevents | gzip > urgent.jsonl.gz")]
pub struct ExportArgs {
    /// Topic pattern of the events to export (repeatable); every topic when absent.
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

    /// Output format: json (our envelope) or cloudevents, one object per line.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,

    /// Write to FILE instead of stdout (created or truncated).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stop after N events [default: every matching retained event].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

impl ExportArgs {
    /// The query of one page, starting after `after`.
    fn query(&self, after: Option<&str>, page: u64) -> Vec<(&'static str, String)> {
        let mut query = vec![("limit", page.to_string())];
        query.extend(self.topics.iter().map(|t| ("topic", t.clone())));
        query.extend(self.filters.iter().map(|f| ("filter", f.clone())));
        for (key, value) in [("from", &self.from), ("to", &self.to)] {
            if let Some(value) = value {
                query.push((key, value.clone()));
            }
        }
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        query
    }
}

/// One exported line for `event` in `format`.
///
/// # Errors
/// An event the router answered with that is not an event.
fn line(event: Value, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => event.to_string(),
        Format::Cloudevents => {
            let event: Event = serde_json::from_value(event)
                .context("the router answered with an entry that is not an event")?;
            cloudevents::to_structured(&event).to_string()
        }
    })
}

/// Reads every page and writes the events.
///
/// # Errors
/// An unreachable router, the router's error (an invalid pattern, filter
/// or timestamp), or a file that cannot be written.
pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let client = ApiClient::new(&args.endpoint)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let target = args
        .output
        .as_ref()
        .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let mut written = 0u64;
    let mut after: Option<String> = None;
    let mut last_progress = Instant::now();
    loop {
        let page = args.limit.map_or(PAGE, |n| (n - written).min(PAGE));
        let mut url = client.url("/api/v1/events");
        url.query_pairs_mut()
            .extend_pairs(args.query(after.as_deref(), page));
        let answer = client.get_url(url).await?;
        let events = match answer.get("events") {
            Some(Value::Array(events)) => events.clone(),
            _ => return Err(anyhow!("the router answered without events: {answer}")),
        };
        for entry in &events {
            let event = entry.get("event").cloned().unwrap_or(Value::Null);
            writeln!(out, "{}", line(event, args.format)?)
                .with_context(|| format!("cannot write to {target}"))?;
        }
        written += events.len() as u64;
        after = answer
            .get("next_after")
            .and_then(Value::as_str)
            .map(str::to_string);
        let done = (events.len() as u64) < page
            || after.is_none()
            || args.limit.is_some_and(|n| written >= n);
        if done {
            break;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("exported {written} events so far");
            last_progress = Instant::now();
        }
    }
    out.flush()
        .with_context(|| format!("cannot write to {target}"))?;
    eprintln!("exported {written} events to {target}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ExportArgs,
    }

    #[test]
    fn query_carries_the_selection_and_the_cursor() {
        let cmd = Cmd::parse_from([
            "x",
            "--topic",
            "a.*",
            "--topic",
            "b",
            "--filter",
            "priority:gt:5",
            "--from",
            "2026-01-01T00:00:00Z",
        ]);
        let q = cmd.args.query(Some("7"), 50);
        assert!(q.contains(&("limit", "50".into())));
        assert!(q.contains(&("topic", "a.*".into())) && q.contains(&("topic", "b".into())));
        assert!(q.contains(&("filter", "priority:gt:5".into())));
        assert!(q.contains(&("from", "2026-01-01T00:00:00Z".into())));
        assert!(q.contains(&("after", "7".into())));
        assert_eq!(cmd.args.format, Format::Json);
    }

    #[test]
    fn cloudevents_lines_carry_specversion_and_data() {
        let event = json!({"id":"e1","type":"a.b","time":"2026-01-01T00:00:00Z","priority":5,
                           "payload":{"n":1}});
        let v: Value = serde_json::from_str(&line(event, Format::Cloudevents).unwrap()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "a.b");
        assert_eq!(v["data"], json!({"n":1}));
        assert!(line(json!(3), Format::Cloudevents).is_err());
    }
}
