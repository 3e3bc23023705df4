//! Authentication, authorization and per-principal limits (DESIGN §8,
//! `docs/security.md`).
//!
//! - [`config`]: the auth file (`serve --auth FILE`, `EVENT_ROUTER_AUTH`,
//!   or the `auth:` section of the main config).
//! - [`keys`]: API keys, SHA-256 at rest, constant-time compare.
//! - [`jwt`]: HS256 / RS256 / ES256 / JWKS verification.
//! - [`acl`]: grants and the subscription-pattern containment check.
//! - [`cert`]: client certificates (mTLS) as credentials.
//!
//! [`Auth`] is built once per server. The HTTP layer ([`middleware`])
//! authenticates every request except `/health`, `/live`, `/ready`, `/metrics`,
//! `/openapi.json` and the web console's files under `/ui` from `Authorization: Bearer`, or a `token` query
//! parameter (for browsers' WebSocket and EventSource), enforces the admin
//! and group rules of the subscription endpoints by path, and leaves an
//! [`Access`] in the request for handlers and sessions to check publishes
//! and subscriptions against. A WebSocket upgrade without a token is let
//! through: its first frame must then be `{"op":"auth","token":...}` (seed
//! v1: `{"type":"auth","token":...}`), or the socket is closed with 1008
//! and a reason.
//!
//! Without any auth configuration ([`Auth::open`]) everything is allowed
//! and nothing is limited; `serve` warns loudly at startup then.
//!
//! Denials, authentication failures, rate limiting and admin actions are
//! logged with target `audit` and counted ([`AuthStats`]).

pub mod acl;
pub mod cert;
pub mod config;
pub mod jwt;
pub mod keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::Value;

pub use acl::Grants;
pub use cert::{CertPrincipal, ClientCertConfig, ClientCertificate};
pub use config::{AclEntry, ApiKeyEntry, AuthConfig, AuthConfigError, JwtConfig, LimitsConfig};
pub use keys::{generate_key, sha256_hex};

use crate::server::ApiError;
use crate::topic::Pattern;

/// The principal of unauthenticated requests when anonymous access is on.
pub const ANONYMOUS: &str = "anonymous";
/// Most cached per-principal grants; the cache is cleared past it.
const MAX_CACHED_PRINCIPALS: usize = 10_000;
/// Most tracked rate-limit buckets; idle full buckets are dropped past it.
const MAX_BUCKETS: usize = 100_000;

/// Counters of security events (also logged with target `audit`).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Requests or frames refused by the ACL (403 `forbidden`).
    pub denied: AtomicU64,
    /// Missing or invalid credentials (401 `unauthorized`).
    pub auth_failures: AtomicU64,
    /// Publishes refused by the rate limit (429 `rate_limited`).
    pub rate_limited: AtomicU64,
    /// Connections refused by the per-principal connection limit.
    pub connections_refused: AtomicU64,
}

/// The server's authentication and authorization state.
pub struct Auth {
    enforced: bool,
    anonymous: bool,
    keys: keys::ApiKeys,
    jwt: Option<jwt::JwtVerifier>,
    /// Which name of a verified client certificate is the principal;
    /// `None`: certificates are not credentials.
    client_certs: Option<CertPrincipal>,
    acl: Vec<acl::CompiledEntry>,
    limits: LimitsConfig,
    grants: Mutex<HashMap<String, Arc<Grants>>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    connections: Mutex<HashMap<String, usize>>,
    /// Counters.
    pub stats: AuthStats,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enforced", &self.enforced)
            .field("anonymous", &self.anonymous)
            .field("keys", &self.keys)
            .field("jwt", &self.jwt)
            .field("acl_entries", &self.acl.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth::open()
    }
}

impl Auth {
    /// No authentication: every request is an unrestricted anonymous
    /// principal. The default of the embedded `serve` without `--auth`.
    pub fn open() -> Auth {
        Auth {
            enforced: false,
            anonymous: true,
            keys: keys::ApiKeys::default(),
            jwt: None,
            client_certs: None,
            acl: Vec::new(),
            limits: LimitsConfig::default(),
            grants: Mutex::default(),
            buckets: Mutex::default(),
            connections: Mutex::default(),
            stats: AuthStats::default(),
        }
    }

