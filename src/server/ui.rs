//! The web console at `/ui` (`docs/ui.md`): a page per task (overview, live
//! tail, subscriptions, dead letters, publish, replay) over the same HTTP
//! API that every other client uses; nothing here touches the broker.
//!
//! The files under `ui/` are compiled into the binary ([`ASSETS`]), so the
//! console works without internet access. Every page URL answers with the
//! same `index.html`; the script reads the path and draws the page, so each
//! page can be linked and bookmarked. `/ui` is public (the files hold no
//! data): the script asks for a token (when `GET /ui/auth` says one is
//! needed, or the API answers 401) and sends it in the `Authorization`
//! header of every call, never in a URL. Responses carry a strict
//! Content-Security-Policy (scripts and styles from the page's own origin
//! only) and the usual hardening headers.
//!
//! [`whoami`] (`GET /api/v1/whoami`) tells the page who the caller is and
//! whether admin actions are open to it, so that it can hide them; the
//! server enforces them whatever the page shows.

use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;

/// Where the console is served.
pub const PREFIX: &str = "/ui";

/// The Content-Security-Policy of every `/ui` response: the page's own
/// scripts, styles and API only; no inline script or style, no frames, no
/// plugins, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An embedded file of the console.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Path under `/ui/assets/`.
    pub path: &'static str,
    /// `Content-Type` it is served with.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `ui/` but the page itself and the build script (a test
/// checks that none is missing).
pub const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("pages/overview.js", JS),
    asset!("pages/tail.js", JS),
    asset!("pages/subscriptions.js", JS),
    asset!("pages/dead-letters.js", JS),
    asset!("pages/publish.js", JS),
    asset!("pages/replay.js", JS),
    asset!("style.css", CSS),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
];

/// The one HTML page, answered for every page URL.
const INDEX: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/index.html"));

/// Page paths under `/ui/` (after the prefix); `dead-letters/{name}` too.
const PAGES: &[&str] = &[
    "",
    "tail",
    "subscriptions",
    "dead-letters",
    "publish",
    "replay",
];

/// The console's routes, merged into the application when
/// [`ServerConfig::ui`](super::ServerConfig::ui) is on.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(PREFIX, get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { page() }))
        .route("/ui/auth", get(auth))
        .route("/ui/assets/{*path}", get(asset))
        .route("/ui/{*path}", get(page_at))
}

/// Who the caller is, for the console.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The authenticated principal (`anonymous` without credentials).
    pub principal: String,
    /// Whether admin actions (stats, subscriptions, dead-letter redrive and
    /// purge, replay) are open to it.
    pub admin: bool,
    /// Whether the server checks credentials at all.
    pub auth: bool,
}

/// `GET /api/v1/whoami`: the caller's principal and whether it is an admin.
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "operations",
    responses((status = 200, body = WhoAmI), (status = 401, body = super::error::ErrorBody))
)]
pub async fn whoami(
    axum::extract::State(state): axum::extract::State<AppState>,
    access: crate::auth::Access,
) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        principal: access.principal().to_string(),
        admin: access.check_admin("whoami").is_ok(),
        auth: state.config.auth.is_enforced(),
    })
}

/// Whether the page must ask for a token before calling the API.
#[derive(Debug, Serialize)]
struct AuthInfo {
    /// Credentials are checked and anonymous access is off.
    token_required: bool,
}

/// `GET /ui/auth`: lets the page ask for a token up front instead of
/// provoking a 401 (which browsers log as an error).
async fn auth(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let token_required = state.config.auth.anonymous_access().is_none();
    hardened(axum::Json(AuthInfo { token_required }).into_response())
}

async fn page_at(Path(path): Path<String>) -> Response {
    let path = path.trim_end_matches('/');
    let known = PAGES.contains(&path)
        || path
            .strip_prefix("dead-letters/")
            .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    if known {
        page()
    } else {
        hardened(ApiError::not_found(format!("no console page at /ui/{path}")).into_response())
    }
}

fn page() -> Response {
    let response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX,
    )
        .into_response();
    hardened(response)
}

async fn asset(Path(path): Path<String>) -> Response {
    let response = match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                // Not content-hashed: revalidate so an upgrade is seen at once.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => ApiError::not_found(format!("no console asset {path}")).into_response(),
    };
    hardened(response)
}

/// Adds the Content-Security-Policy and the usual hardening headers.
fn hardened(mut response: Response) -> Response {
    let ok = response.status() == StatusCode::OK;
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=()",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if ok && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(&path, base, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push(rel);
            }
        }
    }

    #[test]
    fn every_served_file_under_ui_is_embedded() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut files = Vec::new();
        files_under(&base, &base, &mut files);
        for file in files {
            let served = file.ends_with(".js") || file.ends_with(".css");
            if served {
                assert!(
                    ASSETS.iter().any(|a| a.path == file),
                    "ui/{file} is not in ASSETS"
                );
            }
        }
    }
}
