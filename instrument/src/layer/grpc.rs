//! tonic server and client layers (they work on the HTTP/2 requests under tonic).

use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::address::with_server_address;
use super::{ResponseFuture, Side};
use crate::export;
use crate::propagation::composite::http_headers;
use crate::span::{Span, SpanBuilder, SpanKind};

/// Splits `/package.Service/Method`.
fn rpc_parts(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    p.rsplit_once('/').unwrap_or((p, ""))
}

fn rpc_span(path: &str, kind: SpanKind) -> SpanBuilder {
    let (service, method) = rpc_parts(path);
    // `package.Service/Method` is the path without its leading slash: one copy, no formatting.
    let name = if method.is_empty() { service } else { path.trim_start_matches('/') };
    let name = name.to_string();
    // rpc.* (3), server.address/port (2), rpc.grpc.status_code, pyroscope.profile.id, spare.
    Span::builder_with_capacity(name, 8)
        .kind(kind)
        .attribute("rpc.system", "grpc")
        .attribute("rpc.service", service.to_string())
        .attribute("rpc.method", method.to_string())
}

/// SERVER spans for a tonic server: continues the caller's trace from the request metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcServerLayer;

impl GrpcServerLayer {
    pub fn new() -> Self {
        GrpcServerLayer
    }
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;
    fn layer(&self, inner: S) -> GrpcServer<S> {
        GrpcServer { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcServer<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcServer<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<super::TracedBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let extracted = http_headers::extract(export::propagators(), req.headers());
        let b = rpc_span(req.uri().path(), SpanKind::Server).remote_parent(extracted);
        let mut span = with_server_address(b, &req).start();
        let fut = span.in_scope(|| self.inner.call(req));
        ResponseFuture::new(fut, span, Side::GrpcServer)
    }
}

/// CLIENT spans for a tonic channel; injects the active context into the request metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcClientLayer;

impl GrpcClientLayer {
    pub fn new() -> Self {
        GrpcClientLayer
    }
}

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClient<S>;
    fn layer(&self, inner: S) -> GrpcClient<S> {
        GrpcClient { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcClient<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcClient<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<super::TracedBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let b = rpc_span(req.uri().path(), SpanKind::Client);
        let span = with_server_address(b, &req).start();
        super::inject(&span, req.headers_mut());
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, span, Side::GrpcClient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(rpc_parts("/shop.v1.Orders/PlaceOrder"), ("shop.v1.Orders", "PlaceOrder"));
        assert_eq!(rpc_parts("/odd"), ("odd", ""));
    }
}
