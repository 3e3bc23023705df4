//! OTLP span export, encoded as spans end.
//!
//! The OpenTelemetry SDK's exporters take `SpanData`, convert each span
//! into the generated protobuf types (a dozen allocations per span) and
//! encode those. At several spans per event that conversion was a third of
//! what tracing cost the router, so a span that ends is written by
//! [`encode_span`] straight into the protobuf bytes of a `Span` (into its
//! thread's buffer in the [`super::Pipeline`]); the export thread wraps the
//! collected bytes in an `ExportTraceServiceRequest` ([`Encoder::request`],
//! one copy, into a buffer it reuses) and sends them over OTLP/HTTP
//! (protobuf) or OTLP/gRPC.
//!
//! Configured by the standard variables ([`OtlpConfig::from_env`]):
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! `..._PROTOCOL`, `..._HEADERS`, `..._TIMEOUT` and `..._COMPRESSION`
//! (only `none`), each also in its `..._TRACES_...` form, which wins.

use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, BufMut, Bytes};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, Value};
use opentelemetry_sdk::Resource;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::pipeline::{AttributeValue, Export, SpanRecord};
use super::{OtlpProtocol, TelemetryError};

/// Where and how spans are sent.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The transport.
    pub protocol: OtlpProtocol,
    /// The full URL requests go to: `.../v1/traces` for HTTP, the
    /// collector's address for gRPC.
    pub endpoint: http::Uri,
    /// Extra request headers (gRPC metadata).
    pub headers: HeaderMap,
    /// Bound of one export call.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// The configuration the `OTEL_EXPORTER_OTLP_*` variables describe;
    /// `None` when no endpoint is set.
    ///
    /// # Errors
    /// [`TelemetryError::InvalidEnv`] naming the variable whose value is
    /// unusable.
    pub fn from_env() -> Result<Option<OtlpConfig>, TelemetryError> {
        let protocol = super::protocol_from_env()?;
        let (variable, endpoint) = match signal_var("ENDPOINT") {
            Some(found) => found,
            None => return Ok(None),
        };
        let endpoint = match (variable, protocol) {
            // The generic endpoint is a base for every signal over HTTP.
            ("OTEL_EXPORTER_OTLP_ENDPOINT", OtlpProtocol::HttpProtobuf) => {
                format!("{}/v1/traces", endpoint.trim().trim_end_matches('/'))
            }
            _ => endpoint.trim().to_string(),
        };
        let endpoint = parse_endpoint(&endpoint).map_err(|reason| invalid(variable, reason))?;
        let headers = match signal_var("HEADERS") {
            Some((variable, value)) => {
                parse_headers(&value).map_err(|reason| invalid(variable, reason))?
            }
            None => HeaderMap::new(),
        };
        let timeout = match signal_var("TIMEOUT") {
            Some((variable, value)) => value
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| invalid(variable, format!("{value:?} is not milliseconds")))?,
            None => super::EXPORT_TIMEOUT,
        };
        if let Some((variable, value)) = signal_var("COMPRESSION")
            && !value.trim().eq_ignore_ascii_case("none")
        {
            return Err(invalid(
                variable,
                format!("compression {value:?} is not supported (only none)"),
            ));
        }
        Ok(Some(OtlpConfig {
            protocol,
            endpoint,
            headers,
            timeout,
        }))
    }
}

