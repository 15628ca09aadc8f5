//! The whole pipeline in one process: layers on real tonic/axum/reqwest traffic, `tracing`
//! spans and events, log correlation, and OTLP/gRPC export to a receiving server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use skein_instrument::layer::{
    GrpcClientLayer, GrpcServerLayer, HttpServerLayer, RequestBuilderExt,
};
use skein_instrument::{Builder, FutureExt, Protocol, Span, subscriber};
use tonic::{Request, Response, Status};
use tracing_subscriber::prelude::*;

/// Receives what the pipeline exports (stands where the collector would).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<OtlpSpan>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let svc = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name").cloned());
            assert!(svc.is_some(), "resource without service.name");
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The RPC under test: fails with UNAVAILABLE when asked for nothing, logs otherwise.
struct Backend;

#[tracing::instrument(skip_all, fields(items = n))]
async fn lookup(n: usize) -> usize {
    tracing::info!(n, "looked up");
    n * 2
}

#[tonic::async_trait]
impl TraceService for Backend {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n = req.into_inner().resource_spans.len();
        if n == 0 {
            tracing::warn!("nothing to do");
            return Err(Status::unavailable("backend shard down"));
        }
        lookup(n).await;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Setup {
    sink: Sink,
    logs: Logs,
    backend: SocketAddr,
    web: SocketAddr,
}

fn serve_in_background(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send + 'static,
) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    });
}

fn listener() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let sink = Sink::default();
        let (sink_l, backend_l, web_l) = (listener(), listener(), listener());
        let (sink_addr, backend, web) = (
            sink_l.local_addr().unwrap(),
            backend_l.local_addr().unwrap(),
            web_l.local_addr().unwrap(),
        );
        let s = sink.clone();
        serve_in_background(move || {
            Box::pin(async move {
                let l = tokio::net::TcpListener::from_std(sink_l).unwrap();
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(s))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                    .await
                    .unwrap();
            })
        });
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
        serve_in_background(move || {
            Box::pin(async move {
                let app = axum::Router::new()
                    .route("/orders/{id}", axum::routing::get(order))
                    .route(
                        "/broken",
                        axum::routing::get(|| async { (http::StatusCode::BAD_GATEWAY, "no") }),
                    )
                    .layer(HttpServerLayer::new());
                let l = tokio::net::TcpListener::from_std(web_l).unwrap();
                axum::serve(l, app).await.unwrap();
            })
        });
        let logs = Logs::default();
        let l = logs.clone();
        tracing_subscriber::registry()
            .with(subscriber::layer())
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(subscriber::LogFormat)
                    .with_ansi(false)
                    .with_writer(move || l.clone()),
            )
            .init();
        let guard = Builder::default()
            .service_name("pipeline-test")
            .endpoint(format!("http://{sink_addr}"), Protocol::Grpc)
            .propagators("tracecontext,baggage")
            .unwrap()
            .tracing_subscriber(false)
            .install()
            .unwrap();
        // Lives for the whole test binary.
        std::mem::forget(guard);
        Setup { sink, logs, backend, web }
    })
}

/// An axum handler that calls the gRPC backend (a nested CLIENT span) and logs.
async fn order(axum::extract::Path(id): axum::extract::Path<String>) -> String {
    tracing::info!(order = %id, "handling order");
    let r = backend_call(setup().backend, id != "empty").await;
    format!("{r:?}")
}

async fn backend_call(addr: SocketAddr, with_data: bool) -> Result<(), tonic::Code> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let svc = tower::ServiceBuilder::new().layer(GrpcClientLayer::new()).service(channel);
    let mut client = TraceServiceClient::new(svc);
    let req = ExportTraceServiceRequest {
        resource_spans: if with_data { vec![Default::default()] } else { vec![] },
    };
    client.export(req).await.map(|_| ()).map_err(|s| s.code())
}