    /// Authentication and ACL from `config` (key files are read now).
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the file or field.
    pub fn from_config(config: &AuthConfig) -> Result<Auth, AuthConfigError> {
        let keys = keys::ApiKeys::new(&config.api_keys)?;
        let jwt = config.jwt.as_ref().map(jwt::JwtVerifier::new).transpose()?;
        let acl = acl::compile(&config.acl)?;
        if let Some(rate) = config.limits.publish_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(AuthConfigError::Invalid(format!(
                "limits.publish_rate must be a positive number, got {rate}"
            )));
        }
        if let Some(burst) = config.limits.publish_burst
            && !(burst.is_finite() && burst >= 1.0)
        {
            return Err(AuthConfigError::Invalid(format!(
                "limits.publish_burst must be at least 1, got {burst}"
            )));
        }
        let client_certs = config.client_certs.as_ref().map(|c| c.principal);
        if keys.is_empty() && jwt.is_none() && client_certs.is_none() && !config.anonymous {
            return Err(AuthConfigError::Invalid(
                "no api_keys, no jwt, no client_certs and anonymous is false: nobody could connect"
                    .into(),
            ));
        }
        Ok(Auth {
            enforced: true,
            anonymous: config.anonymous,
            keys,
            jwt,
            client_certs,
            acl,
            limits: config.limits.clone(),
            grants: Mutex::default(),
            buckets: Mutex::default(),
            connections: Mutex::default(),
            stats: AuthStats::default(),
        })
    }

    /// Whether credentials and the ACL are enforced (false for [`Auth::open`]).
    pub fn is_enforced(&self) -> bool {
        self.enforced
    }

    /// Whether requests without a token are served.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous
    }

    /// The access of a request without credentials, when allowed.
    pub fn anonymous_access(self: &Arc<Self>) -> Option<Access> {
        if !self.enforced {
            return Some(Access::unrestricted());
        }
        self.anonymous
            .then(|| self.access_for(ANONYMOUS.to_string(), false))
    }

    /// Checks a bearer token (an API key or a JWT).
    ///
    /// # Errors
    /// 401 `unauthorized` saying why, logged and counted.
    pub fn authenticate(self: &Arc<Self>, token: &str) -> Result<Access, ApiError> {
        if !self.enforced {
            return Ok(Access::unrestricted());
        }
        if let Some(name) = self.keys.verify(token) {
            return Ok(self.access_for(name.to_string(), true));
        }
        let reason = match &self.jwt {
            Some(verifier) if token.split('.').count() == 3 => match verifier.verify(token) {
                Ok(principal) => return Ok(self.access_for(principal, true)),
                Err(e) => e.0,
            },
            _ => "unknown API key".to_string(),
        };
        Err(self.unauthorized(&reason))
    }

    /// The access of a client certificate the TLS layer verified, when
    /// `auth.client_certs` makes certificates credentials (`None` when it
    /// does not: the request is then treated as having no credentials).
    ///
    /// # Errors
    /// 401 `unauthorized` when the certificate lacks the configured name.
    pub fn authenticate_certificate(
        self: &Arc<Self>,
        cert: &ClientCertificate,
    ) -> Option<Result<Access, ApiError>> {
        if !self.enforced {
            return Some(Ok(Access::unrestricted()));
        }
        let from = self.client_certs?;
        Some(match cert.principal(from) {
            Some(principal) => Ok(self.access_for(principal.to_string(), true)),
            None => Err(self.unauthorized(&format!(
                "the client certificate has no {}",
                match from {
                    CertPrincipal::CommonName => "subject common name",
                    CertPrincipal::AltName => "subject alternative name",
                }
            ))),
        })
    }

    /// Counts, logs and builds a 401.
    pub fn unauthorized(&self, reason: &str) -> ApiError {
        self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "audit", outcome = "unauthenticated", reason, "authentication failed");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("authentication required: {reason}"),
        )
    }

    fn access_for(self: &Arc<Self>, principal: String, authenticated: bool) -> Access {
        let key = if authenticated {
            principal.clone()
        } else {
            format!("\0{principal}")
        };
        let grants = {
            let mut cache = self.grants.lock();
            if let Some(g) = cache.get(&key) {
                g.clone()
            } else {
                if cache.len() >= MAX_CACHED_PRINCIPALS {
                    cache.clear();
                }
                let g = Arc::new(Grants::for_principal(&self.acl, &principal, authenticated));
                cache.insert(key, g.clone());
                g
            }
        };
        Access {
            inner: Some(Arc::new(Caller {
                principal,
                grants,
                auth: self.clone(),
            })),
        }
    }

    fn take_tokens(&self, principal: &str, n: f64) -> Result<(), Duration> {
        let Some(rate) = self.limits.publish_rate else {
            return Ok(());
        };
        let burst = self.limits.publish_burst.unwrap_or(rate.max(1.0));
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(principal) {
            buckets.retain(|_, b| b.level(now, rate, burst) < burst);
        }
        let bucket = buckets.entry(principal.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = bucket.level(now, rate, burst);
        bucket.tokens = tokens;
        bucket.at = now;
        if tokens >= n.min(burst) {
            // A batch larger than the burst goes through on a full bucket
            // and leaves a debt.
            bucket.tokens = tokens - n;
            Ok(())
        } else {
            let missing = n.min(burst) - tokens;
            Err(Duration::from_secs_f64((missing / rate).max(0.001)))
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

struct Caller {
    principal: String,
    grants: Arc<Grants>,
    auth: Arc<Auth>,
}

/// What one request or connection may do. Cheap to clone.
#[derive(Clone, Default)]
pub struct Access {
    /// `None`: unrestricted (no auth configured).
    inner: Option<Arc<Caller>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("principal", &self.principal())
            .finish()
    }
}

impl Access {
    /// Everything allowed, nothing limited.
    pub fn unrestricted() -> Access {
        Access { inner: None }
    }

    /// The principal's name (`anonymous` when unrestricted).
    pub fn principal(&self) -> &str {
        self.inner.as_ref().map_or(ANONYMOUS, |c| &c.principal)
    }

    fn forbidden(caller: &Caller, action: &str, what: &str) -> ApiError {
        caller.auth.stats.denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "audit",
            outcome = "denied",
            principal = %caller.principal,
            action,
            resource = %what,
            "forbidden"
        );
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("principal {:?} may not {action} {what}", caller.principal),
        )
    }

    /// Checks that `topic` may be published, then takes one token from the
    /// principal's publish rate limit.
    ///
    /// # Errors
    /// 403 `forbidden` naming the topic; 429 `rate_limited` with the wait.
    pub fn check_publish(&self, topic: &str) -> Result<(), ApiError> {
        self.check_publish_all(std::iter::once(topic))
    }

    /// [`Access::check_publish`] for a batch: every topic must be allowed,
    /// and the batch takes one token per event.
    ///
    /// # Errors
    /// As [`Access::check_publish`], naming the first refused topic.
    pub fn check_publish_all<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        let Some(caller) = &self.inner else {
            return Ok(());
        };
        let mut n = 0usize;
        for topic in topics {
            n += 1;
            if !caller.grants.may_publish(topic) {
                return Err(Self::forbidden(
                    caller,
                    "publish to",
                    &format!("topic {topic:?}"),
                ));
            }
        }
        if let Err(wait) = caller.auth.take_tokens(&caller.principal, n as f64) {
            caller
                .auth
                .stats
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "audit",
                outcome = "rate_limited",
                principal = %caller.principal,
                retry_after_ms = wait.as_millis() as u64,
                "publish rate limited"
            );
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "principal {:?} is over its publish rate; retry after {} ms",
                    caller.principal,
                    wait.as_millis().max(1)
                ),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        Ok(())
    }

    /// Checks that every topic the patterns can match may be subscribed to.
    ///
    /// # Errors
    /// 403 `forbidden` naming the first pattern not covered.
    pub fn check_subscribe(&self, patterns: &[Pattern]) -> Result<(), ApiError> {
        let Some(caller) = &self.inner else {
            return Ok(());
        };
        for pattern in patterns {
            if !caller.grants.may_subscribe(pattern) {
                return Err(Self::forbidden(
                    caller,
                    "subscribe to",
                    &format!("topic pattern {:?}", pattern.to_source()),
                ));
            }
        }
        Ok(())
    }

    /// Checks that a request's replies may be read: an explicit
    /// `reply_to` must be a topic the principal may subscribe to, or a
    /// request could wait for (and receive) events it may not read. A
    /// request without one gets a fresh private topic (`_reply.<uuid>`),
    /// which needs no grant.
    ///
    /// # Errors
    /// 403 `forbidden` naming the `reply_to` topic.
    pub fn check_reply_to(&self, reply_to: Option<&str>) -> Result<(), ApiError> {
        let (Some(caller), Some(topic)) = (&self.inner, reply_to) else {
            return Ok(());
        };
        let allowed = Pattern::parse(topic).is_ok_and(|p| caller.grants.may_subscribe(&p));
        if allowed {
            return Ok(());
        }
        Err(Self::forbidden(
            caller,
            "subscribe to",
            &format!("reply_to topic {topic:?}"),
        ))
    }

    /// Checks that durable group `group` may be consumed (admins may use
    /// any group).
    ///
    /// # Errors
    /// 403 `forbidden` naming the group.
    pub fn check_group(&self, group: &str) -> Result<(), ApiError> {
        let Some(caller) = &self.inner else {
            return Ok(());
        };
        if caller.grants.admin || caller.grants.may_use_group(group) {
            return Ok(());
        }
        Err(Self::forbidden(caller, "use", &format!("group {group:?}")))
    }

    /// Checks an administrative action.
    ///
    /// # Errors
    /// 403 `forbidden` naming the action.
    pub fn check_admin(&self, action: &str) -> Result<(), ApiError> {
        let Some(caller) = &self.inner else {
            return Ok(());
        };
        if caller.grants.admin {
            return Ok(());
        }
        Err(Self::forbidden(caller, "perform", action))
    }

    /// Counts a connection against the principal's limit until the permit
    /// drops.
    ///
    /// # Errors
    /// 429 `too_many_connections`.
    pub fn connect(&self) -> Result<ConnectionPermit, ApiError> {
        let Some(caller) = &self.inner else {
            return Ok(ConnectionPermit { caller: None });
        };
        let Some(max) = caller.auth.limits.max_connections_per_principal else {
            return Ok(ConnectionPermit { caller: None });
        };
        let mut conns = caller.auth.connections.lock();
        let count = conns.entry(caller.principal.clone()).or_insert(0);
        if *count >= max {
            drop(conns);
            caller
                .auth
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "audit",
                outcome = "refused",
                principal = %caller.principal,
                max,
                "connection limit reached"
            );
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!(
                    "principal {:?} already holds {max} connections, the limit",
                    caller.principal
                ),
            ));
        }
        *count += 1;
        Ok(ConnectionPermit {
            caller: Some(caller.clone()),
        })
    }
}

