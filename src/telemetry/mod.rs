//! Logs, traces and metrics.
//!
//! - [`init`] installs the global `tracing` subscriber: log lines on stderr
//!   (JSON when stderr is not a terminal or `--log-format json`, readable
//!   text otherwise; levels from `RUST_LOG`), and — only when the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set — a
//!   [`Pipeline`] exporting spans over OTLP (gRPC or HTTP/protobuf, chosen
//!   by `OTEL_EXPORTER_OTLP_PROTOCOL`; see [`otlp`]), installed with
//!   [`trace::install`]. It returns a [`TelemetryGuard`] that flushes spans
//!   on shutdown. `tracing` spans are for log lines only; they are not
//!   bridged to OpenTelemetry (see [`trace`] on why).
//! - [`trace`]: W3C `traceparent` propagation through event headers, and the
//!   spans of an event's life (receive, validate, route, store, deliver, ack,
//!   nack, dead-letter, push).
//! - [`metrics`]: the Prometheus metrics and the `/metrics` handler.
//! - [`http`]: the per-request span with its request id.
//! - [`InstrumentedBroker`]: the broker wrapper the router uses to measure
//!   every broker the same way.
//!
//! - [`pipeline`]: sampling, and the bounded buffer and thread that export
//!   finished spans; [`otlp`]: their encoding and sending.
//!
//! Export never blocks event flow: spans go to a bounded in-memory buffer
//! drained by a background thread, and are dropped (and counted) when the
//! collector is slow or down.

mod broker;
pub mod http;
mod log;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod trace;
mod traceparent;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use broker::InstrumentedBroker;
pub use log::JsonLines;
pub use pipeline::{Pipeline, PipelineConfig, Sampler};

use crate::config::LogFormat;

/// Service name reported when `OTEL_SERVICE_NAME` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "event-router";
/// Bound of one export call, and of the flush at shutdown.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// What [`init`] sets up.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Log line format; `Auto` is JSON unless stderr is a terminal.
    pub log_format: LogFormat,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable holds an unusable value.
    #[error("{variable}: {reason}")]
    InvalidEnv {
        /// The variable.
        variable: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The span export thread (or its runtime) could not be started.
    #[error("cannot start the span export thread")]
    Thread(#[source] std::io::Error),
}

/// Keeps the span pipeline alive; [`TelemetryGuard::shutdown`] flushes it.
/// Dropping it without `shutdown` flushes too, blocking for at most about
/// [`EXPORT_TIMEOUT`].
#[derive(Debug)]
pub struct TelemetryGuard {
    pipeline: Option<Arc<Pipeline>>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Flushes pending spans and stops the exporter, waiting at most about
    /// [`EXPORT_TIMEOUT`]. Errors are logged, never returned: a collector
    /// that is down must not fail a shutdown.
    pub async fn shutdown(mut self) {
        let Some(pipeline) = self.pipeline.take() else {
            return;
        };
        let flush = tokio::task::spawn_blocking(move || stop(&pipeline));
        match tokio::time::timeout(EXPORT_TIMEOUT + Duration::from_secs(1), flush).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing spans failed"),
            Err(_) => tracing::warn!("flushing spans timed out"),
        }
    }
}

/// Stops `pipeline`, logging how many spans it had to drop.
fn stop(pipeline: &Pipeline) {
    pipeline.shutdown();
    let dropped = pipeline.dropped();
    if dropped > 0 {
        tracing::warn!(
            dropped,
            exported = pipeline.exported(),
            "spans were dropped because the export buffer was full"
        );
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(pipeline) = self.pipeline.take() {
            // Each export call is bounded by the exporter's timeout.
            let _ = std::thread::spawn(move || stop(&pipeline)).join();
        }
    }
}

/// Which OTLP transport `OTEL_EXPORTER_OTLP_PROTOCOL` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`.
    Grpc,
    /// `http/protobuf` (the default, as the OpenTelemetry spec says).
    HttpProtobuf,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for span export: an OTLP endpoint is set,
/// `OTEL_SDK_DISABLED` is not `true` and `OTEL_TRACES_EXPORTER` is not `none`.
pub fn export_requested() -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let none = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled && !none
}

/// The protocol from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
///
/// # Errors
/// [`TelemetryError::InvalidEnv`] for anything but `grpc` and `http/protobuf`.
pub fn protocol_from_env() -> Result<OtlpProtocol, TelemetryError> {
    let (variable, value) = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        None => match env("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
            None => return Ok(OtlpProtocol::HttpProtobuf),
        },
    };
    match value.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        other => Err(TelemetryError::InvalidEnv {
            variable,
            reason: format!("unsupported protocol {other:?} (expected grpc or http/protobuf)"),
        }),
    }
}

/// The span pipeline configured from `OTEL_*`, or `None` when export is
/// not requested. Endpoint, protocol, headers and timeout are read by
/// [`otlp::OtlpConfig::from_env`], the resource (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`) by the OpenTelemetry SDK, sampler and buffer
/// (`OTEL_TRACES_SAMPLER*`, `OTEL_BSP_*`) by [`PipelineConfig::from_env`].
///
/// # Errors
/// An unusable `OTEL_EXPORTER_OTLP_*` value, or no thread for the export.
pub fn pipeline_from_env() -> Result<Option<Arc<Pipeline>>, TelemetryError> {
    if !export_requested() {
        return Ok(None);
    }
    let Some(otlp) = otlp::OtlpConfig::from_env()? else {
        return Ok(None);
    };
    let exporter = otlp::OtlpExporter::new(otlp, &otlp::resource_from_env())
        .map_err(TelemetryError::Thread)?;
    let pipeline = Pipeline::start(exporter, PipelineConfig::from_env());
    Ok(Some(Arc::new(pipeline.map_err(TelemetryError::Thread)?)))
}

/// Whether log lines are JSON for this format and stderr.
pub fn json_logs(format: LogFormat) -> bool {
    match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    }
}

/// Installs logging and (when `OTEL_*` asks for it) span export as the
/// global subscriber. When a subscriber is already installed (tests), it
/// stays and only the guard is returned.
///
/// # Errors
/// [`TelemetryError`] when `OTEL_*` is set to something unusable.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let pipeline = pipeline_from_env()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json_logs(config.log_format) {
        fmt.fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    };
    let installed = Registry::default().with(fmt).try_init().is_ok();
    if let Some(pipeline) = &pipeline
        && trace::install(pipeline.clone())
        && installed
    {
        tracing::info!(protocol = ?protocol_from_env().ok(), "exporting spans over OTLP");
    }
    Ok(TelemetryGuard { pipeline })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_off_without_an_endpoint() {
        // The test environment sets no OTEL_* variables.
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            assert!(!export_requested());
            assert!(pipeline_from_env().unwrap().is_none());
        }
    }
}
