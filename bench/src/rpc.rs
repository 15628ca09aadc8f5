//! An OTLP/gRPC trace client that sends pre-encoded `ExportTraceServiceRequest` bytes, so the
//! load generator spends no CPU on protobuf encoding during the timed phase.

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::BenchError;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// One HTTP/2 connection to a collector's OTLP/gRPC port.
#[derive(Clone)]
pub struct RawTraceClient {
    inner: tonic::client::Grpc<Channel>,
}

impl RawTraceClient {
    pub async fn connect(addr: std::net::SocketAddr, gzip: bool) -> Result<Self, BenchError> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| BenchError::Failed(format!("cannot connect to {addr}: {e}")))?;
        let mut inner = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
        if gzip {
            inner = inner.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        Ok(RawTraceClient { inner })
    }

    /// Sends one encoded request; returns how many spans the collector reported rejected.
    pub async fn export(&mut self, body: Bytes) -> Result<i64, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let resp = self
            .inner
            .unary(tonic::Request::new(body), PathAndQuery::from_static(EXPORT_PATH), RawCodec)
            .await?;
        Ok(resp.into_inner().partial_success.map(|p| p.rejected_spans).unwrap_or(0))
    }
}
