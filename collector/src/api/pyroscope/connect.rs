//! The Connect protocol's unary calls as Grafana's Pyroscope datasource and pyroscope agents
//! make them: `POST /<package>.<Service>/<Method>` with a binary protobuf
//! (`application/proto`) or JSON (`application/json`) body, optionally `Content-Encoding:
//! gzip`; the answer uses the request's encoding. Errors are JSON `{"code", "message"}` bodies
//! (mapped to HTTP statuses in `api/error.rs`).

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

use crate::error::{Coded, ErrorCode};
use crate::profile::{self, ProfileError};
use crate::tenant::InvalidTenant;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("unsupported content type {0:?}: use application/proto or application/json")]
    UnsupportedMediaType(String),
    #[error("cannot decode the request message: {0}")]
    Decode(String),
    #[error("unknown method {0}")]
    UnknownMethod(String),
}

impl From<InvalidTenant> for ConnectError {
    fn from(e: InvalidTenant) -> Self {
        ConnectError::Profile(e.into())
    }
}

impl Coded for ConnectError {
    fn code(&self) -> ErrorCode {
        match self {
            ConnectError::Profile(e) => e.code(),
            ConnectError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ConnectError::Decode(_) => ErrorCode::InvalidArgument,
            ConnectError::UnknownMethod(_) => ErrorCode::Unimplemented,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// The codec named by a unary request's Content-Type (absent: binary, Connect's default).
    pub fn of(headers: &HeaderMap) -> Result<Codec, ConnectError> {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/proto" | "application/protobuf" | "application/x-protobuf" | "" => {
                Ok(Codec::Proto)
            }
            "application/json" => Ok(Codec::Json),
            _ => Err(ConnectError::UnsupportedMediaType(ct.to_string())),
        }
    }

    pub fn decode<M>(self, body: &[u8]) -> Result<M, ConnectError>
    where
        M: Message + Default + serde::de::DeserializeOwned,
    {
        match self {
            Codec::Proto => M::decode(body).map_err(|e| ConnectError::Decode(e.to_string())),
            // protojson: an empty body is not valid, but `{}` is the empty message.
            Codec::Json => {
                serde_json::from_slice(body).map_err(|e| ConnectError::Decode(e.to_string()))
            }
        }
    }

    pub fn respond<M: Message + serde::Serialize>(self, msg: &M) -> Response {
        match self {
            Codec::Proto => proto_response(msg.encode_to_vec()),
            Codec::Json => match serde_json::to_vec(msg) {
                Ok(b) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], b)
                    .into_response(),
                Err(e) => ConnectError::from(ProfileError::Internal(e.to_string())).into_response(),
            },
        }
    }
}

pub fn proto_response(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/proto")], body).into_response()
}

/// Reads a request body (Connect or `/ingest`) of at most `limit` bytes, inflating
/// `Content-Encoding: gzip` (also bounded by `limit`). Larger bodies stop being read at the limit.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ProfileError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    if let Some(e) = encoding.as_deref().filter(|e| !matches!(*e, "" | "identity" | "gzip")) {
        return Err(ProfileError::BadRequest(format!(
            "unsupported content encoding {e:?}: use gzip or identity"
        )));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ProfileError::Malformed(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ProfileError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    if encoding.as_deref() == Some("gzip") {
        return profile::gunzip(&buf, limit).map(Bytes::from);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn content_types_pick_the_codec() {
        assert_eq!(
            Codec::of(&headers(&[("content-type", "application/proto")])).unwrap(),
            Codec::Proto
        );
        assert_eq!(
            Codec::of(&headers(&[("content-type", "application/json; charset=utf-8")])).unwrap(),
            Codec::Json
        );
        assert!(matches!(
            Codec::of(&headers(&[("content-type", "application/connect+proto")])),
            Err(ConnectError::UnsupportedMediaType(_))
        ));
    }

    #[tokio::test]
    async fn bodies_are_bounded_before_and_after_gzip() {
        use std::io::Write;
        let plain = Body::from(vec![0u8; 100]);
        assert!(matches!(
            read_body(plain, &HeaderMap::new(), 99).await,
            Err(ProfileError::TooLarge { limit: 99 })
        ));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&[7u8; 1000]).unwrap();
        let gz = enc.finish().unwrap();
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(read_body(Body::from(gz.clone()), &h, 1000).await.unwrap().len(), 1000);
        assert!(read_body(Body::from(gz), &h, 999).await.is_err());
        let br = headers(&[("content-encoding", "br")]);
        assert!(matches!(
            read_body(Body::from("x"), &br, 10).await,
            Err(ProfileError::BadRequest(_))
        ));
    }
}
