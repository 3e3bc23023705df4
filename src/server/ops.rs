//! Operations endpoints: `GET /api/v1/stats`, `/health`, `/live` and
//! `/ready`, in the shapes of the v2 API design (DESIGN §5), with detail
//! under extra keys.
//!
//! `/health` runs three checks and answers 503 `unhealthy` when one fails;
//! `/live` only says the process serves HTTP (for liveness probes, which
//! must not restart a router because its Redis is down); `/ready` is the
//! readiness probe.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::http::ConnectionStats;
use crate::broker::{BrokerStats, SubscriptionInfo};

/// The design's counters first, then the detail they are computed from.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    /// Events accepted by publish (for a clustered broker: by every
    /// replica since the store's epoch).
    pub events_published: u64,
    /// Deliveries made: live events queued to subscribers plus durable
    /// deliveries (redeliveries count again).
    pub events_delivered: u64,
    /// Live subscriptions of this replica plus durable subscriptions.
    pub active_subscriptions: u64,
    /// Events waiting in durable subscriptions: pending plus waiting to be
    /// retried (in-flight deliveries are not counted).
    pub queue_depth: u64,
    /// Failed deliveries over attempted ones, 0..=1: durable deliveries
    /// nacked or timed out, and live events dropped by overflow, over
    /// deliveries made plus those drops; 0 when nothing was delivered.
    pub error_rate: f64,
    /// Published events per second over up to the last minute, measured
    /// between this router's stats reads (the first read measures since
    /// the server started).
    pub events_per_second: f64,
    /// Broker-wide counters.
    #[schema(value_type = Object)]
    pub broker: BrokerStats,
    /// Open connections of this replica.
    pub connections: ConnectionStats,
    /// Push sinks running in this replica, with their circuit breakers;
    /// absent when none runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub sinks: Vec<crate::sink::SinkStatus>,
}

impl StatsResponse {
    fn new(
        broker: BrokerStats,
        subscriptions: &[SubscriptionInfo],
        connections: ConnectionStats,
        events_per_second: f64,
    ) -> StatsResponse {
        let sum = |f: fn(&SubscriptionInfo) -> u64| subscriptions.iter().map(f).sum::<u64>();
        let delivered = broker.delivered_live + sum(|s| s.delivered);
        let failed = broker.dropped + sum(|s| s.retried);
        let attempted = delivered + broker.dropped;
        StatsResponse {
            events_published: broker.published,
            events_delivered: delivered,
            active_subscriptions: broker.live_subscriptions + subscriptions.len() as u64,
            queue_depth: sum(|s| s.pending + s.retrying),
            error_rate: if attempted == 0 {
                0.0
            } else {
                failed as f64 / attempted as f64
            },
            events_per_second,
            broker,
            connections,
            sinks: Vec::new(),
        }
    }
}

/// `GET /api/v1/stats`.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "operations",
    responses((status = 200, body = StatsResponse), (status = 503, body = ErrorBody))
)]
pub async fn stats(State(state): State<AppState>) -> Result<axum::Json<StatsResponse>, ApiError> {
    let broker = state.router.broker();
    let counters = broker.stats().await?;
    let subscriptions = broker.subscriptions().await?;
    let rate = state
        .publish_rate
        .record(Instant::now(), counters.published);
    let mut stats =
        StatsResponse::new(counters, &subscriptions, state.connections.snapshot(), rate);
    stats.sinks = state.router.sink_states();
    Ok(axum::Json(stats))
}

/// The design's three checks, each `ok` or what is wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthChecks {
    /// The server accepts connections (`shutting down` once it drains).
    pub transport: String,
    /// The broker's backing store answers (always `ok` for the memory
    /// broker, which has none).
    pub persistence: String,
    /// The broker's counters and queues can be read.
    pub queue: String,
}

/// `{"status":"healthy"|"unhealthy","checks":{...},"broker":"memory"|"redis"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy` when every check is `ok`, else `unhealthy`.
    pub status: &'static str,
    /// Each check's result.
    pub checks: HealthChecks,
    /// Which broker implementation serves (detail beyond the design).
    pub broker: &'static str,
}

