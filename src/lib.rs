//! # event-router
//!
//! A Kubernetes-native, horizontally scaled event router for AI agents and
//! services. Agents publish events (`task.created`, `agent.failed`, ...) and
//! subscribe by topic pattern and content filter; the router delivers them
//! live (at-most-once) or durably (at-least-once, acked, retried,
//! dead-lettered, replayable), highest priority first.
//!
//! # Layout
//!
//! - [`event`]: the event envelope and its validation.
//! - [`topic`]: topics, `*`/`#`/regex patterns, and the segment trie that
//!   indexes them.
//! - [`filter`]: Mongo-style content filters, compiled once.
//! - [`selector`]: patterns + filter, what a subscription selects.
//! - [`broker`]: the `Broker` trait and the embedded [`broker::MemoryBroker`].
//! - [`client`]: the Rust client (WebSocket with reconnects, or in-process).
//! - [`router`]: the core — validate, apply EventRoutes, publish, request.
//! - [`resources`]: `Subscription` and `EventRoute` specs, shared by YAML
//!   files, `apply` and the Kubernetes operator.
//! - [`operator`]: the custom resources, their reconciler and leader
//!   election, and the Redis config store replicas hot-reload from.
//! - [`sink`]: push sinks (HTTP POST of CloudEvents per delivery).
//! - [`auth`]: API keys, JWT, ACL, per-principal limits.
//! - [`server`]: WebSocket (v2 and seed v1), HTTP, SSE over one session core.
//! - [`config`]: configuration.
//! - [`duration`]: durations as people write them (a leaf).
//! - [`shutdown`]: signal handling.
//! - [`telemetry`]: logs, OpenTelemetry traces, Prometheus metrics.
//! - `cli`: one module per subcommand of the `event-router` binary.

pub mod auth;
pub mod breaker;
pub mod broker;
pub mod client;
pub mod config;
pub mod duration;
pub mod event;
pub mod filter;
pub mod operator;
pub mod resources;
pub mod router;
pub mod selector;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod telemetry;
pub mod topic;

pub use broker::{Broker, MemoryBroker, SharedBroker};
pub use event::{Delivery, Event, Priority};
pub use router::{Receipt, Router, RouterConfig, RouterError};
pub use selector::Selector;
