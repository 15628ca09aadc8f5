//! What kind of failure an error is, independent of how it is reported.
//!
//! Every module error says once which [`ErrorCode`] it is ([`Coded`]); the API layer turns the
//! code into an HTTP status, a gRPC code, a Prometheus `errorType` or a Connect code. This
//! module is the bottom of the crate: it imports nothing of the collector.

/// The kinds of failure clients can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or names something invalid; do not retry.
    InvalidArgument,
    /// The request body is in an encoding or content type the endpoint does not take.
    UnsupportedMediaType,
    /// The requested thing does not exist.
    NotFound,
    /// The request body is larger than allowed.
    TooLarge,
    /// The request is well-formed but cannot be evaluated on the data (Prometheus `execution`).
    Unprocessable,
    /// The request needs more than it is allowed (memory of a query); retrying will not help.
    ResourceExhausted,
    /// The server is busy (write path full); retry after a while.
    Overloaded,
    /// A dependency (disk, object store) failed; retry after a while.
    Unavailable,
    /// The client sends faster than its rate allows; retry after a while (OTLP/gRPC:
    /// RESOURCE_EXHAUSTED with RetryInfo, which exporters retry).
    RateLimited,
    /// No or invalid credentials.
    Unauthenticated,
    /// Credentials that do not allow this request.
    PermissionDenied,
    /// The endpoint or method does not exist.
    Unimplemented,
    /// A bug or an unexpected state of the server.
    Internal,
}

impl ErrorCode {
    /// Whether a client should come back later with the same request.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::RateLimited)
    }
}

/// An error that knows its [`ErrorCode`].
pub trait Coded: std::error::Error {
    fn code(&self) -> ErrorCode;
}