/// Holds one connection slot of a principal.
pub struct ConnectionPermit {
    caller: Option<Arc<Caller>>,
}

impl std::fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPermit").finish_non_exhaustive()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(caller) = &self.caller {
            let mut conns = caller.auth.connections.lock();
            if let Some(count) = conns.get_mut(&caller.principal) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    conns.remove(&caller.principal);
                }
            }
        }
    }
}

/// What the middleware leaves in every request it lets through:
/// `Some` access, or `None` for a WebSocket upgrade that must authenticate
/// with its first frame.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Option<Access>);

/// Extracts the request's [`Access`]; 401 when the request has none.
impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Authenticated>() {
            Some(Authenticated(Some(access))) => Ok(access.clone()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "authentication required: no credentials",
            )),
        }
    }
}

/// A WebSocket upgrade's access: `None` when it must authenticate with its
/// first frame.
#[derive(Clone, Debug)]
pub struct MaybeAccess(pub Option<Access>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Authenticated>() {
            Some(Authenticated(access)) => Ok(MaybeAccess(access.clone())),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "authentication required: no credentials",
            )),
        }
    }
}

/// Paths served without credentials: probes, metrics, the API description,
/// and the web console's files (they hold no data; the page asks for a token).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/live" | "/ready" | "/metrics" | "/openapi.json" | "/ui"
    ) || path.starts_with("/ui/")
}

