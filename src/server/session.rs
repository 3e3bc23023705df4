//! The transport-neutral state of one client connection.
//!
//! A [`Session`] holds a connection's subscriptions, its in-flight durable
//! deliveries and its pending requests. Transports feed it parsed requests
//! ([`Session::handle`] for v2 frames; [`super::ws_v1`] and [`super::sse`]
//! call the operations directly) and drain an outgoing
//! `tokio::sync::mpsc` channel of [`Outgoing`] items, which each transport
//! encodes its own way (WebSocket v2 or v1 text frames, SSE events). Nothing
//! here knows about sockets, so the logic is tested over plain channels.
//!
//! Every subscription runs in its own task that forwards events into the
//! outgoing channel:
//! - live: from the broker's [`LiveStream`], whose drop-oldest bound is what
//!   protects memory when the client is slow (overflow notices follow);
//! - durable: from a [`Consumer`]; the bounded outgoing channel is the
//!   backpressure, and `max_in_flight` bounds what the broker hands out.
//!
//! Dropping the session (or unsubscribing) stops the tasks; a durable task
//! drops its `Consumer`, which returns un-acked deliveries to the group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::ApiError;
use super::protocol::{ClientFrame, Reply, RequestId, ServerFrame, SlowConsumer, SubscribeFrame};
use crate::broker::{
    BrokerError, ConsumeOptions, Consumer, GroupSpec, HistoryQuery, LiveItem, LiveStream,
    LiveSubscription, NackOptions,
};
use crate::event::Event;
use crate::filter::Filter;
use crate::router::{DEFAULT_REQUEST_TIMEOUT, Receipt, Router};
use crate::selector::{Selector, SelectorError};
use crate::telemetry::trace::{self, StepContext};
use crate::topic::Pattern;

/// Most `request`s one connection may have waiting at once.
pub const MAX_PENDING_REQUESTS: usize = 64;
/// Largest `max_in_flight` a durable subscriber may ask for.
pub const MAX_IN_FLIGHT_LIMIT: usize = 10_000;
/// Most events a resumed live subscription replays from history.
pub const MAX_REPLAY_EVENTS: usize = 10_000;
/// Page size when scanning history for a resume point.
const HISTORY_PAGE: usize = 1_000;
/// Bound of the delivery-id → subscription map used to route acks. Past it
/// the map is cleared; acks then fall back to trying the connection's groups.
const MAX_TRACKED_DELIVERIES: usize = 65_536;

use super::limits::{Budget, pattern_cost};

mod event_streams;
pub use super::limits::{Held, PatternLimits};
use super::subscribers::{Listed, Subscriber, Subscribers};

/// The limits a session enforces.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Per-subscription live queue bound (events).
    pub live_queue_capacity: usize,
    /// Per-subscription live queue bound (bytes of events); 0 = none.
    pub live_queue_max_bytes: usize,
    /// Most subscriptions at once.
    pub max_subscriptions: usize,
    /// Caps on the topic patterns of subscriptions.
    pub patterns: PatternLimits,
}

/// How a subscription's deliveries are to be encoded by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// WebSocket v2 frames.
    V2,
    /// Seed v1 frames.
    V1,
    /// Server-sent events (acks go over HTTP, so deliveries are not tracked).
    Sse,
}

/// A subscription as transports see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionTag {
    /// The `subscription_id` clients see: the group name for durable
    /// subscriptions, a fresh id for live ones.
    pub id: String,
    /// How its deliveries are encoded.
    pub dialect: Dialect,
    /// The consumer group, for durable subscriptions.
    pub group: Option<String>,
}

/// What a session sends to its client; each transport encodes it.
#[derive(Debug)]
pub enum Outgoing {
    /// A reply, already encoded as one JSON text frame.
    Reply(String),
    /// A delivery.
    Event {
        /// The subscription it matched.
        subscription: Arc<SubscriptionTag>,
        /// The durable delivery id; `None` for live events (the event id
        /// stands in).
        delivery_id: Option<String>,
        /// 1 on first delivery; always 1 for live events.
        attempt: u32,
        /// The event.
        event: Arc<Event>,
        /// The connection's outgoing byte budget this live event holds
        /// until the transport encodes it (dropping the item).
        held: Held,
    },
    /// A live subscription fell behind and lost `dropped` events.
    Overflow {
        /// The subscription.
        subscription: Arc<SubscriptionTag>,
        /// How many were dropped since the last notice.
        dropped: u64,
    },
    /// A subscription ended by itself (broker closed, group deleted).
    Ended {
        /// The subscription.
        subscription: Arc<SubscriptionTag>,
        /// Why, when it was an error.
        error: Option<ApiError>,
    },
}

impl Outgoing {
    /// The id to ack a delivery with: the durable delivery id or the event id.
    pub fn delivery_id(&self) -> Option<&str> {
        match self {
            Outgoing::Event {
                delivery_id, event, ..
            } => Some(delivery_id.as_deref().unwrap_or(&event.id)),
            _ => None,
        }
    }
}

/// What to subscribe to and how.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// What to receive.
    pub selector: Selector,
    /// A durable consumer group; live when `None`.
    pub group: Option<String>,
    /// Durable only: most un-acked deliveries at once (default 100).
    pub max_in_flight: Option<usize>,
    /// How deliveries are encoded.
    pub dialect: Dialect,
    /// Live only: first replay from history the events that followed the
    /// event with this id (SSE `Last-Event-ID`).
    pub resume_after: Option<String>,
    /// Live only: drop the oldest events (default) or disconnect when the
    /// subscriber falls behind.
    pub slow_consumer: SlowConsumer,
}

/// What an ack or nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The broker recorded it.
    Done,
    /// The delivery was live (or unknown to a connection without durable
    /// subscriptions); nothing to do.
    Ignored,
}

struct SubscriptionHandle {
    tag: Arc<SubscriptionTag>,
    /// Its patterns' (count, bytes), counted against the connection's caps.
    patterns: (usize, usize),
    /// Its entry in the server's list of subscribers, while it is open.
    _listed: Option<Listed>,
    _stop: DropGuard,
}

/// A connection's durable deliveries by id, to route acks: the
/// subscription, and the delivery's trace context (when spans are recorded)
/// for the ack's or nack's span.
type InFlight = Arc<Mutex<HashMap<String, (Arc<SubscriptionTag>, Option<StepContext>)>>>;

