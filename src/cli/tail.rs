//! `event-router tail`: subscribe over the WebSocket protocol (`/ws`, v2
//! frames) and print events as they arrive.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use event_router::filter::Filter;
use event_router::topic::Pattern;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::{ApiClient, Endpoint, print_line};

/// How long `tail` waits for the WebSocket handshake and the subscribe reply.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The request id of our one subscribe frame.
const SUBSCRIBE_ID: &str = "1";

/// Print events that match topic patterns and a filter, as they arrive.
///
/// Subscribes over the WebSocket API. Without --group the subscription is
/// live: events published from now on, at most once. With --group it joins
/// that durable subscription (created on first use) as a competing consumer
/// and acks each event after printing it. Each event is one line:
/// `time  priority  topic  source  payload` (or the event as JSON with
/// --json). Once subscribed, a line `subscribed ...` goes to stderr, as do
/// overflow notices. Ctrl-C stops cleanly (exit 0); a dropped connection
/// is an error (exit 1).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Patterns: `*` matches one segment, `#` zero or more, `pattern:REGEX` a regex.\n\
    Filters: JSON ('{\"payload.n\":{\"$gt\":5}}') or field:op:value shorthand (priority:gte:7);\n\
    several --filter flags must all hold. `type:PATTERN` subscribes to a topic pattern.\n\n\
    Examples:\n  \
    event-router tail                                  # everything\n  \
    event-router tail 'task.*' 'agent.#' --filter priority:gte:7\n  \
    event-router tail 'task.#' --group workers --json | jq .payload\n  \
    event-router tail audit.# -n 1                     # exit after one event\n  \
    event-router monitor --filter 'type:user.*'         # monitor is the same command"
)]
pub struct TailArgs {
    /// Topic patterns to subscribe to [default: #, everything].
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Content filter: JSON or field:op:value (repeatable; all must hold).
    #[arg(long = "filter", value_name = "JSON_OR_SHORTHAND")]
    pub filters: Vec<String>,

    /// Consume durable subscription G (created if absent); ack after printing.
    #[arg(short, long, value_name = "G")]
    pub group: Option<String>,

    /// With --group: most deliveries held un-acked at once [default: the subscription's].
    #[arg(long, value_name = "N", requires = "group")]
    pub max_in_flight: Option<u32>,

    /// Print each event as one line of JSON.
    #[arg(long)]
    pub json: bool,

    /// Exit 0 after printing N events.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    #[command(flatten)]
    pub endpoint: Endpoint,
}

impl TailArgs {
    /// The subscribe frame this command sends.
    ///
    /// # Errors
    /// An invalid pattern or filter, named.
    pub fn subscribe_frame(&self) -> anyhow::Result<Value> {
        let mut patterns = self.patterns.clone();
        let typed: Vec<String> = self
            .filters
            .iter()
            .filter_map(|f| topic_filter(f))
            .collect();
        if !patterns.is_empty() && !typed.is_empty() {
            bail!(
                "give topic patterns either as arguments or as --filter type:PATTERN, not both \
                 (several patterns match any of them, so a type filter would widen them)"
            );
        }
        patterns.extend(typed);
        if patterns.is_empty() {
            patterns.push("#".to_string());
        }
        for p in &patterns {
            Pattern::parse(p).with_context(|| format!("invalid pattern {p:?}"))?;
        }
        let mut frame = json!({"op": "subscribe", "id": SUBSCRIBE_ID, "topics": patterns});
        if let Some(filter) = self.filter()? {
            frame["filter"] = filter;
        }
        if let Some(group) = &self.group {
            frame["group"] = json!(group);
        }
        if let Some(n) = self.max_in_flight {
            frame["max_in_flight"] = json!(n);
        }
        Ok(frame)
    }

    /// The filters as one JSON filter document (`$and` of several).
    fn filter(&self) -> anyhow::Result<Option<Value>> {
        let mut docs = self
            .filters
            .iter()
            .filter(|text| topic_filter(text).is_none())
            .map(|text| parse_filter(text))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(match docs.len() {
            0 => None,
            1 => docs.pop(),
            _ => Some(json!({ "$and": docs })),
        })
    }
}

