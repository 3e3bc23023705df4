//! Authentication and authorization over HTTP, WebSocket (v2 and v1) and
//! SSE against an in-process server with an auth configuration.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::inproc::{Running, start_with};
use event_router::auth::{Auth, AuthConfig, generate_key, sha256_hex};
use event_router::server::ServerConfig;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(5);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("er-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Keys {
    planner: String,
    admin: String,
}

const SECRET: &[u8] = b"a-test-secret-of-enough-bytes-0123456789";

/// Planner may publish `task.*` and subscribe to `task.*`, consume group
/// `planners`; `ops` is an admin; every authenticated principal may
/// subscribe to `system.alert`; JWTs (HS256) name the principal in `sub`.
async fn secured(scratch: &Scratch) -> (Running, Keys) {
    let keys = Keys {
        planner: generate_key(),
        admin: generate_key(),
    };
    let secret = scratch.write("jwt.secret", &[SECRET, b"\n"].concat());
    let yaml = format!(
        r##"
api_keys:
  - name: planner
    sha256: "{}"
  - name: ops
    sha256: "{}"
jwt:
  hs256_secret_file: {}
  audience: event-router
  issuer: agents.test
  leeway_secs: 5
acl:
  - principal: planner
    publish: ["task.*"]
    subscribe: ["task.*"]
    groups: ["planners"]
  - principal: ops
    admin: true
    publish: ["#"]
    subscribe: ["#"]
  - principal: "*"
    subscribe: ["system.alert"]
"##,
        sha256_hex(&keys.planner),
        sha256_hex(&keys.admin),
        secret.display()
    );
    let auth = Auth::from_config(&AuthConfig::from_yaml(&yaml).unwrap()).unwrap();
    let running = start_with(ServerConfig {
        auth: Arc::new(auth),
        ..ServerConfig::default()
    })
    .await;
    (running, keys)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http().post(format!("http://{addr}{path}")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn event(topic: &str) -> Value {
    json!({"topic": topic, "payload": {"n": 1}})
}

async fn ws(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Ws {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next text frame as JSON.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn call(ws: &mut Ws, v: Value) -> Value {
    send(ws, v).await;
    recv(ws).await
}

fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[tokio::test]
async fn http_without_a_token_is_401_and_probes_stay_open() {
    let scratch = Scratch::new();
    let (server, keys) = secured(&scratch).await;
    let (status, body, headers) = post(server.addr, "/api/v1/events", None, event("task.x")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, _) = post(
        server.addr,
        "/api/v1/events",
        Some("erk_not-a-key"),
        event("task.x"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(get(server.addr, "/health", None).await.0, 200);
    assert_eq!(get(server.addr, "/api/v1/stats", None).await.0, 401);
    // The right key works, as a header or a query parameter.
    let (status, body, _) = post(
        server.addr,
        "/api/v1/events",
        Some(&keys.planner),
        event("task.x"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let resp = http()
        .post(format!(
            "http://{}/api/v1/events?token={}",
            server.addr, keys.planner
        ))
        .json(&event("task.y"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    server.token.cancel();
}

#[tokio::test]
async fn websocket_without_a_token_is_closed_with_a_reason() {
    let scratch = Scratch::new();
    let (server, _keys) = secured(&scratch).await;
    let mut socket = ws(server.addr, "/ws", None).await;
    send(
        &mut socket,
        json!({"op": "publish", "id": 1, "event": event("task.x")}),
    )
    .await;
    let close = loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a reason"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        close.reason.contains("authentication required"),
        "{}",
        close.reason
    );
    // A bad token in the auth frame closes too.
    let mut socket = ws(server.addr, "/ws", None).await;
    send(&mut socket, json!({"op": "auth", "token": "erk_nope"})).await;
    match tokio::time::timeout(WAIT, socket.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert!(frame.reason.contains("unknown API key"), "{}", frame.reason)
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // A bad bearer header on the upgrade is a plain 401.
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer erk_nope".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    server.token.cancel();
}

#[tokio::test]
async fn websocket_principal_with_task_star_publishes_task_x_but_not_admin_x_nor_subscribes_to_all()
{
    let scratch = Scratch::new();
    let (server, keys) = secured(&scratch).await;
    for how in ["header", "query", "frame", "frame_v1"] {
        let mut socket = match how {
            "header" => ws(server.addr, "/ws", Some(&keys.planner)).await,
            "query" => ws(server.addr, &format!("/ws?token={}", keys.planner), None).await,
            _ => {
                let mut s = ws(server.addr, "/ws", None).await;
                let frame = if how == "frame" {
                    json!({"op": "auth", "id": 7, "token": keys.planner})
                } else {
                    json!({"type": "auth", "token": keys.planner})
                };
                let reply = call(&mut s, frame).await;
                assert_eq!(reply["principal"], "planner", "{how}: {reply}");
                s
            }
        };
        let ok = call(
            &mut socket,
            json!({"op": "publish", "id": 1, "event": event("task.x")}),
        )
        .await;
        assert_eq!(ok["op"], "ok", "{how}: {ok}");
        let denied = call(
            &mut socket,
            json!({"op": "publish", "id": 2, "event": event("admin.x")}),
        )
        .await;
        assert_eq!(
            (denied["op"].as_str(), denied["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{how}: {denied}"
        );
        assert!(
            denied["message"].as_str().unwrap().contains("admin.x"),
            "{denied}"
        );
        let all = call(
            &mut socket,
            json!({"op": "subscribe", "id": 3, "topics": ["#"]}),
        )
        .await;
        assert_eq!(all["code"], "forbidden", "{how}: {all}");
        let wide = call(
            &mut socket,
            json!({"op": "subscribe", "id": 4, "topics": ["task.#"]}),
        )
        .await;
        assert_eq!(wide["code"], "forbidden", "{how}: {wide}");
        let fine = call(
            &mut socket,
            json!({"op": "subscribe", "id": 5, "topics": ["task.*"]}),
        )
        .await;
        assert_eq!(fine["op"], "ok", "{how}: {fine}");
        let alert = call(
            &mut socket,
            json!({"op": "subscribe", "id": 6, "topics": ["system.alert"]}),
        )
        .await;
        assert_eq!(alert["op"], "ok", "{how}: {alert}");
        let group = call(
            &mut socket,
            json!({"op": "subscribe", "id": 8, "topics": ["task.*"], "group": "coders"}),
        )
        .await;
        assert_eq!(group["code"], "forbidden", "{how}: {group}");
        let batch = call(
            &mut socket,
            json!({"op": "publish_batch", "id": 9, "events": [event("task.a"), event("admin.b")]}),
        )
        .await;
        assert_eq!(batch["code"], "forbidden", "{how}: {batch}");
        let _ = socket.close(None).await;
    }
    // Nothing from the refused batch was stored.
    let history = server
        .router
        .broker()
        .history(event_router::broker::HistoryQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        history
            .iter()
            .all(|e| e.event.topic != "task.a" && e.event.topic != "admin.b")
    );
    server.token.cancel();
}

#[tokio::test]
async fn http_sse_and_admin_endpoints_follow_the_acl() {
    let scratch = Scratch::new();
    let (server, keys) = secured(&scratch).await;
    let addr = server.addr;
    let p = Some(keys.planner.as_str());
    assert_eq!(
        post(addr, "/api/v1/events", p, event("task.x")).await.0,
        202
    );
    let (status, body, _) = post(addr, "/api/v1/events", p, event("admin.x")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin.x")
    );
    // Batch and CloudEvents binary mode.
    let (status, _, _) = post(
        addr,
        "/api/v1/events/batch",
        p,
        json!([event("task.a"), event("admin.b")]),
    )
    .await;
    assert_eq!(status, 403);
    let resp = http()
        .post(format!("http://{addr}/api/v1/events"))
        .bearer_auth(&keys.planner)
        .header("ce-specversion", "1.0")
        .header("ce-type", "admin.x")
        .header("ce-source", "test")
        .header("ce-id", "1")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    // SSE: `#` refused, `task.*` served.
    let resp = http()
        .get(format!("http://{addr}/api/v1/events/stream?topics=%23"))
        .bearer_auth(&keys.planner)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = http()
        .get(format!(
            "http://{addr}/api/v1/events/stream?topics=task.*&token={}",
            keys.planner
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);
    // History of everything is a subscription to `#`.
    assert_eq!(get(addr, "/api/v1/events", p).await.0, 403);
    assert_eq!(get(addr, "/api/v1/events?topic=task.*", p).await.0, 200);
    // Admin endpoints.
    let spec = json!({"topics": ["task.*"]});
    let put = |token: String| {
        let spec = spec.clone();
        async move {
            http()
                .put(format!("http://{addr}/api/v1/subscriptions/planners"))
                .bearer_auth(token)
                .json(&spec)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put(keys.planner.clone()).await, 403);
    assert_eq!(put(keys.admin.clone()).await, 201);
    assert_eq!(get(addr, "/api/v1/subscriptions", p).await.0, 403);
    assert_eq!(
        get(addr, "/api/v1/subscriptions", Some(&keys.admin))
            .await
            .0,
        200
    );
    assert_eq!(get(addr, "/api/v1/subscriptions/planners", p).await.0, 200);
    assert_eq!(
        get(addr, "/api/v1/subscriptions/planners/dlq", p).await.0,
        200
    );
    assert_eq!(
        post(
            addr,
            "/api/v1/subscriptions/planners/dlq/redrive",
            p,
            json!({})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post(
            addr,
            "/api/v1/subscriptions/planners/dlq/purge",
            p,
            json!({})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post(
            addr,
            "/api/v1/subscriptions/planners/dlq/purge",
            Some(&keys.admin),
            json!({})
        )
        .await
        .0,
        200
    );
    // Replaying history into a subscription is an admin action.
    assert_eq!(
        post(addr, "/api/v1/subscriptions/planners/replay", p, json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        post(
            addr,
            "/api/v1/subscriptions/planners/replay",
            Some(&keys.admin),
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(get(addr, "/api/v1/stats", p).await.0, 403);
    let delete = http()
        .delete(format!("http://{addr}/api/v1/subscriptions/planners"))
        .bearer_auth(&keys.planner)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status().as_u16(), 403);
    server.token.cancel();
}

#[tokio::test]
async fn jwts_are_checked_for_expiry_audience_issuer_and_signature() {
    let scratch = Scratch::new();
    let (server, _keys) = secured(&scratch).await;
    let addr = server.addr;
    let good =
        json!({"sub": "planner", "aud": "event-router", "iss": "agents.test", "exp": now() + 300});
    let token = jwt(good.clone());
    assert_eq!(
        post(addr, "/api/v1/events", Some(&token), event("task.x"))
            .await
            .0,
        202
    );
    assert_eq!(
        post(addr, "/api/v1/events", Some(&token), event("admin.x"))
            .await
            .0,
        403
    );
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    let (status, body, _) =
        post(addr, "/api/v1/events", Some(&jwt(expired)), event("task.x")).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    // Within the leeway it still passes.
    let mut skewed = good.clone();
    skewed["exp"] = json!(now() - 1);
    assert_eq!(
        post(addr, "/api/v1/events", Some(&jwt(skewed)), event("task.x"))
            .await
            .0,
        202
    );
    let mut early = good.clone();
    early["nbf"] = json!(now() + 600);
    assert_eq!(
        post(addr, "/api/v1/events", Some(&jwt(early)), event("task.x"))
            .await
            .0,
        401
    );
    let mut aud = good.clone();
    aud["aud"] = json!("someone-else");
    assert_eq!(
        post(addr, "/api/v1/events", Some(&jwt(aud)), event("task.x"))
            .await
            .0,
        401
    );
    let mut iss = good.clone();
    iss["iss"] = json!("elsewhere");
    assert_eq!(
        post(addr, "/api/v1/events", Some(&jwt(iss)), event("task.x"))
            .await
            .0,
        401
    );
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        post(addr, "/api/v1/events", Some(&jwt(no_exp)), event("task.x"))
            .await
            .0,
        401
    );
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"another-secret-of-enough-bytes-xx"),
    )
    .unwrap();
    assert_eq!(
        post(addr, "/api/v1/events", Some(&forged), event("task.x"))
            .await
            .0,
        401
    );
    // An expired JWT in the WebSocket auth frame closes the socket.
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    let mut socket = ws(addr, "/ws", None).await;
    send(&mut socket, json!({"op": "auth", "token": jwt(expired)})).await;
    match tokio::time::timeout(WAIT, socket.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert!(frame.reason.contains("expired"), "{}", frame.reason)
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    server.token.cancel();
}

#[tokio::test]
async fn es256_public_key_file_verifies_tokens() {
    let scratch = Scratch::new();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = scratch.write("es256.pub.pem", pair.public_key_pem().as_bytes());
    let yaml = format!(
        "jwt:\n  es256_public_key_file: {}\nacl:\n  - principal: worker-7\n    publish: [\"task.*\"]\n",
        public.display()
    );
    let auth = Auth::from_config(&AuthConfig::from_yaml(&yaml).unwrap()).unwrap();
    let server = start_with(ServerConfig {
        auth: Arc::new(auth),
        ..ServerConfig::default()
    })
    .await;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let token = sign(json!({"sub": "worker-7", "exp": now() + 60}));
    assert_eq!(
        post(server.addr, "/api/v1/events", Some(&token), event("task.x"))
            .await
            .0,
        202
    );
    assert_eq!(
        post(
            server.addr,
            "/api/v1/events",
            Some(&token),
            event("admin.x")
        )
        .await
        .0,
        403
    );
    // An HS256 token cannot pass as ES256 (no algorithm confusion).
    let hs = jwt(json!({"sub": "worker-7", "exp": now() + 60}));
    assert_eq!(
        post(server.addr, "/api/v1/events", Some(&hs), event("task.x"))
            .await
            .0,
        401
    );
    server.token.cancel();
}

#[tokio::test]
async fn anonymous_access_only_when_enabled_and_then_only_its_acl() {
    let yaml = "anonymous: true\nacl:\n  - principal: anonymous\n    publish: [\"public.*\"]\n";
    let auth = Auth::from_config(&AuthConfig::from_yaml(yaml).unwrap()).unwrap();
    let server = start_with(ServerConfig {
        auth: Arc::new(auth),
        ..ServerConfig::default()
    })
    .await;
    assert_eq!(
        post(server.addr, "/api/v1/events", None, event("public.x"))
            .await
            .0,
        202
    );
    assert_eq!(
        post(server.addr, "/api/v1/events", None, event("task.x"))
            .await
            .0,
        403
    );
    server.token.cancel();
    // With no auth configured at all, everything is open (the warned default).
    let open = start_with(ServerConfig::default()).await;
    assert_eq!(
        post(open.addr, "/api/v1/events", None, event("task.x"))
            .await
            .0,
        202
    );
    open.token.cancel();
}

fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_jwks_file_picks_the_key_by_kid() {
    let scratch = Scratch::new();
    let pairs: Vec<rcgen::KeyPair> = (0..2)
        .map(|_| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
        .collect();
    let keys: Vec<Value> = pairs
        .iter()
        .enumerate()
        .map(|(i, pair)| {
            // Uncompressed point: 0x04 || x || y.
            let raw = pair.public_key_raw();
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": format!("k{i}"),
                   "x": base64url(&raw[1..33]), "y": base64url(&raw[33..65])})
        })
        .collect();
    let jwks = scratch.write("jwks.json", json!({"keys": keys}).to_string().as_bytes());
    let yaml = format!(
        "jwt:\n  jwks_file: {}\nacl:\n  - principal: w\n    publish: [\"task.*\"]\n",
        jwks.display()
    );
    let auth = Auth::from_config(&AuthConfig::from_yaml(&yaml).unwrap()).unwrap();
    let server = start_with(ServerConfig {
        auth: Arc::new(auth),
        ..ServerConfig::default()
    })
    .await;
    let sign = |pair: &rcgen::KeyPair, kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &json!({"sub": "w", "exp": now() + 60}),
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    for (i, pair) in pairs.iter().enumerate() {
        let token = sign(pair, &format!("k{i}"));
        let status = post(server.addr, "/api/v1/events", Some(&token), event("task.x"))
            .await
            .0;
        assert_eq!(status, 202, "key k{i}");
    }
    // The right key under the wrong kid, and an unknown kid, are refused.
    let swapped = sign(&pairs[0], "k1");
    assert_eq!(
        post(
            server.addr,
            "/api/v1/events",
            Some(&swapped),
            event("task.x")
        )
        .await
        .0,
        401
    );
    let unknown = sign(&pairs[0], "k9");
    let (status, body, _) = post(
        server.addr,
        "/api/v1/events",
        Some(&unknown),
        event("task.x"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("kid"),
        "{body}"
    );
    server.token.cancel();
}