/// One connection's state. See the module docs.
pub struct Session {
    router: Arc<Router>,
    config: SessionConfig,
    out: mpsc::Sender<Outgoing>,
    subscriptions: HashMap<String, SubscriptionHandle>,
    in_flight: InFlight,
    requests: JoinSet<()>,
    access: crate::auth::Access,
    disconnect: CancellationToken,
    /// (count, bytes) of the patterns of all open subscriptions.
    patterns_held: (usize, usize),
    budget: Budget,
    /// Permits for acks settled in the background.
    background_acks: Arc<tokio::sync::Semaphore>,
    /// Single publishes under way, answered in frame order (see
    /// [`Session::handle`]). Only ever reached through `&mut self`
    /// (`get_mut`, no locking); the mutex makes the session `Sync`.
    publishes: Mutex<FuturesOrdered<PendingPublish>>,
    /// Where this session's subscriptions are listed, and its transport.
    listing: Option<(Arc<Subscribers>, &'static str)>,
}

/// A publish frame's answer, once its broker call returns.
type PendingPublish = BoxFuture<'static, (RequestId, Result<Reply, ApiError>)>;

/// Single publishes a connection may have under way at once.
pub const MAX_PIPELINED_PUBLISHES: usize = 256;

/// Acks a connection may have settling in the background at once.
pub const MAX_BACKGROUND_ACKS: usize = 4096;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("subscriptions", &self.subscriptions.len())
            .field("requests", &self.requests.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session writing to `out`.
    pub fn new(router: Arc<Router>, config: SessionConfig, out: mpsc::Sender<Outgoing>) -> Self {
        let budget = Budget::new(config.live_queue_max_bytes);
        Session {
            router,
            config,
            out,
            subscriptions: HashMap::new(),
            in_flight: Arc::default(),
            requests: JoinSet::new(),
            access: crate::auth::Access::unrestricted(),
            disconnect: CancellationToken::new(),
            patterns_held: (0, 0),
            budget,
            background_acks: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND_ACKS)),
            publishes: Mutex::new(FuturesOrdered::new()),
            listing: None,
        }
    }

    /// Lists this session's subscriptions in `registry` (as `transport`)
    /// while they are open.
    pub fn list_in(&mut self, registry: Arc<Subscribers>, transport: &'static str) {
        self.listing = Some((registry, transport));
    }

    fn listed(&self, id: &str, selector: &Selector, group: Option<&str>) -> Option<Listed> {
        let (registry, transport) = self.listing.as_ref()?;
        Some(
            registry.list(Subscriber {
                subscription_id: id.to_string(),
                transport,
                principal: self.access.principal().to_string(),
                topics: selector
                    .patterns()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                filter: selector.filter().and_then(|f| serde_json::to_value(f).ok()),
                group: group.map(str::to_string),
                since: jiff::Timestamp::now().to_string(),
            }),
        )
    }

    /// The next answered single publish, in frame order; `None` when none
    /// is under way. Cancel safe: an answer is taken only when returned.
    /// Pass it to [`Session::reply_published`].
    pub async fn next_published(&mut self) -> Option<(RequestId, Result<Reply, ApiError>)> {
        self.publishes.get_mut().next().await
    }

    /// Sends a single publish's answer (see [`Session::next_published`]).
    pub async fn reply_published(&self, answer: (RequestId, Result<Reply, ApiError>)) {
        self.reply(&answer.0, answer.1).await;
    }

    /// Answers every single publish under way, in order.
    pub async fn drain_publishes(&mut self) {
        while let Some(answer) = self.next_published().await {
            self.reply_published(answer).await;
        }
    }

    /// A publish (single, or a batch that need not be atomic) on a broker
    /// whose publishes wait on a round trip
    /// (`Capabilities::publish_round_trip`): the events are handed to the
    /// broker now, in frame order, and the session goes on reading while
    /// the broker stores them; answers go out in frame order. Without this
    /// a connection had one publish per round trip at most, whatever its
    /// client sent. Any other frame waits until the publishes before it
    /// are answered, so that it sees them done.
    async fn publish_pipelined(
        &mut self,
        id: RequestId,
        publish: impl Future<Output = Result<Reply, ApiError>> + Send + 'static,
    ) {
        if self.publishes.get_mut().len() >= MAX_PIPELINED_PUBLISHES
            && let Some(answer) = self.next_published().await
        {
            self.reply_published(answer).await;
        }
        let mut publish: PendingPublish = Box::pin(async move { (id, publish.await) });
        // Polled once here: up to its first wait the publish runs now, so
        // the broker has this event queued before the next frame's.
        match futures::poll!(publish.as_mut()) {
            std::task::Poll::Ready(answer) if self.publishes.get_mut().is_empty() => {
                self.reply_published(answer).await;
            }
            std::task::Poll::Ready(answer) => {
                self.publishes
                    .get_mut()
                    .push_back(Box::pin(std::future::ready(answer)));
            }
            std::task::Poll::Pending => self.publishes.get_mut().push_back(publish),
        }
    }

    /// Cancelled when a subscription with the `disconnect` slow-consumer
    /// policy fell behind: the transport should close the connection.
    pub fn disconnect_token(&self) -> CancellationToken {
        self.disconnect.clone()
    }

    /// Restricts what this session may publish and subscribe to (the
    /// connection's principal); unrestricted by default.
    pub fn set_access(&mut self, access: crate::auth::Access) {
        self.access = access;
    }

    /// The router this session works on.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Number of open subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Queues a reply frame. Returns false when the transport is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: the frame is either queued or dropped with the future.
    pub async fn send_reply(&self, text: String) -> bool {
        self.out.send(Outgoing::Reply(text)).await.is_ok()
    }

    /// Handles one v2 frame, replying through the outgoing channel.
    pub async fn handle(&mut self, frame: ClientFrame) {
        while self.requests.try_join_next().is_some() {}
        let pipelined = self.router.broker().capabilities().publish_round_trip;
        let frame = match frame {
            ClientFrame::Publish { id, event } if pipelined => {
                let (router, access) = (self.router.clone(), self.access.clone());
                let publish = async move {
                    let event = router.parse_event(event)?;
                    access.check_publish(&event.topic)?;
                    let receipt = router.publish(event).await?;
                    Ok(Reply::Published {
                        status: status_of(&receipt),
                        event_id: receipt_id(receipt),
                    })
                };
                return self.publish_pipelined(id, publish).await;
            }
            ClientFrame::PublishBatch {
                id,
                events,
                atomic: false,
            } if pipelined => {
                let (router, access) = (self.router.clone(), self.access.clone());
                let publish = async move {
                    let events = parse_batch(&router, events)?;
                    access.check_publish_all(events.iter().map(|e| e.topic.as_str()))?;
                    Ok(batch_reply(router.publish_batch(events, false).await?))
                };
                return self.publish_pipelined(id, publish).await;
            }
            other => other,
        };
        self.drain_publishes().await;
        match frame {
            ClientFrame::Publish { id, event } => {
                let result = self.publish(event).await.map(|r| Reply::Published {
                    status: status_of(&r),
                    event_id: receipt_id(r),
                });
                self.reply(&id, result).await;
            }
            ClientFrame::PublishBatch { id, events, atomic } => {
                let result = self.publish_batch(events, atomic).await.map(batch_reply);
                self.reply(&id, result).await;
            }
            ClientFrame::Subscribe(frame) => {
                let id = frame.id.clone();
                let result = self.subscribe_frame(frame).await;
                self.reply(&id, result).await;
            }
            ClientFrame::Ack {
                id,
                delivery_id,
                subscription_id,
            } if id.is_none() && self.router.broker().capabilities().acks_round_trip => {
                if let Err(e) = self.ack_in_background(delivery_id, subscription_id).await {
                    self.reply(&id, Err(e)).await;
                }
            }
            ClientFrame::Ack {
                id,
                delivery_id,
                subscription_id,
            } => {
                let result = self.ack(&delivery_id, subscription_id.as_deref()).await;
                self.settled_reply(&id, result).await;
            }
            ClientFrame::Nack {
                id,
                delivery_id,
                subscription_id,
                delay_ms,
                reason,
            } => {
                let options = NackOptions {
                    delay: delay_ms.map(Duration::from_millis),
                    reason,
                };
                let result = self
                    .nack(&delivery_id, subscription_id.as_deref(), options)
                    .await;
                self.settled_reply(&id, result).await;
            }
            ClientFrame::Unsubscribe {
                id,
                subscription_id,
            } => {
                let result = self.unsubscribe(&subscription_id).map(|()| Reply::Done {});
                self.reply(&id, result).await;
            }
            ClientFrame::Request {
                id,
                event,
                timeout_ms,
            } => {
                if let Err(e) = self.start_request(id.clone(), event, timeout_ms) {
                    self.send_reply(ServerFrame::error(&id, &e)).await;
                }
            }
            ClientFrame::Ping { id } => {
                self.send_reply(ServerFrame::Pong { id: &id }.to_text())
                    .await;
            }
            frame @ (ClientFrame::Append { .. }
            | ClientFrame::ReadStream { .. }
            | ClientFrame::SubscribeStream { .. }) => self.handle_event_stream(frame).await,
        }
    }

    async fn reply(&self, id: &RequestId, result: Result<Reply, ApiError>) {
        let text = match result {
            Ok(reply) => ServerFrame::ok(id, &reply),
            Err(e) => ServerFrame::error(id, &e),
        };
        self.send_reply(text).await;
    }

    /// Acks and nacks are answered only when they carry an id or fail, so
    /// that a consumer acking every delivery does not double the traffic.
    async fn settled_reply(&self, id: &RequestId, result: Result<Settled, ApiError>) {
        match result {
            Ok(_) if id.is_none() => {}
            Ok(Settled::Done) => self.reply(id, Ok(Reply::Done {})).await,
            Ok(Settled::Ignored) => self.reply(id, Ok(Reply::Ignored { ignored: true })).await,
            Err(e) => self.reply(id, Err(e)).await,
        }
    }

    /// Validates and publishes one raw event.
    ///
    /// # Errors
    /// Validation errors naming the field; broker errors.
    pub async fn publish(&self, raw: Value) -> Result<Receipt, ApiError> {
        let event = self.router.parse_event(raw)?;
        self.access.check_publish(&event.topic)?;
        Ok(self.router.publish(event).await?)
    }

    /// Validates every event, then publishes them in order.
    ///
    /// # Errors
    /// The first invalid event's error, prefixed with `events[i]`; nothing is
    /// published then.
    pub async fn publish_batch(
        &self,
        raws: Vec<Value>,
        atomic: bool,
    ) -> Result<Vec<Receipt>, ApiError> {
        let events = parse_batch(&self.router, raws)?;
        self.access
            .check_publish_all(events.iter().map(|e| e.topic.as_str()))?;
        Ok(self.router.publish_batch(events, atomic).await?)
    }

    async fn subscribe_frame(&mut self, frame: SubscribeFrame) -> Result<Reply, ApiError> {
        let selector = build_selector(
            &frame.topics,
            frame.pattern.as_deref(),
            frame.filter.as_ref(),
        )?;
        let tag = self
            .subscribe(SubscribeOptions {
                selector,
                group: frame.group,
                max_in_flight: frame.max_in_flight,
                dialect: Dialect::V2,
                resume_after: None,
                slow_consumer: frame.slow_consumer,
            })
            .await?;
        Ok(Reply::Subscribed {
            subscription_id: tag.id.clone(),
        })
    }

    /// Opens a subscription whose deliveries flow into the outgoing channel.
    ///
    /// With a `group`, the durable subscription is created with the default
    /// policy when it does not exist yet; an existing one keeps its own spec
    /// (its selector wins over the one given here).
    ///
    /// # Errors
    /// `too_many_subscriptions`, `too_many_patterns`, `already_subscribed`
    /// (the same group twice on one connection), `bad_request` for
    /// `max_in_flight` out of range, and broker errors.
    pub async fn subscribe(
        &mut self,
        options: SubscribeOptions,
    ) -> Result<Arc<SubscriptionTag>, ApiError> {
        let patterns = pattern_cost(&options.selector);
        self.config
            .patterns
            .check(patterns.0, patterns.1, self.patterns_held)?;
        self.access.check_subscribe(options.selector.patterns())?;
        if let Some(group) = &options.group {
            self.access.check_group(group)?;
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!(
                    "this connection already holds {} subscriptions, the limit",
                    self.config.max_subscriptions
                ),
            ));
        }
        let stop = CancellationToken::new();
        let selector = options.selector.clone();
        let tag = match options.group {
            None => self.subscribe_live(options, stop.clone()).await?,
            Some(group) => {
                let max_in_flight = options.max_in_flight;
                self.subscribe_durable(
                    group,
                    options.selector,
                    max_in_flight,
                    options.dialect,
                    stop.clone(),
                )
                .await?
            }
        };
        let listed = self.listed(&tag.id, &selector, tag.group.as_deref());
        self.subscriptions.insert(
            tag.id.clone(),
            SubscriptionHandle {
                tag: tag.clone(),
                patterns,
                _stop: stop.drop_guard(),
                _listed: listed,
            },
        );
        self.patterns_held.0 += patterns.0;
        self.patterns_held.1 += patterns.1;
        Ok(tag)
    }

    async fn subscribe_live(
        &mut self,
        options: SubscribeOptions,
        stop: CancellationToken,
    ) -> Result<Arc<SubscriptionTag>, ApiError> {
        let stream = self
            .router
            .broker()
            .subscribe_live(LiveSubscription {
                selector: options.selector.clone(),
                capacity: self.config.live_queue_capacity,
                max_bytes: self.config.live_queue_max_bytes,
            })
            .await?;
        let tag = Arc::new(SubscriptionTag {
            id: uuid::Uuid::new_v4().simple().to_string(),
            dialect: options.dialect,
            group: None,
        });
        let resume = options.resume_after.map(|after| Resume {
            router: self.router.clone(),
            selector: options.selector,
            after_event_id: after,
        });
        let disconnect =
            (options.slow_consumer == SlowConsumer::Disconnect).then(|| self.disconnect.clone());
        let out = (self.out.clone(), self.budget.clone());
        let task = forward_live(stream, tag.clone(), out, resume, disconnect);
        spawn_until(stop, task);
        Ok(tag)
    }

    async fn subscribe_durable(
        &mut self,
        group: String,
        selector: Selector,
        max_in_flight: Option<usize>,
        dialect: Dialect,
        stop: CancellationToken,
    ) -> Result<Arc<SubscriptionTag>, ApiError> {
        if self.subscriptions.contains_key(&group) {
            return Err(ApiError::bad_request(
                "already_subscribed",
                format!("this connection already consumes group {group:?}"),
            ));
        }
        let max_in_flight = match max_in_flight {
            None => ConsumeOptions::default().max_in_flight,
            Some(n) if (1..=MAX_IN_FLIGHT_LIMIT).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    format!("max_in_flight must be within 1..={MAX_IN_FLIGHT_LIMIT}, got {n}"),
                ));
            }
        };
        ensure_group(&self.router, &group, selector).await?;
        let consumer = self
            .router
            .broker()
            .consume(
                &group,
                ConsumeOptions {
                    max_in_flight,
                    name: String::new(),
                    // Acks come back over this connection, which keeps each
                    // delivery's trace context (not over SSE: by HTTP).
                    acks_carry_trace: dialect != Dialect::Sse,
                },
            )
            .await?;
        let tag = Arc::new(SubscriptionTag {
            id: group.clone(),
            dialect,
            group: Some(group),
        });
        let in_flight = (dialect != Dialect::Sse).then(|| self.in_flight.clone());
        let task = forward_durable(consumer, tag.clone(), self.out.clone(), in_flight);
        spawn_until(stop, task);
        Ok(tag)
    }

    /// Closes a subscription. A durable one returns its un-acked deliveries
    /// to the group.
    ///
    /// # Errors
    /// `unknown_subscription` when this connection holds no such subscription.
    pub fn unsubscribe(&mut self, subscription_id: &str) -> Result<(), ApiError> {
        let handle = self.subscriptions.remove(subscription_id).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_subscription",
                format!("this connection has no subscription {subscription_id:?}"),
            )
        })?;
        self.patterns_held.0 -= handle.patterns.0;
        self.patterns_held.1 -= handle.patterns.1;
        if handle.tag.group.is_some() {
            self.in_flight
                .lock()
                .retain(|_, (tag, _)| !Arc::ptr_eq(tag, &handle.tag));
        }
        Ok(())
    }

    /// Acknowledges a delivery made on this connection.
    ///
    /// # Errors
    /// `unknown_delivery` when the broker does not know it (already acked,
    /// or redelivered after its ack timeout); other broker errors.
    pub async fn ack(
        &self,
        delivery_id: &str,
        subscription_id: Option<&str>,
    ) -> Result<Settled, ApiError> {
        self.settle(delivery_id, subscription_id, None).await
    }

    /// Rejects a delivery made on this connection, for redelivery.
    ///
    /// # Errors
    /// As [`Session::ack`].
    pub async fn nack(
        &self,
        delivery_id: &str,
        subscription_id: Option<&str>,
        options: NackOptions,
    ) -> Result<Settled, ApiError> {
        self.settle(delivery_id, subscription_id, Some(options))
            .await
    }

    /// Acks a delivery without waiting for the broker (an ack with no `id`
    /// on a broker whose acks cost a round trip): the acks of a consumer
    /// overlap, and a failure is sent as an `error` frame. At most
    /// [`MAX_BACKGROUND_ACKS`] are outstanding per connection; past that
    /// this waits. Acks already started finish when the connection closes.
    ///
    /// # Errors
    /// `unknown_subscription` for a `subscription_id` this connection does
    /// not have.
    pub async fn ack_in_background(
        &mut self,
        delivery_id: String,
        subscription_id: Option<String>,
    ) -> Result<(), ApiError> {
        let (groups, kept) = self.groups_for(&delivery_id, subscription_id.as_deref())?;
        if groups.is_empty() {
            return Ok(());
        }
        let Ok(permit) = self.background_acks.clone().acquire_owned().await else {
            return Ok(());
        };
        let broker = self.router.broker().clone();
        let out = self.out.clone();
        tokio::spawn(async move {
            let result = settle_in(&broker, &groups, kept, &delivery_id, None).await;
            drop(permit);
            if let Err(e) = result {
                let _ = out
                    .send(Outgoing::Reply(ServerFrame::error(&None, &e)))
                    .await;
            }
        });
        Ok(())
    }

    /// Acks (`nack: None`) or nacks, trying each candidate group until one
    /// knows the delivery.
    async fn settle(
        &self,
        delivery_id: &str,
        subscription_id: Option<&str>,
        nack: Option<NackOptions>,
    ) -> Result<Settled, ApiError> {
        let (groups, kept) = self.groups_for(delivery_id, subscription_id)?;
        settle_in(self.router.broker(), &groups, kept, delivery_id, nack).await
    }

    /// The groups that may hold `delivery_id`: the one it was delivered
    /// from when known, else every group this connection consumes. Empty
    /// means a live delivery. With them, the delivery's trace context when
    /// it was made on this connection.
    fn groups_for(
        &self,
        delivery_id: &str,
        subscription_id: Option<&str>,
    ) -> Result<(Vec<String>, Option<Option<StepContext>>), ApiError> {
        if let Some(sid) = subscription_id {
            let handle = self.subscriptions.get(sid).ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "unknown_subscription",
                    format!("this connection has no subscription {sid:?}"),
                )
            })?;
            let kept = self.in_flight.lock().remove(delivery_id);
            return Ok((
                handle.tag.group.iter().cloned().collect(),
                kept.map(|(_, trace)| trace),
            ));
        }
        if let Some((tag, trace)) = self.in_flight.lock().remove(delivery_id) {
            return Ok((tag.group.iter().cloned().collect(), Some(trace)));
        }
        let groups = self
            .subscriptions
            .values()
            .filter_map(|h| h.tag.group.clone())
            .collect();
        Ok((groups, None))
    }

    fn start_request(
        &mut self,
        id: RequestId,
        raw: Value,
        timeout_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("this connection already has {MAX_PENDING_REQUESTS} requests waiting"),
            ));
        }
        let event = self.router.parse_event(raw)?;
        self.access.check_reply_to(event.reply_to.as_deref())?;
        self.access.check_publish(&event.topic)?;
        let timeout = timeout_ms.map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis);
        let router = self.router.clone();
        let out = self.out.clone();
        self.requests.spawn(async move {
            let text = match router.request(event, timeout).await {
                Ok(response) => ServerFrame::ok(
                    &id,
                    &Reply::Response {
                        response: Box::new(response),
                    },
                ),
                Err(e) => ServerFrame::error(&id, &e.into()),
            };
            let _ = out.send(Outgoing::Reply(text)).await;
        });
        Ok(())
    }
}