/// The topic pattern of a `type:PATTERN` (or `topic:PATTERN`) filter, the
/// form of the v2 design's `event-router monitor --filter "type:user.*"`:
/// it subscribes to the pattern instead of filtering on content.
fn topic_filter(text: &str) -> Option<String> {
    let (field, pattern) = text.trim().split_once(':')?;
    let topic_field = matches!(field.trim(), "type" | "topic");
    (topic_field && !pattern.contains(':') && Pattern::parse(pattern.trim()).is_ok())
        .then(|| pattern.trim().to_string())
}

/// A filter given as JSON or as `field:op:value` shorthand, checked locally
/// so that mistakes are reported before connecting.
fn parse_filter(text: &str) -> anyhow::Result<Value> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let doc: Value = serde_json::from_str(trimmed)
            .with_context(|| format!("--filter {text:?} is not valid JSON"))?;
        Filter::compile(&doc).with_context(|| format!("invalid --filter {text:?}"))?;
        Ok(doc)
    } else {
        let filter = Filter::parse_shorthand(trimmed)
            .with_context(|| format!("invalid --filter {text:?}"))?;
        Ok(filter.source().clone())
    }
}

/// One event as a line: `time  priority  topic  source  payload`.
pub fn format_event(event: &Value) -> String {
    let text = |name: &str| match event.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    };
    let payload = event
        .get("payload")
        .or_else(|| event.get("data"))
        .unwrap_or(&Value::Null);
    format!(
        "{}  {}  {}  {}  {}",
        text("time"),
        text("priority"),
        text("type"),
        text("source"),
        payload
    )
}

/// Subscribes and prints until Ctrl-C, `--count`, or a dropped connection.
///
/// # Errors
/// Invalid arguments, an unreachable router, a rejected subscription, or a
/// connection that drops.
pub async fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let frame = args.subscribe_frame()?;
    let client = ApiClient::new(&args.endpoint)?;
    let mut stop = super::shutdown_signal().await;
    let url = client.ws_url("/ws");
    let (socket, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .map_err(|_| anyhow!("no WebSocket handshake from {url} within {HANDSHAKE_TIMEOUT:?}"))?
    .map_err(|e| {
        anyhow!(
            "cannot reach event-router at {url}: {e} (is `event-router serve` running there? \
             set --url or EVENT_ROUTER_URL)"
        )
    })?;
    let (mut sink, mut stream) = socket.split();
    sink.send(Message::text(frame.to_string()))
        .await
        .context("cannot send the subscribe frame")?;
    let mut session = Session::new(&args, &url);
    let subscribe_deadline = tokio::time::sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(subscribe_deadline);
    loop {
        let message = tokio::select! {
            () = stop.as_mut() => {
                // Best effort: the process exits either way.
                let _ = sink.send(Message::Close(None)).await;
                return Ok(ExitCode::SUCCESS);
            }
            () = &mut subscribe_deadline, if !session.subscribed => {
                bail!("no reply to the subscribe request from {url} within {HANDSHAKE_TIMEOUT:?}");
            }
            message = stream.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("{}", closed_message(&url, frame)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("the connection to {url} failed: {e}"),
            None => bail!("the connection to {url} dropped"),
        };
        let frame: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{}", unreadable_frame(text.as_str(), &e));
                continue;
            }
        };
        match session.handle(&frame)? {
            Step::Continue => {}
            Step::Ack {
                delivery_id,
                subscription_id,
            } => {
                let ack = json!({
                    "op": "ack",
                    "delivery_id": delivery_id,
                    "subscription_id": subscription_id,
                });
                sink.send(Message::text(ack.to_string()))
                    .await
                    .context("cannot send an ack")?;
            }
            Step::Stop => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(ExitCode::SUCCESS);
            }
        }
        if session.done() {
            let _ = sink.send(Message::Close(None)).await;
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn closed_message(url: &str, frame: Option<CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => format!(
            "the router closed the connection to {url} (code {}: {})",
            u16::from(f.code),
            f.reason
        ),
        Some(f) => format!(
            "the router closed the connection to {url} (code {})",
            u16::from(f.code)
        ),
        None => format!("the router closed the connection to {url}"),
    }
}