/// The traces-specific form of `OTEL_EXPORTER_OTLP_{name}`, else the
/// generic one, with the variable it came from.
fn signal_var(name: &str) -> Option<(&'static str, String)> {
    let names: [&'static str; 2] = match name {
        "ENDPOINT" => [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ],
        "HEADERS" => [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
        "TIMEOUT" => [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
        "COMPRESSION" => [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
        _ => return None,
    };
    names
        .into_iter()
        .find_map(|variable| super::env(variable).map(|value| (variable, value)))
}

fn invalid(variable: &'static str, reason: String) -> TelemetryError {
    TelemetryError::InvalidEnv { variable, reason }
}

fn parse_endpoint(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("https") => Err(format!(
            "{text:?}: https is not supported for span export; send to a collector over http (a node-local agent or sidecar)"
        )),
        _ => Err(format!("{text:?} is not an http:// URL with a host")),
    }
}

/// `key=value,key2=value2`, values percent-decoded, as the OTLP exporter
/// specification writes headers.
fn parse_headers(text: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let name = HeaderName::try_from(key.trim().to_ascii_lowercase())
            .map_err(|_| format!("{:?} is not a header name", key.trim()))?;
        let value = HeaderValue::from_bytes(&crate::sink::percent_decode(value.trim()))
            .map_err(|_| format!("the value of {name} is not a header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The resource spans report: `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME`, with [`super::DEFAULT_SERVICE_NAME`] when the
/// service name is not set.
pub fn resource_from_env() -> Resource {
    let mut resource = Resource::builder();
    if super::env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(super::DEFAULT_SERVICE_NAME);
    }
    resource.build()
}

/// Writes `ExportTraceServiceRequest`s around spans already encoded by
/// [`encode_span`].
#[derive(Debug)]
pub struct Encoder {
    /// The `resource` field of `ResourceSpans`, encoded once.
    resource: Vec<u8>,
    /// The `scope` field of `ScopeSpans`, encoded once.
    scope: Vec<u8>,
    /// The `schema_url` field of `ResourceSpans`, if any.
    schema_url: Vec<u8>,
}

/// `ExportTraceServiceRequest.resource_spans`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans.resource`, `.scope_spans`, `.schema_url`.
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
/// `Resource.attributes`.
const RESOURCE_ATTRIBUTES: u32 = 1;
/// `ScopeSpans.scope`, `.spans`.
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
/// `InstrumentationScope.name`.
const SCOPE_NAME: u32 = 1;
/// `Span` fields.
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
/// `KeyValue.key`, `.value`.
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
/// `AnyValue` oneof members.
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
/// `ArrayValue.values`.
const ARRAY_VALUES: u32 = 1;
/// `Span.flags`: the W3C sampled flag, and that the parent's remoteness is
/// known (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`) and true
/// (`SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

impl Encoder {
    /// An encoder reporting `resource`, spans under instrumentation scope
    /// `scope`.
    pub fn new(resource: &Resource, scope: &str) -> Encoder {
        let mut encoded = Vec::new();
        message(&mut encoded, RESOURCE_SPANS_RESOURCE, |r| {
            for (key, value) in resource.iter() {
                key_value(r, RESOURCE_ATTRIBUTES, key.as_str(), |v| {
                    any_value(v, value)
                });
            }
        });
        let mut scope_field = Vec::new();
        message(&mut scope_field, SCOPE_SPANS_SCOPE, |s| {
            string(s, SCOPE_NAME, scope);
        });
        let mut schema_url = Vec::new();
        if let Some(url) = resource.schema_url().filter(|u| !u.is_empty()) {
            string(&mut schema_url, RESOURCE_SPANS_SCHEMA_URL, url);
        }
        Encoder {
            resource: encoded,
            scope: scope_field,
            schema_url,
        }
    }

    /// Writes the request carrying `spans` (whole `ScopeSpans.spans` fields,
    /// as [`encode_span`] writes them, in pieces) into `out` (cleared first). The
    /// lengths are known up front, so the spans are copied once.
    pub fn request(&self, spans: &[&[u8]], out: &mut Vec<u8>) {
        let scope_spans = self.scope.len() + spans.iter().map(|s| s.len()).sum::<usize>();
        let resource_spans = self.resource.len()
            + 1
            + encoded_len_varint(scope_spans as u64)
            + scope_spans
            + self.schema_url.len();
        out.clear();
        out.reserve(1 + encoded_len_varint(resource_spans as u64) + resource_spans);
        encode_key(REQUEST_RESOURCE_SPANS, WireType::LengthDelimited, out);
        encode_varint(resource_spans as u64, out);
        out.extend_from_slice(&self.resource);
        encode_key(RESOURCE_SPANS_SCOPE_SPANS, WireType::LengthDelimited, out);
        encode_varint(scope_spans as u64, out);
        out.extend_from_slice(&self.scope);
        for piece in spans {
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(&self.schema_url);
    }
}

/// Appends `span` to `buf` as one `ScopeSpans.spans` field (tag, length,
/// `Span` message): what the event path writes as each span ends.
pub fn encode_span(buf: &mut Vec<u8>, span: &SpanRecord<'_>) {
    encode_key(SCOPE_SPANS_SPANS, WireType::LengthDelimited, buf);
    // Two bytes hold the length of nearly every span (under 16 KiB); a
    // shorter one moves the body back a byte, a longer one forward.
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    span_fields(buf, span);
    let len = buf.len() - at - 2;
    if len < 0x80 {
        buf.copy_within(at + 2.., at + 1);
        buf.pop();
        buf[at] = len as u8;
    } else if len < 0x4000 {
        buf[at] = (len as u8 & 0x7f) | 0x80;
        buf[at + 1] = (len >> 7) as u8;
    } else {
        let mut prefix = [0u8; 10];
        let mut free = &mut prefix[..];
        encode_varint(len as u64, &mut free);
        let written = 10 - free.len();
        buf.splice(at..at + 2, prefix[..written].iter().copied());
    }
}

/// Where `n` whole spans written by [`encode_span`] end in `spans` (its
/// length when it holds fewer).
pub fn spans_end(spans: &[u8], n: usize) -> usize {
    let mut rest = spans;
    for _ in 0..n {
        if rest.is_empty() {
            break;
        }
        let mut after_key = &rest[1..];
        let len = prost::encoding::decode_varint(&mut after_key).unwrap_or(u64::MAX);
        let field = (rest.len() - after_key.len())
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        rest = rest.get(field..).unwrap_or_default();
    }
    spans.len() - rest.len()
}

fn span_fields(buf: &mut Vec<u8>, span: &SpanRecord<'_>) {
    bytes(buf, SPAN_TRACE_ID, &span.trace_id.to_be_bytes());
    bytes(buf, SPAN_SPAN_ID, &span.span_id.to_be_bytes());
    if span.parent_id != 0 {
        bytes(buf, SPAN_PARENT_SPAN_ID, &span.parent_id.to_be_bytes());
    }
    string(buf, SPAN_NAME, span.name);
    encode_key(SPAN_KIND, WireType::Varint, buf);
    encode_varint(kind(&span.kind), buf);
    fixed64(buf, SPAN_START, span.start);
    fixed64(buf, SPAN_END, span.end);
    for (key, value) in span.attributes.iter() {
        key_value(buf, SPAN_ATTRIBUTES, key, |v| match value {
            AttributeValue::Int(i) => scalar_int(v, *i),
            AttributeValue::Text(text) => bytes(v, ANY_STRING, text.as_bytes()),
        });
    }
    // Status unset: an empty message, as the SDK sends.
    message(buf, SPAN_STATUS, |_| {});
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if span.parent_remote {
        flags |= FLAG_IS_REMOTE;
    }
    encode_key(SPAN_FLAGS, WireType::ThirtyTwoBit, buf);
    buf.put_u32_le(flags);
}

/// `Span.SpanKind`'s number.
fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Field `field` as a `KeyValue` whose `AnyValue` fields `value` writes.
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
    message(buf, field, |kv| {
        string(kv, KEY_VALUE_KEY, key);
        message(kv, KEY_VALUE_VALUE, value);
    });
}

/// The fields of an `AnyValue` holding `value`.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => scalar_bool(buf, *b),
        Value::I64(i) => scalar_int(buf, *i),
        Value::F64(f) => scalar_double(buf, *f),
        Value::String(s) => string(buf, ANY_STRING, s.as_str()),
        Value::Array(array) => message(buf, ANY_ARRAY, |a| match array {
            Array::Bool(items) => each(a, items, |v, b| scalar_bool(v, *b)),
            Array::I64(items) => each(a, items, |v, i| scalar_int(v, *i)),
            Array::F64(items) => each(a, items, |v, f| scalar_double(v, *f)),
            Array::String(items) => each(a, items, |v, s| string(v, ANY_STRING, s.as_str())),
            other => string(a, ANY_STRING, &other.to_string()),
        }),
        other => string(buf, ANY_STRING, &other.as_str()),
    }
}

fn each<T>(buf: &mut Vec<u8>, items: &[T], mut one: impl FnMut(&mut Vec<u8>, &T)) {
    for item in items {
        message(buf, ARRAY_VALUES, |v| one(v, item));
    }
}

fn scalar_bool(buf: &mut Vec<u8>, b: bool) {
    encode_key(ANY_BOOL, WireType::Varint, buf);
    encode_varint(u64::from(b), buf);
}

fn scalar_int(buf: &mut Vec<u8>, i: i64) {
    encode_key(ANY_INT, WireType::Varint, buf);
    // int64 is the two's complement as a varint.
    encode_varint(i as u64, buf);
}

fn scalar_double(buf: &mut Vec<u8>, f: f64) {
    encode_key(ANY_DOUBLE, WireType::SixtyFourBit, buf);
    buf.put_f64_le(f);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    encode_key(field, WireType::SixtyFourBit, buf);
    buf.put_u64_le(value);
}

fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    encode_key(field, WireType::LengthDelimited, buf);
    encode_varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

fn string(buf: &mut Vec<u8>, field: u32, text: &str) {
    bytes(buf, field, text.as_bytes());
}

/// Writes field `field` as a message whose fields `body` writes: its
/// length is written after it, in one byte when it fits (nearly always),
/// moving the body along otherwise.
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(field, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        let mut prefix = [0u8; 10];
        let mut free = &mut prefix[..];
        encode_varint(len as u64, &mut free);
        let written = 10 - free.len();
        buf.splice(at..=at, prefix[..written].iter().copied());
    }
}

/// gRPC method of OTLP trace export.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How requests travel.
#[derive(Debug)]
enum Transport {
    Http(Client<HttpConnector, Body>),
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
}

/// Sends span records to an OTLP collector, from the export thread (it
/// owns a single-threaded runtime for its requests).
#[derive(Debug)]
pub struct OtlpExporter {
    config: OtlpConfig,
    encoder: Encoder,
    transport: Transport,
    runtime: tokio::runtime::Runtime,
    /// The last request's bytes: once the transport has let go of them,
    /// the next request is written into the same allocation (a fresh one of
    /// this size cost a page fault per 4 KiB on every export).
    last: Bytes,
}

impl OtlpExporter {
    /// An exporter of spans reporting `resource` to `config`'s endpoint;
    /// connects on the first export.
    ///
    /// # Errors
    /// When its runtime cannot be built.
    pub fn new(config: OtlpConfig, resource: &Resource) -> std::io::Result<OtlpExporter> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let transport = match config.protocol {
            OtlpProtocol::HttpProtobuf => {
                let mut tcp = HttpConnector::new();
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(Some(config.timeout));
                Transport::Http(Client::builder(TokioExecutor::new()).build(tcp))
            }
            OtlpProtocol::Grpc => {
                let _entered = runtime.enter();
                let channel = tonic::transport::Endpoint::from(config.endpoint.clone())
                    .connect_timeout(config.timeout)
                    .connect_lazy();
                Transport::Grpc(tonic::client::Grpc::new(channel))
            }
        };
        Ok(OtlpExporter {
            encoder: Encoder::new(resource, super::DEFAULT_SERVICE_NAME),
            transport,
            runtime,
            config,
            last: Bytes::new(),
        })
    }
}

