//! Push sinks: a `Subscription` with `sink.uri` is delivered by the router,
//! which POSTs each event to the URI as a CloudEvent in binary mode.
//!
//! Each sink is a consumer of the subscription's durable group (on a
//! clustered broker every replica runs one, and they compete like any
//! consumers), so the subscription's own policy applies: a 2xx answer acks,
//! anything else (or no answer within the ack timeout) nacks, which retries
//! with the subscription's backoff and dead-letters after `maxAttempts`.
//! The W3C `traceparent`/`tracestate` of the event are forwarded as headers.
//!
//! `https://` sinks use rustls (ring) and verify the server against the
//! system roots, or against the PEM files named by `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when either is set (read when the worker starts). A TLS
//! failure is a nack whose reason names the URI and the TLS problem.
//!
//! A sink with `circuitBreaker` stops taking deliveries while its endpoint
//! keeps failing (see [`breaker`]); its state is in [`Sinks::states`], the
//! stats (`sinks`) and the `sink_circuit_state` metric.
//!
//! [`Sinks`] is the set of running sink workers of one [`Router`](crate::Router);
//! `Router::apply` keeps it in step with the applied resources.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker;
pub use crate::breaker::{Admit, Breaker, BreakerConfig, BreakerState};

use crate::broker::{BrokerError, ConsumeOptions, NackOptions, SharedBroker};
use crate::event::Delivery;
use crate::resources::{CircuitBreakerSpec, DeliverySpec, SinkSpec};
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace;

/// Default number of POSTs one sink worker has outstanding at once.
pub const DEFAULT_SINK_IN_FLIGHT: usize = 16;
/// Default bound of one POST (the subscription's ack timeout overrides it).
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a TCP connection (the POST's timeout bounds it too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections to a sink are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bytes of a sink's answer read (and dropped) so its connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;
/// Pause before a sink worker retries after the broker failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// `source` sent for events that have none (CloudEvents requires one).
const DEFAULT_SOURCE: &str = "/event-router";

/// One push sink: which subscription feeds which URI.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkTarget {
    /// The durable subscription (group) name.
    pub subscription: String,
    /// Where events are POSTed.
    pub uri: Url,
    /// POSTs outstanding at once.
    pub max_in_flight: usize,
    /// Bound of one POST.
    pub timeout: Duration,
    /// The circuit breaker, when `sink.circuitBreaker` is set.
    pub breaker: Option<BreakerConfig>,
}

impl SinkTarget {
    /// The sink of subscription `subscription`.
    ///
    /// # Errors
    /// A message naming `sink.uri` when it is not an `http://` or
    /// `https://` URL with a host.
    pub fn new(
        subscription: &str,
        sink: &SinkSpec,
        delivery: &DeliverySpec,
    ) -> Result<SinkTarget, String> {
        let uri = Url::parse(&sink.uri).map_err(|e| format!("sink.uri {:?}: {e}", sink.uri))?;
        match uri.scheme() {
            "http" | "https" => {}
            other => {
                return Err(format!(
                    "sink.uri {:?}: scheme {other:?} is not http or https",
                    sink.uri
                ));
            }
        }
        if uri.host_str().is_none_or(str::is_empty) {
            return Err(format!("sink.uri {:?}: no host", sink.uri));
        }
        let timeout = match &delivery.ack_timeout {
            Some(t) => {
                crate::config::parse_duration(t).map_err(|e| format!("delivery.ackTimeout: {e}"))?
            }
            None => DEFAULT_SINK_TIMEOUT,
        };
        Ok(SinkTarget {
            subscription: subscription.to_string(),
            uri,
            max_in_flight: delivery
                .max_in_flight
                .map_or(DEFAULT_SINK_IN_FLIGHT, |n| n.max(1) as usize),
            timeout: timeout.max(Duration::from_millis(100)),
            breaker: sink
                .circuit_breaker
                .as_deref()
                .map(breaker_config)
                .transpose()?,
        })
    }
}

struct Running {
    target: SinkTarget,
    token: CancellationToken,
    breaker: Option<Arc<Mutex<Breaker>>>,
}

/// A running sink as `Sinks::states` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SinkStatus {
    /// The subscription it delivers.
    pub subscription: String,
    /// Where it POSTs (without credentials).
    pub uri: String,
    /// Its circuit breaker; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit: Option<CircuitStatus>,
}

