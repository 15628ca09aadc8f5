//! Pyroscope-compatible HTTP surface:
//!
//! - Connect unary `POST /pyroscope/querier.v1.QuerierService/{ProfileTypes, LabelNames,
//!   LabelValues, SelectSeries, SelectMergeStacktraces, SelectMergeSpanProfile}` for Grafana's
//!   Pyroscope datasource (URL `http://<skein>/pyroscope`), binary protobuf or JSON;
//! - push: `POST /ingest` (and `/pyroscope/ingest`) for pyroscope-go/java agents and
//!   skein-instrument, and Connect `POST /push.v1.PusherService/Push` (and under `/pyroscope`)
//!   for pyroscope-rs based agents (pyroscope-io for Python), which push there.
//!
//! Request times are milliseconds; the profile module works in nanoseconds.

pub mod connect;
pub mod flamegraph;
pub mod json;
pub mod proto;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::AppState;
use crate::profile::limits::Budget;
use crate::profile::model::{Batch, Label, ProfileType};
use crate::profile::push::{self, IngestParams};
use crate::profile::wire;
use crate::profile::{MergeRequest, ProfileError, Profiles, SeriesRequest};
use crate::tenant::Tenant;
use connect::{Codec, ConnectError, read_body};
use proto::querier::v1 as q;
use proto::types::v1 as t;

/// The Connect querier (queries: behind the query runner).
pub fn querier_router() -> Router<AppState> {
    Router::new().route("/pyroscope/querier.v1.QuerierService/{method}", post(querier))
}

/// Pyroscope's HTTP push (`/ingest`, plain-text errors).
pub fn ingest_router() -> Router<AppState> {
    Router::new().route("/ingest", post(ingest)).route("/pyroscope/ingest", post(ingest))
}

/// `push.v1.PusherService/Push` (Connect errors).
pub fn push_router() -> Router<AppState> {
    Router::new()
        .route("/push.v1.PusherService/Push", post(push_v1))
        .route("/pyroscope/push.v1.PusherService/Push", post(push_v1))
}

/// Grafana's default step when a request has none, in seconds.
const DEFAULT_STEP_SECS: f64 = 15.0;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// A request's `start`/`end` in milliseconds as an inclusive nanosecond range. An unset (zero)
/// end means "up to now and beyond".
fn range(start_ms: i64, end_ms: i64) -> Result<(i64, i64), ProfileError> {
    let start = start_ms.max(0).saturating_mul(1_000_000);
    let end = if end_ms <= 0 {
        i64::MAX
    } else {
        end_ms.saturating_mul(1_000_000).saturating_add(999_999)
    };
    if start > end {
        return Err(ProfileError::BadRequest("start must not be after end".into()));
    }
    Ok((start, end))
}

fn max_nodes(v: Option<i64>) -> usize {
    match v {
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => flamegraph::DEFAULT_MAX_NODES,
    }
}

/// A merge over `profile_type` samples the selector picks between two request times (ms).
fn merge_request(
    profile_type: String,
    selector: String,
    start_ms: i64,
    end_ms: i64,
) -> Result<MergeRequest, ProfileError> {
    let (start_ns, end_ns) = range(start_ms, end_ms)?;
    Ok(MergeRequest { profile_type, selector, start_ns, end_ns, ..Default::default() })
}

/// The merged tree of `req` as a flame graph of at most `nodes` nodes.
async fn flamegraph(
    p: &Arc<Profiles>,
    tenant: &str,
    req: MergeRequest,
    nodes: Option<i64>,
) -> Result<Option<q::FlameGraph>, ProfileError> {
    let tree = p.merge(tenant, req).await?;
    Ok(Some(flamegraph::encode(&tree, max_nodes(nodes))))
}

