//! The Redis config store and a replica's `ConfigWatcher`, in process,
//! against a real redis-server: notifications, the poll fallback when a
//! notification is lost, and a bad stored document that must not take the
//! replica's config down.

mod common;

use std::sync::Arc;
use std::time::Duration;

use event_router::operator::store::{Change, ConfigStore, ConfigWatcher};
use event_router::resources::parse_documents;
use event_router::{Event, MemoryBroker, Receipt, Router, RouterConfig};
use serde_json::json;

use common::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(10);

fn drop_route(name: &str, topic: &str) -> event_router::resources::Resource {
    parse_documents(&format!(
        "apiVersion: eventrouter.dev/v1alpha1\nkind: EventRoute\nmetadata: {{name: {name}}}\n\
         spec: {{match: {{topics: [\"{topic}\"]}}, actions: [{{drop: true}}]}}\n"
    ))
    .unwrap()
    .remove(0)
}

fn unique(test: &str) -> String {
    format!("s{}-{test}", std::process::id())
}

async fn dropped(router: &Router, topic: &str) -> bool {
    let receipt = router
        .publish(Event::new(topic, json!(null)).unwrap())
        .await
        .unwrap();
    matches!(receipt, Receipt::Dropped { .. })
}

async fn wait_applied(watcher: &ConfigWatcher, version: u64) {
    let mut rx = watcher.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|v| *v >= version))
        .await
        .expect("applied in time")
        .unwrap();
}

async fn watcher(
    redis: &RedisServer,
    prefix: &str,
    poll: Duration,
) -> (Arc<Router>, ConfigWatcher) {
    let router = Router::new(
        Arc::new(MemoryBroker::new(Default::default())),
        RouterConfig::default(),
    );
    let store = ConfigStore::connect(&redis.url(), prefix).await.unwrap();
    let watcher = ConfigWatcher::start(router.clone(), store, Vec::new(), poll)
        .await
        .unwrap();
    (router, watcher)
}

#[tokio::test]
async fn put_reports_created_configured_unchanged_and_delete() {
    let redis = RedisServer::shared();
    let store = ConfigStore::connect(&redis.url(), &unique("put"))
        .await
        .unwrap();
    let a = drop_route("r", "a.#");
    assert_eq!(store.put(&a).await.unwrap(), Change::Created);
    assert_eq!(store.put(&a).await.unwrap(), Change::Unchanged);
    assert_eq!(store.version().await.unwrap(), 1);
    assert_eq!(
        store.put(&drop_route("r", "b.#")).await.unwrap(),
        Change::Configured
    );
    assert_eq!(
        store.remove("EventRoute/default/r").await.unwrap(),
        Change::Deleted
    );
    assert_eq!(
        store.remove("EventRoute/default/r").await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(store.version().await.unwrap(), 3);
    assert!(store.load().await.unwrap().resources.is_empty());
}

#[tokio::test]
async fn a_notified_change_is_applied_and_a_removal_empties_the_routes() {
    let redis = RedisServer::shared();
    let prefix = unique("notify");
    // A long poll: only the notification can be this quick.
    let (router, watcher) = watcher(redis, &prefix, Duration::from_secs(60)).await;
    let store = ConfigStore::connect(&redis.url(), &prefix).await.unwrap();
    assert!(!dropped(&router, "debug.x").await);
    store
        .put(&drop_route("drop-debug", "debug.#"))
        .await
        .unwrap();
    wait_applied(&watcher, 1).await;
    assert!(dropped(&router, "debug.x").await);
    store.remove("EventRoute/default/drop-debug").await.unwrap();
    wait_applied(&watcher, 2).await;
    assert!(router.route_names().is_empty());
    assert!(!dropped(&router, "debug.x").await);
}

#[tokio::test]
async fn a_lost_notification_is_caught_by_the_poll() {
    let redis = RedisServer::shared();
    let prefix = unique("poll");
    let (router, watcher) = watcher(redis, &prefix, Duration::from_millis(100)).await;
    // Write as the store does, but without publishing.
    let doc = event_router::operator::store::to_document(&drop_route("quiet", "q.#"));
    redis.command(&format!(
        "HSET {prefix}:{{cfg}}:resources EventRoute/default/quiet {}",
        serde_json::to_string(&doc.to_string()).unwrap()
    ));
    redis.command(&format!("INCR {prefix}:{{cfg}}:resources:ver"));
    wait_applied(&watcher, 1).await;
    assert_eq!(router.route_names(), vec!["quiet"]);
}

#[tokio::test]
async fn a_bad_stored_document_keeps_the_previous_config() {
    let redis = RedisServer::shared();
    let prefix = unique("bad");
    let (router, watcher) = watcher(redis, &prefix, Duration::from_millis(100)).await;
    let store = ConfigStore::connect(&redis.url(), &prefix).await.unwrap();
    store.put(&drop_route("good", "g.#")).await.unwrap();
    wait_applied(&watcher, 1).await;
    redis.command(&format!(
        "HSET {prefix}:{{cfg}}:resources EventRoute/default/bad \"{{\\\"kind\\\":\\\"Nope\\\"}}\""
    ));
    redis.command(&format!("INCR {prefix}:{{cfg}}:resources:ver"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(watcher.applied(), 1, "the bad version is not applied");
    assert_eq!(router.route_names(), vec!["good"], "the old routes stay");
    // A replica starting now still starts, with nothing from Redis yet.
    let (fresh, late) = self::watcher(redis, &prefix, Duration::from_millis(100)).await;
    assert_eq!(late.applied(), 0);
    assert!(fresh.route_names().is_empty());
    store.remove("EventRoute/default/bad").await.unwrap();
    wait_applied(&watcher, 3).await;
    assert_eq!(router.route_names(), vec!["good"]);
    wait_applied(&late, 3).await;
    assert_eq!(fresh.route_names(), vec!["good"]);
}