/// A sink's circuit breaker now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CircuitStatus {
    /// `closed`, `open` or `half_open`.
    pub state: BreakerState,
    /// Failed POSTs counted in the current window.
    pub recent_failures: usize,
    /// Times it opened since the sink started.
    pub opened_total: u64,
}

/// The running sink workers of one router; stopped on drop.
#[derive(Default)]
pub struct Sinks {
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Sinks {
    /// Starts workers for `wanted` targets that are new or changed and
    /// restarts changed ones; with `whole`, stops workers of targets not in
    /// `wanted`. Must be called within a Tokio runtime.
    pub fn sync(&self, broker: &SharedBroker, wanted: Vec<SinkTarget>, whole: bool) {
        let mut running = self.running.lock();
        if whole {
            running.retain(|name, r| {
                let keep = wanted.iter().any(|t| &t.subscription == name);
                if !keep {
                    tracing::info!(subscription = %name, "push sink stopped");
                    r.token.cancel();
                }
                keep
            });
        }
        for target in wanted {
            if running
                .get(&target.subscription)
                .is_some_and(|r| r.target == target)
            {
                continue;
            }
            if let Some(old) = running.remove(&target.subscription) {
                old.token.cancel();
            }
            let token = CancellationToken::new();
            tracing::info!(subscription = %target.subscription, uri = %shown_uri(&target.uri), "push sink started");
            let breaker = target
                .breaker
                .map(|config| Arc::new(Mutex::new(Breaker::new(config))));
            tokio::spawn(run(
                broker.clone(),
                target.clone(),
                breaker.clone(),
                token.clone(),
            ));
            running.insert(
                target.subscription.clone(),
                Running {
                    target,
                    token,
                    breaker,
                },
            );
        }
    }

    /// Every running sink with its breaker's state, by subscription.
    pub fn states(&self) -> Vec<SinkStatus> {
        let now = Instant::now();
        let mut out: Vec<SinkStatus> = self
            .running
            .lock()
            .values()
            .map(|r| SinkStatus {
                subscription: r.target.subscription.clone(),
                uri: shown_uri(&r.target.uri),
                circuit: r.breaker.as_ref().map(|b| {
                    let b = b.lock();
                    CircuitStatus {
                        state: b.state(now),
                        recent_failures: b.recent_failures(),
                        opened_total: b.opened_total(),
                    }
                }),
            })
            .collect();
        out.sort_by(|a, b| a.subscription.cmp(&b.subscription));
        out
    }

    /// Subscriptions with a running sink, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running.lock().keys().cloned().collect();
        names.sort();
        names
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        for r in self.running.get_mut().values() {
            r.token.cancel();
        }
    }
}

/// One sink worker: consume the group, POST each delivery, ack or nack.
/// Returns when cancelled or the broker closes; broker errors are retried.
/// With a breaker, it takes no deliveries while the breaker is open and
/// one (the probe) while it is half-open.
async fn run(
    broker: SharedBroker,
    target: SinkTarget,
    breaker: Option<Arc<Mutex<Breaker>>>,
    token: CancellationToken,
) {
    let built = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || Endpoint::new(&target)).await
    };
    let http = match built.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(subscription = %target.subscription, error = %e, "cannot build the sink HTTP client");
            return;
        }
    };
    let guard = Guard {
        subscription: &target.subscription,
        breaker: breaker.as_deref(),
    };
    let name = format!("sink-{}", uuid::Uuid::new_v4().simple());
    while !token.is_cancelled() {
        let max_in_flight = match guard.admit() {
            Admit::Flow => target.max_in_flight,
            Admit::Probe => 1,
            Admit::WaitUntil(at) => {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep_until(at) => continue,
                }
            }
        };
        let options = ConsumeOptions {
            max_in_flight,
            name: name.clone(),
            acks_carry_trace: false,
        };
        let consumer = tokio::select! {
            () = token.cancelled() => return,
            c = broker.consume(&target.subscription, options) => c,
        };
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(BrokerError::Closed) => return,
            Err(e) => {
                tracing::warn!(subscription = %target.subscription, error = %e, "push sink cannot consume; retrying");
                pause(&token).await;
                continue;
            }
        };
        loop {
            let batch = tokio::select! {
                () = token.cancelled() => return,
                b = consumer.next() => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(BrokerError::Closed) => return,
                Err(e) => {
                    tracing::warn!(subscription = %target.subscription, error = %e, "push sink lost its consumer; retrying");
                    pause(&token).await;
                    break;
                }
            };
            let posts = batch
                .into_iter()
                .map(|d| deliver(&broker, &http, &guard, d));
            tokio::select! {
                () = token.cancelled() => return,
                _ = futures::future::join_all(posts) => {}
            }
            // Not flowing any more (opened, or a probe was answered): the
            // consumer is dropped with nothing in flight, so waiting events
            // stay queued with their attempts intact.
            if max_in_flight != target.max_in_flight || guard.admit() != Admit::Flow {
                break;
            }
        }
    }
}

