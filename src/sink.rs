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
//! [`Sinks`] is the set of running sink workers of one [`Router`](crate::Router);
//! `Router::apply` keeps it in step with the applied resources.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, ConsumeOptions, NackOptions, SharedBroker};
use crate::event::Delivery;
use crate::resources::{DeliverySpec, SinkSpec};
use crate::telemetry::trace;

/// Default number of POSTs one sink worker has outstanding at once.
pub const DEFAULT_SINK_IN_FLIGHT: usize = 16;
/// Default bound of one POST (the subscription's ack timeout overrides it).
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(30);
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
}

impl SinkTarget {
    /// The sink of subscription `subscription`.
    ///
    /// # Errors
    /// A message naming `sink.uri` when it is not an `http://` URL.
    pub fn new(
        subscription: &str,
        sink: &SinkSpec,
        delivery: &DeliverySpec,
    ) -> Result<SinkTarget, String> {
        let uri = Url::parse(&sink.uri).map_err(|e| format!("sink.uri {:?}: {e}", sink.uri))?;
        match uri.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "sink.uri {:?}: https sinks are not supported by this version; \
                     use http:// (e.g. an in-cluster Service)",
                    sink.uri
                ));
            }
            other => {
                return Err(format!(
                    "sink.uri {:?}: scheme {other:?} is not http",
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
        })
    }
}

struct Running {
    target: SinkTarget,
    token: CancellationToken,
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
            tracing::info!(subscription = %target.subscription, uri = %target.uri, "push sink started");
            tokio::spawn(run(broker.clone(), target.clone(), token.clone()));
            running.insert(target.subscription.clone(), Running { target, token });
        }
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
async fn run(broker: SharedBroker, target: SinkTarget, token: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(target.timeout)
        .connect_timeout(target.timeout.min(Duration::from_secs(5)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(subscription = %target.subscription, error = %e, "cannot build the sink HTTP client");
            return;
        }
    };
    let options = ConsumeOptions {
        max_in_flight: target.max_in_flight,
        name: format!("sink-{}", uuid::Uuid::new_v4().simple()),
    };
    while !token.is_cancelled() {
        let consumer = tokio::select! {
            () = token.cancelled() => return,
            c = broker.consume(&target.subscription, options.clone()) => c,
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
                .map(|d| deliver(&broker, &http, &target, d));
            tokio::select! {
                () = token.cancelled() => return,
                _ = futures::future::join_all(posts) => {}
            }
        }
    }
}

async fn pause(token: &CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}

/// POSTs one delivery and acks (2xx) or nacks it.
async fn deliver(
    broker: &SharedBroker,
    http: &reqwest::Client,
    target: &SinkTarget,
    delivery: Delivery,
) {
    let (mut headers, body) = binary_cloudevent(&delivery);
    let span = trace::push_span(&delivery.subscription, target.uri.as_str(), &delivery.event);
    trace::inject_http(&span, &mut headers);
    let post = http.post(target.uri.clone()).headers(headers).body(body);
    let outcome = span.scope(post.send()).await;
    let failure = match outcome {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("sink answered {}", r.status())),
        Err(e) if e.is_timeout() => {
            Some(format!("sink gave no answer within {:?}", target.timeout))
        }
        Err(e) => Some(format!("sink unreachable: {}", root_cause(&e))),
    };
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

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
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
    fn only_http_uris_are_accepted() {
        let d = DeliverySpec::default();
        let sink = |uri: &str| SinkSpec { uri: uri.into() };
        let t = SinkTarget::new("s", &sink("http://127.0.0.1:9/x"), &d).unwrap();
        assert_eq!(t.max_in_flight, DEFAULT_SINK_IN_FLIGHT);
        assert!(
            SinkTarget::new("s", &sink("https://x/"), &d)
                .unwrap_err()
                .contains("https")
        );
        assert!(
            SinkTarget::new("s", &sink("ftp://x/"), &d)
                .unwrap_err()
                .contains("ftp")
        );
        assert!(SinkTarget::new("s", &sink("not a url"), &d).is_err());
    }
}
