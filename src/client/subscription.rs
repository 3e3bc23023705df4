//! Subscriptions as clients see them: a [`Subscription`] stream of
//! [`Received`] deliveries, whatever the transport.
//!
//! Each subscription owns an [`Inbox`]: a bounded queue the transport pushes
//! into without ever waiting (so a slow consumer cannot stall the
//! connection that also carries pongs and publish confirmations). A full
//! inbox drops its oldest delivery and counts it, as the server does for
//! live subscribers; a dropped durable delivery is redelivered by the
//! server after its ack timeout.
//!
//! Durable deliveries also pass a bounded set of recently seen delivery ids
//! ([`Recent`]), so that one delivery id is handed out once even if the
//! server sends it again (a broker that redelivers under the same id after
//! a reconnect); a repeat of an acked delivery is acked again instead.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{ClientError, Result};
use super::ws::Command;
use crate::broker::{NackOptions, SharedBroker};
use crate::event::Event;

/// What a durable delivery's handler did, as remembered by [`Recent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Handed out, not settled yet.
    Pending,
    /// Acked.
    Acked,
    /// Nacked: a repeat is a legitimate retry.
    Nacked,
}

/// What to do with an arriving durable delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// First time seen (or a retry after a nack): hand it out.
    Deliver,
    /// Already handed out and not settled yet: drop the repeat.
    Drop,
    /// Already acked: ack the repeat too, do not hand it out.
    AckAgain,
}

