//! Shared by test binaries: an OTLP/gRPC `TraceService` on 127.0.0.1 that keeps every span it
//! receives (it stands where the collector would), and helpers to wait for and read them.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<OtlpSpan>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

pub fn listener() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Runs `f` on its own 2-worker runtime in a background thread.
pub fn serve_in_background(
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

/// Starts the sink; returns its address.
pub fn start() -> (Sink, SocketAddr) {
    let sink = Sink::default();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let s = sink.clone();
    serve_in_background(move || {
        Box::pin(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(s))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                .await
                .unwrap();
        })
    });
    (sink, addr)
}

impl Sink {
    /// At least `want` spans of `trace_id`, flushing skein's pipeline while polling.
    pub async fn trace(&self, trace_id: &[u8], want: usize) -> Vec<OtlpSpan> {
        for _ in 0..200 {
            skein_instrument::flush();
            let got: Vec<OtlpSpan> =
                self.0.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
            if got.len() >= want {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let all: Vec<String> = self.0.lock().unwrap().iter().map(|s| s.name.clone()).collect();
        panic!("trace did not arrive (have {all:?})");
    }
}

pub fn attr<'a>(s: &'a OtlpSpan, key: &str) -> Option<&'a Av> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
}

pub fn named<'a>(spans: &'a [OtlpSpan], name: &str) -> &'a OtlpSpan {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!("no span {name:?} in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
