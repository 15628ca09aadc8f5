//! `GET /skein/api/red?service=S[&span_name=N][&start&end&step=15s]`: rate, error ratio and
//! latency quantiles of a service (its SERVER spans, or all its spans if it has none) or of one
//! of its operations, per step, from the span-metric series.
//!
//! Each point `[ts_ms, v]` describes the interval `(ts_ms − step, ts_ms]`; the points are whole
//! steps ending at `end`, so the latest is as fresh as the window. Points of intervals without
//! calls are left out of `error_ratio` and the quantiles (there is nothing to say), `rate` has
//! every point.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::series::{Buckets, add_buckets, boundaries, buckets_by, quantile_ns, sum_by};
use super::{NativeError, params, range_ms};
use crate::api::AppState;
use crate::promql::Storage;
use crate::promql::labels::{Labels, METRIC_NAME};
use crate::promql::time_range::{self, MILLIS};
use crate::span_metrics::calls::{CALLS, LATENCY};
use crate::tenant::{Tenant, TenantError};

const DEFAULT_STEP_MS: i64 = 15_000;

#[derive(Debug, Default, Deserialize)]
pub struct RedParams {
    pub service: Option<String>,
    pub span_name: Option<String>,
    pub start: Option<f64>,
    pub end: Option<f64>,
    /// `15s`, `1m`; default 15s.
    pub step: Option<String>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct RedSeries {
    pub rate: Vec<(i64, f64)>,
    pub error_ratio: Vec<(i64, f64)>,
    pub p50_ns: Vec<(i64, i64)>,
    pub p90_ns: Vec<(i64, i64)>,
    pub p99_ns: Vec<(i64, i64)>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RedResponse {
    pub step_ms: i64,
    pub series: RedSeries,
}

/// RED series of `service` (optionally one `span_name`) over `[start, end]` ms.
pub fn red(
    st: &dyn Storage,
    service: &str,
    span_name: Option<&str>,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<RedResponse, NativeError> {
    let bounds = boundaries(start_ms, end_ms, Some(step_ms));
    let n = bounds.len().saturating_sub(1);
    let ours = |l: &Labels| {
        l.get("service") == Some(service) && span_name.is_none_or(|s| l.get("span_name") == Some(s))
    };
    let calls_name = |l: &Labels| l.get(METRIC_NAME) == Some(CALLS) && ours(l);
    // Key: (is SERVER, is error) for calls; is SERVER for buckets.
    let calls = sum_by(
        st,
        &calls_name,
        |l| {
            Some((
                l.get("span_kind") == Some("SPAN_KIND_SERVER"),
                l.get("status_code") == Some("STATUS_CODE_ERROR"),
            ))
        },
        &bounds,
    )?;
    let bucket_name = format!("{LATENCY}_bucket");
    let buckets = buckets_by(
        st,
        &|l| l.get(METRIC_NAME) == Some(bucket_name.as_str()) && ours(l),
        |l| Some(l.get("span_kind") == Some("SPAN_KIND_SERVER")),
        &bounds,
    )?;
    // A whole service is described by its SERVER spans when it has any.
    let server_only = span_name.is_none() && calls.keys().any(|(server, _)| *server);
    let mut total = vec![0.0; n];
    let mut errors = vec![0.0; n];
    for ((server, error), v) in &calls {
        if server_only && !server {
            continue;
        }
        for (i, x) in v.iter().enumerate().take(n) {
            total[i] += x;
            if *error {
                errors[i] += x;
            }
        }
    }
    let mut lat = Buckets::new();
    for (server, b) in &buckets {
        if !server_only || *server {
            add_buckets(&mut lat, b);
        }
    }
    let mut s = RedSeries::default();
    for (i, w) in bounds.windows(2).enumerate() {
        let (from, to) = (w[0], w[1]);
        let secs = (to - from) as f64 / 1000.0;
        s.rate.push((to, if secs > 0.0 { total[i] / secs } else { 0.0 }));
        if total[i] > 0.0 {
            s.error_ratio.push((to, errors[i] / total[i]));
        }
        for (q, out) in [(0.5, &mut s.p50_ns), (0.9, &mut s.p90_ns), (0.99, &mut s.p99_ns)] {
            if let Some(v) = quantile_ns(&lat, i, q) {
                out.push((to, v));
            }
        }
    }
    Ok(RedResponse { step_ms, series: s })
}

pub async fn handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    q: Result<Query<RedParams>, QueryRejection>,
) -> Result<Json<RedResponse>, NativeError> {
    let p = params(q)?;
    let Tenant(tenant) = tenant?;
    let service = super::required("service", p.service.as_deref())?;
    let step = match p.step.as_deref() {
        None => DEFAULT_STEP_MS,
        Some(v) => super::duration("step", v)? / 1_000_000,
    };
    if step <= 0 {
        return Err(NativeError::BadRequest("step must be at least 1ms".into()));
    }
    let (start, end) = range_ms(p.start, p.end)?;
    // Whole steps ending at `end`: as many boundaries as grid points from `start`.
    let checked = MILLIS
        .time("start", start)
        .and_then(|_| MILLIS.time("end", end))
        .and_then(|_| time_range::points(start, end, step));
    if let Err(e) = checked {
        state.engine.metrics.queries_refused.with_label_values(&["time_range"]).inc();
        return Err(NativeError::BadRequest(e.to_string()));
    }
    let span_name = p.span_name.as_deref().filter(|s| !s.is_empty());
    let storage = super::federated(&state, &tenant, start, end).await;
    Ok(Json(red(storage.as_ref(), service, span_name, start, end, step)?))
}