impl Transport {
    async fn send(&mut self, config: &OtlpConfig, body: Bytes) -> Result<(), String> {
        match self {
            Transport::Http(client) => {
                let mut request = http::Request::post(config.endpoint.clone())
                    .body(Body::from(body))
                    .map_err(|e| e.to_string())?;
                let headers = request.headers_mut();
                headers.clone_from(&config.headers);
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| crate::sink::root_cause(&e))?;
                let status = response.status();
                // The answer is read so that the connection is reused.
                let _ = axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024).await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {status}"))
                }
            }
            Transport::Grpc(grpc) => {
                grpc.ready()
                    .await
                    .map_err(|e| crate::sink::root_cause(&e))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() =
                    tonic::metadata::MetadataMap::from_headers(config.headers.clone());
                request.set_timeout(config.timeout);
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT);
                grpc.unary(request, path, RawCodec)
                    .await
                    .map(drop)
                    .map_err(|status| format!("{}: {}", status.code(), status.message()))
            }
        }
    }
}

impl Export for OtlpExporter {
    fn export(&mut self, spans: &[&[u8]], _count: usize) -> Result<(), String> {
        let last = std::mem::take(&mut self.last);
        let capacity = last.len();
        let mut out = match last.try_into_mut() {
            Ok(unused) => Vec::from(unused),
            Err(_) => Vec::with_capacity(capacity),
        };
        self.encoder.request(spans, &mut out);
        let body = Bytes::from(out);
        self.last = body.clone();
        let config = &self.config;
        let send = self.transport.send(config, body);
        // The runtime's own `block_on`: only it drives a current-thread
        // runtime's connections and timers (and the timeout is made inside
        // it: this thread has no runtime otherwise).
        match self
            .runtime
            .block_on(async { tokio::time::timeout(config.timeout, send).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(format!("OTLP export to {}: {reason}", config.endpoint)),
            Err(_) => Err(format!(
                "OTLP export to {}: no answer within {:?}",
                config.endpoint, config.timeout
            )),
        }
    }
}

/// A gRPC codec sending already encoded bytes and ignoring the answer's
/// (an `ExportTraceServiceResponse` whose partial-success counts nobody
/// acts on).
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::SystemTime;

