//! Prometheus-compatible HTTP API under `/prometheus`
//! over the span metrics and service-graph series, and their text exposition at
//! `/prometheus/metrics` for a real Prometheus to scrape. `X-Scope-OrgID` selects the tenant
//! (or, on any gated route, `?tenant=`, since Prometheus 2.x scrape configs cannot set
//! headers), checked against the caller's token like the header.

pub mod federate;
pub mod params;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use promql_parser::parser::{Expr, VectorSelector};
use serde_json::{Value as Json, json};

use super::AppState;
use crate::alert::Alerting;
use crate::alert::api::RuleFilter;
use crate::promql::answer_limits::AnswerLimits;
use crate::promql::time_range::{MILLIS, Steps};
use crate::promql::value::{format_time, format_value, to_json};
use crate::promql::{self, PromqlError, now_ms, selector_matches};
use crate::span_metrics::exposition::FAMILIES;
use crate::tenant::Tenant;
use params::{Params, parse_step};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/prometheus/metrics", get(exposition))
        .route("/prometheus/api/v1/query", get(query).post(query))
        .route("/prometheus/api/v1/query_range", get(query_range).post(query_range))
        .route("/prometheus/api/v1/labels", get(labels).post(labels))
        .route("/prometheus/api/v1/label/{name}/values", get(label_values))
        .route("/prometheus/api/v1/series", get(series).post(series))
        .route("/prometheus/api/v1/metadata", get(metadata))
        .route("/prometheus/api/v1/status/buildinfo", get(buildinfo))
        .route("/prometheus/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route("/prometheus/api/v1/rules", get(rules))
        .route("/prometheus/api/v1/alerts", get(alerts))
}

/// Rule state and recorded series, when the server runs rules (an extension set by `serve`).
type Rules = Option<Extension<Arc<Alerting>>>;

/// What PromQL reads for a tenant: span metrics, plus rule output where rules run.
fn storage(s: &AppState, rules: &Rules, tenant: &str) -> federate::Local {
    federate::Local {
        series: s.span_metrics.storage(tenant),
        rules: rules.as_ref().and_then(|Extension(a)| a.rule_output(tenant)),
    }
}

/// The caller's tenant's rules only (an empty list for a tenant without rules).
async fn rules(
    rules: Rules,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    let p = Params::new(q.as_deref(), &headers, &[]);
    let filter = RuleFilter {
        kind: match p.get("type") {
            None | Some("") => None,
            Some(t @ ("alert" | "record")) => Some(t.to_string()),
            Some(other) => {
                return Err(PromqlError::BadData(format!(
                    "invalid parameter \"type\": {other:?} is not alert or record"
                )));
            }
        },
        names: p.all("rule_name[]").into_iter().map(String::from).collect(),
        groups: p.all("rule_group[]").into_iter().map(String::from).collect(),
        files: p.all("file[]").into_iter().map(String::from).collect(),
    };
    Ok(success(match rules {
        Some(Extension(a)) => a.rules_json(&tenant, &filter),
        None => json!({"groups": []}),
    }))
}

/// The caller's tenant's pending and firing alerts only.
async fn alerts(rules: Rules, Tenant(tenant): Tenant) -> Answer {
    Ok(success(match rules {
        Some(Extension(a)) => a.alerts_json(&tenant),
        None => json!({"alerts": []}),
    }))
}

type Answer = Result<Response, PromqlError>;

/// `--max-query-series` / `--max-query-samples` (an extension set by `serve`; defaults without).
type Limits = Option<Extension<AnswerLimits>>;

fn limits(l: &Limits) -> AnswerLimits {
    let limits: AnswerLimits = l.as_ref().map(|Extension(l)| *l).unwrap_or_default();
    // Evaluation runs on a blocking thread that the runner's timeout cannot abort.
    AnswerLimits { deadline: crate::deadline::current(), ..limits }
}

/// Counts refusals by a query limit on `skein_queries_refused_total`.
fn counted<T>(s: &AppState, r: Result<T, PromqlError>) -> Result<T, PromqlError> {
    if let Err(e) = &r
        && let Some(reason) = e.refusal()
    {
        s.engine.metrics.queries_refused.with_label_values(&[reason]).inc();
    }
    r
}

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// Runs CPU-bound evaluation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PromqlError> + Send + 'static,
) -> Result<T, PromqlError> {
    tokio::task::spawn_blocking(f).await?
}

async fn query(
    State(s): State<AppState>,
    rules: Rules,
    lim: Limits,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let r = async {
        let p = Params::new(q.as_deref(), &headers, &body);
        let local = storage(&s, &rules, &tenant);
        let expr = promql::parse(p.required("query")?)?;
        let t = p.time("time", now_ms())?;
        let limits = limits(&lim);
        let (e, l) = (expr.clone(), limits);
        let dry = move |st: &dyn promql::Storage| {
            let _ = promql::instant_limited(st, &e, t, &l);
        };
        let storage = federate::storage(&s, local, &tenant, &expr, dry).await?;
        let v =
            blocking(move || promql::instant_limited(storage.as_ref(), &expr, t, &limits)).await?;
        Ok::<_, PromqlError>(success(to_json(&v, t)))
    };
    counted(&s, r.await)
}

