//! OTLP/gRPC `TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{IngestError, Ingestor, Protocol};
use crate::tenant::Tenant;

struct Service {
    ingestor: Ingestor,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let Tenant(tenant) =
            Tenant::from_metadata(request.metadata()).map_err(IngestError::from)?;
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
        .layer(CodecStatusLayer)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// tonic reports codec failures with codes OTLP clients misread: an uncompressed message above
/// the decode limit is OUT_OF_RANGE (OTLP: RESOURCE_EXHAUSTED, as tonic already says for
/// inflated gzip), an undecodable protobuf or corrupt gzip is INTERNAL (OTLP: INVALID_ARGUMENT,
/// a client error not to be retried). The ingest service itself answers neither code, so the
/// code alone identifies the case.
#[derive(Clone, Copy)]
pub struct CodecStatusLayer;

impl<S> tower::Layer<S> for CodecStatusLayer {
    type Service = tower::util::MapResponse<
        S,
        fn(axum::http::Response<tonic::body::Body>) -> axum::http::Response<tonic::body::Body>,
    >;
    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, remap_codec_status)
    }
}

fn remap_codec_status(
    mut resp: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    let h = resp.headers_mut();
    let remapped = match h.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"11") => Some("8"),
        Some(b"13") => Some("3"),
        _ => None,
    };
    if let Some(code) = remapped {
        h.insert("grpc-status", axum::http::HeaderValue::from_static(code));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_status(code: &'static str) -> axum::http::Response<tonic::body::Body> {
        let mut resp = axum::http::Response::new(tonic::body::Body::empty());
        resp.headers_mut().insert("grpc-status", axum::http::HeaderValue::from_static(code));
        resp
    }

    #[test]
    fn codec_failures_get_the_codes_otlp_expects() {
        for (from, to) in [("11", "8"), ("13", "3"), ("14", "14"), ("0", "0")] {
            let resp = remap_codec_status(with_status(from));
            assert_eq!(resp.headers()["grpc-status"], to, "{from}");
        }
    }
}
