//! The circuit breaker's state machine, shared by push sinks
//! (`crate::sink`) and the SDK's handler breaker (`crate::client`); a leaf
//! module. For a sink: after `failure_threshold` failed POSTs within
//! `window` the breaker opens and the sink worker stops taking deliveries, so events wait in the subscription with their attempts
//! intact instead of being burnt against a sink that is down. After
//! `recovery_timeout` it is half-open: one delivery goes out as a probe; a
//! 2xx closes the breaker, a failure opens it again.
//!
//! Pure state: the worker asks [`Breaker::admit`] before taking deliveries
//! and reports each POST's outcome; time is passed in, so tests need no
//! clock.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Default of [`BreakerConfig::failure_threshold`].
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default of [`BreakerConfig::window`].
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Default of [`BreakerConfig::recovery_timeout`].
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// When a sink's breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failed POSTs within `window` that open the breaker. Default 5,
    /// minimum 1.
    pub failure_threshold: u32,
    /// How far back failures count. Default 30 s.
    pub window: Duration,
    /// How long the breaker stays open before a probe. Default 30 s.
    pub recovery_timeout: Duration,
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Deliveries flow.
    Closed,
    /// The sink failed too often: no deliveries are taken.
    Open,
    /// One probe delivery is allowed.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `sink_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// What the worker may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Take deliveries as usual.
    Flow,
    /// Take exactly one delivery, as the probe.
    Probe,
    /// Take nothing until this instant.
    WaitUntil(Instant),
}

/// One sink's breaker; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    failures: VecDeque<Instant>,
    opened_at: Option<Instant>,
    opened_total: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            opened_at: None,
            opened_total: 0,
        }
    }

    /// The state now (an open breaker past its recovery timeout reads as
    /// half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) if now >= at + self.config.recovery_timeout => {
                BreakerState::HalfOpen
            }
            (state, _) => state,
        }
    }

    /// Failures counted within the window as of the last report.
    pub fn recent_failures(&self) -> usize {
        self.failures.len()
    }

    /// Times the breaker opened.
    pub fn opened_total(&self) -> u64 {
        self.opened_total
    }

    /// Whether deliveries may be taken now. A half-open breaker admits one
    /// probe and then waits for its outcome.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state(now) {
            BreakerState::Closed => Admit::Flow,
            BreakerState::HalfOpen if self.state == BreakerState::Open => {
                self.state = BreakerState::HalfOpen;
                Admit::Probe
            }
            // A probe is out: wait a little for its outcome.
            BreakerState::HalfOpen => Admit::WaitUntil(now + Duration::from_millis(50)),
            BreakerState::Open => {
                let at = self.opened_at.unwrap_or(now);
                Admit::WaitUntil(at + self.config.recovery_timeout)
            }
        }
    }

    /// A POST was answered with 2xx: a probe closes the breaker.
    pub fn succeeded(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Closed;
            self.failures.clear();
            self.opened_at = None;
        }
    }

    /// A POST failed at `now`. Returns true when this opened the breaker.
    pub fn failed(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::HalfOpen => self.open(now),
            BreakerState::Open => false,
            BreakerState::Closed => {
                self.failures.push_back(now);
                while self
                    .failures
                    .front()
                    .is_some_and(|&at| now.duration_since(at) > self.config.window)
                {
                    self.failures.pop_front();
                }
                self.failures.len() >= self.config.failure_threshold as usize && self.open(now)
            }
        }
    }

    fn open(&mut self, now: Instant) -> bool {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.failures.clear();
        self.opened_total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            window: Duration::from_secs(10),
            recovery_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn threshold_failures_within_the_window_open_the_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        assert!(!b.failed(t0));
        assert!(!b.failed(t0 + Duration::from_secs(1)));
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), Admit::Flow);
        assert!(b.failed(t0 + Duration::from_secs(2)));
        assert_eq!(b.state(t0 + Duration::from_secs(2)), BreakerState::Open);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(3)),
            Admit::WaitUntil(t0 + Duration::from_secs(7))
        );
        assert_eq!(b.opened_total(), 1);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.failed(t0);
        b.failed(t0 + Duration::from_secs(1));
        assert!(!b.failed(t0 + Duration::from_secs(12)));
        assert_eq!(b.recent_failures(), 1);
        assert_eq!(b.state(t0 + Duration::from_secs(12)), BreakerState::Closed);
    }

    #[test]
    fn after_the_recovery_timeout_one_probe_goes_and_its_outcome_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for s in 0..3 {
            b.failed(t0 + Duration::from_secs(s));
        }
        let later = t0 + Duration::from_secs(8);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admit::Probe);
        assert!(
            matches!(b.admit(later), Admit::WaitUntil(_)),
            "one probe at a time"
        );
        assert!(b.failed(later), "a failed probe opens it again");
        assert_eq!(b.opened_total(), 2);
        assert_eq!(
            b.admit(later),
            Admit::WaitUntil(later + Duration::from_secs(5))
        );
        let again = later + Duration::from_secs(5);
        assert_eq!(b.admit(again), Admit::Probe);
        b.succeeded();
        assert_eq!(b.state(again), BreakerState::Closed);
        assert_eq!(b.admit(again), Admit::Flow);
    }
}
