//! An axum server with `HttpServerLayer` (added with `Router::layer`, so spans are named
//! after the matched route and carry `http.route`), continuing the trace of a caller that
//! sends a W3C `traceparent` header.
//!
//! `cargo run -p skein-instrument --example axum`: serves on 127.0.0.1, makes one request
//! with a `traceparent` and exits 0 once the handler ran inside the caller's trace.

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use skein_instrument::layer::HttpServerLayer;
use skein_instrument::propagation::TraceId;

type Error = Box<dyn std::error::Error + Send + Sync>;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The handler answers with the trace it runs in.
async fn order(Path(id): Path<u32>) -> String {
    tracing::info!(order = id, "handling order"); // a span event, and a log line with ids
    skein_instrument::current_context().map(|c| c.trace_id.to_hex()).unwrap_or_default()
}

/// Serves, calls once, checks; returns the trace. Needs an installed pipeline.
pub async fn run() -> Result<TraceId, Error> {
    let app = Router::new().route("/orders/{id}", get(order)).layer(HttpServerLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // A caller from another process (any OpenTelemetry SDK) sends its context like this.
    let body = reqwest::Client::new()
        .get(format!("http://{addr}/orders/42"))
        .header("traceparent", format!("00-{CALLER_TRACE}-00f067aa0ba902b7-01"))
        .send()
        .await?
        .text()
        .await?;
    server.abort();
    if body != CALLER_TRACE {
        return Err(format!("handler ran in trace {body:?}, not the caller's").into());
    }
    skein_instrument::propagation::w3c::extract(
        &format!("00-{CALLER_TRACE}-00f067aa0ba902b7-01"),
        None,
    )
    .map(|c| c.trace_id)
    .ok_or_else(|| "bad traceparent".into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _guard = skein_instrument::init()?; // OTEL_* variables; flushes on drop
    let trace = run().await?;
    println!("the server span continued trace {}", trace.to_hex());
    Ok(())
}
