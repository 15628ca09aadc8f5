//! Library code written against the OpenTelemetry API (`opentelemetry::global::tracer`, no
//! skein type), called inside a skein span: with the `opentelemetry` feature, `init()` makes
//! skein OpenTelemetry's global tracer provider and propagator, so the library's spans are
//! children of the skein span, skein spans inside them are their children, and the library's
//! own propagation (`global::get_text_map_propagator`) injects the active context.
//!
//! `cargo run -p skein-instrument --features opentelemetry --example otel_library`: exits 0
//! once the library's span and the propagated header are in the skein span's trace.

use std::collections::HashMap;

use skein_instrument::propagation::TraceId;
use skein_instrument::{FutureExt, Span};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A library's code: only the OpenTelemetry API.
mod library {
    use std::collections::HashMap;

    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _};
    use opentelemetry::{Context, KeyValue, global};

    /// Fetches a quote; its span has a kind and attributes, and the outgoing "request" carries
    /// the context its propagator injects. Returns the headers it would send.
    pub fn fetch_quote(symbol: &'static str) -> HashMap<String, String> {
        let tracer = global::tracer("quotes-lib");
        let span = tracer
            .span_builder("quotes.fetch")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("quote.symbol", symbol)])
            .start(&tracer);
        let cx = Context::current_with_span(span);
        let _attached = cx.clone().attach();
        let mut headers = HashMap::new();
        global::get_text_map_propagator(|p| p.inject(&mut headers));
        cx.span().add_event("sent", vec![]);
        headers
    }
}

/// Calls the library inside a skein span and checks; returns the trace. Needs an installed
/// pipeline and the OpenTelemetry globals `init()` sets.
pub async fn run() -> Result<TraceId, Error> {
    let root = Span::builder("portfolio-update").root().start();
    let trace = root.trace_id().ok_or("no pipeline installed")?;
    let headers: HashMap<String, String> =
        async { library::fetch_quote("SKN") }.in_span(root).await;
    let tp = headers.get("traceparent").ok_or("the library's propagator injected nothing")?;
    if !tp.starts_with(&format!("00-{}-", trace.to_hex())) {
        return Err(format!("library injected {tp:?}, not the skein span's trace").into());
    }
    Ok(trace)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _guard = skein_instrument::init()?; // OTEL_* variables; flushes on drop
    let trace = run().await?;
    println!("the library's span joined trace {}", trace.to_hex());
    Ok(())
}
