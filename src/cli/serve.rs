//! `event-router serve`: run a router on the embedded in-memory broker, or
//! as one replica of a cluster sharing a Redis (`--redis URL`).
//!
//! Startup order: configuration (file, then environment and flags), logging,
//! resource files applied to the router, bind, then the stable line
//! `listening on ADDR` on stderr — anything that fails before that line
//! stops the process with a message and exit code 1. SIGINT or SIGTERM
//! starts a drain bounded by `--shutdown-grace`; the process then exits 0.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use event_router::broker::{MemoryBroker, RedisBroker, SharedBroker};
use event_router::config::{self, Config, LogFormat};
use event_router::resources::{self, Resource};
use event_router::telemetry::{self, TelemetryConfig};
use event_router::{Router, RouterError, server, shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Extra time past `--shutdown-grace` for the server to finish closing
/// connections before the process stops waiting for it.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// Run the router: HTTP, WebSocket and SSE on one port.
///
/// Runs on the embedded in-memory broker (one process; nothing survives a
/// restart) unless --redis is given: then any number of `serve --redis`
/// replicas pointing at the same Redis behave as one router, and events,
/// durable subscriptions and dead letters live in Redis. Resource files
/// (`-f`) holding `Subscription` and `EventRoute` documents are applied
/// before the first connection is accepted; a bad file stops startup.
///
/// Precedence of settings: flag > environment variable > `--config` file >
/// default. Once bound, the process prints `listening on ADDR` (the real
/// port when `:0` was asked for) on stderr. SIGINT/SIGTERM drain connections
/// for up to --shutdown-grace, then the process exits 0.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router serve\n  \
    event-router serve --listen 127.0.0.1:0 -f deploy/examples/subscription.yaml\n  \
    EVENT_ROUTER_LOG_FORMAT=text event-router serve --config router.yaml --shutdown-grace 30s\n  \
    event-router serve --config router.yaml --print-config\n  \
    event-router serve --redis redis://127.0.0.1:6379/")]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8080]; port 0 picks a free port.
    #[arg(long, env = "EVENT_ROUTER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Subscription/EventRoute YAML file to apply at startup (repeatable;
    /// comma-separated in the environment variable).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        env = "EVENT_ROUTER_FILES",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,

    /// YAML configuration file (keys in docs/configuration.md).
    #[arg(long, env = "EVENT_ROUTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as YAML and exit without serving.
    #[arg(long)]
    pub print_config: bool,

    /// Auth file: API keys, JWT, ACL, per-principal limits (docs/security.md).
    /// Without it (and without an `auth:` config section) everything is allowed.
    #[arg(
        long,
        env = "EVENT_ROUTER_AUTH",
        value_name = "FILE",
        help_heading = "Security"
    )]
    pub auth: Option<PathBuf>,

    /// PEM certificate chain: serve HTTPS/WSS (reloaded when the file changes).
    #[arg(
        long,
        env = "EVENT_ROUTER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "EVENT_ROUTER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: verify client certificates (mTLS); with `client_certs` in the auth file they authenticate.
    #[arg(
        long,
        env = "EVENT_ROUTER_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Do not serve the web console at `/ui` (docs/ui.md).
    #[arg(long, env = "EVENT_ROUTER_NO_UI", help_heading = "Security")]
    pub no_ui: bool,

    /// Largest event payload in bytes [default: 1048576].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_PAYLOAD_BYTES",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub max_payload_bytes: Option<NonZeroUsize>,

    /// Largest WebSocket frame or HTTP body in bytes [default: 2097152].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_FRAME_BYTES",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub max_frame_bytes: Option<NonZeroUsize>,

    /// Events queued per live subscriber before the oldest are dropped [default: 1024].
    #[arg(
        long,
        env = "EVENT_ROUTER_LIVE_QUEUE_CAPACITY",
        value_name = "EVENTS",
        help_heading = "Limits"
    )]
    pub live_queue_capacity: Option<NonZeroUsize>,

    /// Most subscriptions one connection may hold [default: 100].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_subscriptions_per_connection: Option<NonZeroUsize>,

    /// How long shutdown drains connections, e.g. 500ms, 10s [default: 10s].
    #[arg(
        long,
        env = "EVENT_ROUTER_SHUTDOWN_GRACE",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Limits"
    )]
    pub shutdown_grace: Option<Duration>,

    /// Interval of SSE keep-alive comments; 0s sends none [default: 15s].
    #[arg(
        long,
        env = "EVENT_ROUTER_SSE_KEEPALIVE",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Limits"
    )]
    pub sse_keepalive: Option<Duration>,

    /// Bytes queued per live subscriber before the oldest events are dropped; 0 means no byte bound [default: 4194304].
    #[arg(
        long,
        env = "EVENT_ROUTER_LIVE_QUEUE_MAX_BYTES",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub live_queue_max_bytes: Option<usize>,

    /// Most topic patterns in one subscription; 0 means no cap [default: 1000].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_PATTERNS_PER_SUBSCRIPTION",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_patterns_per_subscription: Option<usize>,

    /// Most bytes of topic patterns in one subscription; 0 means no cap [default: 65536].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_PATTERN_BYTES_PER_SUBSCRIPTION",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub max_pattern_bytes_per_subscription: Option<usize>,

    /// Most topic patterns over one connection's subscriptions; 0 means no cap [default: 10000].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_PATTERNS_PER_CONNECTION",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_patterns_per_connection: Option<usize>,

    /// Most bytes of topic patterns over one connection's subscriptions; 0 means no cap [default: 1048576].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_PATTERN_BYTES_PER_CONNECTION",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub max_pattern_bytes_per_connection: Option<usize>,

    /// Longest a client may take to send a complete request head; 0s means no limit [default: 10s].
    #[arg(
        long,
        env = "EVENT_ROUTER_HEADER_READ_TIMEOUT",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Limits"
    )]
    pub header_read_timeout: Option<Duration>,

    /// Longest a new connection may stay silent before it is closed; 0s means no limit [default: 10s].
    #[arg(
        long,
        env = "EVENT_ROUTER_IDLE_TIMEOUT",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Limits"
    )]
    pub idle_timeout: Option<Duration>,

    /// Most connections not yet authenticated; past it the oldest is closed; 0 means no cap [default: 512].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_UNAUTHENTICATED_CONNECTIONS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_unauthenticated_connections: Option<usize>,

    /// Most events kept in history for SSE resume and replay; 0 keeps none [default: 100000].
    #[arg(
        long,
        env = "EVENT_ROUTER_HISTORY_MAX_EVENTS",
        value_name = "EVENTS",
        help_heading = "Broker"
    )]
    pub history_max_events: Option<usize>,

    /// Longest an event is kept in history, e.g. 30m; 0 means no age limit [default: 1h].
    #[arg(
        long,
        env = "EVENT_ROUTER_HISTORY_MAX_AGE",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Broker"
    )]
    pub history_max_age: Option<Duration>,

    /// Most events one durable subscription holds before publishes are
    /// refused; 0 means unbounded [default: 1000000].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_QUEUED_PER_SUBSCRIPTION",
        value_name = "EVENTS",
        help_heading = "Broker"
    )]
    pub max_queued_per_subscription: Option<usize>,

    /// Most dead letters kept per subscription (oldest evicted); 0 means
    /// unbounded [default: 100000].
    #[arg(
        long,
        env = "EVENT_ROUTER_DEAD_LETTER_MAX",
        value_name = "ENTRIES",
        help_heading = "Broker"
    )]
    pub dead_letter_max: Option<usize>,

    /// Most bytes of events kept in history (oldest evicted); 0 means no byte bound [default: 268435456].
    #[arg(
        long,
        env = "EVENT_ROUTER_HISTORY_MAX_BYTES",
        value_name = "BYTES",
        help_heading = "Broker"
    )]
    pub history_max_bytes: Option<usize>,

    /// Most bytes of events one durable subscription holds before publishes are refused; 0 means no byte bound [default: 67108864].
    #[arg(
        long,
        env = "EVENT_ROUTER_MAX_QUEUED_BYTES_PER_SUBSCRIPTION",
        value_name = "BYTES",
        help_heading = "Broker"
    )]
    pub max_queued_bytes_per_subscription: Option<usize>,

    /// Run as a replica on this Redis instead of the in-memory broker,
    /// e.g. redis://127.0.0.1:6379/ or redis://:password@host:6379/0; on a
    /// Redis Cluster, several node URLs separated by commas.
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS",
        value_name = "URL",
        help_heading = "Redis"
    )]
    pub redis: Option<String>,

    /// Ingest partitions; the same on every replica [default: 16].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_PARTITIONS",
        value_name = "N",
        help_heading = "Redis"
    )]
    pub redis_partitions: Option<u32>,

    /// Prefix of every Redis key; replicas with another prefix share nothing [default: er].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_KEY_PREFIX",
        value_name = "PREFIX",
        help_heading = "Redis"
    )]
    pub redis_key_prefix: Option<String>,

    /// Membership heartbeat span: replicas heartbeat every fifth of it and `status` shows one silent for two thirds of it as gone [default: 15s].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_MEMBERSHIP_TTL",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Redis"
    )]
    pub redis_membership_ttl: Option<Duration>,

    /// A dead replica's un-acked deliveries are redelivered after this [default: 30s].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_RECLAIM_IDLE",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Redis"
    )]
    pub redis_reclaim_idle: Option<Duration>,

    /// Bound of every Redis call; publishes fail with 503 after it while Redis is down [default: 2s].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_COMMAND_TIMEOUT",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Redis"
    )]
    pub redis_command_timeout: Option<Duration>,

    /// Producer dedup window: an event id published again within it is stored once; 0s is off [default: 0s].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_DEDUP_WINDOW",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Redis"
    )]
    pub redis_dedup_window: Option<Duration>,

    /// Redis replicas that must acknowledge each publish (WAIT) before it is answered; fewer in time is a 503; 0 is off [default: 0].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_WAIT_REPLICAS",
        value_name = "N",
        help_heading = "Redis"
    )]
    pub redis_wait_replicas: Option<u32>,

    /// How long a publish waits for --redis-wait-replicas [default: 1s].
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_WAIT_TIMEOUT",
        value_name = "DURATION",
        value_parser = config::parse_duration,
        help_heading = "Redis"
    )]
    pub redis_wait_timeout: Option<Duration>,

    /// This replica's id [default: host name plus a random suffix, new per start].
    #[arg(
        long,
        env = "EVENT_ROUTER_NODE_ID",
        value_name = "ID",
        help_heading = "Redis"
    )]
    pub node_id: Option<String>,

    /// Log format: auto (JSON unless stderr is a terminal), json or text
    /// [default: auto]. Levels come from RUST_LOG (default info).
    #[arg(
        long,
        env = "EVENT_ROUTER_LOG_FORMAT",
        value_name = "FORMAT",
        help_heading = "Logging"
    )]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The configuration file (if any) overlaid by flags and environment,
    /// validated.
    ///
    /// # Errors
    /// An unreadable or invalid file, or an invalid value, named.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        self.overlay(&mut config);
        if let Some(path) = &self.auth {
            config.auth = Some(event_router::auth::AuthConfig::load(path)?);
        }
        config.validate()?;
        Ok(config)
    }

    fn overlay(&self, c: &mut Config) {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut c.listen, &self.listen);
        if !self.files.is_empty() {
            c.files.clone_from(&self.files);
        }
        set(&mut c.log.format, &self.log_format);
        set(&mut c.router.max_payload_bytes, &self.max_payload_bytes);
        set(&mut c.server.max_frame_bytes, &self.max_frame_bytes);
        set(&mut c.server.live_queue_capacity, &self.live_queue_capacity);
        set(
            &mut c.server.max_subscriptions_per_connection,
            &self.max_subscriptions_per_connection,
        );
        set(&mut c.server.shutdown_grace, &self.shutdown_grace);
        set(&mut c.server.sse_keepalive, &self.sse_keepalive);
        let s = &mut c.server;
        set(&mut s.live_queue_max_bytes, &self.live_queue_max_bytes);
        set(
            &mut s.max_patterns_per_subscription,
            &self.max_patterns_per_subscription,
        );
        set(
            &mut s.max_pattern_bytes_per_subscription,
            &self.max_pattern_bytes_per_subscription,
        );
        set(
            &mut s.max_patterns_per_connection,
            &self.max_patterns_per_connection,
        );
        set(
            &mut s.max_pattern_bytes_per_connection,
            &self.max_pattern_bytes_per_connection,
        );
        set(&mut s.header_read_timeout, &self.header_read_timeout);
        set(&mut s.idle_timeout, &self.idle_timeout);
        set(
            &mut s.max_unauthenticated_connections,
            &self.max_unauthenticated_connections,
        );
        if self.tls_cert.is_some() {
            c.server.tls_cert.clone_from(&self.tls_cert);
            c.server.tls_key.clone_from(&self.tls_key);
        }
        if self.no_ui {
            c.server.ui = false;
        }
        if self.tls_client_ca.is_some() {
            c.server.tls_client_ca.clone_from(&self.tls_client_ca);
        }
        set(&mut c.broker.history_max_events, &self.history_max_events);
        set(&mut c.broker.history_max_age, &self.history_max_age);
        set(
            &mut c.broker.max_queued_per_subscription,
            &self.max_queued_per_subscription,
        );
        set(&mut c.broker.dead_letter_max, &self.dead_letter_max);
        set(&mut c.broker.history_max_bytes, &self.history_max_bytes);
        set(
            &mut c.broker.max_queued_bytes_per_subscription,
            &self.max_queued_bytes_per_subscription,
        );
        if self.redis.is_some() {
            c.redis.url.clone_from(&self.redis);
        }
        set(&mut c.redis.partitions, &self.redis_partitions);
        set(&mut c.redis.key_prefix, &self.redis_key_prefix);
        set(&mut c.redis.membership_ttl, &self.redis_membership_ttl);
        set(&mut c.redis.reclaim_idle, &self.redis_reclaim_idle);
        set(&mut c.redis.command_timeout, &self.redis_command_timeout);
        set(&mut c.redis.dedup_window, &self.redis_dedup_window);
        set(&mut c.redis.wait_replicas, &self.redis_wait_replicas);
        set(&mut c.redis.wait_timeout, &self.redis_wait_timeout);
        set(&mut c.redis.node_id, &self.node_id);
    }
}

