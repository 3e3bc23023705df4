//! The web console's server side (`server::ui`): page URLs, embedded
//! assets, security headers, `--no-ui`, and `/ui` staying public while the
//! API behind it keeps asking for credentials. The page itself is driven in
//! a real browser by `tests/python/test_ui.py`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::inproc::{SseClient, WsClient, start_with};
use event_router::auth::{Auth, AuthConfig, sha256_hex};
use event_router::broker::MemoryBroker;
use event_router::server::{self, AppState, ServerConfig};
use event_router::{Router, RouterConfig};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ADMIN_KEY: &str = "ui-test-admin-key";
const VIEWER_KEY: &str = "ui-test-viewer-key";

fn app(config: ServerConfig) -> axum::Router {
    let router = Router::new(Arc::new(MemoryBroker::default()), RouterConfig::default());
    server::app(AppState::new(router, config, CancellationToken::new()))
}

fn with_auth() -> ServerConfig {
    let yaml = format!(
        "api_keys:\n  - name: ops\n    sha256: \"{}\"\n  - name: viewer\n    sha256: \"{}\"\n\
         acl:\n  - principal: ops\n    admin: true\n  - principal: viewer\n    subscribe: [\"#\"]\n",
        sha256_hex(ADMIN_KEY),
        sha256_hex(VIEWER_KEY)
    );
    let auth = Auth::from_config(&AuthConfig::from_yaml(&yaml).unwrap()).unwrap();
    ServerConfig {
        auth: Arc::new(auth),
        ..ServerConfig::default()
    }
}