fn status_of(receipt: &Receipt) -> &'static str {
    match receipt {
        Receipt::Published { .. } => "published",
        Receipt::Dropped { .. } => "dropped",
    }
}

fn receipt_id(receipt: Receipt) -> String {
    match receipt {
        Receipt::Published { event_id, .. } | Receipt::Dropped { event_id, .. } => event_id,
    }
}

fn batch_reply(receipts: Vec<Receipt>) -> Reply {
    let mut dropped = Vec::new();
    let event_ids = receipts
        .into_iter()
        .map(|r| {
            if matches!(r, Receipt::Dropped { .. }) {
                dropped.push(r.event_id().to_string());
            }
            receipt_id(r)
        })
        .collect();
    Reply::Batch { event_ids, dropped }
}

/// Validates every raw event of a batch.
///
/// # Errors
/// The first invalid event's error, its message prefixed with `events[i]: `.
pub fn parse_batch(router: &Router, raws: Vec<Value>) -> Result<Vec<Event>, ApiError> {
    raws.into_iter()
        .enumerate()
        .map(|(i, raw)| {
            router.parse_event(raw).map_err(|e| {
                let mut e = ApiError::from(e);
                e.message = format!("events[{i}]: {}", e.message);
                e
            })
        })
        .collect()
}

/// Creates durable subscription `group` with the default policy unless it
/// exists.
///
/// # Errors
/// `invalid_subscription` for a bad name; broker errors.
pub async fn ensure_group(
    router: &Router,
    group: &str,
    selector: Selector,
) -> Result<(), ApiError> {
    let broker = router.broker();
    match broker.subscription(group).await {
        Ok(_) => Ok(()),
        Err(BrokerError::UnknownSubscription(_)) => {
            let spec = GroupSpec::new(group, selector);
            spec.validate()?;
            broker.ensure_subscription(spec).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A selector from `topics` patterns, an optional regex `pattern` and an
/// optional filter (see [`parse_filter`]).
///
/// # Errors
/// `invalid_pattern` naming the pattern, or when neither `topics` nor
/// `pattern` is given; `invalid_filter` naming the path and operator.
pub fn build_selector(
    topics: &[String],
    pattern: Option<&str>,
    filter: Option<&Value>,
) -> Result<Selector, ApiError> {
    let mut patterns = topics
        .iter()
        .map(|t| Pattern::parse(t).map_err(SelectorError::from))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(re) = pattern {
        patterns.push(Pattern::regex(re).map_err(SelectorError::from)?);
    }
    if patterns.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_pattern",
            "give at least one topic pattern in `topics` (or a regex in `pattern`)",
        ));
    }
    Ok(Selector::new(patterns, parse_filter(filter)?)?)
}

