//! skein's own API under `/skein/api/`, the one the web UI uses: flame graphs of one span, of
//! an operation, of an operation's spans slower than a threshold, and slow-vs-normal
//! differential flame graphs; the slow-vs-normal comparison of an operation (`compare`), a
//! trace's critical path, services and edges, a service's operations, RED series and
//! read-only SQL over the spans.
//!
//! Every endpoint takes the tenant from `X-Scope-OrgID`, windows as Unix seconds `start`/`end`
//! (default: the last hour), answers durations as integer nanoseconds (`*_ns`) and ids as
//! lowercase hex. Errors are `{"error": "..."}` with a 4xx/5xx status.
//!
//! Samples are selected by span: the instrumentation labels each CPU sample with the profile
//! scope span (`span_id`, the local root or a chosen span, the id Grafana's traces-to-profiles
//! asks for) and the innermost active span (`skein_span_id`); a span's flame graph is the
//! samples carrying its id in either label, each sample counted once.

pub mod compare;
pub mod critical_path;
pub mod flamegraph;
pub mod red;
pub mod series;
pub mod services;
pub mod sql;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use crate::error::{Coded, ErrorCode};
use crate::profile::ProfileError;
use crate::profile::tree::Tree;
use crate::promql::PromqlError;
use crate::query::QueryError;
use crate::query::operation::OperationQuery;
use crate::tenant::{Tenant, TenantError};

/// What CPU flame graphs show unless `profile_type` says otherwise.
pub const DEFAULT_PROFILE_TYPE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const DEFAULT_SPAN_LIMIT: usize = 500;
const MAX_SPAN_LIMIT: usize = 5000;
/// Samples of a span are taken after it started; spans that began inside the window may end
/// after it.
const SAMPLE_SLACK: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("cannot render the flame graph: {0}")]
    Render(String),
    #[error(transparent)]
    Series(#[from] PromqlError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
}

impl Coded for NativeError {
    fn code(&self) -> ErrorCode {
        match self {
            NativeError::BadRequest(_) => ErrorCode::InvalidArgument,
            NativeError::Query(e) => e.code(),
            NativeError::Profile(e) => e.code(),
            NativeError::Render(_) => ErrorCode::Internal,
            NativeError::Series(e) => e.code(),
            NativeError::Tenant(e) => e.code(),
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/skein/api/flamegraph", get(flamegraph_handler))
        .route("/skein/api/flamegraph/diff", get(diff_handler))
        .route("/skein/api/compare", get(compare::handler))
        .route("/skein/api/critical-path/{trace_id}", get(critical_path::handler))
        .route("/skein/api/services", get(services::services_handler))
        .route("/skein/api/operations", get(services::operations_handler))
        .route("/skein/api/red", get(red::handler))
        .route("/skein/api/sql", post(sql::handler))
}

/// Query parameters, or a 400 naming what is wrong with them.
fn params<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, NativeError> {
    q.map(|Query(p)| p).map_err(|e| NativeError::BadRequest(e.body_text()))
}

/// A parameter that must be given and not be empty.
fn required<'a>(name: &str, v: Option<&'a str>) -> Result<&'a str, NativeError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| NativeError::BadRequest(format!("{name} is required")))
}

/// `start`/`end` Unix seconds (default: the hour up to now) as (start, end) unix nanoseconds.
fn range_ns(
    start: Option<f64>,
    end: Option<f64>,
    default_span: Duration,
) -> Result<(i64, i64), NativeError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64();
    let end = end.unwrap_or(now);
    let start = start.unwrap_or(end - default_span.as_secs_f64());
    if !(start.is_finite() && end.is_finite()) || start > end || start < 0.0 {
        return Err(NativeError::BadRequest(format!("bad time range start={start} end={end}")));
    }
    Ok(((start * 1e9) as i64, (end * 1e9) as i64))
}

