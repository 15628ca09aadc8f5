//! `GET /skein/api/services` (services and service-graph edges with rate, error ratio and
//! latency quantiles) and `GET /skein/api/operations?service=` (a service's operations), from
//! the span-metric and service-graph series over the window. Rates are per second over the
//! whole window; quantiles come from the latency histograms (bucket-interpolated, integer ns).

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::series::{Buckets, add_buckets, boundaries, buckets_by, quantile_ns, ratio, sum_by};
use super::{NativeError, params, range_ms};
use crate::api::AppState;
use crate::promql::Storage;
use crate::promql::labels::{Labels, METRIC_NAME};
use crate::span_metrics::calls::{CALLS, LATENCY};
use crate::span_metrics::servicegraph::{REQUEST_FAILED_TOTAL, REQUEST_TOTAL, SERVER_SECONDS};
use crate::tenant::{Tenant, TenantError};

const SERVER: &str = "SPAN_KIND_SERVER";
const ERROR: &str = "STATUS_CODE_ERROR";

#[derive(Debug, Default, Deserialize)]
pub struct WindowParams {
    pub service: Option<String>,
    /// Unix seconds; default: the last hour.
    pub start: Option<f64>,
    pub end: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceStats {
    pub name: String,
    pub rate: f64,
    pub error_ratio: f64,
    pub p50_ns: Option<i64>,
    pub p90_ns: Option<i64>,
    pub p99_ns: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Edge {
    pub client: String,
    pub server: String,
    pub connection_type: String,
    pub rate: f64,
    pub error_ratio: f64,
    pub p90_ns: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ServicesResponse {
    pub services: Vec<ServiceStats>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Operation {
    pub span_name: String,
    pub span_kind: String,
    pub rate: f64,
    pub error_ratio: f64,
    pub p90_ns: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct OperationsResponse {
    pub operations: Vec<Operation>,
}

fn named(name: &'static str) -> impl Fn(&Labels) -> bool {
    move |l: &Labels| l.get(METRIC_NAME) == Some(name)
}

fn label(l: &Labels, name: &str) -> String {
    l.get(name).unwrap_or_default().to_string()
}

fn per_second(v: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { v / seconds } else { 0.0 }
}

/// Calls, errors and latency buckets of the span metrics over one interval, by `key`.
struct Red<K> {
    calls: BTreeMap<K, f64>,
    errors: BTreeMap<K, f64>,
    latency: BTreeMap<K, Buckets>,
}

fn red_by<K: Ord + Clone>(
    st: &dyn Storage,
    matches: &dyn Fn(&Labels) -> bool,
    key: impl Fn(&Labels) -> Option<K> + Copy,
    bounds: &[i64],
) -> Result<Red<K>, NativeError> {
    let bucket_name = format!("{LATENCY}_bucket");
    let first = |m: BTreeMap<K, Vec<f64>>| -> BTreeMap<K, f64> {
        m.into_iter().map(|(k, v)| (k, v.first().copied().unwrap_or(0.0))).collect()
    };
    let calls = first(sum_by(st, &|l| named(CALLS)(l) && matches(l), key, bounds)?);
    let errors = first(sum_by(
        st,
        &|l| named(CALLS)(l) && l.get("status_code") == Some(ERROR) && matches(l),
        key,
        bounds,
    )?);
    let latency = buckets_by(
        st,
        &|l| l.get(METRIC_NAME) == Some(bucket_name.as_str()) && matches(l),
        key,
        bounds,
    )?;
    Ok(Red { calls, errors, latency })
}

/// Services (SERVER spans; services with none are described by all their spans) and edges.
pub fn services(
    st: &dyn Storage,
    start_ms: i64,
    end_ms: i64,
) -> Result<ServicesResponse, NativeError> {
    let bounds = boundaries(start_ms, end_ms, None);
    let secs = (end_ms - start_ms) as f64 / 1000.0;
    let red = red_by(
        st,
        &|_| true,
        |l| Some((label(l, "service"), l.get("span_kind") == Some(SERVER))),
        &bounds,
    )?;
    let names: BTreeSet<&String> = red.calls.keys().map(|(s, _)| s).collect();
    let mut services = Vec::new();
    for name in names {
        let has_server = red.calls.get(&(name.clone(), true)).is_some_and(|c| *c > 0.0);
        let kinds: &[bool] = if has_server { &[true] } else { &[true, false] };
        let (mut calls, mut errors, mut lat) = (0.0, 0.0, Buckets::new());
        for k in kinds {
            let key = (name.clone(), *k);
            calls += red.calls.get(&key).copied().unwrap_or(0.0);
            errors += red.errors.get(&key).copied().unwrap_or(0.0);
            if let Some(b) = red.latency.get(&key) {
                add_buckets(&mut lat, b);
            }
        }
        if calls <= 0.0 {
            continue;
        }
        services.push(ServiceStats {
            name: name.clone(),
            rate: per_second(calls, secs),
            error_ratio: ratio(errors, calls),
            p50_ns: quantile_ns(&lat, 0, 0.5),
            p90_ns: quantile_ns(&lat, 0, 0.9),
            p99_ns: quantile_ns(&lat, 0, 0.99),
        });
    }

    let edge_key =
        |l: &Labels| Some((label(l, "client"), label(l, "server"), label(l, "connection_type")));
    let first = |m: BTreeMap<(String, String, String), Vec<f64>>| {
        m.into_iter()
            .map(|(k, v)| (k, v.first().copied().unwrap_or(0.0)))
            .collect::<BTreeMap<_, _>>()
    };
    let total = first(sum_by(st, &named(REQUEST_TOTAL), edge_key, &bounds)?);
    let failed = first(sum_by(st, &named(REQUEST_FAILED_TOTAL), edge_key, &bounds)?);
    let bucket_name = format!("{SERVER_SECONDS}_bucket");
    let lat =
        buckets_by(st, &|l| l.get(METRIC_NAME) == Some(bucket_name.as_str()), edge_key, &bounds)?;
    let edges = total
        .into_iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(k, n)| Edge {
            rate: per_second(n, secs),
            error_ratio: ratio(failed.get(&k).copied().unwrap_or(0.0), n),
            p90_ns: lat.get(&k).and_then(|b| quantile_ns(b, 0, 0.9)),
            client: k.0,
            server: k.1,
            connection_type: k.2,
        })
        .collect();
    Ok(ServicesResponse { services, edges })
}

/// The operations of `service`, busiest first.
pub fn operations(
    st: &dyn Storage,
    service: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<OperationsResponse, NativeError> {
    let bounds = boundaries(start_ms, end_ms, None);
    let secs = (end_ms - start_ms) as f64 / 1000.0;
    let red = red_by(
        st,
        &|l| l.get("service") == Some(service),
        |l| Some((label(l, "span_name"), label(l, "span_kind"))),
        &bounds,
    )?;
    let mut operations: Vec<Operation> = red
        .calls
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(k, n)| Operation {
            span_name: k.0.clone(),
            span_kind: k.1.clone(),
            rate: per_second(*n, secs),
            error_ratio: ratio(red.errors.get(k).copied().unwrap_or(0.0), *n),
            p90_ns: red.latency.get(k).and_then(|b| quantile_ns(b, 0, 0.9)),
        })
        .collect();
    operations
        .sort_by(|a, b| b.rate.total_cmp(&a.rate).then_with(|| a.span_name.cmp(&b.span_name)));
    Ok(OperationsResponse { operations })
}

pub async fn services_handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    q: Result<Query<WindowParams>, QueryRejection>,
) -> Result<Json<ServicesResponse>, NativeError> {
    let p = params(q)?;
    let Tenant(tenant) = tenant?;
    let (start, end) = range_ms(p.start, p.end)?;
    let storage = super::federated(&state, &tenant, start, end).await;
    Ok(Json(services(storage.as_ref(), start, end)?))
}

pub async fn operations_handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    q: Result<Query<WindowParams>, QueryRejection>,
) -> Result<Json<OperationsResponse>, NativeError> {
    let p = params(q)?;
    let Tenant(tenant) = tenant?;
    let service = super::required("service", p.service.as_deref())?;
    let (start, end) = range_ms(p.start, p.end)?;
    let storage = super::federated(&state, &tenant, start, end).await;
    Ok(Json(operations(storage.as_ref(), service, start, end)?))
}