/// A filter from a JSON document (object), a shorthand string
/// (`priority:gt:5`, or a JSON document as text when it starts with `{`),
/// or an array of such strings, which are ANDed.
///
/// # Errors
/// `invalid_filter` naming the problem.
pub fn parse_filter(filter: Option<&Value>) -> Result<Option<Filter>, ApiError> {
    match filter {
        None | Some(Value::Null) => Ok(None),
        Some(doc @ Value::Object(_)) => {
            Ok(Some(Filter::compile(doc).map_err(SelectorError::from)?))
        }
        Some(Value::String(text)) => parse_filter_texts(std::slice::from_ref(text)),
        Some(Value::Array(items)) => {
            let texts = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid_filter(format!(
                        "filter array items must be shorthand strings, got {}",
                        crate::event::json_kind(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            parse_filter_texts(&texts)
        }
        Some(other) => Err(invalid_filter(format!(
            "filter must be an object, a shorthand string or an array of them, got {}",
            crate::event::json_kind(other)
        ))),
    }
}

/// Filters from query-string texts, ANDed: each is a JSON document when it
/// starts with `{`, else `field:op:value` shorthand.
///
/// # Errors
/// `invalid_filter` naming the text and problem.
pub fn parse_filter_texts<S: AsRef<str>>(texts: &[S]) -> Result<Option<Filter>, ApiError> {
    let mut filters = Vec::with_capacity(texts.len());
    for text in texts {
        let text = text.as_ref().trim();
        let filter = if text.starts_with('{') {
            let doc: Value = serde_json::from_str(text)
                .map_err(|e| invalid_filter(format!("filter is not valid JSON: {e}")))?;
            Filter::compile(&doc)
        } else {
            Filter::parse_shorthand(text)
        };
        filters.push(filter.map_err(SelectorError::from)?);
    }
    Ok(match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter::and(filters)),
    })
}

fn invalid_filter(message: String) -> ApiError {
    ApiError::bad_request("invalid_filter", message)
}

/// Runs `task` until it ends or `stop` is cancelled, whichever comes first.
fn spawn_until(
    stop: CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = task => {}
        }
    });
}

