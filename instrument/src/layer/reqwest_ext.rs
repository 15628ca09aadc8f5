//! reqwest: a CLIENT span per request and context injection, via an extension method.

use std::future::Future;

use super::{Side, apply_http_status, http_layer::client_span, inject};
use crate::span::Status;

pub trait RequestBuilderExt {
    /// Sends the request inside a CLIENT span, with the trace context injected.
    fn send_traced(self) -> impl Future<Output = reqwest::Result<reqwest::Response>> + Send;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    fn send_traced(self) -> impl Future<Output = reqwest::Result<reqwest::Response>> + Send {
        let (client, req) = self.build_split();
        async move {
            let mut req = req?;
            let mut span = client_span(req.method(), req.url().as_str());
            inject(&span, req.headers_mut());
            let result = client.execute(req).await;
            match &result {
                Ok(resp) => apply_http_status(&mut span, Side::HttpClient, resp.status()),
                Err(e) => span.set_status(Status::Error(e.to_string().into())),
            }
            result
        }
    }
}
