//! OTLP/HTTP `POST /v1/traces` (protobuf or JSON, optionally gzip).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;

use super::{Encoding, IngestError, Ingestor, Protocol, gunzip_bounded};
use crate::tenant::Tenant;

/// `POST /v1/traces` behind `gate` (which needs the write role): credentials are checked
/// before the body is read.
pub fn router(ingestor: Ingestor, gate: crate::tenant::Gate) -> Router {
    // The raw (possibly compressed) body may not exceed the limit either; the decompressed
    // size is checked while inflating.
    let limit = ingestor.max_body_bytes;
    Router::new()
        .route("/v1/traces", post(export))
        .route_layer(axum::middleware::from_fn_with_state(gate, crate::tenant::gate))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingestor)
}

async fn export(
    State(ing): State<Ingestor>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    let (encoding, protocol) = if json {
        (Encoding::Json, Protocol::HttpJson)
    } else {
        (Encoding::Protobuf, Protocol::HttpProtobuf)
    };
    match ing.export_body(tenant, body, encoding, protocol).await {
        Ok(resp) => {
            // Answer in the encoding the client used, as the OTLP/HTTP spec requires.
            if json {
                json_response(serde_json::to_vec(&resp))
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

/// The JSON answer to a stored export. If it cannot be serialised the spans are durable
/// already, so the answer must not be one OTLP exporters retry (429, 502, 503, 504): that
/// would store the spans twice. It is 200 with the empty response, which tells the truth
/// (everything was stored), rather than a 500 that would report the export as lost.
fn json_response(body: Result<Vec<u8>, serde_json::Error>) -> Response {
    let body = body.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot serialise the OTLP export response; answering {{}}");
        b"{}".to_vec()
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unserialisable_response_after_the_write_is_not_retryable() {
        let err = serde_json::from_str::<u8>("x").unwrap_err();
        let resp = json_response(Err(err));
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        let ok = json_response(Ok(b"{\"partialSuccess\":null}".to_vec()));
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
    }
}