/// The bearer token of a request: `Authorization: Bearer`, else a `token`
/// (or `access_token`) query parameter.
pub fn request_token(
    parts_headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> Option<String> {
    if let Some(value) = parts_headers.get(header::AUTHORIZATION)
        && let Ok(text) = value.to_str()
    {
        let text = text.trim();
        if let Some((scheme, token)) = text.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            let token = token.trim();
            if !token.is_empty() {
                return Some(token.to_string());
            }
        }
    }
    let query = uri.query()?;
    if !query.contains("token=") {
        return None;
    }
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .ok()?
        .0;
    pairs
        .into_iter()
        .find(|(k, v)| (k == "token" || k == "access_token") && !v.is_empty())
        .map(|(_, v)| v)
}

/// The HTTP authentication and admin-authorization layer. See the module
/// docs.
pub async fn middleware(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    if !auth.enforced {
        req.extensions_mut()
            .insert(Authenticated(Some(Access::unrestricted())));
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let is_ws = req.method() == Method::GET && (path == "/" || path == "/ws");
    let certificate = req
        .extensions()
        .get::<ClientCertificate>()
        .and_then(|cert| auth.authenticate_certificate(cert));
    let access = match (request_token(req.headers(), req.uri()), certificate) {
        (Some(token), _) => match auth.authenticate(&token) {
            Ok(access) => Some(access),
            Err(e) => return unauthorized(e),
        },
        (None, Some(Ok(access))) => Some(access),
        (None, Some(Err(e))) => return unauthorized(e),
        (None, None) => match auth.anonymous_access() {
            Some(access) => Some(access),
            None if is_ws => None,
            None => return unauthorized(auth.unauthorized("no bearer token")),
        },
    };
    let admin_action = match &access {
        Some(access) => match authorize_path(access, req.method(), &path) {
            Ok(action) => action,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let principal = access.as_ref().map(|a| a.principal().to_string());
    req.extensions_mut().insert(Authenticated(access));
    let response = next.run(req).await;
    if let (Some(action), Some(principal)) = (admin_action, principal) {
        tracing::info!(
            target: "audit",
            outcome = if response.status().is_success() { "ok" } else { "failed" },
            principal = %principal,
            action,
            path = %path,
            status = response.status().as_u16(),
            "admin action"
        );
    }
    response
}

fn unauthorized(e: ApiError) -> Response {
    let mut response = e.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"event-router\""),
    );
    response
}

/// Admin and group rules of `/api/v1/stats`, `/api/v1/subscribers`,
/// `/api/v1/events/purge` and `/api/v1/subscriptions...`.
/// Returns the admin action to audit, if the request is one.
fn authorize_path(
    access: &Access,
    method: &Method,
    path: &str,
) -> Result<Option<&'static str>, ApiError> {
    if path == "/api/v1/stats" {
        access.check_admin("stats")?;
        return Ok(None);
    }
    if path == "/api/v1/subscribers" {
        access.check_admin("list subscribers")?;
        return Ok(None);
    }
    if path == "/api/v1/events/purge" {
        access.check_admin("purge history")?;
        return Ok(Some("history_purge"));
    }
    let Some(rest) = path.strip_prefix("/api/v1/subscriptions") else {
        return Ok(None);
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (_, []) => {
            access.check_admin("list subscriptions")?;
            Ok(None)
        }
        (&Method::GET, [name]) => access.check_group(name).map(|()| None),
        (&Method::PUT, [_]) => access
            .check_admin("create or update subscriptions")
            .map(|()| Some("put_subscription")),
        (&Method::DELETE, [_]) => access
            .check_admin("delete subscriptions")
            .map(|()| Some("delete_subscription")),
        (_, [name, "ack" | "nack" | "dlq"]) => access.check_group(name).map(|()| None),
        (_, [_, "dlq", "redrive"]) => access
            .check_admin("redrive dead letters")
            .map(|()| Some("dlq_redrive")),
        (_, [_, "dlq", "purge"]) => access
            .check_admin("purge dead letters")
            .map(|()| Some("dlq_purge")),
        (_, [_, "replay"]) => access.check_admin("replay events").map(|()| Some("replay")),
        _ => access.check_admin("this request").map(|()| None),
    }
}

