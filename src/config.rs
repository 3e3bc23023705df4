//! Configuration shared across components, and duration parsing.
//!
//! [`Config`] is the one configuration of `event-router serve`: read from a
//! YAML file ([`Config::from_yaml`]), overlaid by environment variables and
//! flags in `cli/serve.rs`, then [validated](Config::validate) once. Each
//! component receives only its own configuration ([`Config::router_config`],
//! [`Config::server_config`], [`Config::broker_config`]). `docs/configuration.md`
//! lists every key with its flag and environment variable.
//!
//! Durations are written `250ms`, `30s`, `5m`, `1h` or `1d`; a bare number
//! means seconds.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{MemoryBrokerConfig, RedisBrokerConfig};
use crate::router::RouterConfig;
use crate::server::{self, ServerConfig};

/// Default address of `serve`: every interface, port 8080.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT);
/// Default port of `serve` and of the client commands' `--url`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default largest event payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: NonZeroUsize = nonzero(1024 * 1024);
/// Default largest WebSocket frame or HTTP body: 2 MiB, room for a
/// payload of [`DEFAULT_MAX_PAYLOAD_BYTES`] and its envelope.
pub const DEFAULT_MAX_FRAME_BYTES: NonZeroUsize = nonzero(2 * 1024 * 1024);
/// Default bound of one live subscriber's queue, in events.
pub const DEFAULT_LIVE_QUEUE_CAPACITY: NonZeroUsize = nonzero(1024);
/// Default most subscriptions one connection may hold.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION: NonZeroUsize = nonzero(100);
/// Default time shutdown waits for connections to drain.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default interval of SSE keep-alive comments.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Evaluated in `const` items only, so a zero default fails the build
/// instead of panicking at run time.
const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("default must not be zero"),
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML of the expected shape.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file (`<text>` for [`Config::from_yaml`]).
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config value {key}: {reason}")]
    Invalid {
        /// The key, as written in the file (`server.max_frame_bytes`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// How `serve` writes its logs (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text when it is.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(LogFormat::Auto),
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!(
                "unknown log format {other:?} (expected auto, json or text)"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Auto => "auto",
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        })
    }
}

/// The configuration of `event-router serve`.
///
/// Every key is optional in the file; precedence is flag > environment
/// variable > file > default.
///
/// # Examples
///
/// ```
/// use event_router::config::Config;
///
/// let config = Config::from_yaml("listen: 127.0.0.1:9000\nserver:\n  shutdown_grace: 3s\n").unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.listen.port(), 9000);
/// assert_eq!(config.server.shutdown_grace.as_secs(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address HTTP, WebSocket and SSE share. Default `0.0.0.0:8080`;
    /// port 0 picks a free port (logged at startup).
    pub listen: SocketAddr,
    /// Resource files (`Subscription`/`EventRoute` YAML) applied before the
    /// first connection is accepted. Default none; relative paths are
    /// relative to the working directory.
    pub files: Vec<PathBuf>,
    /// Logging.
    pub log: LogSection,
    /// The router core.
    pub router: RouterSection,
    /// The HTTP/WebSocket/SSE server.
    pub server: ServerSection,
    /// History and dead-letter limits (both brokers), and the embedded
    /// in-memory broker's queue bound.
    pub broker: BrokerSection,
    /// The Redis broker; without `redis.url` the embedded in-memory broker
    /// runs.
    pub redis: RedisSection,
    /// Authentication, ACL and per-principal limits (the same document as
    /// `serve --auth FILE`, which takes precedence). Default none: no
    /// authentication, everything allowed (logged as a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::auth::AuthConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            files: Vec::new(),
            log: LogSection::default(),
            router: RouterSection::default(),
            server: ServerSection::default(),
            broker: BrokerSection::default(),
            redis: RedisSection::default(),
            auth: None,
        }
    }
}

/// Logging (`log:` in the file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `auto` (default: JSON when stdout is not a terminal), `json` or
    /// `text`. Levels come from `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

