//! HTTP server (axum/hyper) and client layers.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::address::{with_authority, with_server_address};
use super::{ResponseFuture, Side};
use crate::export;
use crate::propagation::composite::http_headers;
use crate::span::{Span, SpanKind};

fn header<B>(req: &http::Request<B>, name: http::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// SERVER spans named `METHOD /route`, with `http.route` taken from axum's matched route when
/// the layer is added with `Router::layer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpServerLayer;

impl HttpServerLayer {
    pub fn new() -> Self {
        HttpServerLayer
    }
}

impl<S> Layer<S> for HttpServerLayer {
    type Service = HttpServer<S>;
    fn layer(&self, inner: S) -> HttpServer<S> {
        HttpServer { inner }
    }
}

#[derive(Clone, Debug)]
pub struct HttpServer<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for HttpServer<S>
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
        let method = req.method().as_str().to_string();
        let route =
            req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
        let name = match &route {
            Some(r) => format!("{method} {r}"),
            None => method.clone(),
        };
        let mut b = Span::builder(name)
            .kind(SpanKind::Server)
            .remote_parent(extracted)
            .attribute("http.request.method", method)
            .attribute("url.path", req.uri().path().to_string())
            .attribute("url.scheme", req.uri().scheme_str().unwrap_or("http").to_string())
            .attribute("network.protocol.version", protocol_version(req.version()));
        if let Some(q) = req.uri().query() {
            b = b.attribute("url.query", q.to_string());
        }
        if let Some(r) = route {
            b = b.attribute("http.route", r);
        }
        if let Some(ua) = header(&req, http::header::USER_AGENT) {
            b = b.attribute("user_agent.original", ua.to_string());
        }
        let mut span = with_server_address(b, &req).start();
        let fut = span.in_scope(|| self.inner.call(req));
        ResponseFuture::new(fut, span, Side::HttpServer)
    }
}

/// CLIENT spans for tower HTTP clients (e.g. hyper-util's); injects the active context.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClientLayer;

impl HttpClientLayer {
    pub fn new() -> Self {
        HttpClientLayer
    }
}

impl<S> Layer<S> for HttpClientLayer {
    type Service = HttpClient<S>;
    fn layer(&self, inner: S) -> HttpClient<S> {
        HttpClient { inner }
    }
}

#[derive(Clone, Debug)]
pub struct HttpClient<S> {
    inner: S,
}

/// The CLIENT span for a request to `uri` (shared with the reqwest extension).
pub(crate) fn client_span(method: &http::Method, uri: &str) -> Span {
    let b = Span::builder(method.as_str().to_string())
        .kind(SpanKind::Client)
        .attribute("http.request.method", method.as_str().to_string())
        .attribute("url.full", uri.to_string());
    match uri.parse::<http::Uri>().ok().and_then(|u| u.authority().cloned()) {
        Some(a) => with_authority(b, &a).start(),
        None => b.start(),
    }
}

impl<S, B, RB> Service<http::Request<B>> for HttpClient<S>
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
        let span = client_span(req.method(), &req.uri().to_string());
        super::inject(&span, req.headers_mut());
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, span, Side::HttpClient)
    }
}
