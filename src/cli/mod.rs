//! The subcommands of the `event-router` binary, one module each.
//!
//! `serve` runs a router; the others (`publish`, `tail`/`monitor`, `status`,
//! `dlq`, `replay`, `export`, `purge`) are
//! clients of a running router's HTTP and WebSocket API (`docs/protocol.md`),
//! reached through [`ApiClient`] at `--url`.

pub mod apply;
pub mod auth;
pub mod bench;
pub mod crd;
pub mod dlq;
pub mod export;
pub mod operator;
pub mod publish;
pub mod purge;
pub mod replay;
pub mod serve;
pub mod status;
pub mod tail;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Environment variable holding the API key or JWT the client commands send
/// (`Authorization: Bearer`, or `?token=` on WebSocket URLs).
pub const TOKEN_ENV: &str = "EVENT_ROUTER_TOKEN";
/// Default `--url` of the client commands.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// How long a client waits for a TCP connection to the router.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a whole HTTP exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a client command finds the router.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoint {
    /// Base URL of the router (http:// only; the WebSocket URL is derived from it).
    #[arg(long, env = "EVENT_ROUTER_URL", default_value = DEFAULT_URL)]
    pub url: String,
}

/// A status code and body the router answered with.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as JSON (`Value::Null` when empty, a string when not JSON).
    pub body: Value,
}

/// A thin HTTP client of the router's API that turns transport failures and
/// `{"error":{"code","message"}}` answers into readable errors.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    /// Bearer token from `EVENT_ROUTER_TOKEN` (docs/security.md).
    token: Option<String>,
}

impl ApiClient {
    /// A client of the router at `endpoint`.
    ///
    /// # Errors
    /// When the URL is not an `http://` URL.
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<ApiClient> {
        let base = Url::parse(&endpoint.url)
            .with_context(|| format!("invalid --url {:?}", endpoint.url))?;
        if base.scheme() != "http" {
            bail!(
                "invalid --url {:?}: only http:// URLs are supported",
                endpoint.url
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty());
        Ok(ApiClient { http, base, token })
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `path` (which starts with `/`) under the base URL.
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// The WebSocket URL of `path` (`ws://` for `http://`), with the
    /// bearer token as the `token` query parameter when one is set.
    pub fn ws_url(&self, path: &str) -> String {
        let mut url = self.url(path);
        if let Some(token) = &self.token {
            url.query_pairs_mut().append_pair("token", token);
        }
        let url = url.to_string();
        match url.strip_prefix("http") {
            Some(rest) => format!("ws{rest}"),
            None => url,
        }
    }

    /// Sends a request and returns whatever status the router answered.
    ///
    /// # Errors
    /// When the router cannot be reached or the exchange fails.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<Response> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let request = build(request);
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&method, &url, &e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&method, &url, &e))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Response { status, body })
    }

    /// `GET path`, expecting a 2xx JSON answer.
    ///
    /// # Errors
    /// Unreachable router, or the router's error code and message.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_url(self.url(path)).await
    }

    /// `GET url`, expecting a 2xx JSON answer.
    ///
    /// # Errors
    /// Unreachable router, or the router's error code and message.
    pub async fn get_url(&self, url: Url) -> anyhow::Result<Value> {
        let response = self.send(Method::GET, url.clone(), |r| r).await?;
        expect_success(&Method::GET, &url, response)
    }

    /// `POST path` with a JSON body, expecting a 2xx JSON answer.
    ///
    /// # Errors
    /// Unreachable router, or the router's error code and message.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = self.url(path);
        let response = self
            .send(Method::POST, url.clone(), |r| r.json(body))
            .await?;
        expect_success(&Method::POST, &url, response)
    }

    fn transport_error(&self, method: &Method, url: &Url, error: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(error);
        if error.is_connect() {
            anyhow!(
                "cannot reach event-router at {}: {cause} (is `event-router serve` running there? \
                 set --url or EVENT_ROUTER_URL)",
                self.base
            )
        } else if error.is_timeout() {
            anyhow!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}")
        } else {
            anyhow!("{method} {url} failed: {cause}")
        }
    }
}