/// As [`range_ns`] with the default hour, in milliseconds.
fn range_ms(start: Option<f64>, end: Option<f64>) -> Result<(i64, i64), NativeError> {
    let (s, e) = range_ns(start, end, Duration::from_secs(3600))?;
    Ok((s / 1_000_000, e / 1_000_000))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    service: Option<String>,
    span_name: Option<String>,
    span_id: Option<String>,
    /// Only spans at least this long (`250ms`, `1s`).
    min_duration: Option<String>,
    /// Diff only: slow = at least this long, normal = shorter.
    threshold: Option<String>,
    /// Unix seconds; default: the last hour (the last day for a span id).
    start: Option<f64>,
    end: Option<f64>,
    format: Option<String>,
    profile_type: Option<String>,
    limit: Option<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Svg,
    Json,
}

fn format(p: &Params) -> Result<Format, NativeError> {
    match p.format.as_deref() {
        None | Some("svg") => Ok(Format::Svg),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(NativeError::BadRequest(format!("format {other:?}: use svg or json"))),
    }
}

fn duration(name: &str, v: &str) -> Result<i64, NativeError> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| NativeError::BadRequest(format!("{name} {v:?}: {e}")))?;
    i64::try_from(d.as_nanos()).map_err(|_| NativeError::BadRequest(format!("{name} too large")))
}

/// (start, end) in unix nanoseconds.
fn window(p: &Params, default_span: Duration) -> Result<(i64, i64), NativeError> {
    range_ns(p.start, p.end, default_span)
}

fn span_id(v: &str) -> Result<String, NativeError> {
    let v = v.trim().to_ascii_lowercase();
    if v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v)
    } else {
        Err(NativeError::BadRequest(format!("span_id {v:?} is not 16 hex digits")))
    }
}

fn operation(p: &Params) -> Result<(String, String), NativeError> {
    match (&p.service, &p.span_name) {
        (Some(s), Some(n)) if !s.is_empty() && !n.is_empty() => Ok((s.clone(), n.clone())),
        _ => Err(NativeError::BadRequest(
            "give span_id, or service and span_name (with min_duration for slow spans)".into(),
        )),
    }
}

/// A label selector value: quotes and backslashes escaped.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Samples whose scope span or innermost span is one of `ids`, each counted once.
async fn merge_spans(
    state: &AppState,
    tenant: &str,
    profile_type: &str,
    service: Option<&str>,
    ids: &[String],
    (start, end): (i64, i64),
) -> Result<Tree, NativeError> {
    if ids.is_empty() {
        return Ok(Tree::from_stacks(std::iter::empty()));
    }
    let end = end.saturating_add(SAMPLE_SLACK.as_nanos() as i64);
    let svc = service.map(|s| format!("service_name={},", quoted(s))).unwrap_or_default();
    let by_scope = state
        .profiles
        .merge_stacktraces(
            tenant,
            profile_type,
            &format!("{{{}}}", svc.trim_end_matches(',')),
            Some(ids),
            start,
            end,
        )
        .await?;
    let alternatives = quoted(&ids.join("|"));
    let inner = format!("{{{svc}skein_span_id=~{alternatives},span_id!~{alternatives}}}");
    let by_innermost =
        state.profiles.merge_stacktraces(tenant, profile_type, &inner, None, start, end).await?;
    Ok(flamegraph::add(&by_scope, &by_innermost))
}

/// The spans a request selects: one span id, or an operation's spans (optionally slower than
/// `min`, or faster than `below`).
async fn select(
    state: &AppState,
    tenant: &str,
    p: &Params,
    min: Option<i64>,
    below: Option<i64>,
    range: (i64, i64),
) -> Result<Vec<String>, NativeError> {
    if let Some(id) = &p.span_id {
        return Ok(vec![span_id(id)?]);
    }
    let (service, span_name) = operation(p)?;
    let q = OperationQuery {
        service,
        span_name,
        start_ns: range.0,
        end_ns: range.1,
        min_duration_ns: min,
        below_duration_ns: below,
        limit: p.limit.unwrap_or(DEFAULT_SPAN_LIMIT).clamp(1, MAX_SPAN_LIMIT),
    };
    let spans = state.engine.operation_spans(tenant, &q).await?;
    Ok(spans.iter().map(|s| hex::encode(s.span_id)).collect())
}

fn title(p: &Params, what: &str) -> String {
    match (&p.span_id, &p.service, &p.span_name) {
        (Some(id), _, _) => format!("span {id}"),
        (None, Some(s), Some(n)) => format!("{s}: {n}{what}"),
        _ => "flame graph".into(),
    }
}

