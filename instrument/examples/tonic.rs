//! A tonic server and client with skein-instrument's layers: the client's CLIENT span and the
//! server's SERVER span share one trace, and a `#[tracing::instrument]` function in the handler
//! nests under the SERVER span.
//!
//! `cargo run -p skein-instrument --example tonic` (with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at a collector to see the trace). It serves on 127.0.0.1 and exits 0 once the
//! server has seen the client's trace. The gRPC service is OTLP's `TraceService` only because
//! its generated code is at hand; any tonic service works the same way.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use skein_instrument::layer::{GrpcClientLayer, GrpcServerLayer};
use skein_instrument::propagation::TraceId;
use skein_instrument::{FutureExt, Span};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The service: remembers which trace each call arrived in.
#[derive(Clone, Default)]
struct Orders {
    seen: Arc<Mutex<Vec<TraceId>>>,
}

#[tracing::instrument(skip_all)]
async fn load_order() {
    tracing::info!("order loaded");
}

#[tonic::async_trait]
impl TraceService for Orders {
    async fn export(
        &self,
        _req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        load_order().await;
        if let Some(cx) = skein_instrument::current_context() {
            self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(cx.trace_id);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves, calls once, checks; returns the trace. Needs an installed pipeline.
pub async fn run() -> Result<TraceId, Error> {
    let orders = Orders::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .layer(GrpcServerLayer::new())
        .add_service(TraceServiceServer::new(orders.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let channel = tower::ServiceBuilder::new().layer(GrpcClientLayer::new()).service(channel);
    let mut client = TraceServiceClient::new(channel);

    let root = Span::builder("place-order").root().start();
    let trace = root.trace_id().ok_or("no pipeline installed")?;
    async { client.export(ExportTraceServiceRequest::default()).await }.in_span(root).await?;
    server.abort();

    let seen = orders.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if seen != [trace] {
        return Err(format!("server saw traces {seen:?}, client's was {trace:?}").into());
    }
    Ok(trace)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _guard = skein_instrument::init()?; // OTEL_* variables; flushes on drop
    let trace = run().await?;
    println!("client and server spans in trace {}", trace.to_hex());
    Ok(())
}
