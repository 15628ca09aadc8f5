//! How errors are answered: the one place that turns an [`ErrorCode`] into an HTTP status
//! (with `Retry-After` where the client should come back) and a gRPC status (with RetryInfo),
//! and the wire formats built on them: plain text, Prometheus JSON, skein's JSON, Connect
//! JSON and `tonic::Status`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic_types::{ErrorDetails, StatusExt};

use super::native::NativeError;
use crate::api::pyroscope::connect::ConnectError;
use crate::error::{Coded, ErrorCode};
use crate::ingest::IngestError;
use crate::profile::ProfileError;
use crate::promql::PromqlError;
use crate::query::QueryError;
use crate::tenant::TenantError;

/// Clients are told to come back after this long when the write path is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The HTTP status of a code.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unprocessable | ErrorCode::ResourceExhausted => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Overloaded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code of a code. OTLP exporters retry UNAVAILABLE (with RetryInfo) and give up on
/// the others, so the write path being full is UNAVAILABLE rather than RESOURCE_EXHAUSTED.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::UnsupportedMediaType => {
            tonic::Code::InvalidArgument
        }
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::TooLarge | ErrorCode::ResourceExhausted | ErrorCode::RateLimited => {
            tonic::Code::ResourceExhausted
        }
        ErrorCode::Unprocessable => tonic::Code::FailedPrecondition,
        ErrorCode::Overloaded | ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::Unimplemented => tonic::Code::Unimplemented,
        ErrorCode::Internal => tonic::Code::Internal,
    }
}

/// A `tonic::Status` for `code`; retryable codes carry RetryInfo.
pub fn grpc_status(code: ErrorCode, msg: String) -> tonic::Status {
    if code.retryable() {
        tonic::Status::with_error_details(
            grpc_code(code),
            msg,
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        )
    } else {
        tonic::Status::new(grpc_code(code), msg)
    }
}

/// Adds `Retry-After` when `code` is worth retrying.
fn with_retry(code: ErrorCode, mut resp: Response) -> Response {
    if code.retryable() {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
    }
    resp
}

/// The plain-text answer of an error (ingest endpoints, Tempo API, Pyroscope `/ingest`).
fn text(code: ErrorCode, msg: String) -> Response {
    let resp = (http_status(code), [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg);
    with_retry(code, resp.into_response())
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        text(self.code(), self.to_string())
    }
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        grpc_status(e.code(), e.to_string())
    }
}

/// Refusals of the tenant gate say which credentials to send (a bearer token: browsers would
/// pop up their own login dialog for `Basic`).
fn with_challenge(code: ErrorCode, mut resp: Response) -> Response {
    if code == ErrorCode::Unauthenticated {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"skein\""));
    }
    resp
}

/// The rejection of the [`crate::tenant::Tenant`] extractor, and the tenant gate's refusal on
/// plain-text surfaces (OTLP/HTTP, Tempo API, Pyroscope `/ingest`, `/metrics`).
impl IntoResponse for TenantError {
    fn into_response(self) -> Response {
        let code = self.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %self, "tenant of an ungated route requested");
        }
        with_challenge(code, text(code, self.to_string()))
    }
}

impl From<TenantError> for tonic::Status {
    fn from(e: TenantError) -> Self {
        grpc_status(e.code(), e.to_string())
    }
}

/// The tenant gate's refusals, one per wire format (see [`crate::tenant::Reject`]).
pub mod refuse {
    use super::*;

    pub fn text(e: TenantError) -> Response {
        e.into_response()
    }

    /// Prometheus API: `{"status":"error","errorType":…,"error":…}`.
    pub fn prometheus(e: TenantError) -> Response {
        let code = e.code();
        let body = serde_json::json!({
            "status": "error",
            "errorType": prometheus_error_type(code),
            "error": e.to_string(),
        });
        with_challenge(code, (http_status(code), axum::Json(body)).into_response())
    }

    /// skein's own API: `{"error": …}`.
    pub fn native(e: TenantError) -> Response {
        let code = e.code();
        let body = serde_json::json!({ "error": e.to_string() });
        with_challenge(code, (http_status(code), axum::Json(body)).into_response())
    }

