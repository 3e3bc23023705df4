//! Helpers for tests of the client SDK: a reconnect policy fast enough for
//! tests, and waits with a deadline.

use std::time::Duration;

use event_router::client::{Client, ConnectionState, Received, ReconnectPolicy, Subscription};

/// Upper bound of every wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long to watch for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(400);

/// Reconnects within milliseconds, forever.
pub fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.2,
        max_attempts: None,
    }
}

/// The next delivery of `sub`, within [`WAIT`].
pub async fn next(sub: &mut Subscription) -> Received {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery in time")
        .expect("the subscription is still open")
}

/// Panics if `sub` delivers anything within [`QUIET`].
pub async fn nothing_more(sub: &mut Subscription) {
    if let Ok(Some(r)) = tokio::time::timeout(QUIET, sub.recv()).await {
        panic!("unexpected delivery: {r:?}");
    }
}

/// Waits until `client` notices it lost its connection.
pub async fn wait_until_disconnected(client: &Client) {
    let mut changes = client.state_changes();
    tokio::time::timeout(
        WAIT,
        changes.wait_for(|s| !matches!(s, ConnectionState::Connected)),
    )
    .await
    .expect("the client notices the server is gone")
    .expect("the client still reports its state");
}

/// Waits until `client` is connected again, its subscriptions restored.
pub async fn wait_until_connected(client: &Client) {
    tokio::time::timeout(WAIT, client.connected())
        .await
        .expect("the client reconnects and restores its subscriptions in time")
        .expect("the client is still open");
}