/// A first WebSocket frame carrying credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthFrame {
    /// The token.
    pub token: String,
    /// The request id to echo.
    pub id: Option<Value>,
    /// Whether it was the seed v1 shape (`type` instead of `op`).
    pub v1: bool,
}

/// Parses `{"op":"auth","token":...}` or `{"type":"auth","token":...}`.
///
/// # Errors
/// A message saying what the frame lacks.
pub fn parse_auth_frame(text: &str) -> Result<AuthFrame, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| "the first frame must be an auth frame".to_string())?;
    let Value::Object(obj) = value else {
        return Err("the first frame must be an auth frame".into());
    };
    let v1 = match (obj.get("op"), obj.get("type")) {
        (Some(Value::String(op)), _) if op == "auth" => false,
        (None, Some(Value::String(t))) if t == "auth" => true,
        _ => {
            return Err(
                "authentication required: send {\"op\":\"auth\",\"token\":...} first".into(),
            );
        }
    };
    match obj.get("token") {
        Some(Value::String(token)) if !token.is_empty() => Ok(AuthFrame {
            token: token.clone(),
            id: obj.get("id").filter(|v| !v.is_null()).cloned(),
            v1,
        }),
        _ => Err("auth frame without a token".into()),
    }
}

/// The server configuration of `config` with its auth and TLS settings
/// loaded. Without auth configured it logs a loud warning: everything is
/// allowed then.
///
/// # Errors
/// An auth file or key file that does not load, named.
pub fn server_config(
    config: &crate::config::Config,
) -> Result<crate::server::ServerConfig, AuthConfigError> {
    let mut server = config.server_config();
    server.auth = match &config.auth {
        Some(auth) => {
            let auth = Auth::from_config(auth)?;
            tracing::info!(
                target: "audit",
                anonymous = auth.allows_anonymous(),
                "authentication enforced"
            );
            Arc::new(auth)
        }
        None => {
            tracing::warn!(
                target: "audit",
                "NO AUTHENTICATION CONFIGURED: every client may publish, subscribe and administer \
                 as an anonymous principal. Use --auth FILE (docs/security.md) on a shared network."
            );
            Arc::new(Auth::open())
        }
    };
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        server.tls = Some(crate::server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.server.tls_client_ca.clone(),
        });
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(yaml: &str) -> Arc<Auth> {
        Arc::new(Auth::from_config(&AuthConfig::from_yaml(yaml).unwrap()).unwrap())
    }

    #[test]
    fn keys_map_to_principals_and_their_grants() {
        let key = generate_key();
        let a = auth(&format!(
            "api_keys:\n  - name: planner\n    sha256: {}\nacl:\n  - principal: planner\n    publish: [\"task.*\"]\n    subscribe: [\"task.*\"]\n  - principal: \"*\"\n    subscribe: [system.alert]\n",
            sha256_hex(&key)
        ));
        let access = a.authenticate(&key).unwrap();
        assert_eq!(access.principal(), "planner");
        access.check_publish("task.x").unwrap();
        let e = access.check_publish("admin.x").unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "forbidden"));
        assert!(e.message.contains("admin.x"), "{}", e.message);
        let all = Pattern::parse("#").unwrap();
        assert!(access.check_subscribe(&[all]).is_err());
        access
            .check_subscribe(&[Pattern::parse("system.alert").unwrap()])
            .unwrap();
        assert_eq!(
            a.authenticate("nope").unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(a.anonymous_access().is_none());
        assert_eq!(a.stats.denied.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_bucket_refuses_past_the_burst_and_names_the_wait() {
        let key = generate_key();
        let a = auth(&format!(
            "api_keys:\n  - name: p\n    sha256: {}\nacl:\n  - principal: p\n    publish: [\"#\"]\nlimits:\n  publish_rate: 1\n  publish_burst: 2\n",
            sha256_hex(&key)
        ));
        let access = a.authenticate(&key).unwrap();
        access.check_publish("a").unwrap();
        access.check_publish("a").unwrap();
        let e = access.check_publish("a").unwrap_err();
        assert_eq!(e.code, "rate_limited");
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn auth_frames_in_both_dialects() {
        let f = parse_auth_frame(r#"{"op":"auth","token":"t","id":1}"#).unwrap();
        assert_eq!((f.token.as_str(), f.v1), ("t", false));
        assert!(
            parse_auth_frame(r#"{"type":"auth","token":"t"}"#)
                .unwrap()
                .v1
        );
        assert!(parse_auth_frame(r#"{"op":"publish"}"#).is_err());
        assert!(parse_auth_frame(r#"{"op":"auth"}"#).is_err());
        assert!(parse_auth_frame("[").is_err());
    }

    #[test]
    fn configs_nobody_could_use_are_refused() {
        let e = Auth::from_config(&AuthConfig::default()).unwrap_err();
        assert!(e.to_string().contains("nobody could connect"), "{e}");
    }
}