async fn get(
    app: &axum::Router,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::builder().uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        app.clone().oneshot(req.body(Body::empty()).unwrap()),
    )
    .await
    .expect("response in time")
    .expect("infallible service");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers.get(&name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn every_console_page_url_answers_the_page_with_a_strict_content_security_policy() {
    let app = app(ServerConfig::default());
    for uri in [
        "/ui/",
        "/ui/tail",
        "/ui/subscriptions",
        "/ui/dead-letters",
        "/ui/dead-letters/orders",
        "/ui/publish",
        "/ui/replay",
    ] {
        let (status, headers, body) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            text(&headers, header::CONTENT_TYPE).starts_with("text/html"),
            "{uri}"
        );
        let page = String::from_utf8(body).unwrap();
        assert!(page.contains("/ui/assets/app.js"), "{uri}");
        let csp = text(&headers, header::CONTENT_SECURITY_POLICY);
        assert!(csp.contains("script-src 'self'"), "{uri}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{uri}: {csp}");
        assert_eq!(text(&headers, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(text(&headers, header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(text(&headers, header::REFERRER_POLICY), "no-referrer");
        assert_eq!(text(&headers, header::CACHE_CONTROL), "no-store");
    }
}

#[tokio::test]
async fn ui_without_slash_redirects_and_unknown_console_paths_are_404() {
    let app = app(ServerConfig::default());
    let (status, headers, _) = get(&app, "/ui", None).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(text(&headers, header::LOCATION), "/ui/");
    for uri in ["/ui/nope", "/ui/dead-letters/a/b", "/ui/assets/missing.js"] {
        let (status, headers, body) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{uri}");
        assert!(
            !text(&headers, header::CONTENT_SECURITY_POLICY).is_empty(),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn assets_are_served_from_the_binary_with_their_types() {
    let app = app(ServerConfig::default());
    for (uri, content_type, needle) in [
        ("/ui/assets/app.js", "text/javascript", "whoami"),
        (
            "/ui/assets/pages/tail.js",
            "text/javascript",
            "/api/v1/events/stream",
        ),
        (
            "/ui/assets/vendor/uPlot.iife.min.js",
            "text/javascript",
            "uPlot",
        ),
        ("/ui/assets/style.css", "text/css", ":root"),
    ] {
        let (status, headers, body) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            text(&headers, header::CONTENT_TYPE).starts_with(content_type),
            "{uri}"
        );
        assert!(String::from_utf8_lossy(&body).contains(needle), "{uri}");
        assert_eq!(text(&headers, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    }
}

#[tokio::test]
async fn console_can_be_turned_off() {
    let app = app(ServerConfig {
        ui: false,
        ..ServerConfig::default()
    });
    for uri in ["/ui", "/ui/", "/ui/tail", "/ui/assets/app.js", "/ui/auth"] {
        let (status, _, _) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn with_auth_the_page_is_public_but_the_api_behind_it_is_not() {
    let app = app(with_auth());
    let (status, _, _) = get(&app, "/ui/dead-letters/orders", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&app, "/ui/auth", None).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["token_required"], true);
    let (status, _, _) = get(&app, "/api/v1/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(&app, "/api/v1/stats", Some(VIEWER_KEY)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn whoami_tells_admins_from_other_principals() {
    let secured = app(with_auth());
    for (key, principal, admin) in [(ADMIN_KEY, "ops", true), (VIEWER_KEY, "viewer", false)] {
        let (status, _, body) = get(&secured, "/api/v1/whoami", Some(key)).await;
        assert_eq!(status, StatusCode::OK);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["principal"], principal);
        assert_eq!(body["admin"], admin);
        assert_eq!(body["auth"], true);
    }
    let open = app(ServerConfig::default());
    let (_, _, body) = get(&open, "/ui/auth", None).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["token_required"], false);
    let (_, _, body) = get(&open, "/api/v1/whoami", None).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (body["admin"].clone(), body["auth"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );
}

async fn subscribers(addr: std::net::SocketAddr) -> Value {
    reqwest::get(format!("http://{addr}/api/v1/subscribers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn subscribers_lists_open_websocket_and_sse_subscriptions_until_they_close() {
    let server = start_with(ServerConfig::default()).await;
    let sse = SseClient::open(
        server.addr,
        "/api/v1/events/stream?topics=order.*&filter=priority:gte:7",
        &[],
    )
    .await;
    let mut ws = WsClient::connect(server.addr, "/ws").await;
    let live = ws
        .subscribe(serde_json::json!({"op":"subscribe","topics":["audit.#"]}))
        .await;
    ws.subscribe(serde_json::json!({"op":"subscribe","topics":["job.#"],"group":"workers"}))
        .await;

    let body = subscribers(server.addr).await;
    assert_eq!(body["total"], 3, "{body}");
    let list = body["subscribers"].as_array().unwrap();
    let by_transport = |t: &str| {
        list.iter()
            .filter(|s| s["transport"] == t)
            .collect::<Vec<_>>()
    };
    let sse_entry = by_transport("sse");
    assert_eq!(sse_entry.len(), 1);
    assert_eq!(sse_entry[0]["topics"], serde_json::json!(["order.*"]));
    assert!(
        sse_entry[0]["filter"].to_string().contains("priority"),
        "{body}"
    );
    let ws_entries = by_transport("websocket");
    assert_eq!(ws_entries.len(), 2);
    let live_entry = ws_entries.iter().find(|s| s["group"].is_null()).unwrap();
    assert_eq!(live_entry["subscription_id"], live.as_str());
    assert_eq!(live_entry["topics"], serde_json::json!(["audit.#"]));
    assert_eq!(live_entry["principal"], "anonymous");
    assert!(ws_entries.iter().any(|s| s["group"] == "workers"));

    ws.call(serde_json::json!({"op":"unsubscribe","id":"u","subscription_id":live}))
        .await;
    let body = subscribers(server.addr).await;
    assert_eq!(body["total"], 2, "{body}");
    drop(sse);
    ws.close().await;
    let mut left = Value::Null;
    for _ in 0..100 {
        left = subscribers(server.addr).await;
        if left["total"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left["total"], 0, "{left}");
    server.token.cancel();
}

#[tokio::test]
async fn subscribers_is_for_admins() {
    let app = app(with_auth());
    let (status, _, _) = get(&app, "/api/v1/subscribers", Some(VIEWER_KEY)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = get(&app, "/api/v1/subscribers", Some(ADMIN_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["total"], 0);
}

#[test]
fn no_ui_flag_and_config_key_turn_the_console_off() {
    let print = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_event-router"));
        cmd.args(["serve", "--print-config"]).args(args);
        cmd.env_remove("EVENT_ROUTER_NO_UI");
        if let Some(value) = env {
            cmd.env("EVENT_ROUTER_NO_UI", value);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(print(&[], None).contains("\n  ui: true\n"));
    assert!(print(&["--no-ui"], None).contains("\n  ui: false\n"));
    assert!(print(&[], Some("true")).contains("\n  ui: false\n"));
    let config = event_router::config::Config::from_yaml("server:\n  ui: false\n").unwrap();
    assert!(!config.server_config().ui);
    assert!(event_router::config::Config::default().server_config().ui);
}