async fn querier(
    State(s): State<AppState>,
    Path(method): Path<String>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let r = match call(&s, &method, &tenant, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    s.engine.observe(&format!("pyroscope_{method}"), started);
    r
}

async fn call(
    s: &AppState,
    method: &str,
    tenant: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ConnectError> {
    let codec = Codec::of(headers)?;
    let p = &s.profiles;
    let body = read_body(body, headers, p.max_body_bytes()).await?;
    Ok(match method {
        "ProfileTypes" => {
            let req: q::ProfileTypesRequest = codec.decode(&body)?;
            let (start, end) = range(req.start, req.end)?;
            let mut profile_types = Vec::new();
            for id in p.profile_types(tenant, start, end).await? {
                let pt = ProfileType::parse(&id)?;
                profile_types.push(t::ProfileType {
                    id,
                    name: pt.name,
                    sample_type: pt.sample_type,
                    sample_unit: pt.sample_unit,
                    period_type: pt.period_type,
                    period_unit: pt.period_unit,
                });
            }
            codec.respond(&q::ProfileTypesResponse { profile_types })
        }
        "LabelNames" => {
            let req: t::LabelNamesRequest = codec.decode(&body)?;
            let (start, end) = range(req.start, req.end)?;
            let names = p.label_names(tenant, &req.matchers, start, end).await?;
            codec.respond(&t::LabelNamesResponse { names })
        }
        "LabelValues" => {
            let req: t::LabelValuesRequest = codec.decode(&body)?;
            if req.name.is_empty() {
                return Err(ProfileError::BadRequest("name is required".into()).into());
            }
            let (start, end) = range(req.start, req.end)?;
            let names = p.label_values(tenant, &req.name, &req.matchers, start, end).await?;
            codec.respond(&t::LabelValuesResponse { names })
        }
        "SelectMergeStacktraces" => {
            let req: q::SelectMergeStacktracesRequest = codec.decode(&body)?;
            let mut m = merge_request(req.profile_type_id, req.label_selector, req.start, req.end)?;
            m.call_site = req
                .stack_trace_selector
                .map(|s| s.call_site.into_iter().map(|l| l.name).collect())
                .unwrap_or_default();
            m.span_ids = (!req.span_selector.is_empty()).then_some(req.span_selector);
            let flamegraph = flamegraph(p, tenant, m, req.max_nodes).await?;
            codec.respond(&q::SelectMergeStacktracesResponse { flamegraph })
        }
        "SelectMergeSpanProfile" => {
            let req: q::SelectMergeSpanProfileRequest = codec.decode(&body)?;
            let mut m = merge_request(req.profile_type_id, req.label_selector, req.start, req.end)?;
            m.span_ids = Some(req.span_selector);
            let flamegraph = flamegraph(p, tenant, m, req.max_nodes).await?;
            codec.respond(&q::SelectMergeSpanProfileResponse { flamegraph })
        }
        "SelectSeries" => {
            let req: q::SelectSeriesRequest = codec.decode(&body)?;
            let (start_ns, end_ns) = range(req.start, req.end)?;
            let step =
                if req.step.is_finite() && req.step > 0.0 { req.step } else { DEFAULT_STEP_SECS };
            let average = req.aggregation == Some(t::TimeSeriesAggregationType::Average as i32);
            let series = p
                .select_series(
                    tenant,
                    SeriesRequest {
                        profile_type: req.profile_type_id,
                        selector: req.label_selector,
                        start_ns,
                        end_ns,
                        group_by: req.group_by,
                        step_ns: (step * 1e9) as i64,
                        average,
                        limit: req.limit.filter(|l| *l > 0).map(|l| l as usize),
                    },
                )
                .await?;
            let series = series
                .into_iter()
                .map(|s| t::Series {
                    labels: s
                        .labels
                        .into_iter()
                        .map(|(name, value)| t::LabelPair { name, value })
                        .collect(),
                    points: s
                        .points
                        .into_iter()
                        .map(|(ts, value)| t::Point { value, timestamp: ts / 1_000_000 })
                        .collect(),
                })
                .collect();
            codec.respond(&q::SelectSeriesResponse { series })
        }
        other => return Err(ConnectError::UnknownMethod(other.to_string())),
    })
}

/// `POST /ingest`: Pyroscope's push API; answers 200 with an empty body once durable.
async fn ingest(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let run = async {
        let limit = s.profiles.max_body_bytes();
        let params = IngestParams::parse(&params, now_ns())?;
        let body_len = content_length(&headers);
        let body = read_body(body, &headers, limit).await?;
        let sent = body_len.unwrap_or(body.len() as u64);
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
        let p = params.clone();
        let batch =
            s.profiles.decode(move |budget| push::ingest(&p, ct.as_deref(), &body, budget)).await?;
        s.profiles.ingest(tenant.clone(), batch).await?;
        let pushed = &s.profiles.metrics().profile_push_bytes;
        pushed.with_label_values(&[tenant.as_str(), params.app.as_str()]).inc_by(sent);
        Ok::<(), ProfileError>(())
    };
    match run.await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The body's size on the wire, when the client declared it.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `push.v1.PusherService/Push` (binary protobuf only: its profiles are bytes).
async fn push_v1(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        if Codec::of(&headers)? != Codec::Proto {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            return Err(ConnectError::UnsupportedMediaType(ct.unwrap_or_default().to_string()));
        }
        let limit = s.profiles.max_body_bytes();
        let body = read_body(body, &headers, limit).await?;
        let now = now_ns();
        let batch = s.profiles.decode(move |budget| push_batch(&body, now, budget)).await?;
        s.profiles.ingest(tenant, batch).await?;
        Ok::<(), ConnectError>(())
    };
    match run.await {
        Ok(()) => connect::proto_response(Vec::new()),
        Err(e) => e.into_response(),
    }
}

/// Decodes a `push.v1` request into one batch; the request message itself is charged to the
/// push's budget (on the wire, before prost allocates it) like the profiles in it.
fn push_batch(body: &[u8], now: i64, budget: &mut Budget) -> Result<Batch, ProfileError> {
    wire::scan(body, wire::Message::PushRequest, budget)?;
    let req = <proto::push::v1::PushRequest as prost::Message>::decode(body)
        .map_err(|e| ProfileError::Malformed(format!("push request: {e}")))?;
    let mut batch = Batch::default();
    for series in req.series {
        let labels = series.labels.into_iter().map(|l| Label::new(l.name, l.value)).collect();
        let raw: Vec<&[u8]> = series.samples.iter().map(|s| s.raw_profile.as_slice()).collect();
        batch.profiles.extend(push::series(labels, &raw, now, budget)?);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_ranges_become_inclusive_nanoseconds_and_zero_end_is_open() {
        assert_eq!(range(1000, 4000).unwrap(), (1_000_000_000, 4_000_999_999));
        assert_eq!(range(5, 0).unwrap().1, i64::MAX);
        assert!(range(10, 5).is_err());
        assert_eq!(max_nodes(None), flamegraph::DEFAULT_MAX_NODES);
        assert_eq!(max_nodes(Some(-1)), flamegraph::DEFAULT_MAX_NODES);
        assert_eq!(max_nodes(Some(16384)), 16384);
    }

    #[test]
    fn push_wire_sizes_match_the_generated_structs() {
        use proto::push::v1 as p;
        use std::mem::size_of;
        assert_eq!(wire::PUSH_REQUEST_SIZE, size_of::<p::PushRequest>());
        assert_eq!(wire::RAW_PROFILE_SERIES_SIZE, size_of::<p::RawProfileSeries>());
        assert_eq!(wire::LABEL_PAIR_SIZE, size_of::<t::LabelPair>());
        assert_eq!(wire::RAW_SAMPLE_SIZE, size_of::<p::RawSample>());
    }

    #[test]
    fn push_requests_of_empty_series_are_refused_before_decoding() {
        let body: Vec<u8> = std::iter::repeat_n([0x0au8, 0x00], 64 * 1024).flatten().collect();
        let e = push_batch(&body, 0, &mut Budget::new(body.len(), 8)).unwrap_err();
        assert!(matches!(e, ProfileError::TooComplex { .. }), "{e}");
    }
}
