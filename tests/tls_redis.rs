//! `rediss://`: the Redis broker over TLS to a real redis-server with a
//! certificate generated at test time, trusted through `SSL_CERT_FILE`.

mod common;

use std::sync::Arc;

use common::redis::RedisServer;
use event_router::broker::{RedisBroker, RedisBrokerConfig};
use event_router::{Event, Router, RouterConfig};
use serde_json::json;

#[tokio::test]
async fn the_redis_broker_connects_over_tls_with_rediss_urls() {
    let dir = std::env::temp_dir().join(format!("er-rediss-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("redis.crt");
    let key = dir.join("redis.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tls_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let port = tls_port.to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        cert.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    // The only test of this binary: no other thread reads the environment.
    unsafe { std::env::set_var("SSL_CERT_FILE", &cert) };
    // The TLS port does not speak plain Redis.
    let plain = RedisBroker::connect(RedisBrokerConfig::new(format!(
        "redis://localhost:{tls_port}/"
    )))
    .await;
    assert!(plain.is_err(), "plain Redis on the TLS port connected");
    let broker = RedisBroker::connect(RedisBrokerConfig::new(format!(
        "rediss://localhost:{tls_port}/"
    )))
    .await
    .expect("rediss:// connects");
    let router = Router::new(Arc::new(broker), RouterConfig::default());
    router
        .publish(Event::new("task.x", json!({"n": 1})).unwrap())
        .await
        .expect("publish over TLS");
    let keys: u64 = server
        .command("DBSIZE")
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or(0);
    assert!(keys > 0, "nothing was stored over TLS");
    router.broker().close().await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