/// What to do after a frame.
#[derive(Debug, PartialEq)]
enum Step {
    Continue,
    /// Ack this delivery (durable subscriptions, after printing).
    Ack {
        delivery_id: String,
        subscription_id: Option<String>,
    },
    /// stdout went away (`| head`): stop quietly.
    Stop,
}

/// The state of one `tail` connection: frames in, printed lines and acks out.
struct Session {
    json: bool,
    ack: bool,
    count: Option<u64>,
    printed: u64,
    subscribed: bool,
    description: String,
}

impl Session {
    fn new(args: &TailArgs, url: &str) -> Session {
        let patterns = if args.patterns.is_empty() {
            "#".to_string()
        } else {
            args.patterns.join(" ")
        };
        let mut description = format!("{patterns} at {url}");
        if let Some(g) = &args.group {
            description.push_str(&format!(" as group {g}"));
        }
        Session {
            json: args.json,
            ack: args.group.is_some(),
            count: args.count,
            printed: 0,
            subscribed: false,
            description,
        }
    }

    fn done(&self) -> bool {
        self.count.is_some_and(|n| self.printed >= n)
    }

    fn handle(&mut self, frame: &Value) -> anyhow::Result<Step> {
        let op = frame.get("op").and_then(Value::as_str).unwrap_or_default();
        let is_ours = frame.get("id").and_then(Value::as_str) == Some(SUBSCRIBE_ID);
        match op {
            "ok" if is_ours => {
                self.subscribed = true;
                let id = frame
                    .get("subscription_id")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                eprintln!("subscribed to {} (subscription {id})", self.description);
            }
            "error" if is_ours && !self.subscribed => {
                bail!("the router refused the subscription: {}", error_text(frame));
            }
            "error" => eprintln!("router error: {}", error_text(frame)),
            "overflow" => {
                let dropped = frame.get("dropped").map_or("?".into(), Value::to_string);
                eprintln!(
                    "overflow: the router dropped {dropped} live events this client was too slow to take"
                );
            }
            "event" => return self.print_event(frame),
            _ => tracing::debug!(%op, "ignoring frame"),
        }
        Ok(Step::Continue)
    }

    fn print_event(&mut self, frame: &Value) -> anyhow::Result<Step> {
        let Some(event) = frame.get("event") else {
            let delivery = frame.get("delivery_id").and_then(Value::as_str);
            eprintln!(
                "error: delivery {} carries no event (not printed)",
                delivery.unwrap_or("?")
            );
            return Ok(Step::Continue);
        };
        let line = if self.json {
            event.to_string()
        } else {
            format_event(event)
        };
        match print_line(&line) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Step::Stop),
            Err(e) => return Err(e).context("cannot write to stdout"),
        }
        self.printed += 1;
        let delivery = frame.get("delivery_id").and_then(Value::as_str);
        Ok(match delivery {
            Some(id) if self.ack => Step::Ack {
                delivery_id: id.to_string(),
                subscription_id: frame
                    .get("subscription_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
            _ => Step::Continue,
        })
    }
}

/// The error line for a frame that does not parse (a delivery nested too
/// deep for the JSON parser, say), naming the delivery and event when the
/// text shows them, so that nothing is dropped without a word. A durable
/// delivery is not acked and comes back (or is dead-lettered).
fn unreadable_frame(text: &str, e: &serde_json::Error) -> String {
    let delivery = text_field(text, "\"delivery_id\":\"");
    let event = text_field(text, "\"event\":{\"id\":\"");
    match (delivery, event) {
        (None, None) => format!("error: cannot read a frame from the router (not printed): {e}"),
        (delivery, event) => format!(
            "error: cannot read delivery {} of event {} (not printed, not acked): {e}",
            delivery.unwrap_or("?"),
            event.unwrap_or("?"),
        ),
    }
}

