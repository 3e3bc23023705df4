//! `Subscription` and `EventRoute` resources (DESIGN §7).
//!
//! The same YAML is read by `serve -f FILE`, by `apply -f FILE` and, as
//! custom resources, by the Kubernetes operator: these spec types are the one
//! definition of that shape. Field names are camelCase, as Kubernetes expects.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::{Backoff, GroupSpec};
use crate::event::Priority;
use crate::selector::{Selector, SelectorError};
use crate::topic::{self, Pattern};

/// The API group and version of our resources.
pub const API_VERSION: &str = "eventrouter.dev/v1alpha1";

/// Why a resource document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The text is not valid YAML.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// A document's `apiVersion`/`kind` is not ours.
    #[error(
        "document {index}: unsupported apiVersion/kind {api_version:?}/{kind:?} (expected {API_VERSION} Subscription or EventRoute)"
    )]
    UnknownKind {
        /// 0-based position of the document in its file.
        index: usize,
        /// The `apiVersion` it gave.
        api_version: String,
        /// The `kind` it gave.
        kind: String,
    },
    /// A document does not have the shape of its kind.
    #[error("{kind} {name:?}: {reason}")]
    Invalid {
        /// `Subscription` or `EventRoute`.
        kind: &'static str,
        /// `metadata.name` (or the document index when absent).
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Object metadata: the parts of Kubernetes' `ObjectMeta` that we read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The resource name; names the durable subscription or route.
    pub name: String,
    /// Kubernetes namespace, when the resource came from a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// How a subscription receives events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Stored until acked; competing consumers; retries and dead letters.
    #[default]
    Durable,
    /// At-most-once to whoever is connected.
    Live,
}

/// Ordering guarantee of a durable subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Highest priority first, then oldest first; consumers in parallel.
    #[default]
    Priority,
}

/// Backoff between redeliveries; durations as `250ms`, `1s`, `5m`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// First delay. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub initial: Option<String>,
    /// Largest delay. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max: Option<String>,
    /// Growth per attempt. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub multiplier: Option<f64>,
    /// Fraction of each delay randomised, 0..=1. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: Option<f64>,
}

/// Delivery policy of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    /// `durable` (default) or `live`.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Consumer group name; defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,200}$"))]
    pub group: Option<String>,
    /// Deliveries before dead-lettering. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Redelivery backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Time to ack before redelivery, e.g. `30s`. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_timeout: Option<String>,
    /// Keep exhausted events in the dead-letter queue (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<bool>,
    /// Ordering guarantee (default `priority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// Default per-consumer in-flight bound for consumers that give none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_in_flight: Option<u32>,
}

/// A push sink: the router POSTs each event to this URI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkSpec {
    /// `http://` or `https://` endpoint receiving each event as a CloudEvent in binary mode.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub uri: String,
    /// Stop POSTing while the endpoint keeps failing, so that events wait
    /// with their attempts intact; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<CircuitBreakerSpec>")]
    pub circuit_breaker: Option<Box<CircuitBreakerSpec>>,
}

/// A push sink's circuit breaker: open after `failureThreshold` failed
/// POSTs within `window`, probe once after `recoveryTimeout`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Failed POSTs within `window` that open the breaker. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<u32>,
    /// How far back failures count (`30s`, `1m`). Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// How long the breaker stays open before one probe delivery. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_timeout: Option<String>,
}

/// What a `Subscription` selects and how it is delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Topic patterns (`task.*`, `agent.#`, or `pattern:REGEX`).
    #[serde(default)]
    #[schemars(schema_with = "topic_patterns")]
    pub topics: Vec<String>,
    /// A regular expression over the whole topic, in addition to `topics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: Option<String>,
    /// A content filter (Mongo-style operators, e.g. `{priority: {$gte: 5}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub filter: Option<Value>,
    /// Delivery policy.
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// Push delivery target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
}

impl SubscriptionSpec {
    /// The selector this spec describes.
    ///
    /// # Errors
    /// A [`SelectorError`] naming the bad pattern or filter.
    pub fn selector(&self) -> Result<Selector, SelectorError> {
        let mut patterns = self
            .topics
            .iter()
            .map(|t| Pattern::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(re) = &self.pattern {
            patterns.push(Pattern::regex(re)?);
        }
        let filter = self
            .filter
            .as_ref()
            .map(crate::filter::Filter::compile)
            .transpose()?;
        Selector::new(patterns, filter)
    }

    /// The durable group this spec describes, named `name` unless
    /// `delivery.group` overrides it.
    ///
    /// # Errors
    /// A message naming the field when a value is out of range.
    pub fn group_spec(&self, name: &str) -> Result<GroupSpec, String> {
        let selector = self.selector().map_err(|e| e.to_string())?;
        let d = &self.delivery;
        let mut spec = GroupSpec::new(
            d.group.clone().unwrap_or_else(|| name.to_string()),
            selector,
        );
        if let Some(n) = d.max_attempts {
            spec.max_attempts = n;
        }
        if let Some(t) = &d.ack_timeout {
            spec.ack_timeout = duration_field("delivery.ackTimeout", t)?;
        }
        if let Some(b) = d.dead_letter {
            spec.dead_letter = b;
        }
        if let Some(b) = &d.backoff {
            spec.backoff = backoff(b)?;
        }
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// What durations in resources look like (`250ms`, `30s`, `5m`, `1h`, `1d`).
const DURATION_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)?$";

/// Schema of a list of topic patterns: globs or `pattern:REGEX`.
fn topic_patterns(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "string",
            "maxLength": 1032,
            "pattern": r"^(pattern:.+|(\*|#|[A-Za-z0-9_-]+)(\.(\*|#|[A-Za-z0-9_-]+))*)$"
        }
    })
}