    /// Connect (Pyroscope querier and push.v1): `{"code": …, "message": …}`.
    pub fn connect(e: TenantError) -> Response {
        let code = e.code();
        let (name, status) = connect_code(code);
        let body = serde_json::json!({ "code": name, "message": e.to_string() }).to_string();
        let resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        with_challenge(code, resp)
    }
}

/// Failures of the server, not of the request, are logged.
fn log_query_failure(e: &QueryError) {
    if matches!(e.code(), ErrorCode::ResourceExhausted | ErrorCode::Internal) {
        tracing::warn!(error = %e, "query failed");
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        log_query_failure(&self);
        text(self.code(), self.to_string())
    }
}

/// Prometheus' `errorType` of a code (its API answers these with the same statuses as
/// [`http_status`]). Unsupported PromQL is `bad_data` (400), so clients never mistake it for
/// data.
fn prometheus_error_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotFound => "not_found",
        ErrorCode::Unprocessable | ErrorCode::ResourceExhausted => "execution",
        ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::RateLimited => "unavailable",
        ErrorCode::Internal | ErrorCode::Unimplemented => "internal",
        ErrorCode::InvalidArgument
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::TooLarge
        | ErrorCode::Unauthenticated
        | ErrorCode::PermissionDenied => "bad_data",
    }
}

/// Prometheus API errors: `{"status":"error","errorType":…,"error":…}`.
impl IntoResponse for PromqlError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = http_status(code);
        if status.is_server_error() {
            tracing::warn!(error = %self, "PromQL request failed");
        }
        let body = serde_json::json!({
            "status": "error",
            "errorType": prometheus_error_type(code),
            "error": self.to_string(),
        });
        with_retry(code, (status, axum::Json(body)).into_response())
    }
}

/// skein's own API answers `{"error": "..."}`, with the status of the underlying error.
impl IntoResponse for NativeError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = http_status(code);
        match &self {
            NativeError::Query(e) => log_query_failure(e),
            _ if status.is_server_error() => {
                tracing::warn!(error = %self, "native API request failed")
            }
            _ => {}
        }
        let body = serde_json::json!({ "error": self.to_string() });
        with_retry(code, (status, axum::Json(body)).into_response())
    }
}

/// `/ingest` answers in plain text, as Pyroscope does.
impl IntoResponse for ProfileError {
    fn into_response(self) -> Response {
        let code = self.code();
        if http_status(code).is_server_error() {
            tracing::warn!(error = %self, "profile request failed");
        }
        text(code, self.to_string())
    }
}

