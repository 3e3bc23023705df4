//! The custom resources: `Subscription` and `EventRoute` in
//! `eventrouter.dev/v1alpha1`, namespaced, with a status subresource.
//!
//! The specs are the standalone resource specs of [`crate::resources`]
//! (newtypes with `#[serde(transparent)]`), so `kubectl apply -f`,
//! `serve -f` and `apply -f` read one shape. Validation that a schema can
//! express (enums, minimums, patterns) is in the generated CRD; the rest
//! (filters and regexes compile) happens when the operator admits a
//! resource through [`crate::router::validate`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::{self, Metadata, Resource};

/// The API group of our resources.
pub const GROUP: &str = "eventrouter.dev";
/// The API version of our resources.
pub const VERSION: &str = "v1alpha1";

/// Spec of the `Subscription` custom resource: topics, filter, delivery
/// policy and an optional push sink.
// Several `printcolumn(type_ = ..)` read as duplicated attributes to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventrouter.dev",
    version = "v1alpha1",
    kind = "Subscription",
    namespaced,
    status = "SubscriptionStatus",
    shortname = "ersub",
    category = "eventrouter",
    doc = "A durable subscription of the event router: which events are stored for a consumer group, and how they are delivered.",
    printcolumn(name = "Topics", type_ = "string", json_path = ".spec.topics"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.delivery.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(name = "DLQ", type_ = "integer", json_path = ".status.deadLetters"),
    printcolumn(
        name = "Consumers",
        type_ = "integer",
        json_path = ".status.consumers",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct SubscriptionResourceSpec(pub resources::SubscriptionSpec);

/// Spec of the `EventRoute` custom resource: match topics/filter, then
/// actions at publish time.
// Several `printcolumn(type_ = ..)` read as duplicated attributes to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventrouter.dev",
    version = "v1alpha1",
    kind = "EventRoute",
    namespaced,
    status = "EventRouteStatus",
    shortname = "eroute",
    category = "eventrouter",
    doc = "A publish-time route of the event router: events matching topics and a filter get their priority set, are copied, dropped, validated against a JSON Schema, or given a retention.",
    printcolumn(name = "Topics", type_ = "string", json_path = ".spec.match.topics"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct EventRouteResourceSpec(pub resources::EventRouteSpec);

/// Observed state of a `Subscription`, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// `Ready`: whether the spec is admitted and in force.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The durable group consumers join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Events stored and waiting for a consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Events not yet acked: pending, in flight and waiting for a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Entries in the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
    /// Connected consumers (push sinks included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<u64>,
}

/// Observed state of an `EventRoute`, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRouteStatus {
    /// `Ready`: whether the spec is admitted and in force.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn metadata(meta: &kube::api::ObjectMeta, name: String) -> Metadata {
    Metadata {
        name,
        namespace: Some(meta.namespace.clone().unwrap_or_else(|| "default".into())),
    }
}

impl Subscription {
    /// The standalone resource this custom resource describes.
    pub fn to_resource(&self) -> Resource {
        Resource::Subscription(resources::Subscription {
            metadata: metadata(&self.metadata, self.name_any()),
            spec: self.spec.0.clone(),
        })
    }
}

impl EventRoute {
    /// The standalone resource this custom resource describes.
    pub fn to_resource(&self) -> Resource {
        Resource::EventRoute(resources::EventRoute {
            metadata: metadata(&self.metadata, self.name_any()),
            spec: self.spec.0.clone(),
        })
    }
}

/// Both CRDs, `Subscription` first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![Subscription::crd(), EventRoute::crd()]
}

/// Both CRDs as one multi-document YAML text: what `event-router crd`
/// prints and `crd/eventrouter.dev.yaml` holds.
///
/// # Errors
/// When YAML encoding fails (a bug).
pub fn crds_yaml() -> Result<String, String> {
    let mut out = String::from(
        "# Generated by `event-router crd`; do not edit. Regenerate with\n\
         #   cargo run -- crd > crd/eventrouter.dev.yaml\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crds_are_named_and_structural() {
        let sub = Subscription::crd();
        assert_eq!(
            sub.metadata.name.as_deref(),
            Some("subscriptions.eventrouter.dev")
        );
        assert_eq!(sub.spec.scope, "Namespaced");
        assert_eq!(sub.spec.names.short_names, Some(vec!["ersub".into()]));
        let route = EventRoute::crd();
        assert_eq!(
            route.metadata.name.as_deref(),
            Some("eventroutes.eventrouter.dev")
        );
        let yaml = crds_yaml().unwrap();
        assert!(
            yaml.contains("x-kubernetes-preserve-unknown-fields"),
            "{yaml}"
        );
    }

    #[test]
    fn custom_resource_reads_the_standalone_spec_shape() {
        let doc = serde_json::json!({
            "apiVersion": "eventrouter.dev/v1alpha1",
            "kind": "Subscription",
            "metadata": {"name": "workers", "namespace": "prod", "generation": 2},
            "spec": {"topics": ["task.*"], "delivery": {"maxAttempts": 3}}
        });
        let sub: Subscription = serde_json::from_value(doc).unwrap();
        assert_eq!(sub.spec.0.delivery.max_attempts, Some(3));
        let Resource::Subscription(r) = sub.to_resource() else {
            panic!()
        };
        assert_eq!(r.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(r.spec.topics, vec!["task.*".to_string()]);
    }
}