/// Schema of a free-form JSON object (filters, JSON Schemas).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of a value that is an integer or a string (priorities).
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true })
}

fn duration_field(field: &str, text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text).map_err(|e| format!("{field}: {e}"))
}

fn backoff(spec: &BackoffSpec) -> Result<Backoff, String> {
    let mut b = Backoff::default();
    if let Some(t) = &spec.initial {
        b.initial = duration_field("delivery.backoff.initial", t)?;
    }
    if let Some(t) = &spec.max {
        b.max = duration_field("delivery.backoff.max", t)?;
    }
    if let Some(m) = spec.multiplier {
        if !(m.is_finite() && m >= 1.0) {
            return Err(format!(
                "delivery.backoff.multiplier: must be >= 1, got {m}"
            ));
        }
        b.multiplier = m;
    }
    if let Some(j) = spec.jitter {
        if !(0.0..=1.0).contains(&j) {
            return Err(format!(
                "delivery.backoff.jitter: must be within 0..=1, got {j}"
            ));
        }
        b.jitter = j;
    }
    Ok(b)
}

/// Which events an `EventRoute` applies to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// Topic patterns (`task.*`, `agent.#`, or `pattern:REGEX`).
    #[serde(default)]
    #[schemars(schema_with = "topic_patterns")]
    pub topics: Vec<String>,
    /// A content filter (Mongo-style operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub filter: Option<Value>,
}

/// One action of an `EventRoute`; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct RouteAction {
    /// Override the event's priority (1..=10 or a name: lowest, low,
    /// normal, high, critical, system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub set_priority: Option<Value>,
    /// Also publish a copy of the event on this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub copy_to: Option<String>,
    /// Drop the event: it is accepted but neither stored nor delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<bool>,
    /// Reject events whose payload does not validate against this inline
    /// JSON Schema (the publisher gets `invalid_event` naming the route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub validate_schema: Option<Value>,
    /// Keep matching events at most this long undelivered (sets the
    /// event's `ttl` when it has none or a longer one), e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retention: Option<String>,
}

/// A compiled route action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Override the priority.
    SetPriority(Priority),
    /// Publish a copy on another topic.
    CopyTo(String),
    /// Drop the event.
    Drop,
    /// Reject events whose payload does not match a JSON Schema.
    Validate(PayloadSchema),
    /// Cap the event's `ttl`, in seconds.
    Retention(u64),
}

/// A compiled inline JSON Schema for `validateSchema`.
#[derive(Clone)]
pub struct PayloadSchema {
    source: Value,
    validator: Arc<jsonschema::Validator>,
}

impl PayloadSchema {
    /// Compiles `schema`. References to other documents are not fetched.
    ///
    /// # Errors
    /// A message naming what does not compile.
    pub fn compile(schema: &Value) -> Result<PayloadSchema, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(PayloadSchema {
            source: schema.clone(),
            validator: Arc::new(validator),
        })
    }

    /// Checks `payload`; the error names the first failing location.
    ///
    /// # Errors
    /// `at /path: reason` for the first violation.
    pub fn check(&self, payload: &Value) -> Result<(), String> {
        self.validator.validate(payload).map_err(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            format!("at {path}: {e}")
        })
    }
}

impl PartialEq for PayloadSchema {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for PayloadSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PayloadSchema").field(&self.source).finish()
    }
}

impl RouteAction {
    /// The action this entry describes.
    ///
    /// # Errors
    /// A message when zero or several fields are set or a value is invalid.
    pub fn compile(&self) -> Result<Action, String> {
        let set = [
            self.set_priority.is_some(),
            self.copy_to.is_some(),
            self.drop.is_some(),
            self.validate_schema.is_some(),
            self.retention.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(
                "each action sets exactly one of setPriority, copyTo, drop, validateSchema, retention"
                    .into(),
            );
        }
        if let Some(schema) = &self.validate_schema {
            return PayloadSchema::compile(schema)
                .map(Action::Validate)
                .map_err(|e| format!("validateSchema: {e}"));
        }
        if let Some(text) = &self.retention {
            let d = duration_field("retention", text)?;
            if d < Duration::from_secs(1) {
                return Err(format!("retention: must be at least 1s, got {text:?}"));
            }
            return Ok(Action::Retention(d.as_secs()));
        }
        if let Some(p) = &self.set_priority {
            return Priority::from_json(p)
                .map(Action::SetPriority)
                .map_err(|e| format!("setPriority: {e}"));
        }
        if let Some(t) = &self.copy_to {
            topic::validate_topic(t).map_err(|e| format!("copyTo: {e}"))?;
            return Ok(Action::CopyTo(t.clone()));
        }
        match self.drop {
            Some(true) => Ok(Action::Drop),
            _ => Err("drop: only `drop: true` is meaningful".into()),
        }
    }
}