/// Runs `serve` until SIGINT/SIGTERM and a drain.
///
/// # Errors
/// Invalid configuration or resource file, a port that cannot be bound, or
/// a server that fails.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    if args.print_config {
        print!("{}", config.to_yaml()?);
        return Ok(ExitCode::SUCCESS);
    }
    let telemetry = telemetry::init(&TelemetryConfig {
        log_format: config.log.format,
    })
    .context("cannot start telemetry")?;
    let loaded = load_resources(&config.files)?;
    let broker = connect_broker(&config).await?;
    let router = Router::new(broker.shared, config.router_config());
    apply_resources(&router, &loaded).await?;
    let _config_watch = watch_config(&config, &router, &loaded).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let stop = super::shutdown_signal().await;
    announce(addr, &loaded, &broker.description);
    serve_until_signal(listener, &config, router, stop).await?;
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Serves until `stop` completes, then drains with a deadline and closes
/// the broker.
async fn serve_until_signal(
    listener: TcpListener,
    config: &Config,
    router: Arc<Router>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut server = tracker.spawn(server::run(
        listener,
        event_router::auth::server_config(config)?,
        router.clone(),
        token.clone(),
    ));
    tracker.close();
    let early = tokio::select! {
        () = stop => None,
        result = &mut server => Some(result),
    };
    token.cancel();
    if let Some(result) = early {
        router.broker().close().await;
        return match result {
            Ok(Ok(())) => Err(anyhow!("the server stopped without being asked to")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the server failed")),
            Err(e) => Err(anyhow!("the server task failed: {e}")),
        };
    }
    let grace = config.server.shutdown_grace;
    tracing::info!(grace = %config::format_duration(grace), "draining connections");
    let drained = tokio::select! {
        r = tokio::time::timeout(grace + DRAIN_MARGIN, tracker.wait()) => r.is_ok(),
        () = shutdown::signal() => {
            tracing::warn!("second signal: stopping without waiting for the drain");
            false
        }
    };
    let outcome = if drained {
        match server.await {
            Ok(result) => result.context("the server failed while draining"),
            Err(e) => Err(anyhow!("the server task failed: {e}")),
        }
    } else {
        tracing::warn!("connections still open after the grace period; closing them");
        server.abort();
        Ok(())
    };
    router.broker().close().await;
    tracing::info!("stopped");
    outcome
}

/// The broker `serve` runs on, and how to describe it at startup.
struct Started {
    shared: SharedBroker,
    /// `None` for the in-memory broker (which gets a warning instead).
    description: Option<String>,
}

/// The Redis broker when `redis.url` is set, else the in-memory broker.
///
/// # Errors
/// Redis unreachable within `redis.command_timeout`, or a bad URL, named.
async fn connect_broker(config: &Config) -> anyhow::Result<Started> {
    let Some(redis) = config.redis_config() else {
        return Ok(Started {
            shared: Arc::new(MemoryBroker::new(config.broker_config())),
            description: None,
        });
    };
    let url = redact_url(&redis.url);
    let partitions = redis.partitions;
    let broker = RedisBroker::connect(redis)
        .await
        .with_context(|| format!("cannot start the redis broker at {url}"))?;
    let description = format!(
        "broker: redis at {url}, node {}, {partitions} partitions",
        broker.node_id()
    );
    Ok(Started {
        shared: Arc::new(broker),
        description: Some(description),
    })
}

/// A Redis URL without its password, for logs.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// The stable startup lines on stderr (tests and scripts parse the first),
/// repeated in the logs.
fn announce(addr: SocketAddr, loaded: &Loaded, broker: &Option<String>) {
    eprintln!("listening on {addr}");
    match broker {
        Some(line) => eprintln!("{line}"),
        None => eprintln!(
            "WARNING: embedded in-memory broker: single process, nothing survives a restart \
             (events, durable subscriptions and dead letters are lost when it stops)"
        ),
    }
    tracing::info!(
        %addr,
        resources = loaded.resources.len(),
        version = env!("CARGO_PKG_VERSION"),
        "listening on {addr}"
    );
    match broker {
        Some(line) => tracing::info!("{line}"),
        None => tracing::warn!(
            "running on the embedded in-memory broker: single process, nothing survives a restart"
        ),
    }
}

/// Resource documents read from files, with the file each came from.
#[derive(Debug, Default)]
struct Loaded {
    resources: Vec<Resource>,
    origin: HashMap<String, PathBuf>,
}

/// Reads and parses every file; the first bad one stops startup.
fn load_resources(files: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::default();
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read resource file {}", path.display()))?;
        let docs = resources::parse_documents(&text)
            .map_err(|e| anyhow!("resource file {}: {e}", path.display()))?;
        if docs.is_empty() {
            tracing::warn!(file = %path.display(), "resource file holds no documents");
        }
        for doc in docs {
            loaded
                .origin
                .entry(doc.describe())
                .or_insert_with(|| path.clone());
            loaded.resources.push(doc);
        }
    }
    Ok(loaded)
}