fn svg_response(svg: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

async fn flamegraph_handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    Query(p): Query<Params>,
) -> Result<Response, NativeError> {
    let Tenant(tenant) = tenant?;
    let fmt = format(&p)?;
    let range = window(
        &p,
        if p.span_id.is_some() { Duration::from_secs(86_400) } else { Duration::from_secs(3600) },
    )?;
    let min = p.min_duration.as_deref().map(|v| duration("min_duration", v)).transpose()?;
    let ids = select(&state, &tenant, &p, min, None, range).await?;
    let pt = p.profile_type.as_deref().unwrap_or(DEFAULT_PROFILE_TYPE);
    let service = if p.span_id.is_some() { None } else { p.service.as_deref() };
    let tree = merge_spans(&state, &tenant, pt, service, &ids, range).await?;
    let what = p.min_duration.as_deref().map(|m| format!(" slower than {m}")).unwrap_or_default();
    match fmt {
        Format::Json => Ok(Json(serde_json::json!({
            "profile_type": pt,
            "spans": ids.len(),
            "tree": tree,
        }))
        .into_response()),
        Format::Svg => Ok(svg_response(flamegraph::svg(&tree, &title(&p, &what), "samples")?)),
    }
}

async fn diff_handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    Query(p): Query<Params>,
) -> Result<Response, NativeError> {
    let Tenant(tenant) = tenant?;
    let fmt = format(&p)?;
    let (service, _) = operation(&p)?;
    let threshold = p
        .threshold
        .as_deref()
        .ok_or_else(|| NativeError::BadRequest("threshold is required (e.g. 250ms)".into()))?;
    let t = duration("threshold", threshold)?;
    let range = window(&p, Duration::from_secs(3600))?;
    let pt = p.profile_type.as_deref().unwrap_or(DEFAULT_PROFILE_TYPE);
    let slow_ids = select(&state, &tenant, &p, Some(t), None, range).await?;
    let normal_ids = select(&state, &tenant, &p, None, Some(t), range).await?;
    let slow = merge_spans(&state, &tenant, pt, Some(&service), &slow_ids, range).await?;
    let normal = merge_spans(&state, &tenant, pt, Some(&service), &normal_ids, range).await?;
    match fmt {
        Format::Json => Ok(Json(serde_json::json!({
            "profile_type": pt,
            "baseline": {"spans": normal_ids.len(), "total": normal.total()},
            "comparison": {"spans": slow_ids.len(), "total": slow.total()},
            "tree": flamegraph::diff_json(&normal, &slow),
        }))
        .into_response()),
        Format::Svg => Ok(svg_response(flamegraph::diff_svg(
            &normal,
            &slow,
            &format!(
                "{}: slower than {threshold} vs faster (red: more time when slow)",
                title(&p, "")
            ),
        )?)),
    }
}

/// The span-metric series a native query over `[start, end]` (ms) reads: with peers, every
/// replica's (each labelled with its `skein_node`, which the native answers aggregate away).
async fn federated(
    state: &AppState,
    tenant: &str,
    start: i64,
    end: i64,
) -> std::sync::Arc<dyn crate::promql::Storage> {
    let from = start.saturating_sub(series::BASELINE_LOOKBACK_MS);
    let local = super::prometheus::federate::Local {
        series: state.span_metrics.storage(tenant),
        rules: None,
    };
    super::prometheus::federate::storage_in(state, local, tenant, Vec::new(), from, end).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_validated() {
        assert!(span_id("00F067AA0BA902B7").is_ok());
        assert!(span_id("xyz").is_err());
        assert_eq!(duration("t", "250ms").unwrap(), 250_000_000);
        assert!(duration("t", "soon").is_err());
        let p = Params { start: Some(10.0), end: Some(5.0), ..Default::default() };
        assert!(window(&p, Duration::from_secs(1)).is_err());
        let p = Params { format: Some("png".into()), ..Default::default() };
        assert!(format(&p).is_err());
        assert!(operation(&Params::default()).is_err());
        assert_eq!(quoted(r#"a"b"#), r#""a\"b""#);
    }
}