/// A bounded memory of recently seen durable deliveries; the oldest entry
/// is forgotten when full.
#[derive(Debug)]
pub(crate) struct Recent {
    outcomes: HashMap<String, Outcome>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Recent {
            outcomes: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn admit(&mut self, key: &str) -> Admit {
        match self.outcomes.get_mut(key) {
            Some(Outcome::Pending) => return Admit::Drop,
            Some(Outcome::Acked) => return Admit::AckAgain,
            Some(outcome @ Outcome::Nacked) => {
                *outcome = Outcome::Pending;
                return Admit::Deliver;
            }
            None => {}
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
        self.outcomes.insert(key.to_string(), Outcome::Pending);
        self.order.push_back(key.to_string());
        Admit::Deliver
    }

    fn settle(&mut self, key: &str, outcome: Outcome) {
        if let Some(o) = self.outcomes.get_mut(key) {
            *o = outcome;
        }
    }

    /// Forgets a delivery that was never handed out, so that a redelivery
    /// under the same id is handed out.
    fn forget(&mut self, key: &str) {
        self.outcomes.remove(key);
    }
}

/// The dedupe key of a durable delivery: the delivery id alone could repeat
/// across a broker restart, the pair cannot.
fn dedupe_key(delivery_id: &str, event_id: &str) -> String {
    format!("{delivery_id}\u{1f}{event_id}")
}

struct InboxState {
    queue: VecDeque<Received>,
    waker: Option<Waker>,
    ended: bool,
    error: Option<ClientError>,
    recent: Recent,
}

/// The queue between a transport and one [`Subscription`].
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    dropped: AtomicU64,
    capacity: usize,
    durable: bool,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("capacity", &self.capacity)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    pub(crate) fn new(capacity: usize, durable: bool, dedupe_capacity: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                waker: None,
                ended: false,
                error: None,
                recent: Recent::new(dedupe_capacity),
            }),
            dropped: AtomicU64::new(0),
            capacity: capacity.max(1),
            durable,
        })
    }

    /// Queues a delivery without waiting; see the module docs for what is
    /// dropped and when.
    pub(crate) fn push(self: &Arc<Self>, received: Received) {
        let mut state = self.state.lock();
        if state.ended {
            return;
        }
        if self.durable {
            match state.recent.admit(&received.settle.key) {
                Admit::Deliver => {}
                Admit::Drop => {
                    // A repeat: its drop must not forget the original.
                    received.settle.done.store(true, Ordering::Relaxed);
                    return;
                }
                Admit::AckAgain => {
                    drop(state);
                    received.settle.done.store(true, Ordering::Relaxed);
                    received.settle.fire(SettleKind::Ack);
                    return;
                }
            }
        }
        if state.queue.len() >= self.capacity
            && let Some(old) = state.queue.pop_front()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            state.recent.forget(&old.settle.key);
            // Forgotten here, under the lock its drop would take again.
            old.settle.done.store(true, Ordering::Relaxed);
            tracing::warn!(
                subscription = %old.subscription_id,
                "subscription queue full; dropped the oldest delivery"
            );
        }
        state.queue.push_back(received);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Counts events the server reported as dropped for this subscriber.
    pub(crate) fn overflowed(&self, dropped: u64) {
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Discards queued durable deliveries: they came over a connection that
    /// is gone, and the server redelivers them.
    pub(crate) fn discard_durable(&self) {
        if !self.durable {
            return;
        }
        let mut state = self.state.lock();
        let queued: Vec<Received> = state.queue.drain(..).collect();
        for r in &queued {
            state.recent.forget(&r.settle.key);
            r.settle.done.store(true, Ordering::Relaxed);
        }
    }

    /// Ends the stream after what is queued; with an error, the
    /// subscription reports it.
    pub(crate) fn end(&self, error: Option<ClientError>) {
        let mut state = self.state.lock();
        if state.ended {
            return;
        }
        state.ended = true;
        state.error = error;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn settled(&self, key: &str, outcome: Outcome) {
        if self.durable {
            self.state.lock().recent.settle(key, outcome);
        }
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        let mut state = self.state.lock();
        if let Some(r) = state.queue.pop_front() {
            return Poll::Ready(Some(r));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// How a delivery is acknowledged: over which transport, if at all.
pub(crate) enum AckPath {
    /// Live deliveries need no ack.
    Live,
    /// Over the WebSocket connection, as `ack`/`nack` frames.
    Ws(mpsc::UnboundedSender<Command>),
    /// Straight to the broker.
    InProcess {
        /// The router's broker.
        broker: SharedBroker,
        /// The durable subscription.
        group: String,
    },
}

/// An ack, or a nack with its options.
#[derive(Debug, Clone)]
pub(crate) enum SettleKind {
    /// Done with it.
    Ack,
    /// Redeliver it.
    Nack(NackOptions),
}

/// The settlement state of one delivery, shared by its [`Received`] and
/// the handler machinery that acks after the handler returns.
pub(crate) struct Settle {
    done: AtomicBool,
    key: String,
    delivery_id: String,
    subscription_id: String,
    path: AckPath,
    inbox: Arc<Inbox>,
}

impl Drop for Settle {
    /// A durable delivery given up without an ack or a nack (its handler
    /// task was aborted, the [`Received`] dropped) is forgotten, so that the
    /// server's redelivery of it, which may carry the same delivery id, is
    /// handed out again instead of being taken for a repeat.
    fn drop(&mut self) {
        if self.inbox.durable && !self.done.load(Ordering::Relaxed) {
            self.inbox.state.lock().recent.forget(&self.key);
        }
    }
}

impl Settle {
    /// Settles once: later calls do nothing.
    pub(crate) async fn settle(&self, kind: SettleKind) -> Result<()> {
        if self.done.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let outcome = match kind {
            SettleKind::Ack => Outcome::Acked,
            SettleKind::Nack(_) => Outcome::Nacked,
        };
        self.inbox.settled(&self.key, outcome);
        match &self.path {
            AckPath::Live => Ok(()),
            AckPath::Ws(commands) => commands
                .send(Command::Settle(self.frame(&kind)))
                .map_err(|_| ClientError::Closed),
            AckPath::InProcess { broker, group } => {
                let result = match kind {
                    SettleKind::Ack => broker.ack(group, &self.delivery_id).await,
                    SettleKind::Nack(options) => {
                        broker.nack(group, &self.delivery_id, options).await
                    }
                };
                result.map_err(|e| ClientError::server(e.kind(), e.to_string()))
            }
        }
    }

    /// Settles without waiting for the outcome (in-process settles run on
    /// their own task).
    fn fire(self: &Arc<Self>, kind: SettleKind) {
        match &self.path {
            AckPath::Live => {}
            AckPath::Ws(commands) => {
                let _ = commands.send(Command::Settle(self.frame(&kind)));
            }
            AckPath::InProcess { broker, group } => {
                let (broker, group, id) = (broker.clone(), group.clone(), self.delivery_id.clone());
                tokio::spawn(async move {
                    let result = match kind {
                        SettleKind::Ack => broker.ack(&group, &id).await,
                        SettleKind::Nack(options) => broker.nack(&group, &id, options).await,
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, delivery_id = %id, "settling a repeat failed");
                    }
                });
            }
        }
    }

    fn frame(&self, kind: &SettleKind) -> String {
        let mut frame = serde_json::json!({
            "op": "ack",
            "delivery_id": self.delivery_id,
            "subscription_id": self.subscription_id,
        });
        if let SettleKind::Nack(options) = kind {
            frame["op"] = "nack".into();
            if let Some(delay) = options.delay {
                frame["delay_ms"] = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).into();
            }
            if let Some(reason) = &options.reason {
                frame["reason"] = reason.clone().into();
            }
        }
        frame.to_string()
    }
}

impl SettleKind {
    pub(crate) fn nack(delay: Option<Duration>, reason: Option<String>) -> Self {
        SettleKind::Nack(NackOptions { delay, reason })
    }
}

/// One delivery from a [`Subscription`].
///
/// Live deliveries (no group) need no ack; [`Received::ack`] and
/// [`Received::nack`] do nothing for them. A durable delivery must be
/// acked or nacked; one that is neither is redelivered by the server after
/// the subscription's ack timeout, or at once when the connection that
/// carried it drops. Only the first ack or nack of a delivery counts.
pub struct Received {
    /// The event.
    pub event: Event,
    /// 1 on first delivery, incremented on each redelivery.
    pub attempt: u32,
    /// The id the server acks this delivery by; for live deliveries, the
    /// event id.
    pub delivery_id: String,
    /// The server's name of the subscription: the group for durable
    /// subscriptions; a per-connection id for live ones (it changes when
    /// the client reconnects).
    pub subscription_id: String,
    settle: Arc<Settle>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("event", &self.event)
            .field("attempt", &self.attempt)
            .field("delivery_id", &self.delivery_id)
            .field("subscription_id", &self.subscription_id)
            .finish_non_exhaustive()
    }
}

impl Received {
    pub(crate) fn new(
        event: Event,
        attempt: u32,
        delivery_id: String,
        subscription_id: String,
        path: AckPath,
        inbox: &Arc<Inbox>,
    ) -> Received {
        let key = if inbox.durable {
            dedupe_key(&delivery_id, &event.id)
        } else {
            String::new()
        };
        let settle = Arc::new(Settle {
            done: AtomicBool::new(false),
            key,
            delivery_id: delivery_id.clone(),
            subscription_id: subscription_id.clone(),
            path,
            inbox: inbox.clone(),
        });
        Received {
            event,
            attempt,
            delivery_id,
            subscription_id,
            settle,
        }
    }

    /// Whether this is a durable delivery that needs an ack.
    pub fn is_durable(&self) -> bool {
        self.settle.inbox.durable
    }

    /// Acknowledges the delivery: the server forgets the event.
    ///
    /// Over WebSocket the ack is sent without waiting for a reply (the
    /// protocol answers acks only on failure); if the connection that
    /// carried the delivery has dropped, the server redelivers it anyway.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the client is closed; in-process, the
    /// broker's error (`unknown_delivery` once the ack timeout has passed).
    pub async fn ack(&self) -> Result<()> {
        self.settle.settle(SettleKind::Ack).await
    }

    /// Rejects the delivery for redelivery after `delay`, or after the
    /// subscription's backoff when `None`.
    ///
    /// # Errors
    /// As [`Received::ack`].
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        self.settle.settle(SettleKind::nack(delay, None)).await
    }

    /// As [`Received::nack`], recording `reason` in the attempt history
    /// (shown for dead letters).
    ///
    /// # Errors
    /// As [`Received::ack`].
    pub async fn nack_with_reason(
        &self,
        delay: Option<Duration>,
        reason: impl Into<String>,
    ) -> Result<()> {
        let kind = SettleKind::nack(delay, Some(reason.into()));
        self.settle.settle(kind).await
    }

    pub(crate) fn settle_handle(&self) -> Arc<Settle> {
        self.settle.clone()
    }
}