async fn query_range(
    State(s): State<AppState>,
    rules: Rules,
    lim: Limits,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let r = async {
        let p = Params::new(q.as_deref(), &headers, &body);
        let local = storage(&s, &rules, &tenant);
        let expr = promql::parse(p.required("query")?)?;
        let start = p.required("start").and_then(|_| p.time("start", 0))?;
        let end = p.required("end").and_then(|_| p.time("end", 0))?;
        let step = parse_step(p.required("step")?)?;
        let steps = Steps::new(MILLIS, start, end, step)?;
        let limits = limits(&lim);
        let (e, st, l) = (expr.clone(), steps, limits);
        let dry = move |storage: &dyn promql::Storage| {
            let _ = promql::range(storage, &e, &st, &l);
        };
        let storage = federate::storage(&s, local, &tenant, &expr, dry).await?;
        let v = blocking(move || promql::range(storage.as_ref(), &expr, &steps, &limits)).await?;
        Ok::<_, PromqlError>(success(to_json(&v, end)))
    };
    counted(&s, r.await)
}

/// `match[]` selectors; each must be a plain series selector.
fn selectors(p: &Params) -> Result<Vec<VectorSelector>, PromqlError> {
    p.all("match[]")
        .into_iter()
        .map(|m| match promql::parse(m)? {
            Expr::VectorSelector(vs) => Ok(vs),
            _ => Err(PromqlError::BadData(format!(
                "invalid parameter \"match[]\": {m:?} is not a series selector"
            ))),
        })
        .collect()
}

/// Label sets of the series matching any of `match[]` (all series without it) in the range,
/// every replica's.
async fn matching_series(
    s: &AppState,
    rules: &Rules,
    tenant: &str,
    p: &Params,
) -> Result<Vec<promql::labels::Labels>, PromqlError> {
    let sel = selectors(p)?;
    let start = p.time("start", i64::MIN / 2)?;
    let end = p.time("end", i64::MAX / 2)?;
    let texts = sel.iter().map(|vs| vs.to_string()).collect();
    let storage =
        federate::storage_in(s, storage(s, rules, tenant), tenant, texts, start, end).await;
    let matches =
        |l: &promql::labels::Labels| sel.is_empty() || sel.iter().any(|vs| selector_matches(vs, l));
    Ok(storage.select(&matches, start, end)?.into_iter().map(|s| s.labels).collect())
}

fn limited(mut v: Vec<Json>, limit: Option<usize>) -> Vec<Json> {
    if let Some(n) = limit {
        v.truncate(n);
    }
    v
}

async fn labels(
    State(s): State<AppState>,
    rules: Rules,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::new(q.as_deref(), &headers, &body);
    let names: BTreeSet<String> = matching_series(&s, &rules, &tenant, &p)
        .await?
        .iter()
        .flat_map(|l| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
        .collect();
    Ok(success(Json::Array(limited(names.into_iter().map(Json::from).collect(), p.limit()?))))
}

async fn label_values(
    State(s): State<AppState>,
    rules: Rules,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    let p = Params::new(q.as_deref(), &headers, &[]);
    let values: BTreeSet<String> = matching_series(&s, &rules, &tenant, &p)
        .await?
        .iter()
        .filter_map(|l| l.get(&name).map(String::from))
        .collect();
    Ok(success(Json::Array(limited(values.into_iter().map(Json::from).collect(), p.limit()?))))
}

async fn series(
    State(s): State<AppState>,
    rules: Rules,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::new(q.as_deref(), &headers, &body);
    if p.all("match[]").is_empty() {
        return Err(PromqlError::BadData("no match[] parameter provided".into()));
    }
    let mut found = matching_series(&s, &rules, &tenant, &p).await?;
    found.sort();
    Ok(success(Json::Array(limited(found.iter().map(|l| l.to_json()).collect(), p.limit()?))))
}

async fn metadata(headers: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    let p = Params::new(q.as_deref(), &headers, &[]);
    let metric = p.get("metric");
    let families: serde_json::Map<String, Json> = FAMILIES
        .iter()
        .filter(|f| metric.is_none_or(|m| m == f.name))
        .map(|f| (f.name.to_string(), json!([{"type": f.kind, "help": f.help, "unit": ""}])))
        .collect();
    let limit = p.limit()?.unwrap_or(usize::MAX);
    Ok(success(Json::Object(families.into_iter().take(limit).collect())))
}

async fn buildinfo() -> Response {
    // No `features`: a non-empty one makes Grafana treat the server as Mimir.
    success(json!({
        "version": "2.42.0",
        "revision": env!("CARGO_PKG_VERSION"),
        "branch": "skein",
        "buildUser": "skein",
        "buildDate": "",
        "goVersion": "none (skein is written in Rust)",
    }))
}

async fn exemplars(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::new(q.as_deref(), &headers, &body);
    let expr = promql::parse(p.required("query")?)?;
    let start = p.time("start", i64::MIN / 2)?;
    let end = p.time("end", i64::MAX / 2)?;
    let sel = promql::collect_selectors(&expr);
    let matches = |l: &promql::labels::Labels| sel.iter().any(|vs| selector_matches(vs, l));
    let data: Vec<Json> = s
        .span_metrics
        .exemplars(&tenant, &matches, start, end)
        .into_iter()
        .map(|(labels, ex)| {
            json!({
                "seriesLabels": labels.to_json(),
                "exemplars": ex.iter().map(|e| json!({
                    "labels": {"trace_id": hex::encode(e.trace_id), "span_id": hex::encode(e.span_id)},
                    "value": format_value(e.value),
                    "timestamp": format_time(e.t_ms),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(success(Json::Array(data)))
}

/// The span metrics of the caller's tenant in the text format, for scraping.
async fn exposition(State(s): State<AppState>, Tenant(tenant): Tenant) -> Answer {
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.span_metrics.exposition(&tenant),
    )
        .into_response())
}
