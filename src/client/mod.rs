//! The Rust client: publish, subscribe, handle and request over the
//! WebSocket protocol (DESIGN §5), or in-process over a [`Router`] with the
//! same API.
//!
//! A [`Client`] is cheap to clone and shared by tasks. Over WebSocket it is
//! resilient by default:
//! - a lost connection is re-established with exponential backoff and
//!   jitter ([`ReconnectPolicy`]; forever, or up to `max_attempts`);
//! - subscriptions are restored on the new connection and keep feeding the
//!   same [`Subscription`] streams;
//! - a publish waits for the server's confirmation; publishes made while
//!   disconnected wait in a bounded buffer and are sent in order once
//!   connected ([`ClientError::BufferFull`] when the bound is hit);
//! - a ping goes out every heartbeat interval, and a connection on which
//!   nothing arrives within the heartbeat timeout is replaced;
//! - a durable delivery id is handed to handlers once, even if the server
//!   sends it again.
//!
//! Delivery semantics are the server's: live subscriptions are at-most-once
//! and need no ack; durable ones (with a `group`) are at-least-once, and a
//! delivery not acked when its connection drops is redelivered to the group.
//! A publish whose confirmation is lost with its connection is sent again
//! on the next one under the same event id (at-least-once); subscribers
//! that must not see a repeat dedupe by event id.
//!
//! [`Client::in_process`] gives the same calls over a router in the same
//! process, with the same delivery and ack semantics and no socket.
//!
//! The patterns of docs/patterns.md: event streams ([`Client::append`],
//! [`Client::read_stream`], [`Client::subscribe_stream`]), sagas
//! ([`saga`]), event-time windows ([`window`]), the handler
//! [`CircuitBreaker`] and [`PayloadCipher`].
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use event_router::client::{Client, ClientError};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), ClientError> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws").await?;
//!
//! // A durable worker: Ok acks, Err nacks for redelivery.
//! client
//!     .subscribe("task.*")
//!     .group("workers")
//!     .handle(|task| async move {
//!         println!("working on {}", task.event.payload);
//!         Ok::<(), String>(())
//!     })
//!     .await?;
//!
//! let id = client.publish("task.created", json!({"task": 42})).await?;
//! println!("published {id}");
//!
//! // Request/response with another agent that called `client.respond`.
//! let reply = client
//!     .request("agent.plan", json!({"goal": "ship"}), Duration::from_secs(5))
//!     .await?;
//! println!("plan: {}", reply.payload);
//! client.close().await;
//! # Ok(())
//! # }
//! ```

mod breaker;
mod crypto;
mod error;
mod event_stream;
mod handler;
mod in_process;
pub mod reconnect;
pub mod saga;
mod subscription;
pub mod window;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::filter::Filter;
use crate::router::Router;
use crate::selector::{Selector, SelectorError};
use crate::topic::Pattern;

pub use breaker::{CircuitBreaker, CircuitError};
pub use crypto::{DecryptionError, PayloadCipher};
pub use error::{ClientError, Result};
pub use event_stream::{STREAM_POLL_INTERVAL, StreamSubscription};
pub use handler::{ERROR_HEADER, HANDLER_ERROR_CODE, HandlerTask};
pub use reconnect::ReconnectPolicy;
pub use saga::{Saga, SagaBuilder, SagaContext, SagaState, Step};
pub use subscription::{Received, Subscription};
pub use window::{Window, WindowClock, WindowConfig, Windows};

use in_process::InProcess;
use subscription::{Closer, Inbox};
use ws::{Call, CallBody, Command, Driver};

/// The URL a local `event-router serve` listens on.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8080/ws";
/// The environment variable the examples and CLI read the URL from.
pub const URL_ENV: &str = "EVENT_ROUTER_URL";
/// Default bound of unconfirmed publishes (buffered or in flight).
pub const DEFAULT_BUFFER_CAPACITY: usize = 10_000;
/// Default interval between pings.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Default wait for any frame after a ping before the connection is dead.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for a publish's (or subscribe's) confirmation.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of one handshake and of the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound of a subscription's client-side queue, in deliveries.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default number of durable delivery ids remembered for dedupe, per
/// subscription.
pub const DEFAULT_DEDUPE_CAPACITY: usize = 10_000;

