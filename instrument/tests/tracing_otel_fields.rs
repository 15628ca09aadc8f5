//! `tracing` spans written for `tracing-opentelemetry` keep their meaning: the `otel.name`,
//! `otel.kind`, `otel.status_code` and `otel.status_message` fields, `follows_from` as links,
//! and the extension trait's links and parents, all checked in the exported OTLP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp_sink;

use std::sync::OnceLock;

use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use otlp_sink::{Sink, attr, hex, named};
use skein_instrument::propagation::composite::Extracted;
use skein_instrument::propagation::{SpanContext, SpanId, TraceId};
use skein_instrument::subscriber::{self, TracingSpanExt};
use skein_instrument::{Builder, KeyValue, Protocol};
use tracing::field::Empty;
use tracing_subscriber::prelude::*;

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let (sink, addr) = otlp_sink::start();
        tracing_subscriber::registry().with(subscriber::layer()).init();
        let guard = Builder::default()
            .service_name("tracing-otel-test")
            .endpoint(format!("http://{addr}"), Protocol::Grpc)
            .tracing_subscriber(false)
            .install()
            .unwrap();
        // Lives for the whole test binary.
        std::mem::forget(guard);
        sink
    })
}

fn remote(trace: &str, span: &str) -> SpanContext {
    let bytes = |h: &str| -> Vec<u8> {
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
    };
    SpanContext {
        trace_id: TraceId(bytes(trace).try_into().unwrap()),
        span_id: SpanId(bytes(span).try_into().unwrap()),
        sampled: true,
        debug: false,
        trace_state: Vec::new(),
    }
}

#[tokio::test]
async fn otel_fields_set_name_kind_and_status_at_creation_and_when_recorded() {
    let sink = sink();
    let root = tracing::info_span!("root");
    let trace = root.span_context().unwrap().trace_id;
    root.in_scope(|| {
        let _a = tracing::info_span!(
            "static_name",
            otel.name = "GET /orders",
            otel.kind = "client",
            otel.status_code = "error",
            otel.status_message = "upstream refused",
            order = 7
        )
        .entered();
        drop(_a);
        let later = tracing::info_span!(
            "later",
            otel.kind = Empty,
            otel.status_code = Empty,
            otel.name = Empty
        );
        later.record("otel.kind", "producer");
        later.record("otel.status_code", "OK");
        later.in_scope(|| later.record("otel.name", "renamed"));
        let _described =
            tracing::info_span!("described", otel.status_description = "bad input").entered();
    });
    drop(root);
    let spans = sink.trace(&trace.0, 4).await;
    let a = named(&spans, "GET /orders");
    assert_eq!(a.kind, 3, "CLIENT");
    let st = a.status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (2, "upstream refused"));
    assert_eq!(attr(a, "order"), Some(&Av::IntValue(7)));
    assert!(a.attributes.iter().all(|kv| !kv.key.starts_with("otel.")), "{:?}", a.attributes);
    let later = named(&spans, "renamed");
    assert_eq!(later.kind, 4, "PRODUCER");
    assert_eq!(later.status.as_ref().unwrap().code, 1, "OK");
    let described = named(&spans, "described");
    let st = described.status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (2, "bad input"));
}

#[tokio::test]
async fn follows_from_and_ext_trait_links_are_exported_as_span_links() {
    let sink = sink();
    let batch = tracing::info_span!("batch");
    let trace = batch.span_context().unwrap().trace_id;
    let (first, linked) = batch.in_scope(|| {
        let first = tracing::info_span!("first");
        let first_ctx = first.span_context().unwrap();
        drop(first);
        let consumer = tracing::info_span!("consume");
        consumer.follows_from(tracing::info_span!("produced-elsewhere").id());
        let other = remote("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
        consumer.add_link_with_attributes(other, vec![KeyValue::new("link.kind", "job")]);
        consumer.in_scope(|| consumer.add_link(first_ctx.clone()));
        (first_ctx, consumer)
    });
    drop(linked);
    drop(batch);
    let spans = sink.trace(&trace.0, 4).await;
    let consume = named(&spans, "consume");
    let produced = named(&spans, "produced-elsewhere");
    let links: Vec<(String, String)> =
        consume.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect();
    assert_eq!(links.len(), 3, "{links:?}");
    assert_eq!(links[0], (hex(&produced.trace_id), hex(&produced.span_id)), "follows_from");
    assert_eq!(links[1], ("0af7651916cd43dd8448eb211c80319c".into(), "b7ad6b7169203331".into()));
    assert_eq!(attr_of(&consume.links[1].attributes, "link.kind"), Some("job"));
    assert_eq!(links[2], (first.trace_id.to_hex(), first.span_id.to_hex()), "added while entered");
}

fn attr_of<'a>(
    kvs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<&'a str> {
    kvs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Av::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

#[tokio::test]
async fn set_remote_parent_moves_a_span_and_its_later_children_into_the_callers_trace() {
    let sink = sink();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let span = tracing::info_span!("handle");
    let parent = remote(trace, "00f067aa0ba902b7");
    assert!(span.set_remote_parent(Extracted { parent: Some(parent.clone()), baggage: vec![] }));
    span.in_scope(|| {
        let _child = tracing::info_span!("step").entered();
        // Too late once entered: refused, the span keeps its parent.
        assert!(!span.set_remote_parent(Extracted::default()));
    });
    drop(span);
    let spans = sink.trace(&parent.trace_id.0, 2).await;
    let handle = named(&spans, "handle");
    assert_eq!(hex(&handle.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(handle.flags & 0x300, 0x300, "remote parent flagged");
    assert_eq!(named(&spans, "step").parent_span_id, handle.span_id);
}

#[cfg(feature = "opentelemetry")]
#[tokio::test]
async fn set_parent_takes_an_opentelemetry_context_like_tracing_opentelemetry() {
    use opentelemetry::trace::TraceContextExt;
    let sink = sink();
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let parent = remote(trace, "00f067aa0ba902b7");
    let cx = opentelemetry::Context::new().with_remote_span_context(parent.to_otel(true));
    let span = tracing::info_span!("from-otel");
    assert!(span.set_parent(cx));
    let linked = tracing::info_span!("linked-otel");
    linked.add_link(span.context().span().span_context().clone());
    let from_otel = span.span_context().unwrap();
    let linked_trace = linked.span_context().unwrap().trace_id;
    drop((span, linked));
    let spans = sink.trace(&parent.trace_id.0, 1).await;
    assert_eq!(hex(&named(&spans, "from-otel").parent_span_id), "00f067aa0ba902b7");
    let spans = sink.trace(&linked_trace.0, 1).await;
    let linked = named(&spans, "linked-otel");
    assert_eq!(hex(&linked.links[0].span_id), from_otel.span_id.to_hex());
}
