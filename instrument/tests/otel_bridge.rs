//! Code written against the OpenTelemetry API only (as a library would be) running inside
//! skein's tonic layers: its spans and skein's form one trace with the right parents in both
//! directions, and OpenTelemetry's global propagator injects and extracts skein's context.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp_sink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::{
    Link, Span as _, SpanKind, Status as OtelStatus, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use otlp_sink::{Sink, attr, hex, named, serve_in_background};
use skein_instrument::layer::{GrpcClientLayer, GrpcServerLayer};
use skein_instrument::{Builder, FutureExt, Protocol, Span};
use tonic::{Request, Response, Status};

/// The span a library links its work to (some other trace).
const LINKED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const LINKED_SPAN: &str = "b7ad6b7169203331";

/// What the OpenTelemetry API's global propagator injected at each point of the handler.
#[derive(Default, Debug, Clone)]
struct Injected {
    in_server_span: String,
    in_otel_span: String,
    in_skein_span_inside_otel: String,
}

fn injected() -> &'static Mutex<Injected> {
    static I: OnceLock<Mutex<Injected>> = OnceLock::new();
    I.get_or_init(Mutex::default)
}

fn traceparent() -> String {
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject(&mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// A library's code: the OpenTelemetry API only, no skein type. The skein span in the middle
/// stands for the application's own code the library calls back into.
fn library_code() {
    let tracer = global::tracer("inventory-lib");
    let link = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from_hex(LINKED_TRACE).unwrap(),
        opentelemetry::trace::SpanId::from_hex(LINKED_SPAN).unwrap(),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    let mut span = tracer
        .span_builder("inventory.reserve")
        .with_kind(SpanKind::Consumer)
        .with_attributes([KeyValue::new("inventory.items", 3), KeyValue::new("inventory.ok", true)])
        .with_links(vec![Link::with_context(link)])
        .start(&tracer);
    span.add_event("reserved", vec![KeyValue::new("inventory.shelf", "b7")]);
    span.set_status(OtelStatus::error("out of stock"));
    let cx = Context::current_with_span(span);
    let _attached = cx.clone().attach();
    injected().lock().unwrap().in_otel_span = traceparent();

    // Application code called back from the library: a skein span inside the OpenTelemetry
    // span, and an OpenTelemetry span inside that.
    let mut app = Span::new("app.callback");
    app.in_scope(|| {
        injected().lock().unwrap().in_skein_span_inside_otel = traceparent();
        tracer.in_span("inventory.lookup", |cx| {
            cx.span().set_attribute(KeyValue::new("lookup.key", "sku-1"));
        });
    });
}

struct Backend;

#[tonic::async_trait]
impl TraceService for Backend {
    async fn export(
        &self,
        _req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        injected().lock().unwrap().in_server_span = traceparent();
        library_code();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

struct Setup {
    sink: Sink,
    backend: SocketAddr,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (sink, sink_addr) = otlp_sink::start();
        let backend_l = otlp_sink::listener();
        let backend = backend_l.local_addr().unwrap();
        serve_in_background(move || {
            Box::pin(async move {
                let l = tokio::net::TcpListener::from_std(backend_l).unwrap();
                tonic::transport::Server::builder()
                    .layer(GrpcServerLayer::new())
                    .add_service(TraceServiceServer::new(Backend))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                    .await
                    .unwrap();
            })
        });
        let guard = Builder::default()
            .service_name("otel-bridge-test")
            .endpoint(format!("http://{sink_addr}"), Protocol::Grpc)
            .propagators("tracecontext,baggage")
            .unwrap()
            .tracing_subscriber(false)
            .install()
            .unwrap();
        // Lives for the whole test binary.
        std::mem::forget(guard);
        Setup { sink, backend }
    })
}

fn span_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_api_spans_and_skein_spans_form_one_trace_through_tonic() {
    let s = setup();
    let root = Span::builder("checkout").root().start();
    let trace_id = root.trace_id().unwrap();
    async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.backend))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let svc = tower::ServiceBuilder::new().layer(GrpcClientLayer::new()).service(channel);
        TraceServiceClient::new(svc).export(ExportTraceServiceRequest::default()).await.unwrap();
    }
    .in_span(root)
    .await;

    let spans = s.sink.trace(&trace_id.0, 6).await;
    let root = named(&spans, "checkout");
    let client = spans.iter().find(|s| s.kind == 3).unwrap();
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    let reserve = named(&spans, "inventory.reserve");
    let callback = named(&spans, "app.callback");
    let lookup = named(&spans, "inventory.lookup");
    assert_eq!(client.parent_span_id, root.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    // skein span → OpenTelemetry span → skein span → OpenTelemetry span.
    assert_eq!(reserve.parent_span_id, server.span_id, "OTel span inside the RPC span");
    assert_eq!(callback.parent_span_id, reserve.span_id, "skein span inside the OTel span");
    assert_eq!(lookup.parent_span_id, callback.span_id, "OTel span inside that skein span");

    // What the OpenTelemetry API set carries over.
    assert_eq!(reserve.kind, 5, "CONSUMER");
    assert_eq!(attr(reserve, "inventory.items"), Some(&Av::IntValue(3)));
    assert_eq!(attr(reserve, "inventory.ok"), Some(&Av::BoolValue(true)));
    assert_eq!(attr(reserve, "otel.scope.name"), Some(&Av::StringValue("inventory-lib".into())));
    assert_eq!(attr(lookup, "lookup.key"), Some(&Av::StringValue("sku-1".into())));
    assert_eq!(reserve.events.len(), 1);
    assert_eq!(reserve.events[0].name, "reserved");
    let status = reserve.status.as_ref().unwrap();
    assert_eq!((status.code, status.message.as_str()), (2, "out of stock"));
    assert_eq!(reserve.links.len(), 1);
    assert_eq!(hex(&reserve.links[0].trace_id), LINKED_TRACE);
    assert_eq!(hex(&reserve.links[0].span_id), LINKED_SPAN);
    assert!(reserve.end_time_unix_nano >= reserve.start_time_unix_nano);
    assert!(reserve.start_time_unix_nano >= server.start_time_unix_nano);

    // The global propagator injects the innermost span, skein's or OpenTelemetry's.
    let inj = injected().lock().unwrap().clone();
    for tp in [&inj.in_server_span, &inj.in_otel_span, &inj.in_skein_span_inside_otel] {
        assert!(tp.starts_with(&format!("00-{}-", hex(&trace_id.0))), "{inj:?}");
    }
    assert_eq!(span_of(&inj.in_server_span), hex(&server.span_id));
    assert_eq!(span_of(&inj.in_otel_span), hex(&reserve.span_id));
    assert_eq!(span_of(&inj.in_skein_span_inside_otel), hex(&callback.span_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skein_spans_continue_a_context_extracted_and_attached_through_the_global_propagator() {
    let s = setup();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let carrier = HashMap::from([
        ("traceparent".to_string(), format!("00-{trace}-00f067aa0ba902b7-01")),
        ("baggage".to_string(), "tenant=acme".to_string()),
    ]);
    let cx = global::get_text_map_propagator(|p| p.extract(&carrier));
    assert!(cx.span().span_context().is_remote());
    let (outgoing, child_id) = {
        let _attached = cx.attach();
        let child = Span::new("consume");
        let bag: Vec<(&str, &str)> =
            child.baggage().iter().map(|m| (m.key.as_str(), m.value.as_str())).collect();
        assert_eq!(bag, [("tenant", "acme")], "baggage reaches skein spans");
        let mut out = HashMap::new();
        let mut child = child;
        child.in_scope(|| global::get_text_map_propagator(|p| p.inject(&mut out)));
        (out, child.span_id().unwrap())
    };
    let spans = s.sink.trace(&otlp_sink_trace(trace), 1).await;
    let consume = named(&spans, "consume");
    assert_eq!(hex(&consume.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(consume.flags & 0x300, 0x300, "remote parent flagged");
    assert_eq!(outgoing["traceparent"], format!("00-{trace}-{}-01", child_id.to_hex()));
    assert_eq!(outgoing["baggage"], "tenant=acme");
}

fn otlp_sink_trace(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}
