//! The bounded per-subscriber queue of live events, shared by every broker.
//!
//! Publishers never wait on a slow subscriber: when the queue is full (by
//! count or by bytes, see [`LiveQueue::with_max_bytes`]) the oldest events
//! are dropped and counted, and the subscriber is told how many it missed by
//! an [`LiveItem::Overflow`] notice ahead of the events that follow.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::footprint::event_footprint;
use crate::event::Event;

/// Default byte bound of a live queue made by [`LiveQueue::new`]: 4 MiB,
/// room for a few events of the largest default payload (1 MiB) and
/// thousands of small ones.
pub const DEFAULT_LIVE_QUEUE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// What a live subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveItem {
    /// A matching event.
    Event(Arc<Event>),
    /// Events were dropped because this subscriber fell behind.
    Overflow {
        /// How many were dropped since the last notice.
        dropped: u64,
    },
}

/// Outcome of [`LiveQueue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued without loss.
    Queued,
    /// Queued, and the oldest queued event (or events, when the byte bound
    /// needed more room) was dropped to make room.
    DroppedOldest,
    /// The subscriber is gone; nothing was queued.
    Closed,
}

struct State {
    /// Events with their [`event_footprint`].
    queue: VecDeque<(Arc<Event>, usize)>,
    capacity: usize,
    /// 0 = no byte bound.
    max_bytes: usize,
    bytes: usize,
    unreported_drops: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

/// Producer side of a live queue; cheap to clone.
#[derive(Clone)]
pub struct LiveQueue {
    shared: Arc<Shared>,
}

impl LiveQueue {
    /// A queue holding at most `capacity` events (at least 1) and
    /// [`DEFAULT_LIVE_QUEUE_MAX_BYTES`], and the stream that drains it.
    /// `guard` is dropped with the stream: brokers use it to unregister the
    /// subscription.
    pub fn new(capacity: usize, guard: Box<dyn Any + Send + Sync>) -> (LiveQueue, LiveStream) {
        Self::with_max_bytes(capacity, DEFAULT_LIVE_QUEUE_MAX_BYTES, guard)
    }

    /// A queue holding at most `capacity` events (at least 1) and about
    /// `max_bytes` bytes of events (by [`event_footprint`]; 0 means no byte
    /// bound). One event larger than `max_bytes` is still queued, alone.
    pub fn with_max_bytes(
        capacity: usize,
        max_bytes: usize,
        guard: Box<dyn Any + Send + Sync>,
    ) -> (LiveQueue, LiveStream) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                capacity: capacity.max(1),
                max_bytes,
                bytes: 0,
                unreported_drops: 0,
                closed: false,
            }),
            notify: Notify::new(),
        });
        let stream = LiveStream {
            shared: shared.clone(),
            _guard: guard,
        };
        (LiveQueue { shared }, stream)
    }

    /// Queues `event`, dropping the oldest queued events when full.
    pub fn push(&self, event: Arc<Event>) -> Pushed {
        let bytes = event_footprint(&event);
        self.push_sized(event, bytes).0
    }

    /// [`LiveQueue::push`] for a caller that already knows the event's
    /// [`event_footprint`] (one computation per event, not per subscriber);
    /// also returns how many queued events were dropped to make room (more
    /// than one when the byte bound needed it).
    pub fn push_sized(&self, event: Arc<Event>, bytes: usize) -> (Pushed, u64) {
        let outcome = {
            let mut state = self.shared.state.lock();
            if state.closed {
                return (Pushed::Closed, 0);
            }
            let mut outcome = Pushed::Queued;
            let mut dropped = 0;
            while !state.queue.is_empty()
                && (state.queue.len() >= state.capacity
                    || (state.max_bytes > 0 && state.bytes + bytes > state.max_bytes))
            {
                if let Some((_, dropped)) = state.queue.pop_front() {
                    state.bytes -= dropped;
                }
                state.unreported_drops += 1;
                dropped += 1;
                outcome = Pushed::DroppedOldest;
            }
            state.bytes += bytes;
            state.queue.push_back((event, bytes));
            (outcome, dropped)
        };
        self.shared.notify.notify_one();
        outcome
    }

    /// Ends the stream: the subscriber receives what is queued, then `None`.
    pub fn close(&self) {
        self.shared.state.lock().closed = true;
        self.shared.notify.notify_one();
    }

    /// Whether the queue was closed (by [`LiveQueue::close`] or by dropping the stream).
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().closed
    }
}