/// Spans of one trace, waiting for the exporter.
async fn trace_spans(trace_id: &[u8], want: usize) -> Vec<OtlpSpan> {
    for _ in 0..100 {
        skein_instrument::flush();
        let got: Vec<OtlpSpan> = setup()
            .sink
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if got.len() >= want {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("trace did not arrive");
}

fn attr<'a>(s: &'a OtlpSpan, key: &str) -> Option<&'a Av> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn by_name(spans: &[OtlpSpan]) -> HashMap<&str, &OtlpSpan> {
    spans.iter().map(|s| (s.name.as_str(), s)).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn trace_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_continues_the_callers_trace_through_grpc_and_tracing_spans() {
    let s = setup();
    let resp = reqwest::Client::new()
        .get(format!("http://{}/orders/42", s.web))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("baggage", "tenant=acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = trace_spans(&trace_bytes(TRACE), 4).await;
    let names = by_name(&spans);
    let http = names["GET /orders/{id}"];
    assert_eq!(http.parent_span_id, trace_bytes("00f067aa0ba902b7"));
    assert_eq!(http.kind, 2, "SERVER");
    assert_eq!(attr(http, "http.route"), Some(&Av::StringValue("/orders/{id}".into())));
    assert_eq!(attr(http, "http.response.status_code"), Some(&Av::IntValue(200)));
    assert_eq!(http.flags & 0x300, 0x300, "remote parent flagged");
    let client = spans.iter().find(|s| s.kind == 3).unwrap();
    let server = spans.iter().find(|s| s.kind == 2 && s.name.ends_with("/Export")).unwrap();
    assert_eq!(client.name, "opentelemetry.proto.collector.trace.v1.TraceService/Export");
    assert_eq!(client.parent_span_id, http.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(attr(server, "rpc.system"), Some(&Av::StringValue("grpc".into())));
    assert_eq!(attr(server, "rpc.method"), Some(&Av::StringValue("Export".into())));
    assert_eq!(attr(client, "rpc.grpc.status_code"), Some(&Av::IntValue(0)));
    let lookup = names["lookup"];
    assert_eq!(lookup.parent_span_id, server.span_id);
    assert_eq!(attr(lookup, "items"), Some(&Av::IntValue(1)));
    assert_eq!(lookup.events[0].name, "looked up");
    // The log line written inside the handler carries the trace id.
    let logs = String::from_utf8(s.logs.0.lock().unwrap().clone()).unwrap();
    let line = logs.lines().find(|l| l.contains("handling order order=42")).unwrap();
    assert!(line.contains(&format!("trace_id={TRACE} span_id=")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_grpc_calls_mark_server_and_client_spans_as_errors() {
    let s = setup();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .get(format!("http://{}/orders/empty", s.web))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("Unavailable"));
    let spans = trace_spans(&trace_bytes(trace), 3).await;
    for kind in [2, 3] {
        let rpc = spans.iter().find(|s| s.kind == kind && s.name.ends_with("/Export")).unwrap();
        let status = rpc.status.as_ref().unwrap();
        assert_eq!(status.code, 2, "ERROR on kind {kind}");
        assert_eq!(status.message, "backend shard down");
        assert_eq!(attr(rpc, "rpc.grpc.status_code"), Some(&Av::IntValue(14)));
    }
    let server = spans.iter().find(|s| s.kind == 2 && s.name.ends_with("/Export")).unwrap();
    assert!(server.events.iter().any(|e| e.name == "nothing to do"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_errors_set_error_status_and_client_spans_inject_context() {
    let s = setup();
    let mut root = Span::builder("checkout").root().start();
    let trace_id = root.trace_id().unwrap();
    let resp = async {
        reqwest::Client::new().get(format!("http://{}/broken", s.web)).send_traced().await
    }
    .in_span(std::mem::take(&mut root))
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    let spans = trace_spans(&trace_id.0, 3).await;
    let names = by_name(&spans);
    let (client, server) = (names["GET"], names["GET /broken"]);
    assert_eq!(client.kind, 3);
    assert_eq!(server.parent_span_id, client.span_id, "context injected by send_traced");
    assert_eq!(client.parent_span_id, names["checkout"].span_id);
    assert_eq!(server.status.as_ref().unwrap().code, 2);
    assert_eq!(client.status.as_ref().unwrap().code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_async_tasks_across_threads_and_nest() {
    setup();
    let root = Span::builder("job").root().start();
    let trace_id = root.trace_id().unwrap();
    async {
        for i in 0..4 {
            let child = Span::new("step");
            tokio::task::yield_now().await;
            tokio::spawn(async move { tokio::task::yield_now().await }.in_span(child))
                .await
                .unwrap();
            let mut sync = Span::new("sync");
            sync.set_attribute("i", i as i64);
            sync.in_scope(|| {
                let _inner = Span::new("inner");
            });
        }
    }
    .in_span(root)
    .await;
    let spans = trace_spans(&trace_id.0, 13).await;
    let job = spans.iter().find(|s| s.name == "job").unwrap();
    assert_eq!(spans.iter().filter(|s| s.parent_span_id == job.span_id).count(), 8);
    for inner in spans.iter().filter(|s| s.name == "inner") {
        let parent = spans.iter().find(|s| s.span_id == inner.parent_span_id).unwrap();
        assert_eq!(parent.name, "sync");
    }
    assert!(spans.iter().all(|s| s.end_time_unix_nano >= s.start_time_unix_nano));
    assert!(job.start_time_unix_nano > 1_700_000_000_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_finished_in_a_poll_are_exported_although_that_thread_then_idles() {
    use std::task::{Context, Waker};
    setup();
    let root = Span::builder("migrating").root().start();
    let trace_id = root.trace_id().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut fut = Box::pin(
        async move {
            drop(Span::new("before-migration"));
            let _ = rx.await;
        }
        .in_span(root),
    );
    let (back_tx, back_rx) = std::sync::mpsc::channel();
    let (idle_tx, idle_rx) = std::sync::mpsc::channel::<()>();
    // First poll on a thread that then does nothing at all; the rest runs elsewhere.
    std::thread::spawn(move || {
        assert!(fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
        back_tx.send(fut).unwrap();
        let _ = idle_rx.recv();
    });
    let fut = back_rx.recv().unwrap();
    tx.send(()).unwrap();
    fut.await;
    let spans = trace_spans(&trace_id.0, 2).await;
    assert!(spans.iter().any(|s| s.name == "before-migration"));
    drop(idle_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_links_from_the_builder_and_added_later_are_exported_with_their_attributes() {
    use skein_instrument::KeyValue;
    use skein_instrument::propagation::w3c;
    setup();
    let upstream =
        w3c::extract("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None).unwrap();
    let first = Span::builder("enqueue").root().start();
    let first_ctx = first.context().unwrap();
    drop(first);
    let mut batch = Span::builder("batch")
        .root()
        .link_with_attributes(upstream.clone(), vec![KeyValue::new("link.reason", "upstream")])
        .start();
    batch.add_link(first_ctx.clone(), Vec::new());
    let trace_id = batch.trace_id().unwrap();
    drop(batch);
    let spans = trace_spans(&trace_id.0, 1).await;
    let batch = by_name(&spans)["batch"];
    let links: Vec<(&[u8], &[u8])> =
        batch.links.iter().map(|l| (l.trace_id.as_slice(), l.span_id.as_slice())).collect();
    assert_eq!(
        links,
        [
            (upstream.trace_id.0.as_slice(), upstream.span_id.0.as_slice()),
            (first_ctx.trace_id.0.as_slice(), first_ctx.span_id.0.as_slice()),
        ]
    );
    assert_eq!(batch.links[0].attributes[0].key, "link.reason");
    assert_eq!(batch.links[0].flags & 1, 1, "sampled flag of the linked context");
    assert_eq!(batch.dropped_links_count, 0);
}
