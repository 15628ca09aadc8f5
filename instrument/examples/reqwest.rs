//! reqwest calls with `send_traced()`: each request gets a CLIENT span, child of the active
//! span, and carries its context in `traceparent`, so the server (here a bare axum app
//! without skein, which just echoes the header) continues the trace.
//!
//! `cargo run -p skein-instrument --example reqwest`: serves on 127.0.0.1, calls it once and
//! exits 0 once the server received the client span's context.

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use skein_instrument::layer::RequestBuilderExt;
use skein_instrument::propagation::TraceId;
use skein_instrument::{FutureExt, Span};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn echo_traceparent(headers: HeaderMap) -> String {
    headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Serves, calls once, checks; returns the trace. Needs an installed pipeline.
pub async fn run() -> Result<TraceId, Error> {
    let app = Router::new().route("/prices", get(echo_traceparent));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::new();
    let root = Span::builder("refresh-prices").root().start();
    let trace = root.trace_id().ok_or("no pipeline installed")?;
    let received =
        async { client.get(format!("http://{addr}/prices")).send_traced().await?.text().await }
            .in_span(root)
            .await?;
    server.abort();

    // 00-<trace>-<the CLIENT span's id>-01
    if !received.starts_with(&format!("00-{}-", trace.to_hex())) {
        return Err(format!("server received traceparent {received:?}").into());
    }
    Ok(trace)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _guard = skein_instrument::init()?; // OTEL_* variables; flushes on drop
    let trace = run().await?;
    println!("the request carried trace {}", trace.to_hex());
    Ok(())
}
