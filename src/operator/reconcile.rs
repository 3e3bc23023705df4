//! Reconcilers of `Subscription` and `EventRoute`: admit the spec, write it
//! into the Redis config store (which replicas hot-reload), create the
//! durable group, and write status back; finalizers remove a deleted
//! resource's config and, for a subscription, its Redis keys.
//!
//! An invalid spec is not an error: it gets `Ready=False` with the reason
//! and a Warning event, the last valid config stays in force, and the
//! resource waits for its next change (no retry loop). Errors (Redis or
//! the API server unreachable) are retried by [`error_policy`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::crd::{EventRoute, EventRouteStatus, Subscription, SubscriptionStatus};
use super::status;
use super::store::{ConfigStore, key_of};
use super::{Error, Result};
use crate::broker::{BrokerError, SharedBroker, SubscriptionInfo};
use crate::resources::Resource;

/// Finalizer that removes a deleted subscription's config and Redis keys.
pub const SUBSCRIPTION_FINALIZER: &str = "eventrouter.dev/subscription-cleanup";
/// Finalizer that removes a deleted route from the routing config.
pub const ROUTE_FINALIZER: &str = "eventrouter.dev/route-cleanup";
/// Reporting controller name of the operator's events.
pub const MANAGER: &str = "event-router-operator";
/// Default interval between status updates of a healthy resource.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(15);
/// Delay before a failed reconcile is retried.
pub const RETRY_DELAY: Duration = Duration::from_secs(10);

/// What the reconcilers share.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Where admitted documents go.
    pub store: ConfigStore,
    /// The broker, for durable groups and their counters.
    pub broker: SharedBroker,
    /// Emits Kubernetes events (`kubectl describe`).
    pub recorder: Recorder,
    /// Interval between status updates of a healthy resource.
    pub status_interval: Duration,
}

impl Context {
    /// A context with the default status interval and a recorder that
    /// reports as [`MANAGER`].
    pub fn new(client: Client, store: ConfigStore, broker: SharedBroker) -> Context {
        let reporter = kube::runtime::events::Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            store,
            broker,
            status_interval: DEFAULT_STATUS_INTERVAL,
        }
    }
}

