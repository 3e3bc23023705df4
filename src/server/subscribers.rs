//! This replica's open subscriptions on WebSocket and SSE connections, for
//! `GET /api/v1/subscribers` (admin; the web console's Subscriptions page).
//!
//! A session lists each subscription it opens in [`Subscribers`] and the
//! entry leaves with the subscription ([`Listed`] removes it on drop), so
//! the list never outlives what it describes. Its size is bounded by the
//! server's connection and per-connection subscription limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;

/// Most entries `GET /api/v1/subscribers` answers with (oldest first).
pub const MAX_LISTED: usize = 1000;

/// One open subscription of a connection.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Subscriber {
    /// The subscription id its deliveries carry.
    pub subscription_id: String,
    /// `websocket` or `sse`.
    pub transport: &'static str,
    /// Who opened it.
    pub principal: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// The content filter, as given.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// The durable group it consumes; absent for a live subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// When it was opened (RFC 3339).
    pub since: String,
}

/// The registry shared by a server's sessions.
#[derive(Debug, Default)]
pub struct Subscribers {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Subscriber>>,
}

impl Subscribers {
    /// Lists `subscriber` until the returned guard drops.
    pub fn list(self: &Arc<Self>, subscriber: Subscriber) -> Listed {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries.lock().insert(key, subscriber);
        Listed {
            registry: self.clone(),
            key,
        }
    }

    /// Up to `limit` entries, oldest first, and how many there are.
    pub fn snapshot(&self, limit: usize) -> (Vec<Subscriber>, usize) {
        let entries = self.entries.lock();
        (
            entries.values().take(limit).cloned().collect(),
            entries.len(),
        )
    }
}

/// Removes its entry from [`Subscribers`] on drop.
#[derive(Debug)]
pub struct Listed {
    registry: Arc<Subscribers>,
    key: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.registry.entries.lock().remove(&self.key);
    }
}

/// This replica's subscribers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscribersResponse {
    /// Oldest first, at most [`MAX_LISTED`].
    pub subscribers: Vec<Subscriber>,
    /// How many there are in all.
    pub total: usize,
}

/// `GET /api/v1/subscribers`: the WebSocket and SSE subscriptions open on
/// this replica (admin).
#[utoipa::path(
    get,
    path = "/api/v1/subscribers",
    tag = "operations",
    responses((status = 200, body = SubscribersResponse), (status = 403, body = super::error::ErrorBody))
)]
pub async fn list(State(state): State<AppState>) -> axum::Json<SubscribersResponse> {
    let (subscribers, total) = state.subscribers.snapshot(MAX_LISTED);
    axum::Json(SubscribersResponse { subscribers, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(id: &str) -> Subscriber {
        Subscriber {
            subscription_id: id.into(),
            transport: "sse",
            principal: "p".into(),
            topics: vec!["a.*".into()],
            filter: None,
            group: None,
            since: String::new(),
        }
    }

    #[test]
    fn an_entry_leaves_when_its_guard_drops() {
        let registry = Arc::new(Subscribers::default());
        let a = registry.list(subscriber("a"));
        let b = registry.list(subscriber("b"));
        assert_eq!(registry.snapshot(10).1, 2);
        drop(a);
        let (left, total) = registry.snapshot(10);
        assert_eq!(total, 1);
        assert_eq!(left[0].subscription_id, "b");
        drop(b);
        assert_eq!(registry.snapshot(10).1, 0);
    }

    #[test]
    fn snapshot_is_bounded_and_oldest_first() {
        let registry = Arc::new(Subscribers::default());
        let _guards: Vec<_> = (0..5)
            .map(|i| registry.list(subscriber(&i.to_string())))
            .collect();
        let (some, total) = registry.snapshot(3);
        assert_eq!(total, 5);
        let ids: Vec<_> = some.iter().map(|s| s.subscription_id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2"]);
    }
}