/// What an `EventRoute` does to matching events at publish time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventRouteSpec {
    /// Which events the route applies to.
    #[serde(rename = "match")]
    pub matches: MatchSpec,
    /// Applied in order; each sets exactly one of its fields.
    #[serde(default)]
    pub actions: Vec<RouteAction>,
}

impl EventRouteSpec {
    /// The selector of `match`.
    ///
    /// # Errors
    /// A [`SelectorError`] naming the bad pattern or filter.
    pub fn selector(&self) -> Result<Selector, SelectorError> {
        Selector::parse(&self.matches.topics, self.matches.filter.as_ref())
    }
}

/// A `Subscription` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Name (and namespace).
    pub metadata: Metadata,
    /// The spec.
    pub spec: SubscriptionSpec,
}

/// An `EventRoute` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRoute {
    /// Name (and namespace).
    pub metadata: Metadata,
    /// The spec.
    pub spec: EventRouteSpec,
}

/// Any resource document we understand.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A subscription.
    Subscription(Subscription),
    /// A route.
    EventRoute(EventRoute),
}

impl Resource {
    /// `kind/name`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Resource::Subscription(s) => format!("Subscription/{}", s.metadata.name),
            Resource::EventRoute(r) => format!("EventRoute/{}", r.metadata.name),
        }
    }
}

/// Parses one or more `---`-separated YAML (or JSON) documents. Empty
/// documents are skipped; each other document must be one of our kinds.
///
/// # Errors
/// A [`ResourceError`] naming the document and field.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ResourceError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ResourceError::Yaml(e.to_string()))?;
    docs.into_iter()
        .enumerate()
        .filter(|(_, doc)| !doc.is_null())
        .map(|(index, doc)| parse_document(index, doc))
        .collect()
}

fn parse_document(index: usize, doc: Value) -> Result<Resource, ResourceError> {
    let field = |f: &str| {
        doc.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{index}"), str::to_string);
    if api_version != API_VERSION {
        return Err(ResourceError::UnknownKind {
            index,
            api_version,
            kind,
        });
    }
    let invalid = |kind: &'static str, e: serde_json::Error| ResourceError::Invalid {
        kind,
        name: name.clone(),
        reason: e.to_string(),
    };
    let resource = match kind.as_str() {
        "Subscription" => Resource::Subscription(
            serde_json::from_value(doc.clone()).map_err(|e| invalid("Subscription", e))?,
        ),
        "EventRoute" => Resource::EventRoute(
            serde_json::from_value(doc.clone()).map_err(|e| invalid("EventRoute", e))?,
        ),
        _ => {
            return Err(ResourceError::UnknownKind {
                index,
                api_version,
                kind,
            });
        }
    };
    Ok(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: Subscription
metadata:
  name: workers
spec:
  topics: ["task.*"]
  delivery:
    maxAttempts: 3
    ackTimeout: 10s
    backoff: {initial: 100ms, max: 5s}
---
apiVersion: eventrouter.dev/v1alpha1
kind: EventRoute
metadata:
  name: escalate
spec:
  match:
    topics: ["agent.failed"]
  actions:
    - setPriority: critical
    - copyTo: audit.agent-failed
"#;

    #[test]
    fn parses_subscription_and_route_documents() {
        let docs = parse_documents(YAML).unwrap();
        assert_eq!(docs.len(), 2);
        let Resource::Subscription(sub) = &docs[0] else {
            panic!("{docs:?}")
        };
        let spec = sub.spec.group_spec(&sub.metadata.name).unwrap();
        assert_eq!(spec.name, "workers");
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.ack_timeout, Duration::from_secs(10));
        assert_eq!(spec.backoff.initial, Duration::from_millis(100));
        let Resource::EventRoute(route) = &docs[1] else {
            panic!("{docs:?}")
        };
        let actions: Vec<Action> = route
            .spec
            .actions
            .iter()
            .map(|a| a.compile().unwrap())
            .collect();
        assert_eq!(
            actions,
            vec![
                Action::SetPriority(Priority::new(9).unwrap()),
                Action::CopyTo("audit.agent-failed".into())
            ]
        );
    }

    #[test]
    fn rejects_foreign_kinds_and_typos_by_name() {
        let err =
            parse_documents("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
        assert!(err.to_string().contains("ConfigMap"), "{err}");
        let typo = YAML.replace("maxAttempts", "maxAtempts");
        let err = parse_documents(&typo).unwrap_err();
        assert!(
            err.to_string().contains("maxAtempts") && err.to_string().contains("workers"),
            "{err}"
        );
    }

    #[test]
    fn action_must_set_exactly_one_field() {
        let both = RouteAction {
            drop: Some(true),
            copy_to: Some("a".into()),
            ..Default::default()
        };
        assert!(both.compile().is_err());
        assert!(RouteAction::default().compile().is_err());
    }
}
