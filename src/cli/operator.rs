//! `event-router operator`: the Kubernetes operator (DESIGN §7).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use event_router::config;
use event_router::operator::{self, OperatorConfig, leader, probes};
use tokio_util::sync::CancellationToken;

/// Run the operator: reconcile Subscription and EventRoute resources into
/// the routing config in Redis.
///
/// Replicas (`serve --redis` with the same Redis and key prefix) reload
/// the config without a restart. Of several operator replicas one leads
/// (a coordination.k8s.io Lease); the others wait to take over. Needs the
/// CRDs (`event-router crd | kubectl apply -f -`) and the RBAC of
/// deploy/rbac/operator-rbac.yaml; see docs/operator.md.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router operator --redis redis://redis:6379/\n  \
    event-router operator --redis redis://redis:6379/ --namespace agents\n  \
    curl -s localhost:8081/readyz      # {\"status\":\"ready\",\"role\":\"leader\",\"checks\":{...}}")]
pub struct OperatorArgs {
    /// The Redis the replicas share, e.g. redis://redis:6379/.
    #[arg(long, env = "EVENT_ROUTER_REDIS", value_name = "URL")]
    pub redis: String,

    /// Prefix of every Redis key, as given to the replicas.
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_KEY_PREFIX",
        value_name = "PREFIX",
        default_value = "er"
    )]
    pub redis_key_prefix: String,

    /// Watch only this namespace [default: all namespaces].
    #[arg(long, env = "EVENT_ROUTER_WATCH_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NAMESPACE",
        default_value = "default"
    )]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = leader::DEFAULT_LEASE_NAME)]
    pub lease_name: String,

    /// This replica's identity in the Lease [default: pod name or host name].
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    pub identity: Option<String>,

    /// Lease duration: a dead leader is replaced after this.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = config::parse_duration)]
    pub lease_duration: Duration,

    /// Interval of status updates (pending, lag, DLQ, consumers).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = config::parse_duration)]
    pub status_interval: Duration,

    /// Address of the probe port: GET /healthz (liveness) and /readyz
    /// (leader or standby, API server and Redis reachable).
    #[arg(
        long,
        env = "EVENT_ROUTER_PROBE_LISTEN",
        value_name = "ADDR",
        default_value = probes::DEFAULT_PROBE_LISTEN
    )]
    pub probe_listen: String,
}

/// Runs the operator until SIGINT/SIGTERM.
///
/// # Errors
/// No Kubernetes API, Redis unreachable, or the CRDs missing.
pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (run in a cluster, or set KUBECONFIG)")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let config = OperatorConfig {
        redis_url: args.redis,
        key_prefix: args.redis_key_prefix,
        namespace: args.namespace,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration: args.lease_duration,
        status_interval: args.status_interval.max(Duration::from_secs(1)),
    };
    let probe_listener = tokio::net::TcpListener::bind(&args.probe_listen)
        .await
        .with_context(|| format!("cannot listen on --probe-listen {}", args.probe_listen))?;
    if let Ok(addr) = probe_listener.local_addr() {
        // A stable line for scripts and tests, like `serve`'s.
        eprintln!("probes listening on {addr}");
    }
    let token = CancellationToken::new();
    let stop = super::shutdown_signal().await;
    let cancel = token.clone();
    tokio::spawn(async move {
        stop.await;
        cancel.cancel();
    });
    operator::run(client, config, Some(probe_listener), token).await?;
    Ok(ExitCode::SUCCESS)
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "operator".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Logs to stdout: JSON unless stdout is a terminal; `RUST_LOG` (default info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // Fails only when a subscriber is already installed, which keeps logging.
    let _ = if std::io::stdout().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