/// The string value right after `key` in raw JSON text (ids hold no
/// quotes or escapes), at most 200 bytes of it.
fn text_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = text.get(start..)?;
    let end = rest.find('"')?;
    rest.get(..end).filter(|v| !v.is_empty() && v.len() <= 200)
}

fn error_text(frame: &Value) -> String {
    let code = frame.get("code").and_then(Value::as_str).unwrap_or("error");
    let message = frame.get("message").and_then(Value::as_str).unwrap_or("");
    format!("{code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        tail: TailArgs,
    }

    fn args(argv: &[&str]) -> TailArgs {
        let mut all = vec!["tail"];
        all.extend_from_slice(argv);
        Wrapper::try_parse_from(all).unwrap().tail
    }

    #[test]
    fn a_type_filter_subscribes_to_the_topic_pattern_as_in_the_designs_monitor_example() {
        let frame = args(&["--filter", "type:user.*", "--filter", "priority:gte:7"])
            .subscribe_frame()
            .unwrap();
        assert_eq!(frame["topics"], json!(["user.*"]));
        assert_eq!(frame["filter"], json!({"priority": {"$gte": 7}}));
        let frame = args(&["--filter", "type:eq:user.created"])
            .subscribe_frame()
            .unwrap();
        assert_eq!(
            frame["topics"],
            json!(["#"]),
            "a full shorthand stays a filter"
        );
    }

    #[test]
    fn subscribe_frame_carries_patterns_group_and_filters() {
        let frame = args(&[
            "task.*",
            "--group",
            "workers",
            "--filter",
            r#"{"priority":{"$gte":7}}"#,
            "--filter",
            r#"{"source":"a"}"#,
        ])
        .subscribe_frame()
        .unwrap();
        assert_eq!(
            frame,
            json!({"op":"subscribe","id":"1","topics":["task.*"],"group":"workers",
                   "filter":{"$and":[{"priority":{"$gte":7}},{"source":"a"}]}})
        );
        let frame = args(&[]).subscribe_frame().unwrap();
        assert_eq!(frame["topics"], json!(["#"]));
        assert!(frame.get("filter").is_none() && frame.get("group").is_none());
    }

    #[test]
    fn shorthand_filters_become_filter_documents() {
        let frame = args(&["--filter", "priority:gt:5"])
            .subscribe_frame()
            .unwrap();
        assert_eq!(frame["filter"], json!({"priority": {"$gt": 5}}));
    }

    #[test]
    fn bad_pattern_or_filter_json_is_reported_before_connecting() {
        let err = args(&["task..x"]).subscribe_frame().unwrap_err();
        assert!(format!("{err:#}").contains("task..x"), "{err:#}");
        let err = args(&["--filter", "{nope"]).subscribe_frame().unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
    }

    #[test]
    fn event_line_has_time_priority_topic_source_payload() {
        let event = json!({"id":"e1","type":"task.created","time":"2026-01-01T00:00:00Z",
                           "priority":7,"payload":{"a":[1,2]}});
        assert_eq!(
            format_event(&event),
            r#"2026-01-01T00:00:00Z  7  task.created  -  {"a":[1,2]}"#
        );
    }

    #[test]
    fn durable_events_are_acked_and_subscribe_errors_fail() {
        let mut s = Session::new(&args(&["--group", "g"]), "ws://x/ws");
        s.handle(&json!({"op":"ok","id":"1","subscription_id":"s"}))
            .unwrap();
        assert!(s.subscribed);
        let mut live = Session::new(&args(&[]), "ws://x/ws");
        let err = live
            .handle(&json!({"op":"error","id":"1","code":"invalid_filter","message":"bad"}))
            .unwrap_err();
        assert!(err.to_string().contains("invalid_filter: bad"), "{err}");
    }
}