/// The innermost cause of an error, which for network errors is the one
/// that says what happened ("Connection refused").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// The body of a 2xx answer, or an error with the router's code and message.
///
/// # Errors
/// For any non-2xx status.
pub fn expect_success(method: &Method, url: &Url, response: Response) -> anyhow::Result<Value> {
    if response.status.is_success() {
        return Ok(response.body);
    }
    Err(anyhow!(
        "the router answered {method} {} with {}",
        url.path(),
        describe_error(response.status, &response.body)
    ))
}

/// `404 Not Found: unknown_subscription: ...` from an error answer in the
/// `{"error":{"code","message"}}` shape, or the raw body otherwise.
pub fn describe_error(status: StatusCode, body: &Value) -> String {
    let code = body.pointer("/error/code").and_then(Value::as_str);
    let message = body.pointer("/error/message").and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => format!("{status}: {code}: {message}"),
        (Some(code), None) => format!("{status}: {code}"),
        _ => match body {
            Value::Null => status.to_string(),
            Value::String(text) => format!("{status}: {}", truncate(text, 500)),
            other => format!("{status}: {}", truncate(&other.to_string(), 500)),
        },
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// A future that completes on SIGINT or SIGTERM, with the handlers
/// installed before this returns.
///
/// [`event_router::shutdown::signal`] installs them on its first poll; until
/// then a signal has its default effect (the process dies with status 143).
/// Polling once here closes that window, so a caller can announce itself
/// (`listening on ...`) knowing that a signal from then on is handled.
pub async fn shutdown_signal() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut signal = Box::pin(event_router::shutdown::signal());
    if futures::poll!(signal.as_mut()).is_ready() {
        // A completed future must not be polled again.
        return Box::pin(std::future::ready(()));
    }
    signal
}

/// Logging for client commands: warnings and errors on stderr, so that
/// stdout carries only the command's output. `RUST_LOG` overrides the level.
pub fn init_client_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only if a subscriber is already set, which then keeps working.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Writes one line to stdout and flushes it, so that a reader on a pipe
/// sees it at once.
///
/// # Errors
/// The I/O error; `BrokenPipe` when the reader went away (`| head`).
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Prints `value` as pretty JSON on stdout.
///
/// # Errors
/// When stdout is closed.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot format JSON")?;
    print_line(&text).context("cannot write to stdout")
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.iter().map(|r| line(r.clone())));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client(url: &str) -> ApiClient {
        ApiClient::new(&Endpoint { url: url.into() }).unwrap()
    }

    #[test]
    fn urls_join_under_the_base_path_and_map_to_websocket() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.url("/api/v1/events").as_str(),
            "http://127.0.0.1:8080/api/v1/events"
        );
        assert_eq!(c.ws_url("/ws"), "ws://127.0.0.1:8080/ws");
        let c = client("http://host:1/prefix/");
        assert_eq!(c.url("/health").as_str(), "http://host:1/prefix/health");
    }

    #[test]
    fn non_http_urls_are_rejected() {
        let err = ApiClient::new(&Endpoint {
            url: "ftp://x".into(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn error_answers_show_code_and_message() {
        let body = json!({"error": {"code": "invalid_event", "message": "field type: missing"}});
        assert_eq!(
            describe_error(StatusCode::BAD_REQUEST, &body),
            "400 Bad Request: invalid_event: field type: missing"
        );
        assert_eq!(
            describe_error(StatusCode::BAD_GATEWAY, &Value::String("oops".into())),
            "502 Bad Gateway: oops"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NAME", "N"],
            &[
                vec!["a".into(), "1".into()],
                vec!["long".into(), "22".into()],
            ],
        );
        assert_eq!(t, "NAME  N\na     1\nlong  22");
    }
}