/// The router core (`router:` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSection {
    /// Largest accepted event payload, in bytes of compact JSON. Default
    /// 1048576 (1 MiB); zero is rejected.
    pub max_payload_bytes: NonZeroUsize,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// The server (`server:` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Largest WebSocket frame or HTTP request body, in bytes. Default
    /// 2097152 (2 MiB); must be at least `router.max_payload_bytes`; zero
    /// is rejected.
    pub max_frame_bytes: NonZeroUsize,
    /// Bound of each live subscriber's queue, in events; when full the
    /// oldest events are dropped and the client gets an `overflow` notice.
    /// Default 1024; zero is rejected.
    pub live_queue_capacity: NonZeroUsize,
    /// Most subscriptions one connection may hold. Default 100; zero is
    /// rejected.
    pub max_subscriptions_per_connection: NonZeroUsize,
    /// How long shutdown waits for connections to drain before closing
    /// them, e.g. `10s`. Default `10s`; `0s` closes them at once.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Interval of SSE keep-alive comments, e.g. `15s`. Default `15s`;
    /// `0s` sends none.
    #[serde(with = "duration")]
    pub sse_keepalive: Duration,
    /// Byte bound of each live subscriber's queue (events by their
    /// in-memory size); past it the oldest events are dropped as for
    /// `live_queue_capacity`. Default 4194304 (4 MiB); zero means no byte
    /// bound.
    pub live_queue_max_bytes: usize,
    /// Most topic patterns in one subscription (`too_many_patterns`
    /// beyond). Default 1000; zero means no cap.
    pub max_patterns_per_subscription: usize,
    /// Most bytes of topic-pattern text in one subscription. Default 65536
    /// (64 KiB); zero means no cap.
    pub max_pattern_bytes_per_subscription: usize,
    /// Most topic patterns over all subscriptions of one connection.
    /// Default 10000; zero means no cap.
    pub max_patterns_per_connection: usize,
    /// Most bytes of topic-pattern text over all subscriptions of one
    /// connection. Default 1048576 (1 MiB); zero means no cap.
    pub max_pattern_bytes_per_connection: usize,
    /// Longest a client may take to send a complete request head (from its
    /// first byte, and between requests on a keep-alive connection) before
    /// the connection is closed, e.g. `10s`. Default `10s`; `0s` means no
    /// limit.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Longest a new connection may stay silent (no byte received) before
    /// it is closed, e.g. `10s`. Default `10s`; `0s` means no limit.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Most connections without an answered, authenticated request (not
    /// 401/403) yet; past it the oldest such connection is closed. Keep it
    /// well below the process's file limit. Default 512; zero means no cap.
    pub max_unauthenticated_connections: usize,
    /// Serve the web console at `/ui` (`docs/ui.md`). Default `true`;
    /// `false` answers 404 there.
    pub ui: bool,
    /// PEM certificate chain: serve HTTPS/WSS (reloaded when it changes).
    /// Needs `tls_key`. Default none: plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the certificate authorities whose client certificates
    /// the TLS listener accepts (mTLS; reloaded when it changes). Clients
    /// without a certificate may still connect and use tokens; one with a
    /// certificate that does not verify is refused in the handshake.
    /// `auth.client_certs` makes verified certificates credentials. Needs
    /// `tls_cert`. Default none: client certificates are not requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            live_queue_capacity: DEFAULT_LIVE_QUEUE_CAPACITY,
            max_subscriptions_per_connection: DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
            live_queue_max_bytes: server::DEFAULT_LIVE_QUEUE_MAX_BYTES,
            max_patterns_per_subscription: server::DEFAULT_MAX_PATTERNS_PER_SUBSCRIPTION,
            max_pattern_bytes_per_subscription: server::DEFAULT_MAX_PATTERN_BYTES_PER_SUBSCRIPTION,
            max_patterns_per_connection: server::DEFAULT_MAX_PATTERNS_PER_CONNECTION,
            max_pattern_bytes_per_connection: server::DEFAULT_MAX_PATTERN_BYTES_PER_CONNECTION,
            header_read_timeout: server::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: server::DEFAULT_IDLE_TIMEOUT,
            max_unauthenticated_connections: server::DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS,
            ui: true,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// The embedded in-memory broker (`broker:` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSection {
    /// Most events kept in history (for SSE resume, `GET /api/v1/events`
    /// and replay), across all topics; the oldest are evicted first.
    /// Default 100000; zero keeps no history.
    pub history_max_events: usize,
    /// How long an event stays in history after it was published, e.g.
    /// `30m`. Default `1h`; zero means no age limit (only
    /// `history_max_events` bounds history).
    #[serde(with = "duration")]
    pub history_max_age: Duration,
    /// Most events one durable subscription holds (queued, in flight or
    /// retrying); a publish that would exceed it is refused (503), so a
    /// stalled subscription pushes back on publishers. Default 1000000;
    /// zero means unbounded.
    pub max_queued_per_subscription: usize,
    /// Most dead letters kept per subscription; beyond it the oldest is
    /// evicted. Default 100000; zero means unbounded.
    pub dead_letter_max: usize,
    /// Most bytes of events (by in-memory size) kept in history; the
    /// oldest are evicted first and counted in
    /// `event_router_dropped_total{reason="history_bytes"}`. Default
    /// 268435456 (256 MiB); zero means no byte bound. Memory broker only.
    pub history_max_bytes: usize,
    /// Most bytes of events one durable subscription holds (queued, in
    /// flight or retrying); a publish that would exceed it is refused with
    /// 503 `queue_full` and nothing stored. Default 67108864 (64 MiB); zero
    /// means no byte bound. Memory broker only.
    pub max_queued_bytes_per_subscription: usize,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            history_max_events: MemoryBrokerConfig::DEFAULT_HISTORY_MAX_EVENTS,
            history_max_age: MemoryBrokerConfig::DEFAULT_HISTORY_MAX_AGE,
            max_queued_per_subscription: MemoryBrokerConfig::DEFAULT_MAX_QUEUED_PER_SUBSCRIPTION,
            dead_letter_max: MemoryBrokerConfig::DEFAULT_DEAD_LETTER_MAX,
            history_max_bytes: MemoryBrokerConfig::DEFAULT_HISTORY_MAX_BYTES,
            max_queued_bytes_per_subscription:
                MemoryBrokerConfig::DEFAULT_MAX_QUEUED_BYTES_PER_SUBSCRIPTION,
        }
    }
}