    use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;
    use crate::telemetry::pipeline::{Attributes, INLINE_TEXT_FOR_TESTS};

    /// The attributes as the SDK holds them.
    fn sdk_attributes(attributes: &Attributes) -> Vec<KeyValue> {
        attributes
            .iter()
            .map(|(key, value)| match value {
                AttributeValue::Int(i) => KeyValue::new(key, *i),
                AttributeValue::Text(t) => KeyValue::new(key, t.as_str().to_string()),
            })
            .collect()
    }

    /// The span as the OpenTelemetry SDK's exporter would send it.
    fn sdk_span(record: &SpanRecord) -> Span {
        Span::from(SpanData {
            span_context: SpanContext::new(
                TraceId::from(record.trace_id),
                SpanId::from(record.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(record.parent_id),
            parent_span_is_remote: record.parent_remote,
            span_kind: record.kind.clone(),
            name: Cow::Borrowed(record.name),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(record.start),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(record.end),
            attributes: sdk_attributes(record.attributes),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("event-router").build(),
        })
    }

    /// The spans, as the pipeline's buffers hold them.
    fn encoded(records: &[SpanRecord<'_>]) -> Vec<u8> {
        let mut spans = Vec::new();
        for record in records {
            encode_span(&mut spans, record);
        }
        spans
    }

    fn record(
        n: u64,
        parent_id: u64,
        parent_remote: bool,
        attributes: &Attributes,
    ) -> SpanRecord<'_> {
        let start = 1_700_000_000_123_456_789 + n;
        SpanRecord {
            name: ["validate", "receive", "deliver", "ack", "dead_letter"][n as usize % 5],
            kind: [
                SpanKind::Server,
                SpanKind::Producer,
                SpanKind::Consumer,
                SpanKind::Internal,
                SpanKind::Client,
            ][n as usize % 5]
                .clone(),
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736 ^ u128::from(n),
            span_id: 0x00f0_67aa_0ba9_02b7 ^ n,
            parent_id,
            parent_remote,
            start,
            end: start + 250_000,
            attributes,
        }
    }

    #[test]
    fn requests_decode_to_what_the_sdk_exporter_sends() {
        let long = "x".repeat(300);
        let mut topic = Attributes::default();
        topic.text("topic", "task.created");
        let mut mixed = Attributes::default();
        mixed.text("subscription", &long);
        mixed.int("attempt", 3);
        mixed.int("negative", -5);
        mixed.text("empty", "");
        let mut inline_edge = Attributes::default();
        inline_edge.text("at_limit", &"y".repeat(INLINE_TEXT_FOR_TESTS));
        inline_edge.text("past_limit", &"z".repeat(INLINE_TEXT_FOR_TESTS + 1));
        inline_edge.text("unicode", "tâche.créée");
        // Past two length bytes: a span of over 16 KiB.
        let mut huge = Attributes::default();
        huge.text("huge", &"h".repeat(20_000));
        let none = Attributes::default();
        let records = vec![
            record(0, 0, false, &none),
            record(1, 7, true, &topic),
            record(2, u64::MAX, false, &mixed),
            record(3, 1, false, &inline_edge),
            record(4, 2, false, &huge),
        ];
        // Enough spans that every enclosing message needs a long length.
        let records: Vec<SpanRecord> = records
            .into_iter()
            .chain((5..200).map(|n| record(n, n * 3, n % 2 == 0, &none)))
            .collect();
        let resource_attributes = vec![
            KeyValue::new("deployment.environment", "test"),
            KeyValue::new("host.cpus", 2_i64),
            KeyValue::new("ok", true),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("ids", Value::Array(Array::I64(vec![1, -2, 3]))),
            KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("weights", Value::Array(Array::F64(vec![0.5]))),
            KeyValue::new(
                "names",
                Value::Array(Array::String(vec!["a".into(), long.clone().into()])),
            ),
        ];
        let resource = Resource::builder_empty()
            .with_service_name("svc-under-test")
            .with_schema_url(
                resource_attributes.clone(),
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build();
        let mut out = Vec::new();
        let spans = encoded(&records);
        // In two pieces, as the pipeline hands over spans of two threads.
        let half = spans_end(&spans, 100);
        Encoder::new(&resource, "event-router")
            .request(&[&spans[..half], &spans[half..]], &mut out);
        let request = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");

        assert_eq!(request.resource_spans.len(), 1);
        let resource_spans = &request.resource_spans[0];
        assert_eq!(
            resource_spans.schema_url,
            "https://opentelemetry.io/schemas/1.30.0"
        );
        let mut attributes = resource_spans
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .clone();
        attributes.sort_by(|a, b| a.key.cmp(&b.key));
        let mut expected = opentelemetry_proto::transform::common::tonic::Attributes::from(
            resource_attributes
                .into_iter()
                .chain([KeyValue::new("service.name", "svc-under-test")]),
        )
        .0;
        expected.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(attributes, expected);
        assert_eq!(resource_spans.scope_spans.len(), 1);
        let scope_spans = &resource_spans.scope_spans[0];
        assert_eq!(
            scope_spans.scope.as_ref().expect("scope").name,
            "event-router"
        );
        let expected: Vec<Span> = records.iter().map(sdk_span).collect();
        assert_eq!(scope_spans.spans.len(), expected.len());
        for (ours, sdk) in scope_spans.spans.iter().zip(&expected) {
            assert_eq!(ours, sdk);
        }
        // A root has no parent id; a remote parent is flagged.
        assert!(scope_spans.spans[0].parent_span_id.is_empty());
        assert_eq!(scope_spans.spans[1].flags, 0x301);
        assert_eq!(scope_spans.spans[2].flags, 0x101);
    }

    #[test]
    fn spans_end_finds_whole_spans() {
        let none = Attributes::default();
        let mut long = Attributes::default();
        long.text("long", &"l".repeat(200));
        let one = encoded(&[record(1, 0, false, &none)]);
        let two = encoded(&[record(2, 0, false, &long)]);
        let both = [one.clone(), two.clone()].concat();
        assert_eq!(spans_end(&both, 0), 0);
        assert_eq!(spans_end(&both, 1), one.len());
        assert_eq!(spans_end(&both, 2), both.len());
        assert_eq!(spans_end(&both, 5), both.len());
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let mut out = Vec::new();
        let encoder = Encoder::new(&Resource::builder_empty().build(), "event-router");
        encoder.request(&[], &mut out);
        let mut empty_piece = Vec::new();
        encoder.request(&[&[]], &mut empty_piece);
        assert_eq!(out, empty_piece);
        let request = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        assert!(request.resource_spans[0].scope_spans[0].spans.is_empty());
    }

    #[test]
    fn headers_are_parsed_and_percent_decoded_and_bad_ones_named() {
        let headers = parse_headers("api-key=abc%20def, X-Tenant = one ,").unwrap();
        assert_eq!(headers["api-key"], "abc def");
        assert_eq!(headers["x-tenant"], "one");
        assert_eq!(
            parse_headers("novalue").unwrap_err(),
            "\"novalue\" is not key=value"
        );
        assert!(parse_headers("bad key=1").unwrap_err().contains("bad key"));
    }

    #[test]
    fn endpoints_must_be_http_urls_with_a_host() {
        assert_eq!(
            parse_endpoint("http://collector:4318/v1/traces")
                .unwrap()
                .to_string(),
            "http://collector:4318/v1/traces"
        );
        assert!(
            parse_endpoint("https://collector:4318")
                .unwrap_err()
                .contains("https")
        );
        assert!(parse_endpoint("collector:4318").is_err());
        assert!(parse_endpoint("not a url").is_err());
    }

    /// A collector stand-in answering `status` and keeping each request.
    async fn collector(
        status: http::StatusCode,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let _ = tx.send((headers, body));
                async move { status }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, rx)
    }

    /// Runs `f` on a thread of its own with no runtime, as the export
    /// thread is.
    async fn on_export_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        tokio::task::spawn_blocking(move || std::thread::spawn(f).join().unwrap())
            .await
            .unwrap()
    }

    fn http_config(addr: std::net::SocketAddr) -> OtlpConfig {
        OtlpConfig {
            protocol: OtlpProtocol::HttpProtobuf,
            endpoint: format!("http://{addr}/v1/traces").parse().unwrap(),
            headers: parse_headers("authorization=Bearer%20t0ken").unwrap(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn http_export_posts_protobuf_with_the_configured_headers() {
        let (addr, mut requests) = collector(http::StatusCode::OK).await;
        let none = Attributes::default();
        let first = encoded(&[record(1, 0, false, &none), record(2, 9, true, &none)]);
        // Fewer spans, written over the first request's bytes.
        let second = encoded(&[record(3, 4, false, &none)]);
        let sent = on_export_thread(move || {
            let resource = Resource::builder_empty().build();
            let mut exporter = OtlpExporter::new(http_config(addr), &resource).unwrap();
            (
                exporter.export(&[&first], 2),
                exporter.export(&[&second], 1),
            )
        })
        .await;
        assert_eq!(sent, (Ok(()), Ok(())));
        for expected in [&["receive", "deliver"][..], &["ack"]] {
            let (headers, body) = requests.recv().await.unwrap();
            assert_eq!(headers[CONTENT_TYPE], "application/x-protobuf");
            assert_eq!(headers["authorization"], "Bearer t0ken");
            let request = ExportTraceServiceRequest::decode(body).unwrap();
            let names: Vec<&str> = request.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, expected);
        }
    }

    #[tokio::test]
    async fn a_refusing_or_absent_collector_is_an_error_naming_it() {
        let (addr, _requests) = collector(http::StatusCode::SERVICE_UNAVAILABLE).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let (refused, unreachable) = on_export_thread(move || {
            let resource = Resource::builder_empty().build();
            let spans = encoded(&[record(1, 0, false, &Attributes::default())]);
            let mut refusing = OtlpExporter::new(http_config(addr), &resource).unwrap();
            let mut absent = OtlpExporter::new(http_config(dead), &resource).unwrap();
            (refusing.export(&[&spans], 1), absent.export(&[&spans], 1))
        })
        .await;
        let refused = refused.unwrap_err();
        assert!(refused.contains(&addr.to_string()), "{refused}");
        assert!(refused.contains("503"), "{refused}");
        let unreachable = unreachable.unwrap_err();
        assert!(unreachable.contains(&dead.to_string()), "{unreachable}");
    }
}
