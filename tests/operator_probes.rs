//! The operator's `/healthz` and `/readyz`: the Kubernetes API server is a
//! `tower_test` mock that answers (or fails) `GET /version`; Redis is a
//! real redis-server, stopped to make it unreachable.

mod common;
#[path = "operator_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use event_router::broker::{Broker, RedisBroker, RedisBrokerConfig};
use event_router::operator::{Probes, Role};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::redis::RedisServer;
use support::{ApiHandle, mock_client, next_call, prefix};

fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "x",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
           "compiler": "gc", "platform": "linux/amd64"})
}

async fn broker(redis: &RedisServer, test: &str) -> Arc<RedisBroker> {
    let mut config = RedisBrokerConfig::new(redis.url());
    config.key_prefix = prefix(test);
    config.partitions = 2;
    Arc::new(RedisBroker::connect(config).await.expect("redis broker"))
}

/// `GET path` on the probe app, answering the API server's `/version` call
/// with `api` (`None`: the API server does not get the call, as for
/// `/healthz`).
async fn get(
    probes: &Probes,
    handle: &mut ApiHandle,
    path: &str,
    api: Option<u16>,
) -> (StatusCode, Value) {
    let request = Request::get(path).body(AxumBody::empty()).unwrap();
    let answer = probes.app().oneshot(request);
    let api_server = async {
        if let Some(code) = api {
            let call = next_call(handle).await.expect(Method::GET, "/version");
            match code {
                200 => call.ok(&version()),
                code => call.status(
                    code,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}),
                ),
            }
        }
    };
    let (response, ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(answer, api_server)
    })
    .await
    .expect("the probe answered in time");
    let response = response.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn readyz_is_ready_for_a_leader_or_a_standby_when_api_server_and_redis_answer() {
    let redis = RedisServer::shared();
    let (client, mut handle) = mock_client();
    let broker = broker(redis, "ready").await;
    let probes = Probes::new(client, broker.clone());
    for role in [Role::Leader, Role::Standby] {
        probes.set_role(role);
        let (status, body) = get(&probes, &mut handle, "/readyz", Some(200)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["role"], json!(role));
        assert_eq!(
            body["checks"],
            json!({"leader_election": "ok", "api_server": "ok", "redis": "ok"})
        );
    }
    broker.close().await;
}

#[tokio::test]
async fn readyz_is_503_before_any_answer_about_the_lease() {
    let redis = RedisServer::shared();
    let (client, mut handle) = mock_client();
    let broker = broker(redis, "starting").await;
    let probes = Probes::new(client, broker.clone());
    let (status, body) = get(&probes, &mut handle, "/readyz", Some(200)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["role"], "starting");
    assert_ne!(body["checks"]["leader_election"], "ok");
    broker.close().await;
}

#[tokio::test]
async fn readyz_is_503_naming_the_api_server_when_it_fails() {
    let redis = RedisServer::shared();
    let (client, mut handle) = mock_client();
    let broker = broker(redis, "api-down").await;
    let probes = Probes::new(client, broker.clone());
    probes.set_role(Role::Standby);
    let (status, body) = get(&probes, &mut handle, "/readyz", Some(503)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["checks"]["api_server"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{body}"
    );
    assert_eq!(body["checks"]["redis"], "ok");
    broker.close().await;
}

#[tokio::test]
async fn readyz_is_503_naming_redis_when_it_is_down_and_healthz_stays_200() {
    let mut redis = RedisServer::start();
    let (client, mut handle) = mock_client();
    let broker = broker(&redis, "redis-down").await;
    let probes = Probes::new(client, broker.clone());
    probes.set_role(Role::Leader);
    redis.kill();
    let (status, body) = get(&probes, &mut handle, "/readyz", Some(200)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["api_server"], "ok", "{body}");
    assert_ne!(body["checks"]["redis"], "ok", "{body}");
    let (status, body) = get(&probes, &mut handle, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ok", "role": "leader"}));
    broker.close().await;
}