/// Retries a failed reconcile after [`RETRY_DELAY`].
pub fn error_policy<K>(obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    tracing::warn!(
        resource = %obj.meta().name.as_deref().unwrap_or("?"),
        kind = error.kind(),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(RETRY_DELAY)
}

fn namespace<K: kube::Resource>(obj: &K) -> String {
    obj.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// Reconciles one `Subscription`.
///
/// # Errors
/// When Redis or the API server fails; invalid specs are not errors.
pub async fn reconcile_subscription(obj: Arc<Subscription>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<Subscription> = Api::namespaced(ctx.client.clone(), &namespace(&*obj));
    finalizer(&api, SUBSCRIPTION_FINALIZER, obj, |event| async {
        match event {
            Event::Apply(obj) => apply_subscription(&obj, &ctx, &api).await,
            Event::Cleanup(obj) => cleanup_subscription(&obj, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Reconciles one `EventRoute`.
///
/// # Errors
/// When Redis or the API server fails; invalid specs are not errors.
pub async fn reconcile_route(obj: Arc<EventRoute>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<EventRoute> = Api::namespaced(ctx.client.clone(), &namespace(&*obj));
    finalizer(&api, ROUTE_FINALIZER, obj, |event| async {
        match event {
            Event::Apply(obj) => apply_route(&obj, &ctx, &api).await,
            Event::Cleanup(obj) => {
                ctx.store.remove(&key_of(&obj.to_resource())).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Why a resource is not admitted.
struct Rejection {
    /// `InvalidSpec` (waits for a change of the resource) or
    /// `GroupConflict` (rechecked every status interval: the other resource
    /// may go away).
    reason: &'static str,
    message: String,
}

impl Rejection {
    fn retry(&self, ctx: &Context) -> Action {
        if self.reason == "GroupConflict" {
            Action::requeue(ctx.status_interval)
        } else {
            Action::await_change()
        }
    }
}

/// Checks a document as the router would, and that its durable group is
/// not already another resource's. `Ok(Err(_))` means not admitted.
async fn admit(resource: &Resource, ctx: &Context) -> Result<Result<(), Rejection>> {
    if let Err(e) = crate::router::validate(std::slice::from_ref(resource)) {
        return Ok(Err(Rejection {
            reason: "InvalidSpec",
            message: e.to_string(),
        }));
    }
    let Resource::Subscription(sub) = resource else {
        return Ok(Ok(()));
    };
    let group = group_of(sub);
    let key = key_of(resource);
    let snapshot = ctx.store.load().await?;
    let taken = snapshot.resources.iter().find(|(k, r)| {
        *k != key && matches!(r, Resource::Subscription(other) if group_of(other) == group)
    });
    Ok(match taken {
        Some((other, _)) => Err(Rejection {
            reason: "GroupConflict",
            message: format!(
                "durable group {group:?} is already used by {other}; set spec.delivery.group to another name"
            ),
        }),
        None => Ok(()),
    })
}

fn group_of(sub: &crate::resources::Subscription) -> String {
    sub.spec
        .delivery
        .group
        .clone()
        .unwrap_or_else(|| sub.metadata.name.clone())
}

async fn apply_subscription(
    obj: &Subscription,
    ctx: &Context,
    api: &Api<Subscription>,
) -> Result<Action> {
    let resource = obj.to_resource();
    let generation = obj.metadata.generation;
    let old = obj.status.clone().unwrap_or_default();
    if let Err(rejected) = admit(&resource, ctx).await? {
        let status = SubscriptionStatus {
            conditions: vec![status::not_ready(
                &old.conditions,
                rejected.reason,
                &rejected.message,
                generation,
            )],
            observed_generation: generation,
            ..old.clone()
        };
        if patch_status(api, obj, &old, &status).await? {
            warn(ctx, obj, rejected.reason, &rejected.message).await;
        }
        return Ok(rejected.retry(ctx));
    }
    let Resource::Subscription(sub) = &resource else {
        return Ok(Action::await_change());
    };
    let info = match write_subscription(&resource, sub, ctx).await {
        Ok(info) => info,
        Err(e) => {
            warn(ctx, obj, "ConfigWriteFailed", &e.to_string()).await;
            return Err(e);
        }
    };
    let status = status::subscription(&old.conditions, generation, &info);
    patch_status(api, obj, &old, &status).await?;
    Ok(Action::requeue(ctx.status_interval))
}

/// Stores the document, creates or updates the durable group, and reads
/// its counters.
async fn write_subscription(
    resource: &Resource,
    sub: &crate::resources::Subscription,
    ctx: &Context,
) -> Result<SubscriptionInfo> {
    let spec = sub.spec.group_spec(&sub.metadata.name).map_err(|reason| {
        BrokerError::InvalidSubscription {
            name: sub.metadata.name.clone(),
            reason,
        }
    })?;
    let name = spec.name.clone();
    let previous = stored_group(ctx, &key_of(resource)).await?;
    let change = ctx.store.put(resource).await?;
    if change != super::store::Change::Unchanged {
        tracing::info!(resource = %key_of(resource), ?change, "subscription written to the routing config");
    }
    ctx.broker.ensure_subscription(spec).await?;
    // `spec.delivery.group` was renamed: the old group is this resource's
    // and nobody else's, so it goes with its keys.
    if let Some(old) = previous.filter(|old| *old != name) {
        let existed = ctx.broker.delete_subscription(&old).await?;
        tracing::info!(resource = %key_of(resource), group = %old, existed, "renamed away durable group deleted");
    }
    Ok(ctx.broker.subscription(&name).await?)
}

/// The durable group of the Subscription document stored under `key`.
async fn stored_group(ctx: &Context, key: &str) -> Result<Option<String>> {
    let Some(json) = ctx.store.raw(key).await? else {
        return Ok(None);
    };
    Ok(crate::resources::parse_documents(&json)
        .ok()
        .into_iter()
        .flatten()
        .find_map(|d| match d {
            Resource::Subscription(s) => Some(group_of(&s)),
            Resource::EventRoute(_) => None,
        }))
}

async fn cleanup_subscription(obj: &Subscription, ctx: &Context) -> Result<Action> {
    let key = key_of(&obj.to_resource());
    // Only a document this resource wrote names a group it owns; an
    // invalid or conflicting resource never owned one.
    let owned = stored_group(ctx, &key).await?;
    // The document goes first, so that no replica re-creates the group
    // from it after the keys are gone.
    ctx.store.remove(&key).await?;
    if let Some(group) = owned {
        let existed = ctx.broker.delete_subscription(&group).await?;
        tracing::info!(resource = %key, %group, existed, "subscription deleted with its keys");
    }
    Ok(Action::await_change())
}

async fn apply_route(obj: &EventRoute, ctx: &Context, api: &Api<EventRoute>) -> Result<Action> {
    let resource = obj.to_resource();
    let generation = obj.metadata.generation;
    let old = obj.status.clone().unwrap_or_default();
    let status = match admit(&resource, ctx).await? {
        Err(rejected) => {
            let status = EventRouteStatus {
                conditions: vec![status::not_ready(
                    &old.conditions,
                    rejected.reason,
                    &rejected.message,
                    generation,
                )],
                observed_generation: generation,
            };
            if patch_status(api, obj, &old, &status).await? {
                warn(ctx, obj, rejected.reason, &rejected.message).await;
            }
            return Ok(rejected.retry(ctx));
        }
        Ok(()) => {
            if let Err(e) = ctx.store.put(&resource).await {
                warn(ctx, obj, "ConfigWriteFailed", &e.to_string()).await;
                return Err(e.into());
            }
            EventRouteStatus {
                conditions: vec![status::ready(
                    &old.conditions,
                    "Applied",
                    "route is in the routing config",
                    generation,
                )],
                observed_generation: generation,
            }
        }
    };
    patch_status(api, obj, &old, &status).await?;
    Ok(Action::await_change())
}

/// Merge-patches `status` unless it equals `old`; returns whether it did
/// (a rejection repeated unchanged emits no new event).
async fn patch_status<K, S>(api: &Api<K>, obj: &K, old: &S, status: &S) -> Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == status {
        return Ok(false);
    }
    let patch = Patch::Merge(json!({ "status": status }));
    api.patch_status(&obj.name_any(), &PatchParams::default(), &patch)
        .await
        .map_err(Error::Kube)?;
    Ok(true)
}

/// Emits a Warning event on `obj`; a failure to emit is only logged.
async fn warn<K>(ctx: &Context, obj: &K, reason: &str, message: &str)
where
    K: kube::Resource<DynamicType = ()>,
{
    tracing::warn!(resource = %obj.meta().name.as_deref().unwrap_or("?"), reason, message);
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(truncate(message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish a kubernetes event");
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// The current time as a Kubernetes `Time`.
pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Shared by the status builders.
pub(super) fn condition(
    old: &[Condition],
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map_or_else(now, |c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}
