//! `GET /skein/api/critical-path/{trace_id}`: the spans on a trace's critical path, root first
//! (each span followed by the path through its children in time order), with their intervals
//! clamped into their parents' and the time each spends on the path itself. `duration_ns` is
//! the root span's duration, which the `self_ns` values add up to. 404 for an unknown trace.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::NativeError;
use crate::api::AppState;
use crate::query::critical_path::{TraceSpan, critical_path};
use crate::query::parse_trace_id;
use crate::tenant::{Tenant, TenantError};

#[derive(Debug, Serialize, PartialEq)]
pub struct CriticalPath {
    pub trace_id: String,
    pub duration_ns: i64,
    pub spans: Vec<PathSpan>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PathSpan {
    pub span_id: String,
    pub service: String,
    pub span_name: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub self_ns: i64,
}

/// The response for a trace's spans.
pub fn response(trace_id: [u8; 16], spans: &[TraceSpan]) -> CriticalPath {
    let path = critical_path(spans);
    CriticalPath {
        trace_id: hex::encode(trace_id),
        duration_ns: path.first().map_or(0, |p| p.end_ns - p.start_ns),
        spans: path
            .into_iter()
            .map(|p| {
                let s = &spans[p.index];
                PathSpan {
                    span_id: hex::encode(s.span_id),
                    service: s.service.clone(),
                    span_name: s.name.clone(),
                    start_ns: p.start_ns,
                    end_ns: p.end_ns,
                    self_ns: p.self_ns,
                }
            })
            .collect(),
    }
}

pub async fn handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    Path(trace_id): Path<String>,
) -> Result<Json<CriticalPath>, NativeError> {
    let Tenant(tenant) = tenant?;
    let id = parse_trace_id(&trace_id)?;
    let spans = state.engine.trace_spans(&tenant, id).await?;
    Ok(Json(response(id, &spans)))
}
