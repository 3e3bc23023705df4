//! The operator's probes, served on their own port (`--probe-listen`):
//!
//! - `GET /healthz` (liveness): 200 while the process serves, with its
//!   election role; it checks no dependency, so an outage of the API
//!   server or Redis does not get the operator restarted.
//! - `GET /readyz` (readiness): 200 `ready` when this replica is the
//!   leader or a standby (it has had an answer about the lease), the
//!   Kubernetes API server answers `GET /version`, and Redis answers
//!   `PING`; else 503 `not_ready` with the failing check's reason. A
//!   standby is ready: it is healthy and waiting to take over.
//!
//! Each dependency check is bounded by [`CHECK_TIMEOUT`], below the
//! kubelet's probe timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::Client;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::SharedBroker;

/// Longest a readiness check waits for the API server or Redis.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default address of the probe port.
pub const DEFAULT_PROBE_LISTEN: &str = "0.0.0.0:8081";

/// Where this replica stands in the leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No answer about the lease yet (starting, or the API server has not
    /// answered).
    Starting,
    /// Holds the lease and runs the controllers.
    Leader,
    /// Another replica holds the lease; this one waits to take over.
    Standby,
}

/// The state the probes report, shared with [`super::run`].
#[derive(Clone)]
pub struct Probes {
    role: Arc<AtomicU8>,
    client: Client,
    broker: SharedBroker,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("role", &self.role())
            .finish_non_exhaustive()
    }
}

/// The three readiness checks, each `ok` or what is wrong.
#[derive(Debug, Serialize)]
pub struct Checks {
    /// `ok` once this replica is the leader or a standby.
    pub leader_election: String,
    /// `ok` when the API server answers `GET /version`.
    pub api_server: String,
    /// `ok` when Redis answers `PING`.
    pub redis: String,
}

/// A probe's answer.
#[derive(Debug, Serialize)]
pub struct ProbeResponse {
    /// `ok` (liveness), `ready` or `not_ready`.
    pub status: &'static str,
    /// The election role.
    pub role: Role,
    /// The readiness checks (`/readyz` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Checks>,
}

impl Probes {
    /// Probes over the operator's API client and Redis broker, role
    /// [`Role::Starting`].
    pub fn new(client: Client, broker: SharedBroker) -> Probes {
        Probes {
            role: Arc::new(AtomicU8::new(Role::Starting as u8)),
            client,
            broker,
        }
    }

    /// Records the election role.
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
    }

    /// The election role.
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            x if x == Role::Leader as u8 => Role::Leader,
            x if x == Role::Standby as u8 => Role::Standby,
            _ => Role::Starting,
        }
    }

    /// The probe routes.
    pub fn app(&self) -> axum::Router {
        axum::Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Serves the probes on `listener` until `token` is cancelled.
    ///
    /// # Errors
    /// The listener failing for good.
    pub async fn serve(
        self,
        listener: TcpListener,
        token: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.app())
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    }

    /// Runs the readiness checks (concurrently, each bounded in time).
    pub async fn checks(&self) -> Checks {
        let leader_election = match self.role() {
            Role::Leader | Role::Standby => "ok".to_string(),
            Role::Starting => "no answer about the leader lease yet".to_string(),
        };
        let api = tokio::time::timeout(CHECK_TIMEOUT, self.client.apiserver_version());
        let redis = tokio::time::timeout(CHECK_TIMEOUT, self.broker.ready());
        let (api, redis) = tokio::join!(api, redis);
        let api_server = match api {
            Ok(Ok(_)) => "ok".to_string(),
            Ok(Err(e)) => format!("unreachable: {e}"),
            Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
        };
        let redis = match redis {
            Ok(true) => "ok".to_string(),
            Ok(false) => "unreachable: no answer to PING".to_string(),
            Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
        };
        Checks {
            leader_election,
            api_server,
            redis,
        }
    }
}

async fn healthz(State(probes): State<Probes>) -> Json<ProbeResponse> {
    Json(ProbeResponse {
        status: "ok",
        role: probes.role(),
        checks: None,
    })
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, Json<ProbeResponse>) {
    let checks = probes.checks().await;
    let ready = [&checks.leader_election, &checks.api_server, &checks.redis]
        .iter()
        .all(|c| *c == "ok");
    let (code, status) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = ProbeResponse {
        status,
        role: probes.role(),
        checks: Some(checks),
    };
    (code, Json(body))
}
