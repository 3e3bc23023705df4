//! Reconciler tests: the Kubernetes API server is a `tower_test` mock that
//! asserts every call the reconciler makes; Redis is a real redis-server.
//! Each case checks the exact API calls and the resulting Redis config.

mod common;
#[path = "operator_support/mod.rs"]
mod support;

use std::sync::Arc;

use event_router::broker::{Broker, BrokerError};
use event_router::operator::reconcile::{reconcile_route, reconcile_subscription};
use event_router::operator::{ConfigStore, ROUTE_FINALIZER, SUBSCRIPTION_FINALIZER, Subscription};
use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use common::redis::RedisServer;
use support::{Meta, close, context, next_call, no_more_calls, path, prefix, route, subscription};

fn spec() -> Value {
    json!({
        "topics": ["task.*"],
        "filter": {"priority": {"$gte": 5}},
        "delivery": {"maxAttempts": 3, "ackTimeout": "10s"}
    })
}

async fn store(redis: &RedisServer, prefix: &str) -> ConfigStore {
    ConfigStore::connect(&redis.url(), prefix).await.unwrap()
}

fn stored_spec(raw: Option<String>) -> Value {
    let doc: Value = serde_json::from_str(&raw.expect("document stored")).unwrap();
    doc["spec"].clone()
}

/// `spec` as stored: defaults filled in (`delivery.mode: durable`).
fn normalized(mut spec: Value) -> Value {
    spec["delivery"]["mode"] = json!("durable");
    spec
}

/// Runs one reconcile of `obj`, answering the status patch it must make,
/// and returns the status it wrote.
async fn reconcile_expecting_status(
    obj: Subscription,
    ctx: &Arc<event_router::operator::Context>,
    handle: &mut support::ApiHandle,
) -> Value {
    let (name, ns) = (
        obj.metadata.name.clone().unwrap(),
        obj.metadata.namespace.clone().unwrap(),
    );
    let task = tokio::spawn(reconcile_subscription(Arc::new(obj.clone()), ctx.clone()));
    let call = next_call(handle)
        .await
        .expect(Method::PATCH, &path("subscriptions", &ns, &name, "status"));
    let status = call.body["status"].clone();
    let mut answer = serde_json::to_value(&obj).unwrap();
    answer["status"] = status.clone();
    call.ok(&answer);
    let action = task.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(ctx.status_interval));
    status
}

#[tokio::test]
async fn new_subscription_gets_its_finalizer_before_anything_is_written() {
    let redis = RedisServer::shared();
    let prefix = prefix("finalizer");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let meta = Meta {
        finalized: false,
        ..Meta::new("workers", "agents")
    };
    let obj = subscription(&meta, spec(), None);
    let task = tokio::spawn(reconcile_subscription(Arc::new(obj.clone()), ctx.clone()));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("subscriptions", "agents", "workers", ""),
    );
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [SUBSCRIPTION_FINALIZER]}
        ])
    );
    let finalized = subscription(&Meta::new("workers", "agents"), spec(), None);
    call.ok(&serde_json::to_value(&finalized).unwrap());
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    drop(ctx);
    no_more_calls(handle).await;
    let store = store(redis, &prefix).await;
    assert_eq!(store.version().await.unwrap(), 0, "nothing written yet");
    assert!(matches!(
        broker.subscription("workers").await,
        Err(BrokerError::UnknownSubscription(_))
    ));
    close(broker).await;
}

#[tokio::test]
async fn created_subscription_is_written_to_redis_and_reported_ready() {
    let redis = RedisServer::shared();
    let prefix = prefix("create");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let obj = subscription(&Meta::new("workers", "agents"), spec(), None);
    let status = reconcile_expecting_status(obj, &ctx, &mut handle).await;
    drop(ctx);
    no_more_calls(handle).await;

    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["group"], "workers");
    assert_eq!(
        (
            &status["pending"],
            &status["lag"],
            &status["deadLetters"],
            &status["consumers"]
        ),
        (&json!(0), &json!(0), &json!(0), &json!(0))
    );
    let ready = &status["conditions"][0];
    assert_eq!(
        (
            &ready["type"],
            &ready["status"],
            &ready["reason"],
            &ready["observedGeneration"]
        ),
        (&json!("Ready"), &json!("True"), &json!("Active"), &json!(1))
    );

    let store = store(redis, &prefix).await;
    assert_eq!(store.version().await.unwrap(), 1);
    let raw = store.raw("Subscription/agents/workers").await.unwrap();
    assert_eq!(stored_spec(raw.clone()), normalized(spec()));
    let doc: Value = serde_json::from_str(&raw.unwrap()).unwrap();
    assert_eq!(
        (&doc["apiVersion"], &doc["kind"], &doc["metadata"]),
        (
            &json!("eventrouter.dev/v1alpha1"),
            &json!("Subscription"),
            &json!({"name": "workers", "namespace": "agents"})
        )
    );
    let info = broker.subscription("workers").await.unwrap();
    assert_eq!(info.spec.max_attempts, 3);
    assert_eq!(info.spec.ack_timeout, std::time::Duration::from_secs(10));
    close(broker).await;
}

