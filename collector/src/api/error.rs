//! The one place where internal errors become HTTP and gRPC statuses.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic_types::{ErrorDetails, StatusExt};

use super::native::NativeError;
use crate::api::pyroscope::connect::ConnectError;
use crate::ingest::IngestError;
use crate::profile::ProfileError;
use crate::promql::PromqlError;
use crate::query::QueryError;

/// Clients are told to come back after this long when the write path is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn text(status: StatusCode, msg: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg).into_response()
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = match &self {
            IngestError::Malformed(_) | IngestError::InvalidTenant(_) => StatusCode::BAD_REQUEST,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngestError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            IngestError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry = matches!(self, IngestError::Overloaded | IngestError::Storage(_));
        let resp = text(status, self.to_string());
        if retry { retry_later(resp) } else { resp }
    }
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        let msg = e.to_string();
        match e {
            IngestError::Malformed(_)
            | IngestError::InvalidTenant(_)
            | IngestError::UnsupportedMediaType(_)
            | IngestError::UnsupportedEncoding(_) => tonic::Status::invalid_argument(msg),
            IngestError::TooLarge { .. } => tonic::Status::resource_exhausted(msg),
            // OTLP: UNAVAILABLE with RetryInfo tells exporters to back off and retry.
            IngestError::Overloaded | IngestError::Storage(_) => tonic::Status::with_error_details(
                tonic::Code::Unavailable,
                msg,
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            ),
        }
    }
}

fn query_status(e: &QueryError) -> StatusCode {
    let status = match e {
        QueryError::BadRequest(_) | QueryError::TraceQl(_) => StatusCode::BAD_REQUEST,
        QueryError::NotFound => StatusCode::NOT_FOUND,
        QueryError::ResourcesExhausted(_) => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if !matches!(e, QueryError::BadRequest(_) | QueryError::TraceQl(_) | QueryError::NotFound) {
        tracing::warn!(error = %e, "query failed");
    }
    status
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        text(query_status(&self), self.to_string())
    }
}

/// Prometheus API errors: `{"status":"error","errorType":…,"error":…}` with Prometheus'
/// statuses. Unsupported PromQL is `bad_data` (400), so clients never mistake it for data.
fn promql_status(e: &PromqlError) -> (StatusCode, &'static str) {
    match e {
        PromqlError::BadData(_) | PromqlError::Unsupported(_) => {
            (StatusCode::BAD_REQUEST, "bad_data")
        }
        PromqlError::Execution(_) => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        PromqlError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for PromqlError {
    fn into_response(self) -> Response {
        let (status, kind) = promql_status(&self);
        if status.is_server_error() {
            tracing::warn!(error = %self, "PromQL request failed");
        }
        let body =
            serde_json::json!({"status": "error", "errorType": kind, "error": self.to_string()});
        (status, axum::Json(body)).into_response()
    }
}

fn retry_later(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
    resp
}

/// skein's own API answers `{"error": "..."}`, with the status of the underlying error.
impl IntoResponse for NativeError {
    fn into_response(self) -> Response {
        let status = match &self {
            NativeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NativeError::Query(e) => query_status(e),
            NativeError::Profile(e) => e.status(),
            NativeError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            NativeError::Series(e) => promql_status(e).0,
        };
        if status.is_server_error() && !matches!(self, NativeError::Query(_)) {
            tracing::warn!(error = %self, "native API request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

impl ProfileError {
    fn status(&self) -> StatusCode {
        match self {
            ProfileError::BadRequest(_)
            | ProfileError::Malformed(_)
            | ProfileError::InvalidTenant(_) => StatusCode::BAD_REQUEST,
            ProfileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProfileError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ProfileError::ResourcesExhausted(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ProfileError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProfileError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `/ingest` answers in plain text, as Pyroscope does.
impl IntoResponse for ProfileError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "profile request failed");
        }
        let retry = matches!(self, ProfileError::Overloaded | ProfileError::Storage(_));
        let resp = text(status, self.to_string());
        if retry { retry_later(resp) } else { resp }
    }
}

/// Connect error codes and the HTTP statuses the Connect protocol assigns them.
fn connect_code(e: &ConnectError) -> (&'static str, StatusCode) {
    match e {
        ConnectError::Profile(p) => match p {
            ProfileError::BadRequest(_)
            | ProfileError::Malformed(_)
            | ProfileError::InvalidTenant(_) => ("invalid_argument", StatusCode::BAD_REQUEST),
            ProfileError::TooLarge { .. } | ProfileError::ResourcesExhausted(_) => {
                ("resource_exhausted", StatusCode::TOO_MANY_REQUESTS)
            }
            ProfileError::Overloaded | ProfileError::Storage(_) => {
                ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
            }
            ProfileError::Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        },
        ConnectError::Decode(_) => ("invalid_argument", StatusCode::BAD_REQUEST),
        // Connect servers answer an unsupported codec with a bare 415.
        ConnectError::UnsupportedMediaType(_) => {
            ("invalid_argument", StatusCode::UNSUPPORTED_MEDIA_TYPE)
        }
        ConnectError::UnknownMethod(_) => ("unimplemented", StatusCode::NOT_IMPLEMENTED),
    }
}

/// Connect errors: `{"code": "...", "message": "..."}` with the code's HTTP status.
impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let (code, status) = connect_code(&self);
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            tracing::warn!(error = %self, "Pyroscope API request failed");
        }
        let body = serde_json::json!({ "code": code, "message": self.to_string() }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            resp.headers_mut().insert(
                header::HeaderName::from_static("accept-post"),
                HeaderValue::from_static("application/proto, application/json"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE { retry_later(resp) } else { resp }
    }
}

/// tonic reports codec failures with codes OTLP clients misread: an uncompressed message above
/// the decode limit is OUT_OF_RANGE (OTLP: RESOURCE_EXHAUSTED, as tonic already says for
/// inflated gzip), an undecodable protobuf or corrupt gzip is INTERNAL (OTLP: INVALID_ARGUMENT,
/// a client error not to be retried). The ingest service itself answers neither code, so the
/// code alone identifies the case.
#[derive(Clone, Copy)]
pub struct GrpcCodecStatusLayer;

impl<S> tower::Layer<S> for GrpcCodecStatusLayer {
    type Service = tower::util::MapResponse<
        S,
        fn(axum::http::Response<tonic::body::Body>) -> axum::http::Response<tonic::body::Body>,
    >;
    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, remap_out_of_range)
    }
}

fn remap_out_of_range(
    mut resp: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    let h = resp.headers_mut();
    let remapped = match h.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"11") => Some("8"),
        Some(b"13") => Some("3"),
        _ => None,
    };
    if let Some(code) = remapped {
        h.insert("grpc-status", HeaderValue::from_static(code));
    }
    resp
}
