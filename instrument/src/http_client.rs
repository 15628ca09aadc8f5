//! The HTTP client of skein's own threads (OTLP/HTTP export, profile pushes): hyper over
//! rustls with the files of a [`Tls`] and the configured [`Headers`] on every request.
//!
//! Not reqwest: reqwest 0.13 offers rustls only with aws-lc-rs, or with no provider at all, in
//! which case every `reqwest::Client` built in the host process (and this workspace) panics
//! unless someone installed a default provider. hyper-rustls takes a ready rustls
//! configuration, so the ring provider is passed explicitly.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::headers::Headers;
use crate::tls::{Tls, TlsError};

/// How much of a response body is read (and then dropped) so the connection can be reused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: HeaderMap,
}

impl HttpClient {
    /// A client for requests to `https` (or plain http) endpoints; the system roots are
    /// loaded only for https.
    pub(crate) fn new(
        https: bool,
        tls: &Tls,
        headers: &Headers,
        connect_timeout: Duration,
    ) -> Result<HttpClient, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.rustls(https)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HttpClient { client, headers: headers.to_header_map() })
    }

    /// POSTs `body`; the configured headers first, then `extra` (which win). Success is a
    /// 2xx status; errors say why (the TLS failure included), never a header value.
    pub(crate) async fn post(
        &self,
        uri: Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<(), String> {
        let mut req =
            Request::post(uri).body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        h.extend(self.headers.clone());
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
        let resp = self.client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BODY).collect().await;
        if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) }
    }
}

/// An error and its causes, e.g. `client error (Connect): invalid peer certificate: …`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `url` as a request URI.
pub(crate) fn uri(url: &str) -> Result<Uri, String> {
    url.parse::<Uri>().map_err(|e| e.to_string())
}
