//! OTLP trace ingest: decoding, per-span validation and the hand-off to the span write path.
//!
//! gRPC and HTTP front ends (`grpc`, `http`) hand the raw (inflated) body to
//! [`Ingestor::export_body`], which first counts it without decoding (`scan`, refusing
//! amplification bombs), admits it (`admission`: tenant cap, per-tenant rate), decodes it and
//! calls [`Ingestor::export`], which drops spans with invalid ids (reported through
//! `partial_success`), refuses whole (400 / INVALID_ARGUMENT, with the reason) a request the
//! head would not hold, then waits until [`Traces`] has made the rest durable in the WAL and
//! visible in the head. Design notes: `ingest/DESIGN.md`.

pub mod admission;
pub mod grpc;
pub mod http;
pub mod scan;

use std::io::Read;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use admission::{Admission, IngestLimits, Refusal};
use scan::ScanError;

use crate::error::{Coded, ErrorCode};
use crate::telemetry::Telemetry;
use crate::tenant::InvalidTenant;
use crate::traces::{Traces, WriteError};

/// Kept for callers outside the crate; the tenant module owns it.
pub use crate::tenant::DEFAULT_TENANT;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request body exceeds the limit of {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}: use gzip or none")]
    UnsupportedEncoding(String),
    #[error(transparent)]
    InvalidTenant(#[from] InvalidTenant),
    #[error("write path is full, retry later")]
    Overloaded,
    /// The spans cannot be stored as sent (the head refuses them); do not retry.
    #[error("cannot store the request: {0}")]
    Refused(String),
    #[error("storage failure: {0}")]
    Storage(#[source] WriteError),
    /// Refused by the pre-decode scan (malformed wire, too many spans, too many bytes).
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// Refused by admission (tenant cap, rate).
    #[error(transparent)]
    Limited(#[from] Refusal),
}

impl From<WriteError> for IngestError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Overloaded => IngestError::Overloaded,
            WriteError::Head(h) if h.code() == ErrorCode::InvalidArgument => {
                IngestError::Refused(h.to_string())
            }
            other => IngestError::Storage(other),
        }
    }
}

impl Coded for IngestError {
    fn code(&self) -> ErrorCode {
        match self {
            IngestError::Malformed(_) | IngestError::Refused(_) => ErrorCode::InvalidArgument,
            IngestError::InvalidTenant(e) => e.code(),
            IngestError::TooLarge { .. } => ErrorCode::TooLarge,
            IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
                ErrorCode::UnsupportedMediaType
            }
            IngestError::Overloaded => ErrorCode::Overloaded,
            IngestError::Storage(_) => ErrorCode::Unavailable,
            IngestError::Scan(e) => e.code(),
            IngestError::Limited(e) => e.code(),
        }
    }
}

/// Inflates gzip without ever holding more than `limit` bytes: a bomb stops at the limit.
pub fn gunzip_bounded(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut dec = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| IngestError::Malformed(format!("gzip: {e}")))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(out)
}

pub fn decode_protobuf(body: &[u8]) -> Result<ExportTraceServiceRequest, IngestError> {
    ExportTraceServiceRequest::decode(body)
        .map_err(|e| IngestError::Malformed(format!("protobuf: {e}")))
}

pub fn decode_json(body: &[u8]) -> Result<ExportTraceServiceRequest, IngestError> {
    serde_json::from_slice(body).map_err(|e| IngestError::Malformed(format!("json: {e}")))
}

/// Outcome of validating one request.
#[derive(Debug, Default, PartialEq)]
pub struct Validation {
    pub accepted: usize,
    pub rejected: usize,
    pub message: Option<String>,
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|b| *b != 0)
}

/// Removes spans whose trace or span id is missing, of the wrong length or all zero, and
/// drops scopes and resources left empty. Parent ids that are not 8 bytes are treated as
/// absent (root), as OTLP allows empty parents.
pub fn validate(req: &mut ExportTraceServiceRequest) -> Validation {
    let mut v = Validation::default();
    let mut first_error: Option<String> = None;
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| {
                let ok = valid_id(&s.trace_id, 16) && valid_id(&s.span_id, 8);
                if ok {
                    v.accepted += 1;
                } else {
                    v.rejected += 1;
                    if first_error.is_none() {
                        first_error = Some(format!(
                            "span {:?}: trace id must be 16 bytes and span id 8 bytes, not all zero (got {} and {} bytes)",
                            s.name,
                            s.trace_id.len(),
                            s.span_id.len()
                        ));
                    }
                }
                ok
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    req.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
    if v.rejected > 0 {
        v.message = Some(format!(
            "{} span(s) rejected; first: {}",
            v.rejected,
            first_error.unwrap_or_default()
        ));
    }
    v
}

/// Where an export came from, for metrics.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http_protobuf",
            Protocol::HttpJson => "http_json",
        }
    }
}

/// How an export body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

#[derive(Clone)]
pub struct Ingestor {
    traces: Arc<Traces>,
    metrics: Arc<Telemetry>,
    admission: Arc<Admission>,
    pub max_body_bytes: usize,
}

impl Ingestor {
    pub fn new(traces: Arc<Traces>, metrics: Arc<Telemetry>, limits: IngestLimits) -> Self {
        let max_body_bytes = limits.max_body_bytes;
        Ingestor { traces, metrics, admission: Arc::new(Admission::new(limits)), max_body_bytes }
    }

