//! Per-connection resource limits of a [`Session`](super::Session): caps on
//! the topic patterns of its subscriptions, and the byte budget of live
//! events on their way to its transport.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::event::Event;
use crate::selector::Selector;

/// Caps on topic patterns (count, and bytes of their text), per
/// subscription and summed over a connection's subscriptions. Each
/// pattern costs routing-index memory, so these bound what one connection
/// can make the router hold. Zero in any field means no cap of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternLimits {
    /// Most patterns in one subscription.
    pub per_subscription: usize,
    /// Most bytes of pattern text in one subscription.
    pub bytes_per_subscription: usize,
    /// Most patterns over all of a connection's subscriptions.
    pub per_connection: usize,
    /// Most bytes of pattern text over all of a connection's subscriptions.
    pub bytes_per_connection: usize,
}

impl PatternLimits {
    /// Fails with `too_many_patterns` unless a subscription of `count`
    /// patterns and `bytes` bytes fits beside `held` (count, bytes) already
    /// held by the connection.
    ///
    /// # Errors
    /// `too_many_patterns` naming the cap that was reached.
    pub fn check(&self, count: usize, bytes: usize, held: (usize, usize)) -> Result<(), ApiError> {
        let over = |cap: usize, n: usize| cap > 0 && n > cap;
        let refuse =
            |status, message: String| Err(ApiError::new(status, "too_many_patterns", message));
        let bad = axum::http::StatusCode::BAD_REQUEST;
        let busy = axum::http::StatusCode::TOO_MANY_REQUESTS;
        if over(self.per_subscription, count) {
            return refuse(
                bad,
                format!(
                    "subscription has {count} topic patterns; at most {} are allowed per subscription",
                    self.per_subscription
                ),
            );
        }
        if over(self.bytes_per_subscription, bytes) {
            return refuse(
                bad,
                format!(
                    "subscription has {bytes} bytes of topic patterns; at most {} are allowed per subscription",
                    self.bytes_per_subscription
                ),
            );
        }
        if over(self.per_connection, held.0 + count) {
            return refuse(
                busy,
                format!(
                    "this connection holds {} topic patterns and asked for {count} more; at most {} are allowed per connection",
                    held.0, self.per_connection
                ),
            );
        }
        if over(self.bytes_per_connection, held.1 + bytes) {
            return refuse(
                busy,
                format!(
                    "this connection holds {} bytes of topic patterns and asked for {bytes} more; at most {} are allowed per connection",
                    held.1, self.bytes_per_connection
                ),
            );
        }
        Ok(())
    }
}

impl PatternLimits {
    /// [`PatternLimits::check`] for a subscription made outside any
    /// connection (`PUT /api/v1/subscriptions/{name}`).
    ///
    /// # Errors
    /// `too_many_patterns` naming the cap that was reached.
    pub fn check_selector(&self, selector: &Selector) -> Result<(), ApiError> {
        let (count, bytes) = pattern_cost(selector);
        self.check(count, bytes, (0, 0))
    }
}

impl Default for PatternLimits {
    fn default() -> Self {
        PatternLimits {
            per_subscription: super::DEFAULT_MAX_PATTERNS_PER_SUBSCRIPTION,
            bytes_per_subscription: super::DEFAULT_MAX_PATTERN_BYTES_PER_SUBSCRIPTION,
            per_connection: super::DEFAULT_MAX_PATTERNS_PER_CONNECTION,
            bytes_per_connection: super::DEFAULT_MAX_PATTERN_BYTES_PER_CONNECTION,
        }
    }
}

/// Count and text bytes of a selector's patterns.
pub(super) fn pattern_cost(selector: &Selector) -> (usize, usize) {
    let patterns = selector.patterns();
    let bytes = patterns.iter().map(|p| p.to_source().len()).sum();
    (patterns.len(), bytes)
}

/// Part of a connection's outgoing byte budget
/// ([`SessionConfig::live_queue_max_bytes`]), held by a live event between
/// its live queue and the transport; empty for durable deliveries, which
/// `max_in_flight` bounds.
///
/// [`SessionConfig::live_queue_max_bytes`]: super::SessionConfig::live_queue_max_bytes
#[derive(Debug, Default)]
pub struct Held {
    /// Released on drop.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Bytes of live events one connection may have queued for its transport.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    semaphore: Arc<Semaphore>,
    /// 0 = no budget.
    max: u32,
}

impl Budget {
    pub(super) fn new(max_bytes: usize) -> Budget {
        let max = u32::try_from(max_bytes).unwrap_or(u32::MAX);
        Budget {
            semaphore: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Waits until `event` fits; one event larger than the whole budget
    /// waits for all of it. The live queue behind keeps its own bound
    /// (dropping the oldest) meanwhile.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is held until the future completes.
    pub(super) async fn hold(&self, event: &Event) -> Held {
        if self.max == 0 {
            return Held::default();
        }
        let bytes = crate::broker::footprint::event_footprint(event);
        let need = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.max);
        // The semaphore is never closed, so acquiring only fails if it were.
        Held {
            _permit: self.semaphore.clone().acquire_many_owned(need).await.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PatternLimits {
        PatternLimits {
            per_subscription: 3,
            bytes_per_subscription: 30,
            per_connection: 5,
            bytes_per_connection: 40,
        }
    }

    #[test]
    fn each_cap_refuses_with_too_many_patterns_and_zero_means_none() {
        let l = limits();
        assert!(l.check(3, 30, (2, 10)).is_ok());
        for (count, bytes, held) in [
            (4, 10, (0, 0)),
            (1, 31, (0, 0)),
            (2, 2, (4, 0)),
            (1, 20, (1, 21)),
        ] {
            let e = l.check(count, bytes, held).unwrap_err();
            assert_eq!(e.code, "too_many_patterns", "{count} {bytes} {held:?}");
        }
        let none = PatternLimits {
            per_subscription: 0,
            bytes_per_subscription: 0,
            per_connection: 0,
            bytes_per_connection: 0,
        };
        assert!(none.check(1_000_000, 1 << 30, (1 << 20, 1 << 30)).is_ok());
    }

    #[tokio::test]
    async fn a_budget_holds_bytes_until_the_item_is_dropped() {
        let budget = Budget::new(10_000);
        let event = Event::new("t", serde_json::json!("x".repeat(6_000))).unwrap();
        let held = budget.hold(&event).await;
        assert!(budget.semaphore.available_permits() < 4_000);
        drop(held);
        assert_eq!(budget.semaphore.available_permits(), 10_000);
    }
}