#[tokio::test]
async fn generation_bump_rewrites_the_config_and_observed_generation() {
    let redis = RedisServer::shared();
    let prefix = prefix("update");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let first = subscription(&Meta::new("workers", "agents"), spec(), None);
    let status1 = reconcile_expecting_status(first, &ctx, &mut handle).await;

    let mut changed = spec();
    changed["topics"] = json!(["task.*", "job.#"]);
    changed["delivery"]["maxAttempts"] = json!(7);
    let meta2 = Meta {
        generation: 2,
        ..Meta::new("workers", "agents")
    };
    let second = subscription(&meta2, changed.clone(), Some(status1.clone()));
    let status2 = reconcile_expecting_status(second, &ctx, &mut handle).await;
    assert_eq!(status2["observedGeneration"], 2);
    assert_eq!(status2["conditions"][0]["observedGeneration"], 2);
    assert_eq!(
        status2["conditions"][0]["lastTransitionTime"],
        status1["conditions"][0]["lastTransitionTime"],
        "still Ready: the transition time stays"
    );

    // The same generation again, with the status it wrote: nothing to patch,
    // nothing to write.
    let again = subscription(&meta2, changed.clone(), Some(status2));
    let action = reconcile_subscription(Arc::new(again), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(ctx.status_interval));
    drop(ctx);
    no_more_calls(handle).await;

    let store = store(redis, &prefix).await;
    assert_eq!(store.version().await.unwrap(), 2, "one bump per change");
    assert_eq!(
        stored_spec(store.raw("Subscription/agents/workers").await.unwrap()),
        normalized(changed)
    );
    let info = broker.subscription("workers").await.unwrap();
    assert_eq!(info.spec.max_attempts, 7);
    let topics: Vec<String> = info
        .spec
        .selector
        .patterns()
        .iter()
        .map(|p| p.to_source())
        .collect();
    assert_eq!(topics, vec!["task.*", "job.#"]);
    close(broker).await;
}

#[tokio::test]
async fn renaming_the_group_moves_the_subscription_and_deletes_the_old_group() {
    let redis = RedisServer::shared();
    let prefix = prefix("rename");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let first = subscription(&Meta::new("workers", "agents"), spec(), None);
    let status1 = reconcile_expecting_status(first, &ctx, &mut handle).await;
    let mut renamed = spec();
    renamed["delivery"]["group"] = json!("workers-v2");
    let meta2 = Meta {
        generation: 2,
        ..Meta::new("workers", "agents")
    };
    let second = subscription(&meta2, renamed, Some(status1));
    let status2 = reconcile_expecting_status(second, &ctx, &mut handle).await;
    drop(ctx);
    no_more_calls(handle).await;
    assert_eq!(status2["group"], "workers-v2");
    assert!(broker.subscription("workers-v2").await.is_ok());
    assert!(matches!(
        broker.subscription("workers").await,
        Err(BrokerError::UnknownSubscription(_))
    ));
    close(broker).await;
}

#[tokio::test]
async fn invalid_filter_sets_ready_false_with_the_reason_and_a_warning_event() {
    let redis = RedisServer::shared();
    let prefix = prefix("invalid");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let bad = json!({"topics": ["task.*"], "filter": {"payload.n": {"$bogus": 1}}});
    let obj = subscription(&Meta::new("workers", "agents"), bad, None);
    let task = tokio::spawn(reconcile_subscription(Arc::new(obj.clone()), ctx.clone()));

    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("subscriptions", "agents", "workers", "status"),
    );
    let status = call.body["status"].clone();
    let ready = &status["conditions"][0];
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("InvalidSpec"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("$bogus") && message.contains("Subscription/workers"),
        "{message}"
    );
    assert_eq!(status["observedGeneration"], 1);
    call.status_of(&obj);

    let call = next_call(&mut handle).await.expect(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/agents/events",
    );
    assert_eq!(call.body["type"], "Warning");
    assert_eq!(call.body["reason"], "InvalidSpec");
    assert_eq!(call.body["regarding"]["name"], "workers");
    assert!(call.body["note"].as_str().unwrap().contains("$bogus"));
    call.echo();

    // Not an error: no retry loop, the resource waits for its next change.
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    drop(ctx);
    no_more_calls(handle).await;
    let store = store(redis, &prefix).await;
    assert_eq!(store.version().await.unwrap(), 0);
    assert_eq!(
        store.raw("Subscription/agents/workers").await.unwrap(),
        None
    );
    assert!(broker.subscription("workers").await.is_err());
    close(broker).await;
}

