//! Tower layers that give every RPC a span and carry trace context across the network.
//!
//! - [`GrpcServerLayer`] / [`GrpcClientLayer`]: tonic servers (`Server::builder().layer(..)`)
//!   and channels (`ServiceBuilder::new().layer(..).service(channel)`).
//! - [`HttpServerLayer`]: axum (`Router::layer`, which also yields `http.route`) and hyper.
//! - [`HttpClientLayer`]: any tower HTTP client; [`RequestBuilderExt`] for reqwest.
//!
//! Spans end when the response body ends, so streaming RPCs last as long as their stream and
//! take their gRPC status from the trailers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::export;
use crate::percent::decode_lossy;
use crate::propagation::composite::http_headers;
use crate::span::{Span, Status};

mod address;
mod grpc;
mod http_layer;
mod reqwest_ext;

pub use grpc::{GrpcClient, GrpcClientLayer, GrpcServer, GrpcServerLayer};
pub use http_layer::{HttpClient, HttpClientLayer, HttpServer, HttpServerLayer};
pub use reqwest_ext::RequestBuilderExt;

/// Injects `span`'s context (and baggage) in the configured formats.
pub(crate) fn inject(span: &Span, headers: &mut HeaderMap) {
    if let Some(ctx) = span.ctx() {
        http_headers::inject(
            export::propagators(),
            &ctx.to_span_context(),
            span.baggage(),
            headers,
        );
    }
}

/// Injects the active span's context into `headers`, for clients these layers do not cover.
pub fn inject_current(headers: &mut HeaderMap) {
    crate::span::context::with_current_span(|s| inject(s, headers));
}

/// Which side of which protocol a span measures; decides how responses map to status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    GrpcServer,
    GrpcClient,
    HttpServer,
    HttpClient,
}

impl Side {
    fn is_grpc(self) -> bool {
        matches!(self, Side::GrpcServer | Side::GrpcClient)
    }
}

/// gRPC codes that mark a server span as failed (OpenTelemetry RPC conventions); for clients
/// every non-OK code does.
fn grpc_server_error(code: i32) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Applies `grpc-status` / `grpc-message` from response headers or trailers; true if found.
pub(crate) fn apply_grpc_status(span: &mut Span, side: Side, headers: &HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return false;
    };
    span.set_attribute("rpc.grpc.status_code", i64::from(code));
    let failed = match side {
        Side::GrpcServer => grpc_server_error(code),
        _ => code != 0,
    };
    if failed {
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            // Percent-encoded UTF-8.
            .map(decode_lossy)
            .unwrap_or_default();
        span.set_status(Status::Error(
            if message.is_empty() { format!("gRPC status {code}") } else { message }.into(),
        ));
    }
    true
}

fn apply_http_status(span: &mut Span, side: Side, status: http::StatusCode) {
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    let failed = match side {
        Side::HttpServer => status.is_server_error(),
        _ => status.is_client_error() || status.is_server_error(),
    };
    if failed {
        span.set_status(Status::Error(status.to_string().into()));
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, polled with the span active; its response body carries
    /// the span on.
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        span: Span,
        side: Side,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(fut: F, span: Span, side: Side) -> Self {
        ResponseFuture { fut, span, side }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<http::Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = {
            let _entered = this.span.enter();
            ready!(this.fut.poll(cx))
        };
        let mut span = std::mem::take(this.span);
        let side = *this.side;
        Poll::Ready(match out {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                if side.is_grpc() {
                    // Trailers-only responses (errors) carry the status in the headers.
                    apply_grpc_status(&mut span, side, &parts.headers);
                } else {
                    apply_http_status(&mut span, side, parts.status);
                }
                Ok(http::Response::from_parts(parts, TracedBody { inner: body, span, side }))
            }
            Err(e) => {
                span.set_status(Status::Error(e.to_string().into()));
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its span when the body ends (or is dropped).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Span,
        side: Side,
    }
}

impl<B: Body> Body for TracedBody<B>
where
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && this.side.is_grpc()
                {
                    apply_grpc_status(this.span, *this.side, trailers);
                }
            }
            Some(Err(e)) => {
                this.span.set_status(Status::Error(e.to_string().into()));
                drop(std::mem::take(this.span));
            }
            None => drop(std::mem::take(this.span)),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_spans_fail_only_on_server_side_codes() {
        assert!(grpc_server_error(14));
        assert!(!grpc_server_error(5)); // NOT_FOUND is the caller's problem
    }
}
