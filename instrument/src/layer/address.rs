//! `server.address` / `server.port` (OpenTelemetry conventions) from a request's authority,
//! for the gRPC and HTTP layers alike.

use http::uri::Authority;

use crate::span::SpanBuilder;

/// The host (without IPv6 brackets) and port.
fn host_port(a: &Authority) -> (&str, Option<u16>) {
    (a.host().trim_matches(['[', ']']), a.port_u16())
}

/// Adds `server.address` and, when the authority has one, `server.port`.
pub(crate) fn with_authority(mut b: SpanBuilder, authority: &Authority) -> SpanBuilder {
    let (host, port) = host_port(authority);
    b = b.attribute("server.address", host.to_string());
    if let Some(p) = port {
        b = b.attribute("server.port", p);
    }
    b
}

/// From the request URI's authority (HTTP/2 `:authority`, absolute-form requests, already
/// parsed), else from a `Host` header; nothing when neither is usable.
pub(crate) fn with_server_address<B>(b: SpanBuilder, req: &http::Request<B>) -> SpanBuilder {
    if let Some(a) = req.uri().authority() {
        return with_authority(b, a);
    }
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
    match host.and_then(|h| h.parse::<Authority>().ok()) {
        Some(a) => with_authority(b, &a),
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_lose_their_brackets() {
        let a: Authority = "[::1]:50051".parse().unwrap();
        assert_eq!(host_port(&a), ("::1", Some(50051)));
        let a: Authority = "shop.example".parse().unwrap();
        assert_eq!(host_port(&a), ("shop.example", None));
    }
}
