//! The Kubernetes operator (DESIGN §7): `Subscription` and `EventRoute`
//! custom resources reconciled into the routing config in Redis, which
//! every `serve --redis` replica hot-reloads.
//!
//! # Layout
//!
//! - [`crd`]: the custom resource types and their generated CRDs.
//! - [`reconcile`]: admit, write config, durable groups, finalizers.
//! - [`status`]: the `Ready` condition and counters written back.
//! - [`store`]: the config documents in Redis, and the replicas' watcher.
//! - [`leader`]: leader election on a `Lease`.
//! - [`probes`]: `/healthz` and `/readyz` on the probe port.
//!
//! [`run`] campaigns for the lease and, while it leads, runs one
//! controller per kind; on losing the lease it stops them and campaigns
//! again. It also connects a Redis broker (to create and delete durable
//! groups and read their counters), which takes part in routing like any
//! replica.

pub mod crd;
pub mod leader;
pub mod probes;
pub mod reconcile;
pub mod status;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, RedisBroker, RedisBrokerConfig, SharedBroker};

pub use crd::{EventRoute, EventRouteStatus, Subscription, SubscriptionStatus};
pub use leader::LeaderElector;
pub use probes::{Probes, Role};
pub use reconcile::{Context, ROUTE_FINALIZER, SUBSCRIPTION_FINALIZER};
pub use store::{ConfigStore, ConfigWatcher, StoreError};

/// What can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[source] kube::Error),
    /// The Redis config store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    /// Adding or removing a finalizer, or a cleanup, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The CRDs are not installed in the cluster.
    #[error(
        "the {0} CRD is not installed (or not readable): install it with \
         `event-router crd | kubectl apply -f -`"
    )]
    CrdMissing(&'static str),
}

impl Error {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Store(_) => "store",
            Error::Broker(_) => "broker",
            Error::Finalizer(_) => "finalizer",
            Error::CrdMissing(_) => "crd_missing",
        }
    }
}

/// Result alias of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The Redis the replicas share (`redis://...`).
    pub redis_url: String,
    /// Key prefix, the same as the replicas'. Default `er`.
    pub key_prefix: String,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Namespace of the leader lease.
    pub lease_namespace: String,
    /// Name of the leader lease. Default `event-router-operator`.
    pub lease_name: String,
    /// This replica's identity in the lease (pod name).
    pub identity: String,
    /// Lease duration: a dead leader is replaced after this. Default 15 s.
    pub lease_duration: Duration,
    /// Interval of status updates of healthy resources. Default 15 s.
    pub status_interval: Duration,
}

/// Connects to Redis, then leads or waits to lead until `token` is
/// cancelled; returns after releasing the lease. With `probe_listener`,
/// serves [`probes`] on it meanwhile.
///
/// # Errors
/// Redis unreachable at startup, or the CRDs missing.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    probe_listener: Option<tokio::net::TcpListener>,
    token: CancellationToken,
) -> Result<()> {
    check_crds(&client, config.namespace.as_deref()).await?;
    let store = ConfigStore::connect(&config.redis_url, &config.key_prefix).await?;
    let mut broker_config = RedisBrokerConfig::new(config.redis_url.clone());
    broker_config.key_prefix.clone_from(&config.key_prefix);
    let redis = Arc::new(RedisBroker::connect(broker_config).await?);
    let broker: SharedBroker = redis.clone();
    let probes = Probes::new(client.clone(), broker.clone());
    let probe_server = probe_listener.map(|listener| {
        let probes = probes.clone();
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(error) = probes.serve(listener, token).await {
                tracing::warn!(%error, "the probe server stopped");
            }
        })
    });
    let mut context = Context::new(client.clone(), store, broker);
    context.status_interval = config.status_interval;
    let ctx = Arc::new(context);
    let elector = LeaderElector::new(
        client,
        &config.lease_namespace,
        &config.lease_name,
        &config.identity,
        config.lease_duration,
    );
    tracing::info!(identity = %config.identity, lease = %config.lease_name, "operator started; campaigning for the lease");
    while campaign(&elector, &probes, &token).await {
        probes.set_role(Role::Leader);
        lead(&elector, &ctx, config.namespace.clone(), &token).await;
        probes.set_role(Role::Standby);
    }
    elector.release().await;
    redis.close().await;
    if let Some(task) = probe_server {
        task.abort();
    }
    tracing::info!("operator stopped");
    Ok(())
}

async fn check_crds(client: &Client, namespace: Option<&str>) -> Result<()> {
    let one = ListParams::default().limit(1);
    let subs: Api<Subscription> = scoped(client, namespace);
    subs.list(&one)
        .await
        .map_err(|_| Error::CrdMissing("subscriptions.eventrouter.dev"))?;
    let routes: Api<EventRoute> = scoped(client, namespace);
    routes
        .list(&one)
        .await
        .map_err(|_| Error::CrdMissing("eventroutes.eventrouter.dev"))?;
    Ok(())
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Waits until this replica holds the lease; `false` when cancelled first.
/// While another replica holds it, the probes report [`Role::Standby`].
async fn campaign(elector: &LeaderElector, probes: &Probes, token: &CancellationToken) -> bool {
    loop {
        if token.is_cancelled() {
            return false;
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => return true,
            Ok(false) => probes.set_role(Role::Standby),
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::select! {
            () = token.cancelled() => return false,
            () = tokio::time::sleep(elector.renew_every()) => {}
        }
    }
}

/// Runs the controllers while the lease is renewed; returns when it is
/// lost or `token` is cancelled.
async fn lead(
    elector: &LeaderElector,
    ctx: &Arc<Context>,
    namespace: Option<String>,
    token: &CancellationToken,
) {
    tracing::info!(identity = %elector.identity(), "leading: reconciling Subscriptions and EventRoutes");
    let leading = token.child_token();
    let controllers = tokio::spawn(controllers(ctx.clone(), namespace, leading.clone()));
    let mut renewed = Instant::now();
    // Give up a little before the lease runs out, so that two leaders never
    // overlap.
    let give_up = elector.renew_every() * 2;
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(elector.renew_every()) => {}
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!("leader lease lost; stopping controllers");
                break;
            }
            Err(e) if renewed.elapsed() >= give_up => {
                tracing::warn!(error = %e, "leader lease not renewed in time; stopping controllers");
                break;
            }
            Err(e) => tracing::warn!(error = %e, "leader lease renewal failed; retrying"),
        }
    }
    leading.cancel();
    let _ = controllers.await;
}

/// One controller per kind until `token` is cancelled.
async fn controllers(ctx: Arc<Context>, namespace: Option<String>, token: CancellationToken) {
    let client = ctx.client.clone();
    let config = watcher::Config::default().any_semantic();
    let subs = Controller::new(
        scoped::<Subscription>(&client, namespace.as_deref()),
        config.clone(),
    )
    .graceful_shutdown_on(token.clone().cancelled_owned())
    .run(
        reconcile::reconcile_subscription,
        reconcile::error_policy::<Subscription>,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "subscription reconcile did not complete");
        }
    });
    let routes = Controller::new(scoped::<EventRoute>(&client, namespace.as_deref()), config)
        .graceful_shutdown_on(token.cancelled_owned())
        .run(
            reconcile::reconcile_route,
            reconcile::error_policy::<EventRoute>,
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "route reconcile did not complete");
            }
        });
    tokio::join!(subs, routes);
}
