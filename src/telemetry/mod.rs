//! Logs, traces and metrics.
//!
//! - [`init`] installs the global `tracing` subscriber: log lines on stderr
//!   (JSON when stderr is not a terminal or `--log-format json`, readable
//!   text otherwise; levels from `RUST_LOG`), and — only when the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set — an
//!   OpenTelemetry layer exporting spans over OTLP (gRPC or HTTP/protobuf,
//!   chosen by `OTEL_EXPORTER_OTLP_PROTOCOL`). It returns a
//!   [`TelemetryGuard`] that flushes spans on shutdown.
//! - [`trace`]: W3C `traceparent` propagation through event headers, and the
//!   spans of an event's life (receive, validate, route, store, deliver, ack,
//!   nack, dead-letter, push).
//! - [`metrics`]: the Prometheus metrics and the `/metrics` handler.
//! - [`http`]: the per-request span with its request id.
//! - [`InstrumentedBroker`]: the broker wrapper the router uses to measure
//!   every broker the same way.
//!
//! Export never blocks event flow: spans go to a bounded in-memory queue
//! drained by a background thread, and are dropped when the collector is
//! slow or down (an error is logged by the OpenTelemetry SDK).

mod broker;
pub mod http;
mod log;
pub mod metrics;
pub mod trace;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use broker::InstrumentedBroker;
pub use log::JsonLines;

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
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps the span pipeline alive; [`TelemetryGuard::shutdown`] flushes it.
/// Dropping it without `shutdown` flushes too, blocking for at most
/// [`EXPORT_TIMEOUT`].
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes pending spans and stops the exporter, waiting at most about
    /// [`EXPORT_TIMEOUT`]. Errors are logged, never returned: a collector
    /// that is down must not fail a shutdown.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(EXPORT_TIMEOUT + Duration::from_secs(1), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "flushing spans failed"),
            Ok(Err(error)) => tracing::warn!(%error, "flushing spans failed"),
            Err(_) => tracing::warn!("flushing spans timed out"),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // The SDK bounds this by the exporter timeout.
            let _ = std::thread::spawn(move || provider.shutdown()).join();
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

/// The tracer provider configured from `OTEL_*`, or `None` when export is
/// not requested. Endpoint, headers, timeout, sampler
/// (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`) and resource
/// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) are read by the
/// OpenTelemetry SDK itself. Must run inside a Tokio runtime (gRPC).
///
/// # Errors
/// A bad protocol value or an exporter that cannot be built.
pub fn tracer_provider_from_env() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if !export_requested() {
        return Ok(None);
    }
    let exporter = match protocol_from_env()? {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(TelemetryError::Exporter)?;
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
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
    let provider = tracer_provider_from_env()?;
    let otel = provider
        .as_ref()
        .map(|p| otel_layer(p).with_filter(span_filter()));
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
    let installed = Registry::default().with(otel).with(fmt).try_init().is_ok();
    if installed && provider.is_some() {
        tracing::info!(protocol = ?protocol_from_env().ok(), "exporting spans over OTLP");
    }
    Ok(TelemetryGuard { provider })
}

/// The OpenTelemetry layer over `provider`, as `serve` installs it: no
/// source-location, thread or busy/idle attributes (each costs allocations
/// on every span and says nothing about an event's path).
pub fn otel_layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(DEFAULT_SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
}

/// Which spans are exported: the router's own, at INFO and above,
/// whatever `RUST_LOG` says about log lines.
pub fn span_filter() -> Targets {
    Targets::new().with_target("event_router", tracing::Level::INFO)
}

/// Installs only the OpenTelemetry layer over `provider` as the global
/// subscriber (no log lines): for benchmarks and tests that measure or
/// inspect spans.
///
/// # Errors
/// When a global subscriber is already installed.
pub fn init_spans_only(
    provider: &SdkTracerProvider,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    Registry::default()
        .with(otel_layer(provider).with_filter(span_filter()))
        .try_init()
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
            assert!(tracer_provider_from_env().unwrap().is_none());
        }
    }
}
