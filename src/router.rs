//! The core: validate events, apply `EventRoute`s, publish, request/response,
//! and turn `Subscription` resources into durable subscriptions.
//!
//! Every transport goes through a [`Router`]; it talks to storage only through
//! the [`Broker`](crate::broker::Broker) trait and never learns which broker runs.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;

use crate::broker::{
    BrokerError, LiveItem, LiveSubscription, PublishOptions, Published, SharedBroker,
};
use crate::event::{self, Event, ValidationError};
use crate::resources::{Action, DeliveryMode, Resource};
use crate::selector::{Selector, SelectorError};
use crate::telemetry;
use crate::topic::{Pattern, TopicTrie};

/// Default upper bound of a request's wait for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a request may wait; a longer `timeout_ms` is refused.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Most events in one batch publish.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// Router configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Largest accepted serialized payload, in bytes. Default 1 MiB.
    pub max_payload_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_payload_bytes: event::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Why a router call failed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The event is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A pattern or filter is invalid.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A request got no reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A batch is empty or too large, or another argument is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// A resource document is invalid.
    #[error("{resource}: {reason}")]
    Resource {
        /// `Kind/name`.
        resource: String,
        /// What is wrong.
        reason: String,
    },
}

impl RouterError {
    /// Stable snake_case code for client-facing errors.
    pub fn code(&self) -> &'static str {
        match self {
            RouterError::Invalid(e) => e.code(),
            RouterError::Selector(e) => e.code(),
            RouterError::Broker(e) => e.kind(),
            RouterError::Timeout(_) => "timeout",
            RouterError::BadRequest(_) => "bad_request",
            RouterError::Resource { .. } => "invalid_resource",
        }
    }
}

/// What happened to a published event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Receipt {
    /// Stored and routed.
    Published {
        /// The event id.
        event_id: String,
        /// History cursor.
        cursor: String,
    },
    /// Accepted and discarded by an `EventRoute` `drop` action.
    Dropped {
        /// The event id.
        event_id: String,
        /// The route that dropped it.
        route: String,
    },
}

impl Receipt {
    /// The event id.
    pub fn event_id(&self) -> &str {
        match self {
            Receipt::Published { event_id, .. } | Receipt::Dropped { event_id, .. } => event_id,
        }
    }

    fn published(p: Published) -> Receipt {
        Receipt::Published {
            event_id: p.id,
            cursor: p.cursor,
        }
    }
}

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    selector: Selector,
    actions: Vec<Action>,
}

#[derive(Debug, Default)]
struct RouteTable {
    trie: TopicTrie<usize>,
    routes: Vec<CompiledRoute>,
}

/// The outcome of applying routes to one event.
struct Routed {
    event: Event,
    copies: Vec<Event>,
    dropped_by: Option<String>,
}

impl RouteTable {
    fn new(routes: Vec<CompiledRoute>) -> Self {
        let mut trie = TopicTrie::new();
        for (i, route) in routes.iter().enumerate() {
            for pattern in route.selector.patterns() {
                trie.insert(pattern, i);
            }
        }
        RouteTable { trie, routes }
    }

    /// Applies matching routes in name order. Copies are not routed again, so
    /// routes cannot loop.
    ///
    /// # Errors
    /// [`ValidationError::Invalid`] on `payload` naming the route whose
    /// `validateSchema` the payload fails.
    fn apply(&self, mut event: Event) -> Result<Routed, ValidationError> {
        let mut routed = Routed {
            event: event.clone(),
            copies: Vec::new(),
            dropped_by: None,
        };
        if self.routes.is_empty() {
            return Ok(routed);
        }
        for i in self.trie.matches(&event.topic) {
            let route = &self.routes[i];
            if !route.selector.matches_filter(&event) {
                continue;
            }
            for action in &route.actions {
                match action {
                    Action::SetPriority(p) => event.priority = *p,
                    Action::CopyTo(topic) => routed.copies.push(copy_of(&event, topic)),
                    Action::Drop => {
                        routed.dropped_by = Some(route.name.clone());
                        routed.event = event;
                        return Ok(routed);
                    }
                    Action::Validate(schema) => {
                        schema.check(&event.payload).map_err(|reason| {
                            ValidationError::Invalid {
                                field: "payload".into(),
                                reason: format!(
                                    "rejected by EventRoute {:?} (validateSchema): {reason}",
                                    route.name
                                ),
                            }
                        })?;
                    }
                    Action::Retention(secs) => {
                        event.ttl = Some(event.ttl.map_or(*secs, |t| t.min(*secs)));
                    }
                }
            }
        }
        routed.event = event;
        Ok(routed)
    }
}