/// The Redis broker (`redis:` in the file). Every replica that points at
/// the same Redis (and `key_prefix`) is part of one router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port[/db]`. Default none: the
    /// embedded in-memory broker runs instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// History partitions, the unit of per-key order in history and of
    /// spreading over Redis Cluster slots. Every replica must use the same
    /// value. Default 16; 1..=1024.
    pub partitions: u32,
    /// Prefix of every Redis key; routers with different prefixes share
    /// nothing. Default `er`; must not be empty or contain braces.
    pub key_prefix: String,
    /// Membership heartbeat span: replicas heartbeat every fifth of it, and
    /// `status` shows a replica silent for two thirds of it as gone.
    /// Default `15s`; at least `100ms`.
    #[serde(with = "duration")]
    pub membership_ttl: Duration,
    /// A durable delivery held this long without keep-alive belongs to a
    /// dead replica and is redelivered (as an ack timeout). Default `30s`;
    /// at least `30ms`.
    #[serde(with = "duration")]
    pub reclaim_idle: Duration,
    /// Bound of every Redis call; publishes fail with 503 `unavailable`
    /// after it while Redis is unreachable. Default `2s`; zero is rejected.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Producer dedup window: an event id published again within it is not
    /// stored twice (a client retrying after a lost confirmation). One key
    /// per event for the window. Default `0s`: off.
    #[serde(with = "duration")]
    pub dedup_window: Duration,
    /// Redis replicas that must acknowledge every publish (`WAIT`) before
    /// it is answered; fewer within `wait_timeout` answers 503 (the event
    /// is on the master and may survive). Default 0: off.
    pub wait_replicas: u32,
    /// How long a publish waits for `wait_replicas`. Default `1s`; zero is
    /// rejected when `wait_replicas` is set.
    #[serde(with = "duration")]
    pub wait_timeout: Duration,
    /// This replica's id in membership and consumer names. Default
    /// empty: a fresh id per process start (host name plus a random
    /// suffix), so a restarted replica never inherits a dead one's work.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_id: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: None,
            partitions: RedisBrokerConfig::DEFAULT_PARTITIONS,
            key_prefix: RedisBrokerConfig::DEFAULT_KEY_PREFIX.to_string(),
            membership_ttl: RedisBrokerConfig::DEFAULT_MEMBERSHIP_TTL,
            reclaim_idle: RedisBrokerConfig::DEFAULT_RECLAIM_IDLE,
            command_timeout: RedisBrokerConfig::DEFAULT_COMMAND_TIMEOUT,
            dedup_window: Duration::ZERO,
            wait_replicas: 0,
            wait_timeout: RedisBrokerConfig::DEFAULT_WAIT_TIMEOUT,
            node_id: String::new(),
        }
    }
}