/// The Connect protocol's name of a code and the HTTP status the protocol assigns it.
fn connect_code(code: ErrorCode) -> (&'static str, StatusCode) {
    match code {
        ErrorCode::InvalidArgument => ("invalid_argument", StatusCode::BAD_REQUEST),
        // Connect servers answer an unsupported codec with a bare 415.
        ErrorCode::UnsupportedMediaType => ("invalid_argument", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ErrorCode::NotFound => ("not_found", StatusCode::NOT_FOUND),
        ErrorCode::TooLarge | ErrorCode::ResourceExhausted => {
            ("resource_exhausted", StatusCode::TOO_MANY_REQUESTS)
        }
        ErrorCode::Unprocessable => ("failed_precondition", StatusCode::BAD_REQUEST),
        ErrorCode::RateLimited => ("resource_exhausted", StatusCode::TOO_MANY_REQUESTS),
        ErrorCode::Overloaded | ErrorCode::Unavailable => {
            ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
        }
        ErrorCode::Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED),
        ErrorCode::PermissionDenied => ("permission_denied", StatusCode::FORBIDDEN),
        ErrorCode::Unimplemented => ("unimplemented", StatusCode::NOT_IMPLEMENTED),
        ErrorCode::Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// Connect errors: `{"code": "...", "message": "..."}` with the code's HTTP status.
impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let code = self.code();
        let (name, status) = connect_code(code);
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            tracing::warn!(error = %self, "Pyroscope API request failed");
        }
        let body = serde_json::json!({ "code": name, "message": self.to_string() }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            resp.headers_mut().insert(
                header::HeaderName::from_static("accept-post"),
                HeaderValue::from_static("application/proto, application/json"),
            );
        }
        with_retry(code, resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::InvalidTenant;

    const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::Unprocessable,
        ErrorCode::ResourceExhausted,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::Unimplemented,
        ErrorCode::Internal,
        ErrorCode::RateLimited,
    ];

    #[test]
    fn codes_map_to_http_statuses_and_retry_after() {
        let expected = [400, 415, 404, 413, 422, 422, 429, 503, 401, 403, 501, 500, 429];
        for (code, status) in ALL.into_iter().zip(expected) {
            let resp = text(code, String::new());
            assert_eq!(resp.status().as_u16(), status, "{code:?}");
            let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap());
            let want = code.retryable();
            assert_eq!(retry, want.then_some("1"), "{code:?}");
        }
    }

    #[test]
    fn codes_map_to_grpc_codes_and_retry_info() {
        use tonic::Code;
        let expected = [
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::Unavailable,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ];
        for (code, grpc) in ALL.into_iter().zip(expected) {
            let status = grpc_status(code, "m".into());
            assert_eq!(status.code(), grpc, "{code:?}");
            assert_eq!(status.message(), "m");
            let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
            let want = code.retryable();
            assert_eq!(retry, want.then_some(RETRY_AFTER), "{code:?}");
        }
    }

    #[test]
    fn ingest_errors_keep_their_statuses() {
        let cases: [(IngestError, u16, tonic::Code); 5] = [
            (IngestError::Malformed("x".into()), 400, tonic::Code::InvalidArgument),
            (IngestError::TooLarge { limit: 1 }, 413, tonic::Code::ResourceExhausted),
            (IngestError::UnsupportedEncoding("br".into()), 415, tonic::Code::InvalidArgument),
            (
                IngestError::InvalidTenant(InvalidTenant("a/b".into())),
                400,
                tonic::Code::InvalidArgument,
            ),
            (IngestError::Overloaded, 429, tonic::Code::Unavailable),
        ];
        for (e, http, grpc) in cases {
            assert_eq!(grpc_code(e.code()), grpc);
            assert_eq!(e.into_response().status().as_u16(), http);
        }
        let status = tonic::Status::from(IngestError::Overloaded);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.get_details_retry_info().is_some());
    }

    /// A full disk refuses the write, and OTLP exporters retry it later (they give up on
    /// anything but UNAVAILABLE / 503 with a retry hint).
    #[test]
    fn a_write_refused_by_a_full_disk_is_unavailable_with_a_retry_hint() {
        use crate::traces::WriteError;
        use crate::wal::WalError;
        let full = || {
            IngestError::from(WriteError::Wal(std::sync::Arc::new(WalError::Io {
                op: "write",
                path: "/data/wal/00000000000000000001.seg".into(),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            })))
        };
        let resp = full().into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let status = tonic::Status::from(full());
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("WAL write failed"), "{}", status.message());
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert_eq!(retry, Some(RETRY_AFTER));
        let profile = ProfileError::from(WalError::Io {
            op: "write",
            path: "/data/profiles-wal/00000000000000000001.seg".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        let resp = profile.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn prometheus_and_connect_names_follow_the_code() {
        assert_eq!(prometheus_error_type(PromqlError::BadData(String::new()).code()), "bad_data");
        assert_eq!(
            prometheus_error_type(PromqlError::Execution(String::new()).code()),
            "execution"
        );
        assert_eq!(prometheus_error_type(PromqlError::Internal(String::new()).code()), "internal");
        let c = |e: ProfileError| connect_code(e.code());
        assert_eq!(
            c(ProfileError::TooLarge { limit: 1 }),
            ("resource_exhausted", StatusCode::TOO_MANY_REQUESTS)
        );
        assert_eq!(c(ProfileError::Overloaded), ("unavailable", StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(connect_code(ConnectError::UnknownMethod("X".into()).code()).0, "unimplemented");
    }
}