/// A sink's breaker (if it has one) and its metrics.
struct Guard<'a> {
    subscription: &'a str,
    breaker: Option<&'a Mutex<Breaker>>,
}

impl Guard<'_> {
    fn admit(&self) -> Admit {
        let Some(breaker) = self.breaker else {
            return Admit::Flow;
        };
        let mut b = breaker.lock();
        let admit = b.admit(Instant::now());
        metrics().sink_circuit(self.subscription, b.state(Instant::now()).gauge(), false);
        admit
    }

    fn outcome(&self, ok: bool) {
        let Some(breaker) = self.breaker else {
            return;
        };
        let mut b = breaker.lock();
        let opened = if ok {
            b.succeeded();
            false
        } else {
            b.failed(Instant::now())
        };
        if opened {
            tracing::warn!(subscription = %self.subscription, "push sink circuit opened; deliveries wait");
        }
        metrics().sink_circuit(self.subscription, b.state(Instant::now()).gauge(), opened);
    }
}

async fn pause(token: &CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}

/// POSTs one delivery and acks (2xx) or nacks it.
async fn deliver(broker: &SharedBroker, http: &Endpoint, guard: &Guard<'_>, delivery: Delivery) {
    let (mut headers, body) = binary_cloudevent(&delivery);
    let span = trace::push_span(&delivery.subscription, &http.shown, &delivery.event);
    trace::inject_http(&span, &mut headers);
    let post = Box::pin(http.post(headers, body));
    let failure = span.scope(post).await.err();
    guard.outcome(failure.is_none());
    let sub = &delivery.subscription;
    let result = match &failure {
        None => broker.ack(sub, &delivery.delivery_id).await,
        Some(reason) => {
            tracing::debug!(subscription = %sub, attempt = delivery.attempt, %reason, "push delivery failed");
            let options = NackOptions {
                delay: None,
                reason: Some(reason.clone()),
            };
            broker.nack(sub, &delivery.delivery_id, options).await
        }
    };
    if let Err(e) = result {
        // The delivery stays in flight and is redelivered after the ack timeout.
        tracing::warn!(subscription = %sub, error = %e, "push sink cannot settle a delivery");
    }
}

/// The HTTP client of one sink worker, bound to its URI.
struct Endpoint {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// The URI without its user information.
    uri: http::Uri,
    /// `Basic` credentials from the URI's user information.
    authorization: Option<HeaderValue>,
    /// The URI as failure reasons show it: no user information, no query.
    shown: String,
    timeout: Duration,
    /// Why no trusted CA certificates were loaded, for an `https://` sink.
    roots_problem: Option<String>,
}