impl Config {
    /// Reads a YAML configuration file; absent keys keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`] naming the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses YAML configuration text; absent keys keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the unknown key or bad value.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, Path::new("<text>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // An empty file (or one holding only comments) means all defaults.
        let meaningful = text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---");
        if !meaningful {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks what the types cannot: relations between values and ranges.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.server.max_frame_bytes < self.router.max_payload_bytes {
            return invalid(
                "server.max_frame_bytes",
                format!(
                    "{} is smaller than router.max_payload_bytes ({}); a frame must fit the largest payload",
                    self.server.max_frame_bytes, self.router.max_payload_bytes
                ),
            );
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return invalid(
                "server.tls_cert",
                "tls_cert and tls_key must be set together".into(),
            );
        }
        if self.server.tls_client_ca.is_some() && self.server.tls_cert.is_none() {
            return invalid(
                "server.tls_client_ca",
                "client certificates need TLS: set tls_cert and tls_key too".into(),
            );
        }
        let r = &self.redis;
        if r.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return invalid("redis.url", "must not be empty".into());
        }
        if !(1..=1024).contains(&r.partitions) {
            return invalid(
                "redis.partitions",
                format!("{} is outside 1..=1024", r.partitions),
            );
        }
        if r.wait_replicas > 0 && r.wait_timeout.is_zero() {
            return invalid(
                "redis.wait_timeout",
                "must not be 0s when redis.wait_replicas is set".into(),
            );
        }
        if r.key_prefix.is_empty() || r.key_prefix.contains(['{', '}']) {
            return invalid(
                "redis.key_prefix",
                format!("{:?} must be non-empty and free of braces", r.key_prefix),
            );
        }
        if r.membership_ttl < Duration::from_millis(100) {
            return invalid("redis.membership_ttl", "must be at least 100ms".into());
        }
        if r.reclaim_idle < Duration::from_millis(30) {
            return invalid("redis.reclaim_idle", "must be at least 30ms".into());
        }
        if r.command_timeout.is_zero() {
            return invalid("redis.command_timeout", "must be greater than zero".into());
        }
        Ok(())
    }

    /// The router core's configuration.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            max_payload_bytes: self.router.max_payload_bytes.get(),
        }
    }

    /// The server's configuration.
    pub fn server_config(&self) -> ServerConfig {
        let s = &self.server;
        ServerConfig {
            max_frame_bytes: s.max_frame_bytes.get(),
            live_queue_capacity: s.live_queue_capacity.get(),
            max_subscriptions_per_connection: s.max_subscriptions_per_connection.get(),
            shutdown_grace: s.shutdown_grace,
            sse_keepalive: s.sse_keepalive,
            live_queue_max_bytes: s.live_queue_max_bytes,
            max_patterns_per_subscription: s.max_patterns_per_subscription,
            max_pattern_bytes_per_subscription: s.max_pattern_bytes_per_subscription,
            max_patterns_per_connection: s.max_patterns_per_connection,
            max_pattern_bytes_per_connection: s.max_pattern_bytes_per_connection,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_unauthenticated_connections: s.max_unauthenticated_connections,
            ui: s.ui,
            ..ServerConfig::default()
        }
    }

    /// The embedded in-memory broker's configuration.
    pub fn broker_config(&self) -> MemoryBrokerConfig {
        let b = &self.broker;
        MemoryBrokerConfig {
            history_max_events: b.history_max_events,
            history_max_age: b.history_max_age,
            max_queued_per_subscription: b.max_queued_per_subscription,
            dead_letter_max: b.dead_letter_max,
            history_max_bytes: b.history_max_bytes,
            max_queued_bytes_per_subscription: b.max_queued_bytes_per_subscription,
        }
    }

    /// The Redis broker's configuration, or `None` when `redis.url` is
    /// unset (the embedded in-memory broker runs). History and dead-letter
    /// limits come from the `broker` section; `max_queued_per_subscription`
    /// applies to the memory broker only.
    pub fn redis_config(&self) -> Option<RedisBrokerConfig> {
        let r = &self.redis;
        let mut c = RedisBrokerConfig::new(r.url.clone()?);
        c.partitions = r.partitions;
        c.key_prefix.clone_from(&r.key_prefix);
        c.membership_ttl = r.membership_ttl;
        c.reclaim_idle = r.reclaim_idle;
        c.command_timeout = r.command_timeout;
        c.dedup_window = r.dedup_window;
        c.wait_replicas = r.wait_replicas;
        c.wait_timeout = r.wait_timeout;
        c.node_id.clone_from(&r.node_id);
        // The memory broker's bound is total; Redis trims each partition.
        // Zero (no history) keeps one entry per partition.
        c.history_max_len = self
            .broker
            .history_max_events
            .div_ceil(r.partitions.max(1) as usize)
            .max(1);
        c.history_max_age = self.broker.history_max_age;
        c.dead_letter_max = self.broker.dead_letter_max;
        Some(c)
    }

    /// The configuration as YAML, in the shape [`Config::from_yaml`] reads.
    ///
    /// # Errors
    /// Only if serialisation fails, which these types do not cause.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<output>"),
            message: e.to_string(),
        })
    }
}