/// Where a resumed live subscription picks up history.
struct Resume {
    router: Arc<Router>,
    selector: Selector,
    after_event_id: String,
}

/// Forwards a live stream into `out`, after replaying history when resuming.
async fn forward_live(
    mut stream: LiveStream,
    tag: Arc<SubscriptionTag>,
    (out, budget): (mpsc::Sender<Outgoing>, Budget),
    resume: Option<Resume>,
    disconnect: Option<CancellationToken>,
) {
    let mut replayed = match resume {
        Some(resume) => match replay(resume, &tag, &out, &budget).await {
            Some(ids) => ids,
            None => return,
        },
        None => HashSet::new(),
    };
    while let Some(item) = stream.recv().await {
        let mut next = Some(item);
        // Forward whatever else is ready before waiting again.
        while let Some(item) = next.take() {
            let out_item = match item {
                LiveItem::Event(event) => {
                    if !replayed.is_empty() && replayed.remove(&event.id) {
                        next = stream.try_recv();
                        continue;
                    }
                    Outgoing::Event {
                        subscription: tag.clone(),
                        delivery_id: None,
                        attempt: 1,
                        held: budget.hold(&event).await,
                        event,
                    }
                }
                LiveItem::Overflow { dropped } => {
                    if let Some(disconnect) = &disconnect {
                        tracing::info!(
                            subscription = %tag.id,
                            dropped,
                            "slow consumer: closing the connection (policy disconnect)"
                        );
                        disconnect.cancel();
                        return;
                    }
                    Outgoing::Overflow {
                        subscription: tag.clone(),
                        dropped,
                    }
                }
            };
            if out.send(out_item).await.is_err() {
                return;
            }
            next = stream.try_recv();
        }
    }
    let _ = out
        .send(Outgoing::Ended {
            subscription: tag,
            error: None,
        })
        .await;
}

