//! `GET /skein/api/compare?service=S&span_name=N[&threshold=250ms][&start&end][&limit=20]`:
//! what differs between an operation's slow calls (duration ≥ `threshold`, by default the
//! operation's p90 in the window) and its normal ones — attribute values (`span.*`,
//! `resource.*`, `status`, `event`), child operations and services underneath, each ranked by
//! how much it explains the slowness, with example traces.
//! Scoring: [`crate::query::compare`]. An empty window answers counts of 0 and empty lists.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::{NativeError, params, range_ns, required};
use crate::api::AppState;
use crate::query::compare::{CompareRequest, Comparison};
use crate::tenant::{Tenant, TenantError};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub struct CompareParams {
    pub service: Option<String>,
    pub span_name: Option<String>,
    /// `250ms`, `1s`: slow = at least this long.
    pub threshold: Option<String>,
    pub start: Option<f64>,
    pub end: Option<f64>,
    /// Entries per list.
    pub limit: Option<usize>,
}

/// The request a query string describes.
pub fn request(p: &CompareParams) -> Result<CompareRequest, NativeError> {
    let service = required("service", p.service.as_deref())?;
    let span_name = required("span_name", p.span_name.as_deref())?;
    // An empty threshold (a cleared form field) means the default.
    let threshold_ns = p
        .threshold
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(|t| super::duration("threshold", t))
        .transpose()?;
    let (start_ns, end_ns) = range_ns(p.start, p.end, Duration::from_secs(3600))?;
    Ok(CompareRequest {
        service: service.to_string(),
        span_name: span_name.to_string(),
        start_ns,
        end_ns,
        threshold_ns,
        limit: p.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT),
    })
}

pub async fn handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    q: Result<Query<CompareParams>, QueryRejection>,
) -> Result<Json<Comparison>, NativeError> {
    let p = params(q)?;
    let Tenant(tenant) = tenant?;
    let req = request(&p)?;
    Ok(Json(state.engine.compare(&tenant, &req).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_validated() {
        let p = CompareParams {
            service: Some("payment".into()),
            span_name: Some("charge".into()),
            threshold: Some("250ms".into()),
            start: Some(10.0),
            end: Some(20.0),
            limit: Some(10_000),
        };
        let r = request(&p).unwrap();
        assert_eq!(r.threshold_ns, Some(250_000_000));
        assert_eq!((r.start_ns, r.end_ns), (10_000_000_000, 20_000_000_000));
        assert_eq!(r.limit, MAX_LIMIT);
        assert!(request(&CompareParams { span_name: None, ..p }).is_err());
        let bad = CompareParams {
            service: Some("s".into()),
            span_name: Some("n".into()),
            threshold: Some("slow".into()),
            ..Default::default()
        };
        assert!(request(&bad).is_err());
        let empty = CompareParams { threshold: Some(" ".into()), ..bad };
        assert_eq!(request(&empty).unwrap().threshold_ns, None);
    }
}