/// With `--redis`: hot-reloads the Subscriptions and EventRoutes that the
/// operator or `apply` write into Redis (see docs/operator.md), keeping the
/// `-f` files' documents in force alongside them. Stops when dropped.
async fn watch_config(
    config: &Config,
    router: &Arc<Router>,
    loaded: &Loaded,
) -> anyhow::Result<Option<event_router::operator::ConfigWatcher>> {
    use event_router::operator::store;
    let Some(redis) = config.redis_config() else {
        return Ok(None);
    };
    let store = store::ConfigStore::connect(&redis.url, &redis.key_prefix)
        .await
        .context("cannot read the routing config from redis")?;
    let watcher = store::ConfigWatcher::start(
        router.clone(),
        store,
        loaded.resources.clone(),
        store::DEFAULT_POLL,
    )
    .await
    .context("cannot load the routing config from redis")?;
    Ok(Some(watcher))
}

/// Applies everything at once (routes replace the route table as a whole),
/// naming the file of a rejected document.
async fn apply_resources(router: &Router, loaded: &Loaded) -> anyhow::Result<()> {
    if loaded.resources.is_empty() {
        return Ok(());
    }
    router
        .apply(&loaded.resources)
        .await
        .map_err(|e| match &e {
            RouterError::Resource { resource, .. } => {
                let file = loaded.origin.get(resource).map_or(Path::new("?"), |p| p);
                anyhow!("resource file {}: {e}", file.display())
            }
            _ => anyhow::Error::new(e).context("cannot apply resource files"),
        })?;
    for resource in &loaded.resources {
        tracing::info!(resource = %resource.describe(), "resource applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(argv: &[&str]) -> ServeArgs {
        let mut all = vec!["serve"];
        all.extend_from_slice(argv);
        Wrapper::try_parse_from(all).unwrap().serve
    }

    #[test]
    fn flags_override_defaults() {
        let c = args(&[
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "1s",
            "-f",
            "a.yaml",
        ])
        .config()
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(1));
        assert_eq!(c.files, vec![PathBuf::from("a.yaml")]);
        assert_eq!(c.server.live_queue_capacity.get(), 1024);
    }

    #[test]
    fn invalid_combination_is_rejected_after_overlay() {
        let err = args(&["--max-payload-bytes", "5000000"])
            .config()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("server.max_frame_bytes"),
            "{err:#}"
        );
    }

    #[test]
    fn redis_flags_select_the_redis_broker_with_their_settings() {
        let c = args(&[
            "--redis",
            "redis://127.0.0.1:6390/",
            "--redis-membership-ttl",
            "2s",
            "--redis-partitions",
            "4",
            "--node-id",
            "a",
        ])
        .config()
        .unwrap();
        let r = c.redis_config().unwrap();
        assert_eq!(r.url, "redis://127.0.0.1:6390/");
        assert_eq!(r.membership_ttl, Duration::from_secs(2));
        assert_eq!(r.partitions, 4);
        assert_eq!(r.node_id, "a");
        assert!(args(&[]).config().unwrap().redis_config().is_none());
        let err = args(&["--redis", "redis://x/", "--redis-partitions", "0"])
            .config()
            .unwrap_err();
        assert!(format!("{err:#}").contains("redis.partitions"), "{err:#}");
    }

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@h/"), "redis://:***@h/");
        assert_eq!(redact_url("redis://h:6379/"), "redis://h:6379/");
    }

    #[test]
    fn bad_duration_flag_names_the_text() {
        let err = Wrapper::try_parse_from(["serve", "--shutdown-grace", "soon"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }
}
