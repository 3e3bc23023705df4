//! A circuit breaker for handlers: [`CircuitBreaker::wrap`] a handler so
//! that after `failure_threshold` counted failures within the window it
//! fails fast with [`CircuitError::Open`] (a nack, for a durable
//! subscription: the event comes back later instead of reaching the failing
//! dependency), and after `recovery_timeout` lets one call through as a
//! probe. The same state machine as a push sink's breaker
//! ([`crate::breaker`]).
//!
//! # Examples
//! ```no_run
//! # async fn run(client: event_router::client::Client) -> Result<(), event_router::client::ClientError> {
//! use std::time::Duration;
//! use event_router::client::CircuitBreaker;
//!
//! let breaker = CircuitBreaker::new(5, Duration::from_secs(30));
//! let handler = breaker.wrap(|received: event_router::client::Received| async move {
//!     call_external_api(&received).await
//! });
//! client.subscribe("external.api.call").group("api-callers").handle(handler).await?;
//! # Ok(()) }
//! # async fn call_external_api(_: &event_router::client::Received) -> Result<(), String> { Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::breaker::{Admit, Breaker, BreakerConfig, BreakerState};

/// Why a wrapped handler failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CircuitError<E> {
    /// The breaker is open: the handler was not called.
    #[error("circuit open; next probe in {0:?}")]
    Open(Duration),
    /// The handler failed.
    #[error("{0}")]
    Failed(E),
}

/// See the module docs. Cloning shares the state.
#[derive(Clone)]
pub struct CircuitBreaker {
    state: Arc<Mutex<Breaker>>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` failures (within an hour), probes
    /// after `recovery_timeout`.
    pub fn new(failure_threshold: u32, recovery_timeout: Duration) -> CircuitBreaker {
        CircuitBreaker::with_window(
            failure_threshold,
            Duration::from_secs(3600),
            recovery_timeout,
        )
    }

    /// As [`CircuitBreaker::new`], counting failures within `window` only.
    pub fn with_window(
        failure_threshold: u32,
        window: Duration,
        recovery_timeout: Duration,
    ) -> CircuitBreaker {
        let config = BreakerConfig {
            failure_threshold: failure_threshold.max(1),
            window,
            recovery_timeout,
        };
        CircuitBreaker {
            state: Arc::new(Mutex::new(Breaker::new(config))),
        }
    }

    /// Where the breaker stands now.
    pub fn state(&self) -> BreakerState {
        self.state.lock().state(Instant::now())
    }

    /// `handler` behind the breaker; every `Err` counts as a failure.
    pub fn wrap<T, F, Fut, E>(
        &self,
        handler: F,
    ) -> impl Fn(T) -> BoxFuture<'static, Result<(), CircuitError<E>>> + Send + Sync + 'static
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        self.wrap_when(handler, |_: &E| true)
    }

    /// `handler` behind the breaker; only errors `is_failure` accepts
    /// count (the "expected exceptions"), others pass through uncounted.
    pub fn wrap_when<T, F, Fut, E, P>(
        &self,
        handler: F,
        is_failure: P,
    ) -> impl Fn(T) -> BoxFuture<'static, Result<(), CircuitError<E>>> + Send + Sync + 'static
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
        P: Fn(&E) -> bool + Send + Sync + 'static,
    {
        let state = self.state.clone();
        let is_failure = Arc::new(is_failure);
        move |input: T| {
            let admitted = state.lock().admit(Instant::now());
            if let Admit::WaitUntil(at) = admitted {
                let left = at.saturating_duration_since(Instant::now());
                return Box::pin(async move { Err(CircuitError::Open(left)) })
                    as BoxFuture<'static, _>;
            }
            let call = handler(input);
            let state = state.clone();
            let is_failure = is_failure.clone();
            Box::pin(async move {
                match call.await {
                    Ok(()) => {
                        state.lock().succeeded();
                        Ok(())
                    }
                    Err(e) => {
                        let mut b = state.lock();
                        if is_failure(&e) {
                            b.failed(Instant::now());
                        } else if admitted == Admit::Probe {
                            // Not the dependency's failure: the probe slot is
                            // given back by treating the call as a success.
                            b.succeeded();
                        }
                        Err(CircuitError::Failed(e))
                    }
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_wrapped_handler_opens_fails_fast_and_recovers_after_a_probe() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(10));
        let calls = Arc::new(AtomicU32::new(0));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = {
            let (calls, healthy) = (calls.clone(), healthy.clone());
            breaker.wrap(move |_: u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                let ok = healthy.load(Ordering::SeqCst);
                async move { if ok { Ok(()) } else { Err("down") } }
            })
        };
        assert_eq!(handler(1).await, Err(CircuitError::Failed("down")));
        assert_eq!(handler(2).await, Err(CircuitError::Failed("down")));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(handler(3).await, Err(CircuitError::Open(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "open: not called");
        tokio::time::advance(Duration::from_secs(10)).await;
        healthy.store(true, Ordering::SeqCst);
        assert_eq!(handler(4).await, Ok(()));
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn only_expected_errors_count() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(10));
        let handler = breaker.wrap_when(
            |n: u32| async move { Err::<(), u32>(n) },
            |e: &u32| *e == 503,
        );
        assert_eq!(handler(400).await, Err(CircuitError::Failed(400)));
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(handler(503).await, Err(CircuitError::Failed(503)));
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