/// Serde helpers for `Duration` fields (`#[serde(with = "crate::config::duration")]`).
pub use crate::duration::as_text as duration;
pub use crate::duration::{format_duration, parse_duration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(300),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn empty_file_means_defaults_and_validates() {
        let config = Config::from_yaml("# nothing here\n").unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.router_config().max_payload_bytes, 1024 * 1024);
    }

    #[test]
    fn file_sets_nested_keys_and_durations() {
        let config = Config::from_yaml(
            "listen: 127.0.0.1:0\nfiles: [a.yaml]\nlog: {format: json}\n\
             router: {max_payload_bytes: 1000}\n\
             server: {shutdown_grace: 250ms, live_queue_capacity: 8}\n\
             broker: {history_max_age: 5m, history_max_events: 7}\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.files, vec![PathBuf::from("a.yaml")]);
        assert_eq!(
            config.server_config().shutdown_grace,
            Duration::from_millis(250)
        );
        assert_eq!(config.server_config().live_queue_capacity, 8);
        let broker = config.broker_config();
        assert_eq!(broker.history_max_age, Duration::from_secs(300));
        assert_eq!(broker.history_max_events, 7);
        assert_eq!(
            broker.dead_letter_max,
            MemoryBrokerConfig::default().dead_letter_max
        );
    }

    #[test]
    fn unknown_keys_and_zero_sizes_are_rejected_by_name() {
        let err = Config::from_yaml("server: {max_frame_byte: 10}\n").unwrap_err();
        assert!(err.to_string().contains("max_frame_byte"), "{err}");
        let err = Config::from_yaml("router: {max_payload_bytes: 0}\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn frame_limit_below_payload_limit_is_rejected() {
        let config = Config::from_yaml(
            "router: {max_payload_bytes: 4096}\nserver: {max_frame_bytes: 1024}\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("server.max_frame_bytes"), "{err}");
    }

    #[test]
    fn yaml_output_reads_back_the_same() {
        let mut config = Config::default();
        config.server.shutdown_grace = Duration::from_millis(1500);
        config.files.push(PathBuf::from("routes.yaml"));
        let text = config.to_yaml().unwrap();
        assert_eq!(Config::from_yaml(&text).unwrap(), config, "{text}");
    }

    #[test]
    fn log_format_parses_its_three_names() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::Text.to_string(), "text");
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("xml"));
    }
}