/// Stops a subscription on the transport when the [`Subscription`] drops.
pub(crate) enum Closer {
    /// Sends `unsubscribe` for this client-side subscription id.
    Ws {
        commands: mpsc::UnboundedSender<Command>,
        id: u64,
    },
    /// Cancels the forwarding task (which drops the broker stream or
    /// consumer).
    InProcess(CancellationToken),
}

/// A stream of deliveries matching a subscription.
///
/// Implements [`Stream`]`<Item = `[`Received`]`>`; [`Subscription::recv`]
/// is the same without importing `StreamExt`. Survives reconnects: the
/// client subscribes again on each new connection and keeps feeding this
/// stream. The stream ends when the subscription is dropped server-side,
/// when the client is closed, or when reconnecting gives up
/// ([`Subscription::error`] then says why). Dropping it unsubscribes; a
/// durable subscription's un-acked deliveries then go back to the group.
pub struct Subscription {
    inbox: Arc<Inbox>,
    closer: Closer,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("durable", &self.inbox.durable)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(inbox: Arc<Inbox>, closer: Closer) -> Self {
        Subscription { inbox, closer }
    }

    /// The next delivery; `None` once the subscription has ended.
    ///
    /// # Cancel safety
    /// Cancel safe: a delivery is taken from the queue only when this
    /// returns it.
    pub async fn recv(&mut self) -> Option<Received> {
        futures::StreamExt::next(self).await
    }