/// Sends the history entries after the one whose event id is
/// `after_event_id` and returns the ids sent, so that the live stream can
/// skip them. When the id is no longer in retained history nothing is
/// replayed. `None` when the transport is gone.
async fn replay(
    resume: Resume,
    tag: &Arc<SubscriptionTag>,
    out: &mpsc::Sender<Outgoing>,
    budget: &Budget,
) -> Option<HashSet<String>> {
    let broker = resume.router.broker();
    let mut sent = HashSet::new();
    let mut found = false;
    let mut cursor = None;
    loop {
        let page = broker
            .history(HistoryQuery {
                selector: Some(resume.selector.clone()),
                after: cursor.clone(),
                limit: HISTORY_PAGE,
                ..HistoryQuery::default()
            })
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "history unavailable; resuming live only");
                return Some(sent);
            }
        };
        let Some(last) = page.last() else {
            return Some(sent);
        };
        cursor = Some(last.cursor.clone());
        let full = page.len() >= HISTORY_PAGE;
        for entry in page {
            if !found {
                found = entry.event.id == resume.after_event_id;
                continue;
            }
            if sent.len() >= MAX_REPLAY_EVENTS {
                return Some(sent);
            }
            sent.insert(entry.event.id.clone());
            let item = Outgoing::Event {
                subscription: tag.clone(),
                delivery_id: None,
                attempt: 1,
                held: budget.hold(&entry.event).await,
                event: Arc::new(entry.event),
            };
            out.send(item).await.ok()?;
        }
        if !full {
            return Some(sent);
        }
    }
}