fn copy_of(event: &Event, topic: &str) -> Event {
    let mut copy = event.clone();
    copy.id = event::new_id();
    copy.topic = topic.to_string();
    copy.causation_id = Some(event.id.clone());
    copy
}

/// Resources compiled for [`Router::apply`].
struct Compiled {
    groups: Vec<crate::broker::GroupSpec>,
    sinks: Vec<crate::sink::SinkTarget>,
    routes: Vec<CompiledRoute>,
}

/// Checks resource documents exactly as [`Router::apply`] would (patterns,
/// regexes and filters compile, policies are in range, actions are
/// well-formed, JSON Schemas compile) without applying anything. The
/// operator and `apply` admit resources through this.
///
/// # Errors
/// [`RouterError::Resource`] naming the first bad document and field.
pub fn validate(resources: &[Resource]) -> Result<(), RouterError> {
    compile(resources).map(|_| ())
}

fn compile(resources: &[Resource]) -> Result<Compiled, RouterError> {
    let mut out = Compiled {
        groups: Vec::new(),
        sinks: Vec::new(),
        routes: Vec::new(),
    };
    for resource in resources {
        let fail = |reason: String| RouterError::Resource {
            resource: resource.describe(),
            reason,
        };
        match resource {
            Resource::Subscription(sub) => {
                if sub.spec.delivery.mode == DeliveryMode::Live {
                    return Err(fail(
                        "delivery.mode live: live subscriptions are opened by connections; \
                         a Subscription resource must be durable"
                            .into(),
                    ));
                }
                let spec = sub.spec.group_spec(&sub.metadata.name).map_err(fail)?;
                if let Some(sink) = &sub.spec.sink {
                    out.sinks.push(
                        crate::sink::SinkTarget::new(&spec.name, sink, &sub.spec.delivery)
                            .map_err(fail)?,
                    );
                }
                out.groups.push(spec);
            }
            Resource::EventRoute(route) => {
                let selector = route.spec.selector().map_err(|e| fail(e.to_string()))?;
                let actions = route
                    .spec
                    .actions
                    .iter()
                    .enumerate()
                    .map(|(i, a)| a.compile().map_err(|e| fail(format!("actions[{i}]: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                out.routes.push(CompiledRoute {
                    name: route.metadata.name.clone(),
                    selector,
                    actions,
                });
            }
        }
    }
    Ok(out)
}

/// The router: one per process, shared by every connection.
pub struct Router {
    broker: SharedBroker,
    config: RouterConfig,
    routes: RwLock<Arc<RouteTable>>,
    sinks: crate::sink::Sinks,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `broker`.
    pub fn new(broker: SharedBroker, config: RouterConfig) -> Arc<Router> {
        Arc::new(Router {
            broker: crate::telemetry::InstrumentedBroker::wrap(broker),
            config,
            routes: RwLock::new(Arc::default()),
            sinks: crate::sink::Sinks::default(),
        })
    }

    /// The broker, for subscriptions and DLQ operations.
    pub fn broker(&self) -> &SharedBroker {
        &self.broker
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Validates raw JSON into an event under this router's limits.
    ///
    /// # Errors
    /// [`RouterError::Invalid`] naming the field.
    pub fn parse_event(&self, raw: Value) -> Result<Event, RouterError> {
        let span = telemetry::trace::validate_span();
        let mut event = Event::from_json(raw, self.config.max_payload_bytes)?;
        telemetry::trace::validated(&span, &mut event);
        Ok(event)
    }

    /// Applies routes and publishes one event (and any copies routes make).
    ///
    /// # Errors
    /// [`RouterError::Broker`] when the broker fails; nothing was published then.
    pub async fn publish(&self, mut event: Event) -> Result<Receipt, RouterError> {
        let span = telemetry::trace::receive_span(&mut event);
        span.scope(Box::pin(self.publish_routed(event))).await
    }

    async fn publish_routed(&self, event: Event) -> Result<Receipt, RouterError> {
        let routes = self.routes.read().clone();
        let routed = telemetry::trace::route_span().in_scope(|| routes.apply(event))?;
        if let Some(route) = routed.dropped_by {
            telemetry::metrics::metrics().dropped("route", 1);
            tracing::debug!(%route, "event dropped by route");
            return Ok(Receipt::Dropped {
                event_id: routed.event.id,
                route,
            });
        }
        if routed.copies.is_empty() {
            let published = self
                .broker
                .publish(routed.event, PublishOptions::default())
                .await?;
            return Ok(Receipt::published(published));
        }
        let mut events = vec![routed.event];
        events.extend(routed.copies);
        let mut published = self
            .broker
            .publish_batch(events, PublishOptions { atomic: true })
            .await?;
        Ok(Receipt::published(published.swap_remove(0)))
    }

    /// Parses and publishes raw JSON.
    ///
    /// # Errors
    /// As [`Router::parse_event`] and [`Router::publish`].
    pub async fn publish_json(&self, raw: Value) -> Result<Receipt, RouterError> {
        let event = self.parse_event(raw)?;
        self.publish(event).await
    }

    /// Publishes events in order; with `atomic`, all or none are stored.
    /// Receipts are in input order.
    ///
    /// # Errors
    /// [`RouterError::BadRequest`] for an empty or oversize batch;
    /// [`RouterError::Broker`] when the broker fails.
    pub async fn publish_batch(
        &self,
        mut events: Vec<Event>,
        atomic: bool,
    ) -> Result<Vec<Receipt>, RouterError> {
        let span = telemetry::trace::receive_batch_span(&mut events);
        span.scope(Box::pin(self.publish_batch_routed(events, atomic)))
            .await
    }

    async fn publish_batch_routed(
        &self,
        events: Vec<Event>,
        atomic: bool,
    ) -> Result<Vec<Receipt>, RouterError> {
        if events.is_empty() {
            return Err(RouterError::BadRequest(
                "batch must hold at least one event".into(),
            ));
        }
        if events.len() > MAX_BATCH_EVENTS {
            return Err(RouterError::BadRequest(format!(
                "batch holds {} events, over the limit of {MAX_BATCH_EVENTS}",
                events.len()
            )));
        }
        let routes = self.routes.read().clone();
        // Each input maps to a receipt; `Some(n)` = the n-th stored event.
        let mut slots: Vec<Result<usize, Receipt>> = Vec::with_capacity(events.len());
        let mut stored = Vec::with_capacity(events.len());
        let mut copies = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            let routed = routes.apply(event).map_err(|e| match e {
                ValidationError::Invalid { field, reason } => ValidationError::Invalid {
                    field: format!("events[{index}].{field}"),
                    reason,
                },
                other => other,
            })?;
            if let Some(route) = routed.dropped_by {
                telemetry::metrics::metrics().dropped("route", 1);
                slots.push(Err(Receipt::Dropped {
                    event_id: routed.event.id,
                    route,
                }));
                continue;
            }
            slots.push(Ok(stored.len()));
            stored.push(routed.event);
            copies.extend(routed.copies);
        }
        let originals = stored.len();
        stored.extend(copies);
        let published = if stored.is_empty() {
            Vec::new()
        } else {
            self.broker
                .publish_batch(stored, PublishOptions { atomic })
                .await?
        };
        let mut published: Vec<Option<Published>> =
            published.into_iter().take(originals).map(Some).collect();
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Ok(i) => published.get_mut(i).and_then(Option::take).map_or_else(
                    || Receipt::Dropped {
                        event_id: String::new(),
                        route: String::new(),
                    },
                    Receipt::published,
                ),
                Err(receipt) => receipt,
            })
            .collect())
    }

    /// Publishes `event` with `reply_to` and `correlation_id` set (keeping
    /// the caller's when given) and waits up to `timeout` for the first event
    /// on the reply topic with the same correlation id.
    ///
    /// # Errors
    /// [`RouterError::BadRequest`] for a `timeout` over
    /// [`MAX_REQUEST_TIMEOUT`]; [`RouterError::Timeout`] when no reply
    /// arrives in time; others as [`Router::publish`].
    pub async fn request(&self, mut event: Event, timeout: Duration) -> Result<Event, RouterError> {
        if timeout > MAX_REQUEST_TIMEOUT {
            return Err(RouterError::BadRequest(format!(
                "request timeout (timeout_ms) of {} ms is over the limit of {} ms",
                timeout.as_millis(),
                MAX_REQUEST_TIMEOUT.as_millis()
            )));
        }
        let reply_to = event
            .reply_to
            .get_or_insert_with(|| format!("_reply.{}", uuid::Uuid::new_v4().simple()))
            .clone();
        let correlation = event
            .correlation_id
            .get_or_insert_with(|| event.id.clone())
            .clone();
        let pattern = Pattern::parse(&reply_to).map_err(SelectorError::from)?;
        let selector = Selector::new(vec![pattern], None)?;
        let mut replies = self
            .broker
            .subscribe_live(LiveSubscription {
                selector,
                capacity: 64,
                max_bytes: crate::broker::DEFAULT_LIVE_QUEUE_MAX_BYTES,
            })
            .await?;
        self.publish(event).await?;
        let wait = async {
            while let Some(item) = replies.recv().await {
                if let LiveItem::Event(reply) = item {
                    if reply.correlation_id.as_deref() == Some(correlation.as_str()) {
                        return Ok(Event::clone(&reply));
                    }
                }
            }
            Err(RouterError::Broker(BrokerError::Closed))
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RouterError::Timeout(timeout))?
    }

    /// Applies resource documents: subscriptions become durable
    /// subscriptions; routes replace the route table as a whole (routes not
    /// in `resources` are removed when `resources` holds any route).
    ///
    /// Everything is validated before anything changes.
    ///
    /// # Errors
    /// [`RouterError::Resource`] naming the document; [`RouterError::Broker`].
    pub async fn apply(&self, resources: &[Resource]) -> Result<(), RouterError> {
        self.apply_inner(resources, false).await
    }

    /// Makes `resources` the whole routing configuration, as replicas do on
    /// a config change from the operator or `apply`: like [`Router::apply`],
    /// but the route table is replaced even by an empty one and push sinks
    /// of subscriptions no longer listed stop. Durable subscriptions not
    /// listed are left alone (deleting one is explicit, and connections
    /// create their own).
    ///
    /// # Errors
    /// As [`Router::apply`]; nothing changes then.
    pub async fn apply_all(&self, resources: &[Resource]) -> Result<(), RouterError> {
        self.apply_inner(resources, true).await
    }

    async fn apply_inner(&self, resources: &[Resource], whole: bool) -> Result<(), RouterError> {
        let Compiled {
            groups,
            sinks,
            mut routes,
        } = compile(resources)?;
        for spec in groups {
            tracing::info!(subscription = %spec.name, "subscription applied");
            self.broker.ensure_subscription(spec).await?;
        }
        if whole || !routes.is_empty() {
            routes.sort_by(|a, b| a.name.cmp(&b.name));
            tracing::info!(routes = routes.len(), "routes applied");
            *self.routes.write() = Arc::new(RouteTable::new(routes));
        }
        self.sinks.sync(&self.broker, sinks, whole);
        Ok(())
    }

    /// Push sinks running in this process with their circuit breakers.
    pub fn sink_states(&self) -> Vec<crate::sink::SinkStatus> {
        self.sinks.states()
    }

    /// Subscriptions whose push sink runs in this process.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.names()
    }

    /// Names of the routes in force, in the order they apply.
    pub fn route_names(&self) -> Vec<String> {
        self.routes
            .read()
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;
    use serde_json::json;

    fn table(yaml: &str) -> RouteTable {
        let mut routes = Vec::new();
        for r in parse_documents(yaml).unwrap() {
            let Resource::EventRoute(r) = r else { continue };
            let actions = r
                .spec
                .actions
                .iter()
                .map(|a| a.compile().unwrap())
                .collect();
            routes.push(CompiledRoute {
                name: r.metadata.name,
                selector: r.spec.selector().unwrap(),
                actions,
            });
        }
        RouteTable::new(routes)
    }

    const ROUTES: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: EventRoute
metadata: {name: a-escalate}
spec:
  match: {topics: ["agent.failed"]}
  actions: [{setPriority: 9}, {copyTo: audit.failures}]
---
apiVersion: eventrouter.dev/v1alpha1
kind: EventRoute
metadata: {name: b-drop-debug}
spec:
  match: {topics: ["debug.#"]}
  actions: [{drop: true}]
"#;

    #[test]
    fn routes_set_priority_and_copy_with_causation() {
        let t = table(ROUTES);
        let e = Event::new("agent.failed", json!({"x": 1})).unwrap();
        let routed = t.apply(e.clone()).unwrap();
        assert_eq!(routed.event.priority.get(), 9);
        assert_eq!(routed.copies.len(), 1);
        assert_eq!(routed.copies[0].topic, "audit.failures");
        assert_eq!(
            routed.copies[0].causation_id.as_deref(),
            Some(e.id.as_str())
        );
        assert_ne!(routed.copies[0].id, e.id);
        assert!(routed.dropped_by.is_none());
    }

    #[test]
    fn drop_action_names_the_route_and_others_pass_untouched() {
        let t = table(ROUTES);
        let routed = t
            .apply(Event::new("debug.trace.x", json!(null)).unwrap())
            .unwrap();
        assert_eq!(routed.dropped_by.as_deref(), Some("b-drop-debug"));
        let plain = Event::new("task.created", json!(null)).unwrap();
        let routed = t.apply(plain.clone()).unwrap();
        assert_eq!(routed.event, plain);
        assert!(routed.copies.is_empty() && routed.dropped_by.is_none());
    }

    const CHECKS: &str = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: EventRoute
metadata: {name: orders-schema}
spec:
  match: {topics: ["order.#"]}
  actions:
    - validateSchema:
        type: object
        required: [amount]
        properties: {amount: {type: integer, minimum: 0}}
    - retention: 1h
"#;

    #[test]
    fn validate_schema_rejects_naming_route_and_location() {
        let t = table(CHECKS);
        let ok = t
            .apply(Event::new("order.created", json!({"amount": 3})).unwrap())
            .unwrap();
        assert_eq!(ok.event.ttl, Some(3600));
        let err = t
            .apply(Event::new("order.created", json!({"amount": "three"})).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("orders-schema") && err.contains("/amount") && err.contains("payload"),
            "{err}"
        );
        let other = t.apply(Event::new("task.x", json!("anything")).unwrap());
        assert!(other.is_ok());
    }

    #[test]
    fn retention_only_shortens_ttl() {
        let t = table(CHECKS);
        let mut e = Event::new("order.created", json!({"amount": 1})).unwrap();
        e.ttl = Some(60);
        assert_eq!(t.apply(e.clone()).unwrap().event.ttl, Some(60));
        e.ttl = Some(7200);
        assert_eq!(t.apply(e).unwrap().event.ttl, Some(3600));
    }
}
