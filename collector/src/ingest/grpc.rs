//! OTLP/gRPC `TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{Ingestor, Protocol, tenant_from};

struct Service {
    ingestor: Ingestor,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let tenant = tenant_from(request.metadata().get("x-scope-orgid").map(|v| v.as_bytes()))?;
        let resp = self.ingestor.export(tenant, request.into_inner(), None, Protocol::Grpc).await?;
        Ok(Response::new(resp))
    }
}

/// Serves OTLP/gRPC until `shutdown` resolves. The decode limit applies to the decompressed
/// message; tonic inflates gzip into a buffer capped at that limit.
pub async fn serve(
    incoming: tonic::transport::server::TcpIncoming,
    ingestor: Ingestor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limit = ingestor.max_body_bytes;
    let svc = TraceServiceServer::new(Service { ingestor })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    tonic::transport::Server::builder()
        .layer(crate::api::error::GrpcCodecStatusLayer)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