impl Endpoint {
    /// A keep-alive HTTP/1.1 client for `target`; for `https://`, rustls
    /// with the ring provider verifying against the system roots (or
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR`), loaded now. Reads files: call it
    /// off the async threads.
    fn new(target: &SinkTarget) -> Result<Endpoint, String> {
        let mut url = target.uri.clone();
        let authorization = basic_authorization(&url);
        // Cannot fail: `SinkTarget::new` admits only http(s) URLs with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let uri: http::Uri = url.as_str().parse().map_err(|e| format!("{e}"))?;
        let shown = shown_uri(&url);
        let https = url.scheme() == "https";
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let (builder, roots_problem) = match https.then(|| builder.clone().with_native_roots()) {
            Some(Ok(b)) => (b, None),
            Some(Err(e)) => {
                tracing::warn!(subscription = %target.subscription, error = %e, "no trusted CA certificates for an https sink");
                let b = builder.with_root_certificates(rustls::RootCertStore::empty());
                (b, Some(e.to_string()))
            }
            None => (
                builder.with_root_certificates(rustls::RootCertStore::empty()),
                None,
            ),
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(target.timeout.min(CONNECT_TIMEOUT)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(builder.with_no_client_auth())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        Ok(Endpoint {
            client,
            uri,
            authorization,
            shown,
            timeout: target.timeout,
            roots_problem,
        })
    }

    /// POSTs one event within the timeout.
    ///
    /// # Errors
    /// The nack reason, naming the URI: the status of a non-2xx answer, no
    /// answer in time, the TLS problem, or why the sink was unreachable.
    async fn post(&self, mut headers: HeaderMap, body: Vec<u8>) -> Result<(), String> {
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let mut request = http::Request::post(self.uri.clone())
            .body(Body::from(body))
            .map_err(|e| format!("sink {}: {e}", self.shown))?;
        *request.headers_mut() = headers;
        let deadline = Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => {
                return Err(format!(
                    "sink {} gave no answer within {:?}",
                    self.shown, self.timeout
                ));
            }
            Ok(Err(e)) => return Err(self.failure(&e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        // Reading a short answer lets the connection be reused; what it says
        // does not matter, the status decided.
        let drain = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER);
        let _ = tokio::time::timeout_at(deadline, drain).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("sink {} answered {status}", self.shown))
        }
    }

    /// The nack reason for a request that got no answer.
    fn failure(&self, error: &hyper_util::client::legacy::Error) -> String {
        let Some(tls) = tls_error(error) else {
            return format!("sink {} unreachable: {}", self.shown, root_cause(error));
        };
        match &self.roots_problem {
            Some(p) => format!(
                "sink {}: TLS handshake failed: {tls} (no trusted CA certificates: {p})",
                self.shown
            ),
            None => format!("sink {}: TLS handshake failed: {tls}", self.shown),
        }
    }
}

/// `url` as logs and nack reasons show it: without user information and
/// query, which may carry credentials.
fn shown_uri(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}

/// `Basic` credentials for the user information of `url`, if it has any.
fn basic_authorization(url: &Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let mut pair = percent_decode(url.username());
    pair.push(b':');
    pair.extend(percent_decode(url.password().unwrap_or("")));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The bytes `%XX` escapes in a URL component stand for.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The rustls error somewhere in the chain of `error`, if it is a TLS failure.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps (the TLS connector
        // wraps rustls's error in two), so step into it instead.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The innermost cause of an error (a transport's outer ones only say
/// "client error").
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// The headers and body of `delivery` as a binary-mode CloudEvent: the
/// context attributes in `ce-*` headers (our extras as the extension
/// attributes of `server::cloudevents`), `traceparent`/`tracestate` as
/// plain headers, the payload as the body.
pub fn binary_cloudevent(delivery: &Delivery) -> (HeaderMap, Vec<u8>) {
    let e = &delivery.event;
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.insert(name, header_value(value));
        }
    };
    put("ce-specversion", "1.0");
    put("ce-id", &e.id);
    put("ce-type", &e.topic);
    put("ce-source", e.source.as_deref().unwrap_or(DEFAULT_SOURCE));
    put("ce-time", &e.time.to_string());
    put("ce-priority", &e.priority.get().to_string());
    let optional = [
        ("ce-target", &e.target),
        ("ce-correlationid", &e.correlation_id),
        ("ce-causationid", &e.causation_id),
        ("ce-replyto", &e.reply_to),
        ("ce-key", &e.key),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            put(name, v);
        }
    }
    if let Some(ttl) = e.ttl {
        put("ce-ttl", &ttl.to_string());
    }
    put("ce-subscription", &delivery.subscription);
    put("ce-deliveryid", &delivery.delivery_id);
    put("ce-attempt", &delivery.attempt.to_string());
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = e.headers.get(name) {
            put(name, v);
        }
    }
    let json = e
        .datacontenttype
        .as_deref()
        .is_none_or(|t| t.contains("json"));
    let body = match (&e.payload, json) {
        (Value::String(text), false) => text.clone().into_bytes(),
        (payload, _) => serde_json::to_vec(payload).unwrap_or_default(),
    };
    let content_type = e
        .datacontenttype
        .clone()
        .unwrap_or_else(|| "application/json".to_string());
    put("content-type", &content_type);
    (headers, body)
}

/// A header value; bytes a header cannot carry are percent-encoded, as the
/// CloudEvents HTTP binding asks.
fn header_value(text: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_str(text)
        && !text.contains('%')
    {
        return v;
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' && b != b'"' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Only printable ASCII is left, which is always a valid header value.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// From a Subscription's `sink.circuitBreaker`.
///
/// # Errors
/// A message naming the field whose duration does not parse.
fn breaker_config(spec: &CircuitBreakerSpec) -> Result<BreakerConfig, String> {
    let duration = |field: &str, text: &Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(t) => crate::duration::parse_duration(t)
            .map_err(|e| format!("sink.circuitBreaker.{field}: {e}")),
    };
    Ok(BreakerConfig {
        failure_threshold: spec
            .failure_threshold
            .unwrap_or(breaker::DEFAULT_FAILURE_THRESHOLD)
            .max(1),
        window: duration("window", &spec.window, breaker::DEFAULT_WINDOW)?
            .max(Duration::from_millis(1)),
        recovery_timeout: duration(
            "recoveryTimeout",
            &spec.recovery_timeout,
            breaker::DEFAULT_RECOVERY_TIMEOUT,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use serde_json::json;

    fn delivery(event: Event) -> Delivery {
        Delivery {
            subscription: "billing".into(),
            delivery_id: "d-1".into(),
            attempt: 2,
            event,
        }
    }

    #[test]
    fn binary_mode_carries_attributes_and_trace_context() {
        let mut e = Event::new("invoice.paid", json!({"amount": 5})).unwrap();
        e.headers
            .insert("traceparent".into(), "00-abc-def-01".into());
        e.correlation_id = Some("c-1".into());
        let (h, body) = binary_cloudevent(&delivery(e.clone()));
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], e.id.as_str());
        assert_eq!(h["ce-type"], "invoice.paid");
        assert_eq!(h["ce-source"], DEFAULT_SOURCE);
        assert_eq!(h["ce-correlationid"], "c-1");
        assert_eq!(h["ce-attempt"], "2");
        assert_eq!(h["traceparent"], "00-abc-def-01");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"amount": 5})
        );
    }

    #[test]
    fn non_ascii_header_values_are_percent_encoded() {
        assert_eq!(header_value("café 100%"), "caf%C3%A9 100%25");
        assert_eq!(header_value("plain"), "plain");
    }

    #[test]
    fn http_and_https_uris_are_accepted() {
        let d = DeliverySpec::default();
        let sink = |uri: &str| SinkSpec {
            uri: uri.into(),
            circuit_breaker: None,
        };
        let t = SinkTarget::new("s", &sink("http://127.0.0.1:9/x"), &d).unwrap();
        assert_eq!(t.max_in_flight, DEFAULT_SINK_IN_FLIGHT);
        assert!(SinkTarget::new("s", &sink("https://hooks.example/x"), &d).is_ok());
        assert!(
            SinkTarget::new("s", &sink("ftp://x/"), &d)
                .unwrap_err()
                .contains("ftp")
        );
        assert!(SinkTarget::new("s", &sink("not a url"), &d).is_err());
    }

    #[test]
    fn user_information_becomes_basic_credentials_and_is_never_shown() {
        let d = DeliverySpec::default();
        let uri = "https://ops:p%40ss@hooks.example:8443/in?token=secret";
        let spec = SinkSpec {
            uri: uri.into(),
            circuit_breaker: None,
        };
        let target = SinkTarget::new("s", &spec, &d).unwrap();
        let endpoint = Endpoint::new(&target).unwrap();
        // "ops:p@ss" in base64.
        assert_eq!(endpoint.authorization.unwrap(), "Basic b3BzOnBAc3M=");
        assert_eq!(endpoint.uri, "https://hooks.example:8443/in?token=secret");
        assert_eq!(endpoint.shown, "https://hooks.example:8443/in");
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%20b%zz%4"), b"a b%zz%4");
        assert_eq!(percent_decode("%+1"), b"%+1");
    }
}