/// `GET /health`: 200 `healthy` when every check passes, else 503
/// `unhealthy` with the failing checks named.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, body = HealthResponse),
        (status = 503, description = "A check failed", body = HealthResponse)
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let broker = state.router.broker();
    let transport = if state.shutdown.is_cancelled() {
        "shutting down".to_string()
    } else {
        "ok".to_string()
    };
    let persistence = if broker.ready().await {
        "ok".to_string()
    } else {
        "broker not reachable".to_string()
    };
    // /health is public: the cause goes to the log, not to the caller.
    let (queue, kind) = match broker.stats().await {
        Ok(stats) => ("ok".to_string(), stats.kind),
        Err(error) => {
            tracing::warn!(%error, "health: cannot read the broker's stats");
            ("broker stats unavailable".to_string(), "unknown")
        }
    };
    let checks = HealthChecks {
        transport,
        persistence,
        queue,
    };
    let healthy = [&checks.transport, &checks.persistence, &checks.queue]
        .iter()
        .all(|c| *c == "ok");
    let (status, word) = if healthy {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    let body = HealthResponse {
        status: word,
        checks,
        broker: kind,
    };
    (status, axum::Json(body)).into_response()
}

/// Liveness or readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    /// `alive` or `ready`.
    pub status: &'static str,
}

/// `GET /live`: 200 while the process serves HTTP, whatever its
/// dependencies do (the liveness probe).
#[utoipa::path(
    get,
    path = "/live",
    tag = "operations",
    responses((status = 200, body = StatusResponse))
)]
pub async fn live() -> axum::Json<StatusResponse> {
    axum::Json(StatusResponse { status: "alive" })
}

/// `GET /ready`: 200 when the broker can serve and the server is not
/// shutting down, else 503 `not_ready`.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses((status = 200, body = StatusResponse), (status = 503, body = ErrorBody))
)]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<StatusResponse>, ApiError> {
    let reason = if state.shutdown.is_cancelled() {
        "shutting down"
    } else if !state.router.broker().ready().await {
        "broker not ready"
    } else {
        return Ok(axum::Json(StatusResponse { status: "ready" }));
    };
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        reason,
    ))
}

/// How far back [`PublishRate`] looks.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Samples closer together than this are not kept (the rate still uses
/// the newest reading), which bounds the window to about 60 samples.
const RATE_SAMPLE_SPACING: Duration = Duration::from_secs(1);

/// Publish rate from readings of the published counter: the counter's
/// growth from the oldest reading within [`RATE_WINDOW`] to the newest.
/// [`super::run`] takes the first reading when the server starts.
#[derive(Debug, Default)]
pub struct PublishRate {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl PublishRate {
    /// Records a reading and returns events per second since the oldest
    /// reading kept; 0 when no time has passed or the counter went back
    /// (a reset store).
    pub fn record(&self, now: Instant, published: u64) -> f64 {
        let mut samples = self.samples.lock();
        while samples.len() > 1
            && samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
        let rate = match samples.front() {
            Some(&(t, p)) if now > t => {
                published.saturating_sub(p) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        };
        let spaced = samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= RATE_SAMPLE_SPACING);
        if spaced {
            samples.push_back((now, published));
        }
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_growth_over_the_last_minute() {
        let t0 = Instant::now();
        let rate = PublishRate::default();
        assert_eq!(rate.record(t0, 100), 0.0, "no earlier reading");
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(rate.record(at(10), 200), 10.0);
        assert_eq!(rate.record(at(30), 700), 20.0);
        // At 70 s the reading from t0 is out of the window; 10 s is the oldest.
        assert_eq!(rate.record(at(70), 1300), 1100.0 / 60.0);
        assert_eq!(rate.record(at(71), 5), 0.0, "a reset counter");
    }

    #[test]
    fn stats_carry_the_designs_fields_computed_from_the_detail() {
        let broker = BrokerStats {
            kind: "memory",
            published: 10,
            delivered_live: 6,
            dropped: 2,
            live_subscriptions: 3,
            ..BrokerStats::default()
        };
        let stats = StatsResponse::new(
            broker,
            &[],
            ConnectionStats {
                websocket: 1,
                sse: 0,
            },
            1.5,
        );
        let v = serde_json::to_value(&stats).unwrap();
        assert_eq!(v["events_published"], 10);
        assert_eq!(v["events_delivered"], 6);
        assert_eq!(v["active_subscriptions"], 3);
        assert_eq!(v["queue_depth"], 0);
        assert_eq!(v["error_rate"], 0.25);
        assert_eq!(v["events_per_second"], 1.5);
        assert_eq!(v["broker"]["published"], 10);
    }
}