/// Forwards durable deliveries into `out`, recording their ids in
/// `in_flight` (when acks come back over this connection).
async fn forward_durable(
    mut consumer: Consumer,
    tag: Arc<SubscriptionTag>,
    out: mpsc::Sender<Outgoing>,
    in_flight: Option<InFlight>,
) {
    loop {
        match consumer.next().await {
            Ok(deliveries) => {
                if let Some(map) = &in_flight {
                    let mut map = map.lock();
                    if map.len() + deliveries.len() > MAX_TRACKED_DELIVERIES {
                        map.clear();
                    }
                    for d in &deliveries {
                        let trace = trace::delivery_context(&d.event);
                        map.insert(d.delivery_id.clone(), (tag.clone(), trace));
                    }
                }
                for d in deliveries {
                    let item = Outgoing::Event {
                        subscription: tag.clone(),
                        delivery_id: Some(d.delivery_id),
                        attempt: d.attempt,
                        event: Arc::new(d.event),
                        held: Held::default(),
                    };
                    if out.send(item).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = out
                    .send(Outgoing::Ended {
                        subscription: tag,
                        error: Some(e.into()),
                    })
                    .await;
                return;
            }
        }
    }
}

/// Acks (`nack: None`) or nacks `delivery_id` in the first of `groups` that
/// knows it; `kept` is the trace context of a delivery made on the
/// connection.
async fn settle_in(
    broker: &crate::broker::SharedBroker,
    groups: &[String],
    kept: Option<Option<StepContext>>,
    delivery_id: &str,
    nack: Option<NackOptions>,
) -> Result<Settled, ApiError> {
    let mut last = None;
    for group in groups {
        let settle = match &nack {
            None => broker.ack(group, delivery_id),
            Some(options) => broker.nack(group, delivery_id, options.clone()),
        };
        // A delivery made on this connection: its span's parent is the
        // context kept with it (else the broker looks for it).
        let result = match kept.clone() {
            Some(parent) => trace::settle_under(parent, settle).await,
            None => settle.await,
        };
        match result {
            Ok(()) => return Ok(Settled::Done),
            Err(e @ BrokerError::UnknownDelivery(_)) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => Ok(Settled::Ignored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::router::RouterConfig;
    use serde_json::json;

    fn router() -> Arc<Router> {
        Router::new(Arc::new(MemoryBroker::default()), RouterConfig::default())
    }

    fn session(
        router: &Arc<Router>,
        max_subscriptions: usize,
    ) -> (Session, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(64);
        let config = SessionConfig {
            live_queue_capacity: 16,
            live_queue_max_bytes: 0,
            max_subscriptions,
            patterns: PatternLimits::default(),
        };
        (Session::new(router.clone(), config, tx), rx)
    }

    fn frame(v: Value) -> ClientFrame {
        serde_json::from_value(v).unwrap()
    }

    async fn next(rx: &mut mpsc::Receiver<Outgoing>) -> Outgoing {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an outgoing item within 5 s")
            .expect("channel open")
    }

    async fn reply(rx: &mut mpsc::Receiver<Outgoing>) -> Value {
        match next(rx).await {
            Outgoing::Reply(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    async fn event(rx: &mut mpsc::Receiver<Outgoing>) -> (String, Option<String>, Arc<Event>) {
        match next(rx).await {
            Outgoing::Event {
                subscription,
                delivery_id,
                event,
                ..
            } => (subscription.id.clone(), delivery_id, event),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    async fn publish(
        s: &mut Session,
        rx: &mut mpsc::Receiver<Outgoing>,
        topic: &str,
        n: i64,
    ) -> String {
        s.handle(frame(
            json!({"op":"publish","id":"p","event":{"type":topic,"payload":{"n":n}}}),
        ))
        .await;
        let r = reply(rx).await;
        assert_eq!(r["op"], "ok", "{r}");
        r["event_id"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn publish_replies_ok_with_the_event_id_and_echoes_the_request_id() {
        let router = router();
        let (mut s, mut rx) = session(&router, 10);
        s.handle(frame(json!({"op":"publish","id":7,"event":{"type":"a.b"}})))
            .await;
        let r = reply(&mut rx).await;
        assert_eq!((r["op"].clone(), r["id"].clone()), (json!("ok"), json!(7)));
        assert_eq!(r["status"], "published");
        assert!(r["event_id"].is_string());
    }

    #[tokio::test]
    async fn live_subscription_forwards_only_matching_events() {
        let router = router();
        let (mut s, mut rx) = session(&router, 10);
        s.handle(frame(
            json!({"op":"subscribe","id":"s","topics":["task.*"],"filter":"payload.n:gt:1"}),
        ))
        .await;
        let r = reply(&mut rx).await;
        let sid = r["subscription_id"].as_str().unwrap().to_string();
        let (mut p, mut prx) = session(&router, 10);
        publish(&mut p, &mut prx, "task.created", 1).await;
        publish(&mut p, &mut prx, "other.created", 5).await;
        let wanted = publish(&mut p, &mut prx, "task.created", 2).await;
        let (got_sid, delivery, ev) = event(&mut rx).await;
        assert_eq!((got_sid, delivery, ev.id.clone()), (sid, None, wanted));
    }

    #[tokio::test]
    async fn invalid_subscriptions_get_named_errors_and_the_session_stays_usable() {
        let router = router();
        let (mut s, mut rx) = session(&router, 10);
        for (bad, code) in [
            (
                json!({"op":"subscribe","id":"1","topics":["a..b"]}),
                "invalid_pattern",
            ),
            (
                json!({"op":"subscribe","id":"2","topics":[]}),
                "invalid_pattern",
            ),
            (
                json!({"op":"subscribe","id":"3","topics":["a"],"pattern":"("}),
                "invalid_pattern",
            ),
            (
                json!({"op":"subscribe","id":"4","topics":["a"],"filter":{"x":{"$bogus":1}}}),
                "invalid_filter",
            ),
            (
                json!({"op":"subscribe","id":"5","topics":["a"],"filter":7}),
                "invalid_filter",
            ),
            (
                json!({"op":"publish","id":"6","event":{"type":"a","priority":"urgent"}}),
                "invalid_priority",
            ),
            (
                json!({"op":"publish","id":"7","event":{"type":"a b"}}),
                "invalid_topic",
            ),
            (
                json!({"op":"publish_batch","id":"8","events":[]}),
                "bad_request",
            ),
            (
                json!({"op":"unsubscribe","id":"9","subscription_id":"nope"}),
                "unknown_subscription",
            ),
        ] {
            s.handle(frame(bad.clone())).await;
            let r = reply(&mut rx).await;
            assert_eq!(r["op"], "error", "{bad} -> {r}");
            assert_eq!(r["code"], code, "{bad} -> {r}");
            assert_eq!(r["id"], bad["id"]);
        }
        s.handle(frame(json!({"op":"ping","id":"x"}))).await;
        assert_eq!(reply(&mut rx).await, json!({"op":"pong","id":"x"}));
    }

    #[tokio::test]
    async fn a_batch_names_the_first_invalid_event_and_publishes_nothing() {
        let router = router();
        let (mut s, mut rx) = session(&router, 10);
        s.handle(frame(
            json!({"op":"publish_batch","events":[{"type":"a"},{"type":"a..b"}]}),
        ))
        .await;
        let r = reply(&mut rx).await;
        assert_eq!(r["code"], "invalid_topic");
        assert!(
            r["message"].as_str().unwrap().starts_with("events[1]"),
            "{r}"
        );
        s.handle(frame(
            json!({"op":"publish_batch","events":[{"type":"a"},{"type":"b"}],"atomic":true}),
        ))
        .await;
        assert_eq!(
            reply(&mut rx).await["event_ids"].as_array().unwrap().len(),
            2
        );
    }

    #[tokio::test]
    async fn subscriptions_per_connection_are_limited() {
        let router = router();
        let (mut s, mut rx) = session(&router, 1);
        s.handle(frame(json!({"op":"subscribe","topics":["a"]})))
            .await;
        assert_eq!(reply(&mut rx).await["op"], "ok");
        s.handle(frame(json!({"op":"subscribe","topics":["b"]})))
            .await;
        assert_eq!(reply(&mut rx).await["code"], "too_many_subscriptions");
    }

    #[tokio::test]
    async fn durable_deliveries_are_acked_by_delivery_id_and_live_acks_are_ignored() {
        let router = router();
        let (mut s, mut rx) = session(&router, 10);
        s.handle(frame(
            json!({"op":"subscribe","id":"s","topics":["job.#"],"group":"workers"}),
        ))
        .await;
        assert_eq!(reply(&mut rx).await["subscription_id"], "workers");
        let (mut p, mut prx) = session(&router, 10);
        publish(&mut p, &mut prx, "job.run", 1).await;
        let (sid, delivery, _) = event(&mut rx).await;
        assert_eq!(sid, "workers");
        let delivery = delivery.expect("durable deliveries have ids");
        s.handle(frame(json!({"op":"ack","id":"a1","delivery_id":delivery})))
            .await;
        assert_eq!(reply(&mut rx).await, json!({"op":"ok","id":"a1"}));
        s.handle(frame(json!({"op":"ack","id":"a2","delivery_id":delivery})))
            .await;
        assert_eq!(reply(&mut rx).await["code"], "unknown_delivery");
        let info = router.broker().subscription("workers").await.unwrap();
        assert_eq!((info.acked, info.in_flight), (1, 0));

        let (mut live, mut lrx) = session(&router, 10);
        live.handle(frame(json!({"op":"ack","id":"l","delivery_id":"whatever"})))
            .await;
        assert_eq!(
            reply(&mut lrx).await,
            json!({"op":"ok","id":"l","ignored":true})
        );
        live.handle(frame(json!({"op":"ack","delivery_id":"whatever"})))
            .await;
        assert!(
            lrx.try_recv().is_err(),
            "an ack without id that succeeds is not answered"
        );
    }

    #[tokio::test]
    async fn dropping_a_session_returns_its_in_flight_deliveries_to_the_group() {
        let router = router();
        let (mut first, mut rx1) = session(&router, 10);
        first
            .handle(frame(
                json!({"op":"subscribe","topics":["job.#"],"group":"g"}),
            ))
            .await;
        reply(&mut rx1).await;
        let (mut p, mut prx) = session(&router, 10);
        let id = publish(&mut p, &mut prx, "job.run", 1).await;
        let (_, _, ev) = event(&mut rx1).await;
        assert_eq!(ev.id, id);
        drop(first);
        let (mut second, mut rx2) = session(&router, 10);
        second
            .handle(frame(
                json!({"op":"subscribe","topics":["job.#"],"group":"g"}),
            ))
            .await;
        reply(&mut rx2).await;
        let (_, _, ev) = event(&mut rx2).await;
        assert_eq!(ev.id, id);
    }

    #[tokio::test]
    async fn resuming_replays_missed_events_once_then_continues_live() {
        let router = router();
        let (mut p, mut prx) = session(&router, 10);
        let first = publish(&mut p, &mut prx, "r.x", 1).await;
        let second = publish(&mut p, &mut prx, "r.x", 2).await;
        let third = publish(&mut p, &mut prx, "r.x", 3).await;
        let (mut s, mut rx) = session(&router, 10);
        s.subscribe(SubscribeOptions {
            selector: Selector::parse(&["r.#"], None).unwrap(),
            group: None,
            max_in_flight: None,
            dialect: Dialect::Sse,
            resume_after: Some(first),
            slow_consumer: Default::default(),
        })
        .await
        .unwrap();
        let fourth = publish(&mut p, &mut prx, "r.x", 4).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(event(&mut rx).await.2.id.clone());
        }
        assert_eq!(got, vec![second, third, fourth]);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_request_gets_the_reply_published_by_another_session() {
        let router = router();
        let (mut responder, mut rrx) = session(&router, 10);
        responder
            .handle(frame(json!({"op":"subscribe","topics":["svc.echo"]})))
            .await;
        reply(&mut rrx).await;
        let (mut client, mut crx) = session(&router, 10);
        client
            .handle(frame(json!({"op":"request","id":"q","event":{"type":"svc.echo","payload":"hi"},"timeout_ms":5000})))
            .await;
        let (_, _, req) = event(&mut rrx).await;
        let reply_to = req.reply_to.clone().unwrap();
        let corr = req.correlation_id.clone().unwrap();
        responder
            .handle(frame(json!({"op":"publish","event":{"type":reply_to,"correlation_id":corr,"payload":"HI"}})))
            .await;
        let r = reply(&mut crx).await;
        assert_eq!(
            (r["op"].clone(), r["id"].clone()),
            (json!("ok"), json!("q"))
        );
        assert_eq!(r["response"]["payload"], "HI");

        client
            .handle(frame(
                json!({"op":"request","id":"t","event":{"type":"svc.none"},"timeout_ms":10}),
            ))
            .await;
        assert_eq!(reply(&mut crx).await["code"], "timeout");
    }

    #[tokio::test]
    async fn a_slow_live_subscriber_gets_an_overflow_notice_for_dropped_events() {
        let router = router();
        let (tx, mut rx) = mpsc::channel(1);
        let config = SessionConfig {
            live_queue_capacity: 2,
            live_queue_max_bytes: 0,
            max_subscriptions: 10,
            patterns: PatternLimits::default(),
        };
        let mut s = Session::new(router.clone(), config, tx);
        s.subscribe(SubscribeOptions {
            selector: Selector::parse(&["o.#"], None).unwrap(),
            group: None,
            max_in_flight: None,
            dialect: Dialect::V2,
            resume_after: None,
            slow_consumer: Default::default(),
        })
        .await
        .unwrap();
        for n in 0..20 {
            router
                .publish(Event::new("o.x", json!(n)).unwrap())
                .await
                .unwrap();
        }
        let mut dropped = 0;
        let mut received = 0;
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            match item {
                Outgoing::Overflow { dropped: d, .. } => dropped += d,
                Outgoing::Event { .. } => received += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(dropped > 0, "some events were dropped");
        assert_eq!(
            dropped + received,
            20,
            "every event is either received or counted"
        );
    }
}
