//! OTLP/HTTP `POST /v1/traces` (protobuf or JSON, optionally gzip).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;

use super::{
    IngestError, Ingestor, Protocol, decode_json, decode_protobuf, gunzip_bounded, tenant_from,
};

pub fn router(ingestor: Ingestor) -> Router {
    // The raw (possibly compressed) body may not exceed the limit either; the decompressed
    // size is checked while inflating.
    let limit = ingestor.max_body_bytes;
    Router::new()
        .route("/v1/traces", post(export))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingestor)
}

async fn export(State(ing): State<Ingestor>, headers: HeaderMap, body: Bytes) -> Response {
    let tenant = match tenant_from(headers.get("x-scope-orgid").map(|v| v.as_bytes())) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let json = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.starts_with("application/json") => true,
        Some(ct)
            if ct.starts_with("application/x-protobuf")
                || ct.starts_with("application/protobuf") =>
        {
            false
        }
        None => false,
        Some(other) => return IngestError::UnsupportedMediaType(other.to_string()).into_response(),
    };
    let body = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => {
            if body.len() > ing.max_body_bytes {
                return IngestError::TooLarge { limit: ing.max_body_bytes }.into_response();
            }
            body
        }
        Some("gzip") => match gunzip_bounded(&body, ing.max_body_bytes) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                ing.reject_malformed(&tenant);
                return e.into_response();
            }
        },
        Some(other) => return IngestError::UnsupportedEncoding(other.to_string()).into_response(),
    };
    let decoded = if json { decode_json(&body) } else { decode_protobuf(&body) };
    let req = match decoded {
        Ok(r) => r,
        Err(e) => {
            ing.reject_malformed(&tenant);
            return e.into_response();
        }
    };
    let (raw, protocol) =
        if json { (None, Protocol::HttpJson) } else { (Some(body), Protocol::HttpProtobuf) };
    match ing.export(tenant, req, raw, protocol).await {
        Ok(resp) => {
            // Answer in the encoding the client used, as the OTLP/HTTP spec requires.
            if json {
                match serde_json::to_vec(&resp) {
                    Ok(b) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], b)
                        .into_response(),
                    Err(e) => IngestError::Storage(e.to_string()).into_response(),
                }
            } else {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    resp.encode_to_vec(),
                )
                    .into_response()
            }
        }
        Err(e) => e.into_response(),
    }
}