#[tokio::test]
async fn a_group_taken_by_another_namespace_is_reported_not_shared() {
    let redis = RedisServer::shared();
    let prefix = prefix("conflict");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let first = subscription(&Meta::new("workers", "team-a"), spec(), None);
    reconcile_expecting_status(first, &ctx, &mut handle).await;
    let second = subscription(&Meta::new("workers", "team-b"), spec(), None);
    let task = tokio::spawn(reconcile_subscription(
        Arc::new(second.clone()),
        ctx.clone(),
    ));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("subscriptions", "team-b", "workers", "status"),
    );
    let message = call.body["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("Subscription/team-a/workers"), "{message}");
    call.status_of(&second);
    next_call(&mut handle)
        .await
        .expect(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team-b/events",
        )
        .echo();
    // Rechecked every status interval: the other Subscription may go away.
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(ctx.status_interval)
    );
    drop(ctx);
    no_more_calls(handle).await;
    let store = store(redis, &prefix).await;
    assert_eq!(
        store.raw("Subscription/team-b/workers").await.unwrap(),
        None
    );
    close(broker).await;
}

#[tokio::test]
async fn deleted_subscription_loses_its_config_and_keys_then_its_finalizer() {
    let redis = RedisServer::shared();
    let prefix = prefix("delete");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let obj = subscription(&Meta::new("workers", "agents"), spec(), None);
    let status = reconcile_expecting_status(obj, &ctx, &mut handle).await;
    let keys = redis.command(&format!("KEYS {prefix}:s:*"));
    assert!(keys.contains(":info"), "subscription keys exist: {keys}");

    let meta = Meta {
        deleting: true,
        ..Meta::new("workers", "agents")
    };
    let deleting = subscription(&meta, spec(), Some(status));
    let task = tokio::spawn(reconcile_subscription(
        Arc::new(deleting.clone()),
        ctx.clone(),
    ));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("subscriptions", "agents", "workers", ""),
    );
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": SUBSCRIPTION_FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ])
    );
    call.ok(&serde_json::to_value(&deleting).unwrap());
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    drop(ctx);
    no_more_calls(handle).await;

    let store = store(redis, &prefix).await;
    assert_eq!(
        store.raw("Subscription/agents/workers").await.unwrap(),
        None
    );
    assert_eq!(store.version().await.unwrap(), 2, "created, then deleted");
    assert!(matches!(
        broker.subscription("workers").await,
        Err(BrokerError::UnknownSubscription(_))
    ));
    assert_eq!(
        redis.command(&format!("KEYS {prefix}:s:*")),
        "*0\r\n",
        "every key of the subscription is gone"
    );
    close(broker).await;
}

#[tokio::test]
async fn event_route_is_admitted_then_removed_by_its_finalizer() {
    let redis = RedisServer::shared();
    let prefix = prefix("route");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let spec = json!({
        "match": {"topics": ["agent.failed"]},
        "actions": [{"setPriority": "critical"}, {"copyTo": "audit.agent-failed"}]
    });
    let obj = route(&Meta::new("escalate", "agents"), spec.clone(), None);
    let task = tokio::spawn(reconcile_route(Arc::new(obj.clone()), ctx.clone()));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("eventroutes", "agents", "escalate", "status"),
    );
    let status = call.body["status"].clone();
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["observedGeneration"], 1);
    call.status_of(&obj);
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let store = store(redis, &prefix).await;
    assert_eq!(
        stored_spec(store.raw("EventRoute/agents/escalate").await.unwrap()),
        spec
    );

    let meta = Meta {
        deleting: true,
        ..Meta::new("escalate", "agents")
    };
    let deleting = route(&meta, spec, Some(status));
    let task = tokio::spawn(reconcile_route(Arc::new(deleting.clone()), ctx.clone()));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("eventroutes", "agents", "escalate", ""),
    );
    assert_eq!(call.body[0]["value"], ROUTE_FINALIZER);
    call.ok(&serde_json::to_value(&deleting).unwrap());
    task.await.unwrap().unwrap();
    drop(ctx);
    no_more_calls(handle).await;
    assert_eq!(store.raw("EventRoute/agents/escalate").await.unwrap(), None);
    assert_eq!(store.version().await.unwrap(), 2);
    close(broker).await;
}