/// The URL from [`URL_ENV`], else [`DEFAULT_URL`].
pub fn url_from_env() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// Where the client's connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    /// Not connected; trying (again). Calls wait in the buffer.
    Connecting {
        /// Failed attempts since the connection was last up.
        attempt: u32,
        /// Why the last attempt failed, or why the connection was lost.
        last_error: Option<String>,
    },
    /// Connected, and every subscription restored.
    Connected,
    /// Closed for good: by [`Client::close`] ([`ClientError::Closed`]) or
    /// because reconnecting gave up ([`ClientError::Connection`]).
    Closed(ClientError),
}

/// Construction-time settings; see [`ClientBuilder`] for each one.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    url: String,
    reconnect: ReconnectPolicy,
    buffer_capacity: usize,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    publish_timeout: Duration,
    connect_timeout: Duration,
    queue_capacity: usize,
    dedupe_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: DEFAULT_URL.to_string(),
            reconnect: ReconnectPolicy::default(),
            buffer_capacity: DEFAULT_BUFFER_CAPACITY,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            dedupe_capacity: DEFAULT_DEDUPE_CAPACITY,
        }
    }
}

/// Configures a [`Client`]; from [`Client::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// The server's WebSocket URL (`ws://host:port/ws`). Default
    /// [`DEFAULT_URL`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// How to reconnect after the connection is lost. Default: 100 ms
    /// doubling to 10 s, 20 % jitter, forever.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.config.reconnect = policy;
        self
    }

    /// Most publishes (events, for batches) awaiting the server's
    /// confirmation, buffered while disconnected or in flight. Default
    /// 10 000; at least 1.
    pub fn buffer_capacity(mut self, events: usize) -> Self {
        self.config.buffer_capacity = events.max(1);
        self
    }

    /// Ping every `interval`; when nothing arrives within `timeout` after a
    /// ping, the connection is dead and is replaced. Default 15 s / 10 s; a
    /// zero interval turns heartbeats off.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// How long a publish (or a subscribe) waits for the server's
    /// confirmation, including time spent buffered while disconnected.
    /// Default 30 s.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.config.publish_timeout = timeout;
        self
    }

    /// Bound of each WebSocket handshake, and of [`ClientBuilder::build`]'s
    /// wait for the first connection. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Bound of each subscription's client-side queue, in deliveries;
    /// durable subscriptions hold at least twice their `max_in_flight`.
    /// When full the oldest delivery is dropped and counted in
    /// [`Subscription::dropped`]. Default 1024.
    pub fn queue_capacity(mut self, deliveries: usize) -> Self {
        self.config.queue_capacity = deliveries.max(1);
        self
    }

    /// Durable delivery ids remembered per subscription so that none is
    /// handed out twice. Default 10 000.
    pub fn dedupe_capacity(mut self, ids: usize) -> Self {
        self.config.dedupe_capacity = ids.max(1);
        self
    }

    /// Connects over WebSocket, retrying per the reconnect policy for up to
    /// the connect timeout.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a URL that is not `ws://`;
    /// [`ClientError::Connection`] when no connection was made in time or
    /// the policy gave up.
    pub async fn build(self) -> Result<Client> {
        let config = Arc::new(self.config);
        if !config.url.starts_with("ws://") {
            return Err(ClientError::Invalid {
                code: "invalid_url",
                message: format!("url must start with ws://, got {:?}", config.url),
            });
        }
        let (state, mut state_rx) = watch::channel(ConnectionState::Connecting {
            attempt: 0,
            last_error: None,
        });
        let (commands, queue) = mpsc::unbounded_channel();
        let ids = Arc::new(AtomicU64::new(1));
        let shutdown = CancellationToken::new();
        let driver = Driver::new(
            config.clone(),
            queue,
            commands.downgrade(),
            state.clone(),
            shutdown.clone(),
            ids.clone(),
        );
        let driver = tokio::spawn(driver.run());
        let first = tokio::time::timeout(
            config.connect_timeout,
            state_rx.wait_for(|s| !matches!(s, ConnectionState::Connecting { .. })),
        )
        .await
        .map(|state| state.map(|s| s.clone()));
        let failure = match first {
            Ok(Ok(ConnectionState::Closed(e))) => Some(e),
            Ok(Ok(_)) => None,
            Ok(Err(_)) => Some(ClientError::Closed),
            Err(_) => {
                let last = match &*state_rx.borrow() {
                    ConnectionState::Connecting {
                        last_error: Some(e),
                        ..
                    } => format!("; last error: {e}"),
                    _ => String::new(),
                };
                Some(ClientError::Connection {
                    url: config.url.clone(),
                    reason: format!("no connection within {:?}{last}", config.connect_timeout),
                })
            }
        };
        if let Some(e) = failure {
            shutdown.cancel();
            return Err(e);
        }
        Ok(Client::from_parts(
            Transport::Ws {
                commands,
                ids,
                driver: Mutex::new(Some(driver)),
            },
            config,
            state,
            shutdown,
        ))
    }

    /// A client over `router` in this process, with this builder's buffer
    /// and queue settings (the connection settings do not apply).
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the `publish_nowait` task).
    pub fn in_process(self, router: Arc<Router>) -> Client {
        let config = Arc::new(self.config);
        let shutdown = CancellationToken::new();
        let transport = InProcess::new(router, config.clone(), shutdown.clone());
        let (state, _) = watch::channel(ConnectionState::Connected);
        Client::from_parts(Transport::InProcess(transport), config, state, shutdown)
    }
}

