//! Runs every example in `examples/` (each checks its own outcome and fails otherwise) against
//! one installed pipeline, and checks the spans each exported over OTLP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp_sink;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod axum_example;
#[cfg(feature = "opentelemetry")]
#[allow(dead_code)]
#[path = "../examples/otel_library.rs"]
mod otel_library_example;
#[allow(dead_code)]
#[path = "../examples/reqwest.rs"]
mod reqwest_example;
#[allow(dead_code)]
#[path = "../examples/tonic.rs"]
mod tonic_example;

use std::sync::OnceLock;

use otlp_sink::{Sink, named};
use skein_instrument::{Builder, Protocol, subscriber};
use tracing_subscriber::prelude::*;

/// What `init()` does in the examples' `main`, but exporting to an in-test sink.
fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let (sink, addr) = otlp_sink::start();
        tracing_subscriber::registry().with(subscriber::layer()).init();
        let guard = Builder::default()
            .service_name("examples")
            .endpoint(format!("http://{addr}"), Protocol::Grpc)
            .tracing_subscriber(false)
            .install()
            .unwrap();
        // Lives for the whole test binary.
        std::mem::forget(guard);
        sink
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_example_puts_client_server_and_handler_spans_in_one_trace() {
    let sink = sink();
    let trace = tonic_example::run().await.unwrap();
    let spans = sink.trace(&trace.0, 4).await;
    let root = named(&spans, "place-order");
    let client = spans.iter().find(|s| s.kind == 3).unwrap();
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(client.parent_span_id, root.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(named(&spans, "load_order").parent_span_id, server.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_example_continues_the_callers_trace() {
    let sink = sink();
    let trace = axum_example::run().await.unwrap();
    let spans = sink.trace(&trace.0, 1).await;
    let server = named(&spans, "GET /orders/{id}");
    assert_eq!(otlp_sink::hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.events[0].name, "handling order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_example_sends_a_client_span_under_the_active_span() {
    let sink = sink();
    let trace = reqwest_example::run().await.unwrap();
    let spans = sink.trace(&trace.0, 2).await;
    let client = named(&spans, "GET");
    assert_eq!(client.parent_span_id, named(&spans, "refresh-prices").span_id);
}

#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_library_example_spans_join_the_skein_trace() {
    let sink = sink();
    let trace = otel_library_example::run().await.unwrap();
    let spans = sink.trace(&trace.0, 2).await;
    let fetch = named(&spans, "quotes.fetch");
    assert_eq!(fetch.parent_span_id, named(&spans, "portfolio-update").span_id);
    assert_eq!(fetch.events[0].name, "sent");
}