    /// Deliveries lost because this subscriber fell behind: live events the
    /// server dropped (its `overflow` notices) plus deliveries dropped from
    /// this client's own bounded queue. A durable delivery dropped here is
    /// redelivered after its ack timeout.
    pub fn dropped(&self) -> u64 {
        self.inbox.dropped.load(Ordering::Relaxed)
    }

    /// Whether deliveries need an ack (the subscription has a group).
    pub fn is_durable(&self) -> bool {
        self.inbox.durable
    }

    /// Why the stream ended, when it ended with an error.
    pub fn error(&self) -> Option<ClientError> {
        self.inbox.state.lock().error.clone()
    }
}

impl Stream for Subscription {
    type Item = Received;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        self.inbox.poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inbox.end(None);
        match &self.closer {
            Closer::Ws { commands, id } => {
                let _ = commands.send(Command::Unsubscribe(*id));
            }
            Closer::InProcess(stop) => stop.cancel(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn received(inbox: &Arc<Inbox>, delivery_id: &str, event: &Event) -> Received {
        Received::new(
            event.clone(),
            1,
            delivery_id.into(),
            "s".into(),
            AckPath::Live,
            inbox,
        )
    }

    fn subscription(inbox: &Arc<Inbox>) -> Subscription {
        Subscription::new(inbox.clone(), Closer::InProcess(CancellationToken::new()))
    }

    #[tokio::test]
    async fn a_repeated_durable_delivery_is_handed_out_once() {
        let inbox = Inbox::new(10, true, 100);
        let event = Event::new("a.b", json!(1)).unwrap();
        inbox.push(received(&inbox, "7", &event));
        inbox.push(received(&inbox, "7", &event));
        inbox.push(received(&inbox, "8", &event));
        inbox.end(None);
        let ids: Vec<String> = subscription(&inbox).map(|r| r.delivery_id).collect().await;
        assert_eq!(ids, vec!["7", "8"]);
    }

    #[tokio::test]
    async fn a_repeat_after_an_ack_is_not_handed_out_but_after_a_nack_it_is() {
        let inbox = Inbox::new(10, true, 100);
        let mut sub = subscription(&inbox);
        let (a, b) = (
            Event::new("a", json!(1)).unwrap(),
            Event::new("b", json!(2)).unwrap(),
        );
        inbox.push(received(&inbox, "1", &a));
        inbox.push(received(&inbox, "2", &b));
        sub.recv().await.unwrap().ack().await.unwrap();
        sub.recv().await.unwrap().nack(None).await.unwrap();
        inbox.push(received(&inbox, "1", &a));
        inbox.push(received(&inbox, "2", &b));
        let again = sub.recv().await.unwrap();
        assert_eq!(again.event.id, b.id);
        inbox.end(None);
        assert!(sub.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_delivery_dropped_without_an_ack_is_handed_out_again_when_redelivered() {
        let inbox = Inbox::new(10, true, 100);
        let mut sub = subscription(&inbox);
        let event = Event::new("a", json!(1)).unwrap();
        inbox.push(received(&inbox, "1", &event));
        let held = sub.recv().await.unwrap();
        inbox.push(received(&inbox, "1", &event));
        drop(held);
        inbox.push(received(&inbox, "1", &event));
        inbox.end(None);
        let again: Vec<_> = (&mut sub).map(|r| r.delivery_id).collect().await;
        assert_eq!(
            again,
            vec!["1"],
            "the repeat while held was dropped, the later one kept"
        );
    }

    #[test]
    fn the_dedupe_memory_is_bounded() {
        let mut recent = Recent::new(2);
        assert_eq!(recent.admit("a"), Admit::Deliver);
        assert_eq!(recent.admit("b"), Admit::Deliver);
        assert_eq!(recent.admit("c"), Admit::Deliver);
        assert_eq!(recent.outcomes.len(), 2);
        assert_eq!(recent.admit("a"), Admit::Deliver, "a was forgotten");
        assert_eq!(recent.admit("c"), Admit::Drop);
    }

    #[tokio::test]
    async fn a_full_inbox_drops_its_oldest_delivery_and_counts_it() {
        let inbox = Inbox::new(2, false, 10);
        for i in 0..3 {
            let e = Event::new("a", json!(i)).unwrap();
            inbox.push(received(&inbox, &e.id, &e));
        }
        inbox.overflowed(5);
        inbox.end(None);
        let mut sub = subscription(&inbox);
        let payloads: Vec<_> = (&mut sub).map(|r| r.event.payload).collect().await;
        assert_eq!(payloads, vec![json!(1), json!(2)]);
        assert_eq!(sub.dropped(), 6);
    }
}
