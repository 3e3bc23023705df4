//! When and how often the WebSocket client tries to reconnect.
//!
//! A [`ReconnectPolicy`] is exponential backoff with jitter, the same shape
//! as a durable subscription's redelivery [`Backoff`], plus a bound on how
//! many consecutive attempts fail before the client gives up. The driver in
//! [`super::ws`] asks it for one delay per failed attempt.

use std::time::Duration;

use crate::broker::Backoff;

/// Default delay before the first reconnection attempt.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Default upper bound of the delay between attempts.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter between reconnection attempts.
///
/// Attempt `n` (1-based) waits `initial * multiplier^(n-1)`, capped at
/// `max`, then shortened by up to `jitter` of itself at random so that many
/// clients cut off together do not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt. Default 100 ms; zero retries at once.
    pub initial: Duration,
    /// Upper bound of any delay. Default 10 s.
    pub max: Duration,
    /// Growth factor per attempt; values below 1 count as 1. Default 2.
    pub multiplier: f64,
    /// Fraction of each delay randomised away, 0 (none) to 1 (full
    /// jitter). Default 0.2.
    pub jitter: f64,
    /// Consecutive failed attempts after which the client gives up and
    /// closes with [`ClientError::Connection`](super::ClientError::Connection).
    /// `None` (the default) retries forever; `Some(0)` never reconnects.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: DEFAULT_INITIAL_DELAY,
            max: DEFAULT_MAX_DELAY,
            multiplier: 2.0,
            jitter: 0.2,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: the first lost connection closes the
    /// client.
    pub fn never() -> Self {
        ReconnectPolicy {
            max_attempts: Some(0),
            ..ReconnectPolicy::default()
        }
    }

    /// The delay after failed attempt number `attempt` (1-based), with
    /// `random` in `[0, 1)` supplying the jitter.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        Backoff {
            initial: self.initial,
            max: self.max,
            multiplier: self.multiplier,
            jitter: self.jitter,
        }
        .delay(attempt, random)
    }

    /// Whether another attempt may follow `failed` consecutive failures.
    pub fn allows(&self, failed: u32) -> bool {
        self.max_attempts.is_none_or(|max| failed < max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_and_stop_at_max() {
        let policy = ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            jitter: 0.0,
            ..ReconnectPolicy::default()
        };
        let delays: Vec<u128> = (1..=5).map(|a| policy.delay(a, 0.7).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_only_shortens_a_delay_within_its_fraction() {
        let policy = ReconnectPolicy {
            jitter: 0.5,
            ..ReconnectPolicy::default()
        };
        assert_eq!(policy.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(policy.delay(1, 1.0), Duration::from_millis(50));
        assert!(policy.delay(40, 0.3) <= policy.max);
    }

    #[test]
    fn max_attempts_bounds_retries_and_none_retries_forever() {
        let three = ReconnectPolicy {
            max_attempts: Some(3),
            ..ReconnectPolicy::default()
        };
        assert!(three.allows(0) && three.allows(2));
        assert!(!three.allows(3));
        assert!(!ReconnectPolicy::never().allows(0));
        assert!(ReconnectPolicy::default().allows(u32::MAX - 1));
    }
}