enum Transport {
    Ws {
        commands: mpsc::UnboundedSender<Command>,
        ids: Arc<AtomicU64>,
        driver: Mutex<Option<JoinHandle<()>>>,
    },
    InProcess(InProcess),
}

struct Inner {
    transport: Transport,
    config: Arc<Config>,
    permits: Arc<Semaphore>,
    state: watch::Sender<ConnectionState>,
    shutdown: CancellationToken,
    next_subscription: AtomicU64,
}

/// A connection to event-router; see the [module docs](self).
///
/// Cloning is cheap and shares the connection. The connection stays up
/// while the client, a clone, a [`Subscription`] or a [`HandlerTask`] is
/// alive, until [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.inner.transport {
            Transport::Ws { .. } => "websocket",
            Transport::InProcess(_) => "in-process",
        };
        f.debug_struct("Client")
            .field("url", &self.inner.config.url)
            .field("transport", &transport)
            .field("state", &self.state())
            .finish()
    }
}

/// Cancels a call whose caller stopped waiting (timeout or dropped future).
struct CancelOnDrop<'a> {
    commands: &'a mpsc::UnboundedSender<Command>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.send(Command::Cancel(self.id));
        }
    }
}

impl Client {
    fn from_parts(
        transport: Transport,
        config: Arc<Config>,
        state: watch::Sender<ConnectionState>,
        shutdown: CancellationToken,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                transport,
                permits: Arc::new(Semaphore::new(config.buffer_capacity)),
                config,
                state,
                shutdown,
                next_subscription: AtomicU64::new(1),
            }),
        }
    }

    /// Connects to `url` with default settings.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        Client::builder().url(url).build().await
    }

    /// A builder for a client with non-default settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client over `router` in this process (no socket); same calls,
    /// same delivery and ack semantics.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn in_process(router: Arc<Router>) -> Client {
        Client::builder().in_process(router)
    }

    /// Where the connection stands now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that sees every change of [`Client::state`].
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Waits until connected with every subscription restored.
    ///
    /// # Errors
    /// The reason the client closed, if it did.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connected(&self) -> Result<()> {
        let mut changes = self.state_changes();
        let state = changes
            .wait_for(|s| matches!(s, ConnectionState::Connected | ConnectionState::Closed(_)))
            .await
            .map(|s| s.clone())
            .map_err(|_| ClientError::Closed)?;
        match state {
            ConnectionState::Closed(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn is_connected(&self) -> bool {
        matches!(*self.inner.state.borrow(), ConnectionState::Connected)
    }

    /// The error calls get once the client is closed.
    fn closed_error(&self) -> ClientError {
        match &*self.inner.state.borrow() {
            ConnectionState::Closed(e) => e.clone(),
            _ => ClientError::Closed,
        }
    }

    fn check_open(&self) -> Result<()> {
        match &*self.inner.state.borrow() {
            ConnectionState::Closed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Publishes an event on `topic` and waits for the server to confirm
    /// it. Returns the event id.
    ///
    /// While disconnected the event waits in the buffer and is sent in
    /// order once connected, all within the publish timeout.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad topic; [`ClientError::Publish`]
    /// when the server rejects it; [`ClientError::BufferFull`] while
    /// disconnected with a full buffer; [`ClientError::Timeout`] when not
    /// confirmed in time (an event already written to a connection may
    /// still have been stored); [`ClientError::Closed`] or
    /// [`ClientError::Connection`] once the client is closed.
    pub async fn publish(&self, topic: impl Into<String>, payload: Value) -> Result<String> {
        self.publish_with(Event::new(topic, payload)?).await
    }

    /// Publishes a prepared event (priority, key, headers, ...); as
    /// [`Client::publish`].
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with(&self, event: Event) -> Result<String> {
        self.check_open()?;
        let timeout = self.inner.config.publish_timeout;
        match &self.inner.transport {
            Transport::InProcess(t) => within(timeout, t.publish(event)).await,
            Transport::Ws { .. } => {
                let id = event.id.clone();
                let body = CallBody::Publish(to_json(&event)?);
                let fields = self
                    .call(body, 1, timeout)
                    .await
                    .map_err(ClientError::into_publish)?;
                Ok(string_field(&fields, "event_id").unwrap_or(id))
            }
        }
    }

    /// Publishes events in order; with `atomic`, all are stored or none is.
    /// Returns the event ids in input order. The batch takes one buffer
    /// slot per event.
    ///
    /// # Errors
    /// As [`Client::publish`]; a batch larger than the buffer gets
    /// [`ClientError::BufferFull`].
    pub async fn publish_batch(&self, events: Vec<Event>, atomic: bool) -> Result<Vec<String>> {
        self.check_open()?;
        let timeout = self.inner.config.publish_timeout;
        match &self.inner.transport {
            Transport::InProcess(t) => within(timeout, t.publish_batch(events, atomic)).await,
            Transport::Ws { .. } => {
                let body = CallBody::Batch {
                    events: to_json(&events)?,
                    atomic,
                };
                let fields = self
                    .call(body, events.len(), timeout)
                    .await
                    .map_err(ClientError::into_publish)?;
                match fields.get("event_ids") {
                    Some(Value::Array(ids)) => Ok(ids
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()),
                    _ => Ok(events.into_iter().map(|e| e.id).collect()),
                }
            }
        }
    }

    /// Queues an event for publishing without waiting: it takes a slot of
    /// the bounded buffer and is sent in order with other publishes (after
    /// reconnecting, if need be). Returns the event id. Rejections by the
    /// server are logged; [`Client::flush`] waits until it is confirmed.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad topic; [`ClientError::BufferFull`]
    /// when the buffer is full; the close reason once closed.
    pub fn publish_nowait(&self, topic: impl Into<String>, payload: Value) -> Result<String> {
        self.publish_nowait_with(Event::new(topic, payload)?)
    }

    /// Queues a prepared event; as [`Client::publish_nowait`].
    ///
    /// # Errors
    /// As [`Client::publish_nowait`].
    pub fn publish_nowait_with(&self, event: Event) -> Result<String> {
        self.check_open()?;
        let id = event.id.clone();
        let permit = self.try_permit(1)?;
        match &self.inner.transport {
            Transport::InProcess(t) => t.publish_nowait(event, permit)?,
            Transport::Ws { commands, ids, .. } => {
                let call = Call {
                    id: ids.fetch_add(1, Ordering::Relaxed),
                    body: CallBody::Publish(to_json(&event)?),
                    reply: None,
                    permit: Some(permit),
                };
                commands
                    .send(Command::Call(call))
                    .map_err(|_| self.closed_error())?;
            }
        }
        Ok(id)
    }

    /// Waits until every publish queued before this call is confirmed or
    /// rejected (including [`Client::publish_nowait`] events).
    ///
    /// # Errors
    /// The close reason when the client closes first.
    pub async fn flush(&self) -> Result<()> {
        self.check_open()?;
        match &self.inner.transport {
            Transport::InProcess(t) => t.flush().await,
            Transport::Ws { commands, .. } => {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(Command::Flush(tx))
                    .map_err(|_| self.closed_error())?;
                rx.await.map_err(|_| self.closed_error())?
            }
        }
    }

    /// Starts a subscription to topic patterns (`task.*`, `agent.#`,
    /// `pattern:REGEX`); finish it with [`SubscribeBuilder::start`] for a
    /// stream or [`SubscribeBuilder::handle`] for a handler.
    pub fn subscribe(&self, patterns: impl Patterns) -> SubscribeBuilder<'_> {
        SubscribeBuilder {
            client: self,
            spec: SubscribeSpec {
                topics: patterns.into_patterns(),
                filter: None,
                group: None,
                max_in_flight: None,
            },
            concurrency: 1,
            nack_delay: None,
        }
    }

    /// Runs `handler` on every event matching `patterns` (a live
    /// subscription; use [`Client::subscribe`] with a group for a durable
    /// one). Returns once subscribed.
    ///
    /// # Errors
    /// As [`SubscribeBuilder::start`].
    pub async fn on<F, Fut, E>(&self, patterns: impl Patterns, handler: F) -> Result<HandlerTask>
    where
        F: Fn(Received) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.subscribe(patterns).handle(handler).await
    }

    /// Publishes a request on `topic` and waits up to `timeout` for the
    /// first reply (an event on its `reply_to` topic with its correlation
    /// id, as [`Client::respond`] sends).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no reply came in time;
    /// [`ClientError::Server`] with code [`HANDLER_ERROR_CODE`] when the
    /// responder's handler failed; otherwise as [`Client::publish`].
    pub async fn request(
        &self,
        topic: impl Into<String>,
        payload: Value,
        timeout: Duration,
    ) -> Result<Event> {
        self.request_with(Event::new(topic, payload)?, timeout)
            .await
    }

    /// Sends a prepared request event (its own `reply_to` and
    /// `correlation_id` are kept when set); as [`Client::request`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_with(&self, event: Event, timeout: Duration) -> Result<Event> {
        self.check_open()?;
        let response = match &self.inner.transport {
            Transport::InProcess(t) => t.request(event, timeout).await?,
            Transport::Ws { .. } => {
                let body = CallBody::Request {
                    event: to_json(&event)?,
                    deadline: tokio::time::Instant::now() + timeout,
                };
                let mut fields = self.call(body, 1, timeout).await.map_err(|e| match e {
                    ClientError::Server { code, .. } if code == "timeout" => {
                        ClientError::Timeout(timeout)
                    }
                    other => other,
                })?;
                let raw = fields.remove("response").unwrap_or(Value::Null);
                serde_json::from_value::<Event>(raw).map_err(|e| {
                    ClientError::server("invalid_reply", format!("malformed response event: {e}"))
                })?
            }
        };
        match response.headers.get(ERROR_HEADER) {
            Some(message) => Err(ClientError::server(HANDLER_ERROR_CODE, message)),
            None => Ok(response),
        }
    }

    /// Answers requests on `patterns`: runs `handler` on each request event
    /// and publishes its `Ok` payload (or, for `Err`, an empty reply with
    /// the [`ERROR_HEADER`] header) to the request's `reply_to` with the
    /// same correlation id. Live: every responder gets every request; use
    /// [`SubscribeBuilder::respond`] with a group to share the load.
    ///
    /// # Errors
    /// As [`SubscribeBuilder::start`].
    pub async fn respond<F, Fut, E>(
        &self,
        patterns: impl Patterns,
        handler: F,
    ) -> Result<HandlerTask>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.subscribe(patterns).respond(handler).await
    }

    /// Closes the client: the connection is closed, calls still waiting
    /// fail with [`ClientError::Closed`] (buffered publishes are not sent;
    /// call [`Client::flush`] first), and every subscription ends. Durable
    /// deliveries not acked go back to their groups.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        match &self.inner.transport {
            Transport::Ws { driver, .. } => {
                let driver = driver.lock().take();
                if let Some(driver) = driver
                    && let Err(e) = driver.await
                {
                    tracing::error!(error = %e, "client driver failed");
                }
            }
            Transport::InProcess(_) => {
                self.inner
                    .state
                    .send_replace(ConnectionState::Closed(ClientError::Closed));
            }
        }
    }

    /// Takes `slots` of the publish buffer without waiting.
    fn try_permit(&self, slots: usize) -> Result<OwnedSemaphorePermit> {
        let capacity = self.inner.config.buffer_capacity;
        let n = u32::try_from(slots)
            .ok()
            .filter(|_| slots <= capacity)
            .ok_or(ClientError::BufferFull { capacity })?;
        match self.inner.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::NoPermits) => Err(ClientError::BufferFull { capacity }),
            Err(TryAcquireError::Closed) => Err(self.closed_error()),
        }
    }

    /// Takes `slots` of the publish buffer: at once while disconnected
    /// (a full buffer is an error then), waiting up to `timeout` for the
    /// server to catch up while connected.
    async fn permit(&self, slots: usize, timeout: Duration) -> Result<OwnedSemaphorePermit> {
        match self.try_permit(slots) {
            Err(ClientError::BufferFull { .. })
                if self.is_connected() && slots <= self.inner.config.buffer_capacity => {}
            other => return other,
        }
        // `slots` fits in u32: try_permit checked it against the capacity.
        let n = u32::try_from(slots).unwrap_or(u32::MAX);
        let acquire = self.inner.permits.clone().acquire_many_owned(n);
        match tokio::time::timeout(timeout, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Sends a call over WebSocket and waits for its reply.
    async fn call(
        &self,
        body: CallBody,
        slots: usize,
        timeout: Duration,
    ) -> Result<Map<String, Value>> {
        let Transport::Ws { commands, ids, .. } = &self.inner.transport else {
            return Err(ClientError::Closed);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let permit = self.permit(slots, timeout).await?;
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let call = Call {
            id,
            body,
            reply: Some(tx),
            permit: Some(permit),
        };
        commands
            .send(Command::Call(call))
            .map_err(|_| self.closed_error())?;
        let mut guard = CancelOnDrop {
            commands,
            id,
            armed: true,
        };
        let reply = tokio::time::timeout_at(deadline, rx).await;
        guard.armed = reply.is_err();
        match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

async fn within<T>(timeout: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(ClientError::Timeout(timeout)))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ClientError::Invalid {
        code: "invalid_event",
        message: format!("event does not serialize: {e}"),
    })
}

fn string_field(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Topic patterns for [`Client::subscribe`]: one (`"task.*"`) or several
/// (`["task.*", "agent.#"]`, a `Vec`).
pub trait Patterns {
    /// The patterns as strings.
    fn into_patterns(self) -> Vec<String>;
}

impl Patterns for &str {
    fn into_patterns(self) -> Vec<String> {
        vec![self.to_string()]
    }
}

impl Patterns for String {
    fn into_patterns(self) -> Vec<String> {
        vec![self]
    }
}

impl Patterns for &String {
    fn into_patterns(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<S: AsRef<str>> Patterns for Vec<S> {
    fn into_patterns(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

impl<S: AsRef<str>> Patterns for &[S] {
    fn into_patterns(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

impl<S: AsRef<str>, const N: usize> Patterns for [S; N] {
    fn into_patterns(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

/// What a subscription asks for, kept to subscribe again after reconnects.
#[derive(Debug, Clone)]
pub(crate) struct SubscribeSpec {
    topics: Vec<String>,
    filter: Option<Value>,
    group: Option<String>,
    max_in_flight: Option<usize>,
}

impl SubscribeSpec {
    /// Compiles the patterns and filter, so that mistakes are reported
    /// before anything is sent (and a restore cannot fail on them).
    fn selector(&self) -> Result<Selector> {
        let patterns = self
            .topics
            .iter()
            .map(|t| Pattern::parse(t).map_err(SelectorError::from))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let filter = match &self.filter {
            None | Some(Value::Null) => None,
            Some(doc @ Value::Object(_)) => {
                Some(Filter::compile(doc).map_err(SelectorError::from)?)
            }
            Some(Value::String(text)) => {
                Some(Filter::parse_shorthand(text).map_err(SelectorError::from)?)
            }
            Some(Value::Array(items)) => {
                let parts = items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => {
                            Filter::parse_shorthand(text).map_err(|e| SelectorError::from(e).into())
                        }
                        _ => Err(invalid_filter()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(Filter::and(parts))
            }
            Some(_) => return Err(invalid_filter()),
        };
        Ok(Selector::new(patterns, filter)?)
    }

    /// The `subscribe` frame with request id `id`.
    fn frame(&self, id: u64) -> String {
        let mut frame = serde_json::json!({
            "op": "subscribe",
            "id": id.to_string(),
            "topics": self.topics,
        });
        if let Some(filter) = &self.filter {
            frame["filter"] = filter.clone();
        }
        if let Some(group) = &self.group {
            frame["group"] = group.clone().into();
        }
        if let Some(n) = self.max_in_flight {
            frame["max_in_flight"] = n.into();
        }
        frame.to_string()
    }
}

fn invalid_filter() -> ClientError {
    ClientError::Invalid {
        code: "invalid_filter",
        message: "filter must be an object, a shorthand string (priority:gt:5) or an array of \
                  shorthand strings"
            .into(),
    }
}

/// A subscription being set up; from [`Client::subscribe`].
#[derive(Debug)]
#[must_use = "a subscription starts only with .start() or .handle()"]
pub struct SubscribeBuilder<'a> {
    client: &'a Client,
    spec: SubscribeSpec,
    concurrency: usize,
    nack_delay: Option<Duration>,
}

impl SubscribeBuilder<'_> {
    /// Only events this content filter matches: a Mongo-style document
    /// (`{"payload.n": {"$gt": 5}}`), a shorthand string (`"priority:gte:7"`)
    /// or an array of shorthand strings (all must hold).
    pub fn filter(mut self, filter: Value) -> Self {
        self.spec.filter = Some(filter);
        self
    }

    /// Join durable subscription `group` (created on first use) as a
    /// competing consumer: at-least-once, deliveries must be acked.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.spec.group = Some(group.into());
        self
    }

    /// Durable only: most deliveries held un-acked at once (server default
    /// 100).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.spec.max_in_flight = Some(n);
        self
    }

    /// For handlers: how many deliveries are handled at once. Default 1
    /// (in order).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// For handlers: redeliver a failed durable delivery after this delay
    /// instead of the subscription's backoff.
    pub fn nack_delay(mut self, delay: Duration) -> Self {
        self.nack_delay = Some(delay);
        self
    }

    /// Subscribes and returns the stream of deliveries.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad pattern or filter (nothing is
    /// sent); [`ClientError::Server`] when the server refuses (e.g.
    /// `already_subscribed` for a group this client already consumes);
    /// [`ClientError::Timeout`] after the publish timeout.
    pub async fn start(self) -> Result<Subscription> {
        let SubscribeBuilder { client, spec, .. } = self;
        let selector = spec.selector()?;
        client.check_open()?;
        let config = &client.inner.config;
        let durable = spec.group.is_some();
        let capacity = match spec.max_in_flight {
            Some(n) if durable => config.queue_capacity.max(n.saturating_mul(2)),
            _ => config.queue_capacity,
        };
        let inbox = Inbox::new(capacity, durable, config.dedupe_capacity);
        match &client.inner.transport {
            Transport::InProcess(t) => {
                let (_, stop) = t.subscribe(&spec, selector, inbox.clone()).await?;
                Ok(Subscription::new(inbox, Closer::InProcess(stop)))
            }
            Transport::Ws { commands, .. } => {
                let id = client
                    .inner
                    .next_subscription
                    .fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                let command = Command::Subscribe {
                    id,
                    spec,
                    inbox: inbox.clone(),
                    reply: tx,
                };
                commands.send(command).map_err(|_| client.closed_error())?;
                // Created before waiting, so that a timeout or an error
                // unsubscribes when it drops.
                let subscription = Subscription::new(
                    inbox,
                    Closer::Ws {
                        commands: commands.clone(),
                        id,
                    },
                );
                let timeout = config.publish_timeout;
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Ok(_))) => Ok(subscription),
                    Ok(Ok(Err(e))) => Err(e),
                    Ok(Err(_)) => Err(client.closed_error()),
                    Err(_) => Err(ClientError::Timeout(timeout)),
                }
            }
        }
    }

    /// Subscribes and runs `handler` on every delivery on its own task;
    /// `Ok` acks, `Err` nacks (durable deliveries; live ones need neither).
    /// See [`SubscribeBuilder::concurrency`] and
    /// [`SubscribeBuilder::nack_delay`].
    ///
    /// # Errors
    /// As [`SubscribeBuilder::start`].
    pub async fn handle<F, Fut, E>(self, handler: F) -> Result<HandlerTask>
    where
        F: Fn(Received) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (concurrency, nack_delay) = (self.concurrency, self.nack_delay);
        let subscription = self.start().await?;
        Ok(handler::spawn(
            subscription,
            handler,
            concurrency,
            nack_delay,
        ))
    }

    /// Subscribes and answers each request with `handler`'s result; see
    /// [`Client::respond`].
    ///
    /// # Errors
    /// As [`SubscribeBuilder::start`].
    pub async fn respond<F, Fut, E>(self, handler: F) -> Result<HandlerTask>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let responder = handler::responder(self.client.clone(), handler);
        self.handle(responder).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(topics: &[&str], filter: Option<Value>) -> SubscribeSpec {
        SubscribeSpec {
            topics: topics.into_patterns(),
            filter,
            group: Some("workers".into()),
            max_in_flight: Some(5),
        }
    }

    #[test]
    fn subscribe_frames_carry_every_option() {
        let frame = spec(&["task.*"], Some(json!({"priority": {"$gte": 7}}))).frame(3);
        assert_eq!(
            serde_json::from_str::<Value>(&frame).unwrap(),
            json!({"op":"subscribe","id":"3","topics":["task.*"],
                   "filter":{"priority":{"$gte":7}},"group":"workers","max_in_flight":5})
        );
    }

    #[test]
    fn bad_patterns_and_filters_are_rejected_before_sending() {
        let e = spec(&["a..b"], None).selector().unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Invalid {
                    code: "invalid_pattern",
                    ..
                }
            ),
            "{e}"
        );
        let e = spec(&["a"], Some(json!({"payload.n": {"$bogus": 1}})))
            .selector()
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Invalid {
                    code: "invalid_filter",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            spec(&["a"], Some(json!(["priority:gt:5"])))
                .selector()
                .is_ok()
        );
        assert!(spec(&["a"], Some(json!(5))).selector().is_err());
    }

    #[tokio::test]
    async fn a_non_websocket_url_is_rejected() {
        let e = Client::connect("http://127.0.0.1:1/ws").await.unwrap_err();
        assert!(matches!(
            e,
            ClientError::Invalid {
                code: "invalid_url",
                ..
            }
        ));
    }
}
