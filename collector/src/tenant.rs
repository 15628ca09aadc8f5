//! The tenant of a request: the one place that reads `X-Scope-OrgID`, for HTTP (the [`Tenant`]
//! extractor, [`Tenant::from_headers`]) and gRPC ([`Tenant::from_metadata`]). Any check that
//! ties a tenant to credentials belongs here, so that every API passes through it.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::error::{Coded, ErrorCode};

/// Tenant used when `X-Scope-OrgID` is absent.
pub const DEFAULT_TENANT: &str = "single-tenant";

/// The header (and gRPC metadata key) naming the tenant, as Grafana and Tempo spell it.
pub const HEADER: &str = "x-scope-orgid";

/// Longest tenant id accepted, in bytes.
pub const MAX_LEN: usize = 150;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id {0:?}: use 1-150 characters from [A-Za-z0-9_.-]")]
pub struct InvalidTenant(pub String);

impl Coded for InvalidTenant {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// Validates a tenant id; absent means the default tenant. Ids become directory names, so
/// `.` and `..` are refused as well as separators.
pub fn validate(value: Option<&[u8]>) -> Result<String, InvalidTenant> {
    let Some(v) = value else { return Ok(DEFAULT_TENANT.to_string()) };
    let ok = !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && v != b"."
        && v != b"..";
    if ok {
        Ok(String::from_utf8_lossy(v).into_owned())
    } else {
        Err(InvalidTenant(String::from_utf8_lossy(v).into_owned()))
    }
}

/// The validated tenant of a request. As an axum extractor it rejects an invalid id with
/// [`InvalidTenant`] (plain text 400); handlers answering in another wire format call
/// [`Tenant::from_headers`] and convert the error into theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

impl Tenant {
    pub fn from_headers(headers: &HeaderMap) -> Result<Tenant, InvalidTenant> {
        validate(headers.get(HEADER).map(|v| v.as_bytes())).map(Tenant)
    }

    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Result<Tenant, InvalidTenant> {
        validate(metadata.get(HEADER).map(|v| v.as_bytes())).map(Tenant)
    }

    /// `/prometheus/metrics?tenant=`: a query parameter wins over the header, since Prometheus
    /// 2.x scrape configs cannot set headers. To be removed once tenants are tied to
    /// credentials (a query parameter would bypass that check).
    pub fn from_query_override(
        param: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Tenant, InvalidTenant> {
        match param {
            Some(t) => validate(Some(t.as_bytes())).map(Tenant),
            None => Tenant::from_headers(headers),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = InvalidTenant;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Tenant::from_headers(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Request, StatusCode};
    use axum::response::IntoResponse;

    #[test]
    fn tenant_ids_are_validated() {
        assert_eq!(validate(None).unwrap(), DEFAULT_TENANT);
        assert_eq!(validate(Some(b"team-a.prod_1")).unwrap(), "team-a.prod_1");
        assert!(validate(Some(b"../etc")).is_err());
        assert!(validate(Some(b"")).is_err());
        assert!(validate(Some(b"a/b")).is_err());
        assert!(validate(Some(b".")).is_err());
        assert!(validate(Some(b"..")).is_err());
        assert!(validate(Some("é".as_bytes())).is_err());
        assert!(validate(Some(&[b'a'; MAX_LEN])).is_ok());
        assert!(validate(Some(&[b'a'; MAX_LEN + 1])).is_err());
    }

    async fn extract(header: Option<&'static str>) -> Result<Tenant, InvalidTenant> {
        let mut req = Request::builder().uri("/");
        if let Some(h) = header {
            req = req.header("X-Scope-OrgID", HeaderValue::from_static(h));
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        Tenant::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn extractor_defaults_validates_and_rejects_with_400() {
        assert_eq!(extract(None).await.unwrap().as_str(), DEFAULT_TENANT);
        assert_eq!(extract(Some("team-a")).await.unwrap().as_str(), "team-a");
        let long: &'static str = Box::leak("x".repeat(MAX_LEN + 1).into_boxed_str());
        for bad in ["a/b", "..", long] {
            let e = extract(Some(bad)).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument);
            let resp = e.into_response();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            assert!(resp.headers().get("retry-after").is_none());
        }
    }

    #[test]
    fn grpc_metadata_is_read_the_same_way() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(Tenant::from_metadata(&md).unwrap().as_str(), DEFAULT_TENANT);
        md.insert(HEADER, "team-b".parse().unwrap());
        assert_eq!(Tenant::from_metadata(&md).unwrap().as_str(), "team-b");
        md.insert(HEADER, "a/b".parse().unwrap());
        let status = tonic::Status::from(Tenant::from_metadata(&md).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_query_parameter_overrides_the_header() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("from-header"));
        let t = Tenant::from_query_override(Some("from-query"), &h).unwrap();
        assert_eq!(t.as_str(), "from-query");
        assert_eq!(Tenant::from_query_override(None, &h).unwrap().as_str(), "from-header");
        assert!(Tenant::from_query_override(Some("a/b"), &h).is_err());
    }
}