    /// Scans, admits, decodes and stores one export body (already inflated). Refusals happen
    /// before anything is decoded or written, and are counted by reason.
    pub async fn export_body(
        &self,
        tenant: String,
        body: bytes::Bytes,
        encoding: Encoding,
        protocol: Protocol,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let limits = self.admission.limits().scan();
        let census = match encoding {
            Encoding::Protobuf => scan::scan_protobuf(&body, limits),
            Encoding::Json => scan::scan_json(&body, limits),
        };
        let census = match census {
            Ok(c) => c,
            Err(e) => {
                match &e {
                    ScanError::Malformed(_) => self.reject_malformed(&tenant),
                    ScanError::TooManySpans { .. } => self.limited("spans_per_request"),
                    ScanError::TooManyBytes { .. } => self.limited("decoded_bytes"),
                }
                return Err(e.into());
            }
        };
        if let Err(refusal) = self.admission.admit(&tenant, census.spans, std::time::Instant::now())
        {
            self.limited(refusal.reason());
            return Err(refusal.into());
        }
        let decoded = match encoding {
            Encoding::Protobuf => decode_protobuf(&body),
            Encoding::Json => decode_json(&body),
        };
        let req = match decoded {
            Ok(r) => r,
            Err(e) => {
                self.reject_malformed(&tenant);
                return Err(e);
            }
        };
        let raw = (encoding == Encoding::Protobuf).then_some(body);
        self.export(tenant, req, raw, protocol).await
    }

    fn limited(&self, reason: &'static str) {
        self.metrics.exports_limited.with_label_values(&[reason]).inc();
    }

    /// Validates and durably stores `req`. `raw` is the original protobuf body when the caller
    /// has it; it is written to the WAL as-is if no span had to be removed (no re-encoding).
    pub async fn export(
        &self,
        tenant: String,
        mut req: ExportTraceServiceRequest,
        raw: Option<bytes::Bytes>,
        protocol: Protocol,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let v = validate(&mut req);
        if v.rejected > 0 {
            self.metrics
                .spans_rejected
                .with_label_values(&[tenant.as_str(), "invalid_id"])
                .inc_by(v.rejected as u64);
        }
        if v.accepted > 0 {
            // Refused here, before the WAL: a request the head cannot apply never becomes a
            // record that replay would have to skip.
            if let Err(e) = self.traces.head().check(&req) {
                self.metrics
                    .spans_rejected
                    .with_label_values(&[tenant.as_str(), "too_large"])
                    .inc_by(v.accepted as u64);
                return Err(IngestError::Refused(e.to_string()));
            }
            let payload = match raw {
                Some(raw) if v.rejected == 0 => raw,
                _ => bytes::Bytes::from(req.encode_to_vec()),
            };
            let written = self.traces.write(tenant.clone(), req, payload).await;
            // Whatever the outcome, values cut by this or any earlier apply (replay too) are
            // counted once.
            let truncated = self.traces.head().take_attributes_truncated();
            if truncated > 0 {
                self.metrics.attributes_truncated.inc_by(truncated);
            }
            match written {
                Ok(()) => {}
                Err(WriteError::Overloaded) => {
                    self.metrics.requests_refused.with_label_values(&[protocol.label()]).inc();
                    return Err(IngestError::Overloaded);
                }
                Err(e) => return Err(e.into()),
            }
            self.metrics
                .spans_received
                .with_label_values(&[tenant.as_str(), protocol.label()])
                .inc_by(v.accepted as u64);
        }
        let partial_success = (v.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: v.rejected as i64,
            error_message: v.message.unwrap_or_default(),
        });
        Ok(ExportTraceServiceResponse { partial_success })
    }

    pub fn reject_malformed(&self, tenant: &str) {
        self.metrics.spans_rejected.with_label_values(&[tenant, "malformed"]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn span(trace: Vec<u8>, id: Vec<u8>) -> Span {
        Span { trace_id: trace, span_id: id, name: "s".into(), ..Default::default() }
    }

    #[test]
    fn invalid_ids_are_removed_individually_and_counted() {
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![
                    ScopeSpans {
                        spans: vec![
                            span(vec![1; 16], vec![2; 8]),
                            span(vec![0; 16], vec![2; 8]),
                            span(vec![1; 15], vec![2; 8]),
                            span(vec![1; 16], vec![0; 8]),
                        ],
                        ..Default::default()
                    },
                    ScopeSpans { spans: vec![span(vec![], vec![])], ..Default::default() },
                ],
                ..Default::default()
            }],
        };
        let v = validate(&mut req);
        assert_eq!((v.accepted, v.rejected), (1, 4));
        assert!(v.message.unwrap().contains("4 span(s) rejected"));
        assert_eq!(req.resource_spans[0].scope_spans.len(), 1, "empty scope dropped");
    }

    #[test]
    fn a_head_refusal_is_a_client_error_and_other_head_failures_are_retryable() {
        use crate::head::HeadError;
        let refused = WriteError::Head(Arc::new(HeadError::Refused("too big".into())));
        let e = IngestError::from(refused);
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.to_string().contains("too big"), "{e}");
        let broken = WriteError::Head(Arc::new(HeadError::Arrow(
            arrow::error::ArrowError::ComputeError("bug".into()),
        )));
        assert_eq!(IngestError::from(broken).code(), ErrorCode::Unavailable);
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        match gunzip_bounded(&bomb, 1 << 20) {
            Err(IngestError::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(gunzip_bounded(&bomb, 8 << 20).unwrap().len(), 8 << 20);
    }

    #[test]
    fn json_with_hex_ids_decodes() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"x","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        let req = decode_json(body).unwrap();
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.kind, 2);
        assert_eq!(s.end_time_unix_nano, 2);
        assert!(decode_json(b"{not json").is_err());
    }
}
