//! OTLP/gRPC `TraceService/Export`, served with a codec that yields the raw message bytes:
//! tonic inflates (gzip) and enforces the message size limit, then the ingestor scans the
//! bytes before anything is decoded (tonic's generated server would run prost first, and a
//! message of empty spans decodes to hundreds of times its size).

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, StdError, http};
use tonic::{Request, Response, Status};

use super::{Encoding, Ingestor, Protocol};
use std::sync::Arc;

use crate::tenant::{Access, Role, Tenant};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Requests are the message bytes; responses are encoded with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawRequestCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseEncoder;

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

/// The unary Export call on raw bytes, for the tenant its headers resolved to.
struct Export {
    ingestor: Ingestor,
    tenant: String,
}

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingestor = self.ingestor.clone();
        let tenant = self.tenant.clone();
        Box::pin(async move {
            let body = request.into_inner();
            let resp =
                ingestor.export_body(tenant, body, Encoding::Protobuf, Protocol::Grpc).await?;
            Ok(Response::new(resp))
        })
    }
}

/// `opentelemetry.proto.collector.trace.v1.TraceService`, on [`RawRequestCodec`].
#[derive(Clone)]
pub struct TraceService {
    ingestor: Ingestor,
    access: Arc<Access>,
}

impl TraceService {
    pub fn new(ingestor: Ingestor, access: Arc<Access>) -> Self {
        TraceService { ingestor, access }
    }
}

impl tonic::server::NamedService for TraceService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for TraceService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ingestor = self.ingestor.clone();
        // gRPC metadata are the request's HTTP/2 headers: credentials are checked before the
        // message is read or inflated.
        let tenant = self.access.resolve(req.headers(), Role::Write);
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(
                    Status::unimplemented(format!("no method {}", req.uri().path())).into_http()
                );
            }
            let Tenant(tenant) = match tenant {
                Ok(t) => t,
                Err(e) => return Ok(Status::from(e).into_http()),
            };
            // The decode limit applies to the decompressed message; tonic inflates gzip into a
            // buffer capped at that limit.
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(ingestor.max_body_bytes);
            Ok(grpc.unary(Export { ingestor, tenant }, req).await)
        })
    }
}

/// Serves OTLP/gRPC until `shutdown` resolves.
pub async fn serve<IO, IE>(
    incoming: impl futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    ingestor: Ingestor,
    access: Arc<Access>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<StdError>,
{
    tonic::transport::Server::builder()
        .layer(CodecStatusLayer)
        .add_service(TraceService::new(ingestor, access))
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