#[tokio::test]
async fn invalid_route_action_is_reported_without_touching_the_config() {
    let redis = RedisServer::shared();
    let prefix = prefix("badroute");
    let (ctx, mut handle, broker) = context(&redis.url(), &prefix).await;
    let spec = json!({
        "match": {"topics": ["order.#"]},
        "actions": [{"validateSchema": {"type": "object", "properties": {"n": {"type": 5}}}}]
    });
    let obj = route(&Meta::new("orders", "shop"), spec, None);
    let task = tokio::spawn(reconcile_route(Arc::new(obj.clone()), ctx.clone()));
    let call = next_call(&mut handle).await.expect(
        Method::PATCH,
        &path("eventroutes", "shop", "orders", "status"),
    );
    let message = call.body["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("actions[0]") && message.contains("validateSchema"),
        "{message}"
    );
    call.status_of(&obj);
    next_call(&mut handle)
        .await
        .expect(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/shop/events",
        )
        .echo();
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    drop(ctx);
    no_more_calls(handle).await;
    assert_eq!(store(redis, &prefix).await.version().await.unwrap(), 0);
    close(broker).await;
}

mod leader {
    use super::support::{mock_client, next_call};
    use event_router::operator::LeaderElector;
    use http::Method;
    use serde_json::json;
    use std::time::Duration;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/event-router-operator";

    fn elector(client: kube::Client, me: &str) -> LeaderElector {
        LeaderElector::new(
            client,
            "ops",
            "event-router-operator",
            me,
            Duration::from_secs(15),
        )
    }

    fn lease(holder: &str, renewed: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "event-router-operator", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed, "leaseTransitions": 1}
        })
    }

    fn not_found() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    }

    #[tokio::test]
    async fn a_free_lease_is_created_by_the_first_candidate() {
        let (client, mut handle) = mock_client();
        let task = tokio::spawn(async move { elector(client, "a").try_acquire_or_renew().await });
        let call = next_call(&mut handle).await.expect(Method::GET, LEASE);
        call.status(404, &not_found());
        let call = next_call(&mut handle).await.expect(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
        );
        assert_eq!(call.body["spec"]["holderIdentity"], "a");
        assert_eq!(call.body["spec"]["leaseDurationSeconds"], 15);
        call.echo();
        assert!(task.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_live_holder_keeps_the_lease_and_an_expired_one_loses_it() {
        let (client, mut handle) = mock_client();
        let now = k8s_openapi::jiff::Timestamp::now();
        let fresh = now.to_string();
        let task = tokio::spawn(async move { elector(client, "b").try_acquire_or_renew().await });
        next_call(&mut handle)
            .await
            .expect(Method::GET, LEASE)
            .ok(&lease("a", &fresh));
        assert!(!task.await.unwrap().unwrap(), "a's lease is live");

        let (client, mut handle) = mock_client();
        let stale = (now - k8s_openapi::jiff::SignedDuration::from_secs(60)).to_string();
        let task = tokio::spawn(async move { elector(client, "b").try_acquire_or_renew().await });
        next_call(&mut handle)
            .await
            .expect(Method::GET, LEASE)
            .ok(&lease("a", &stale));
        let call = next_call(&mut handle).await.expect(Method::PUT, LEASE);
        assert_eq!(
            call.body["metadata"]["resourceVersion"], "7",
            "optimistic concurrency"
        );
        assert_eq!(call.body["spec"]["holderIdentity"], "b");
        assert_eq!(call.body["spec"]["leaseTransitions"], 2);
        call.echo();
        assert!(task.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
        let (client, mut handle) = mock_client();
        let stale = (k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(60))
        .to_string();
        let task = tokio::spawn(async move { elector(client, "c").try_acquire_or_renew().await });
        next_call(&mut handle)
            .await
            .expect(Method::GET, LEASE)
            .ok(&lease("a", &stale));
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "changed"});
        next_call(&mut handle)
            .await
            .expect(Method::PUT, LEASE)
            .status(409, &conflict);
        assert!(!task.await.unwrap().unwrap());
    }
}