/// Consumer side of a live subscription. Dropping it unsubscribes.
pub struct LiveStream {
    shared: Arc<Shared>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl LiveStream {
    /// The next item, waiting for one; `None` once the subscription is closed
    /// and drained.
    ///
    /// # Cancel safety
    /// Cancel safe: items are taken only when the future completes.
    pub async fn recv(&mut self) -> Option<LiveItem> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.shared.state.lock().closed {
                return None;
            }
            self.shared.notify.notified().await;
        }
    }

    /// The next item if one is ready. An overflow notice comes before the
    /// events that were queued after the drop.
    pub fn try_recv(&mut self) -> Option<LiveItem> {
        let mut state = self.shared.state.lock();
        if state.unreported_drops > 0 {
            let dropped = std::mem::take(&mut state.unreported_drops);
            return Some(LiveItem::Overflow { dropped });
        }
        let (event, bytes) = state.queue.pop_front()?;
        state.bytes -= bytes;
        Some(LiveItem::Event(event))
    }

    /// Number of events queued and not yet received.
    pub fn len(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.queue.clear();
        state.bytes = 0;
    }
}

impl std::fmt::Debug for LiveStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveStream")
            .field("queued", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u32) -> Arc<Event> {
        Arc::new(Event::new("t", serde_json::json!(n)).unwrap())
    }

    #[tokio::test]
    async fn overflow_drops_oldest_and_reports_count_first() {
        let (q, mut s) = LiveQueue::new(2, Box::new(()));
        assert_eq!(q.push(ev(1)), Pushed::Queued);
        assert_eq!(q.push(ev(2)), Pushed::Queued);
        assert_eq!(q.push(ev(3)), Pushed::DroppedOldest);
        assert_eq!(q.push(ev(4)), Pushed::DroppedOldest);
        assert_eq!(s.recv().await, Some(LiveItem::Overflow { dropped: 2 }));
        let payloads: Vec<_> = [s.recv().await, s.recv().await]
            .into_iter()
            .map(|i| match i {
                Some(LiveItem::Event(e)) => e.payload.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(payloads, vec![serde_json::json!(3), serde_json::json!(4)]);
        assert!(s.try_recv().is_none());
    }

    #[tokio::test]
    async fn byte_bound_drops_oldest_events_until_the_new_one_fits() {
        let big = |n: u32| {
            Arc::new(Event::new("t", serde_json::json!({"n": n, "pad": "x".repeat(1000)})).unwrap())
        };
        let one = event_footprint(&big(0));
        let (q, mut s) = LiveQueue::with_max_bytes(100, 2 * one + one / 2, Box::new(()));
        assert_eq!(q.push(big(1)), Pushed::Queued);
        assert_eq!(q.push(big(2)), Pushed::Queued);
        assert_eq!(q.push(big(3)), Pushed::DroppedOldest);
        assert_eq!(s.len(), 2);
        assert_eq!(s.recv().await, Some(LiveItem::Overflow { dropped: 1 }));
        // One event the size of two drops two, and says so.
        let double = Arc::new(Event::new("t", serde_json::json!("x".repeat(2000))).unwrap());
        let size = event_footprint(&double).max(2 * one);
        assert_eq!(q.push_sized(double, size), (Pushed::DroppedOldest, 2));
        // One event over the whole bound is still delivered, alone.
        let (q, s) = LiveQueue::with_max_bytes(100, 10, Box::new(()));
        assert_eq!(q.push(big(1)), Pushed::Queued);
        assert_eq!(q.push(big(2)), Pushed::DroppedOldest);
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn close_ends_stream_after_drain_and_drop_closes_queue() {
        let (q, mut s) = LiveQueue::new(4, Box::new(()));
        q.push(ev(1));
        q.close();
        assert!(matches!(s.recv().await, Some(LiveItem::Event(_))));
        assert_eq!(s.recv().await, None);
        let (q, s) = LiveQueue::new(4, Box::new(()));
        drop(s);
        assert_eq!(q.push(ev(1)), Pushed::Closed);
    }
}
