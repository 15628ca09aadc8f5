//! The internal API replicas sharing one storage root ask each other (`/internal/v1/…`,
//! `cluster/DESIGN.md`): what each holds in memory and not yet in blocks. Behind the read gate
//! like every query (peers send a token of the read or admin role and the tenant); every
//! answer names the replica in `x-skein-node`, so a replica that reaches itself through a
//! DNS name knows to skip the answer.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::AppState;
use crate::cluster::series::{self, SeriesRequest};
use crate::cluster::{NODE_HEADER, SpanScope};
use crate::profile::federate::LabelsRequest;
use crate::profile::query::{MergeRequest, SeriesRequest as ProfileSeriesRequest};
use crate::query::QueryError;
use crate::query::peer::{MetricsPart, SearchPart};
use crate::tenant::Tenant;

pub fn router() -> Router<AppState> {
    // Literal paths (the tenancy test enumerates routes); the client's are checked below.
    Router::new()
        .route("/internal/v1/spans", post(spans))
        .route("/internal/v1/tags", post(tags))
        .route("/internal/v1/series", post(series))
        .route("/internal/v1/metrics-part", post(metrics_part))
        .route("/internal/v1/search-part", post(search_part))
        .route("/internal/v1/profiles/types", post(profile_types))
        .route("/internal/v1/profiles/label-names", post(profile_label_names))
        .route("/internal/v1/profiles/label-values", post(profile_label_values))
        .route("/internal/v1/profiles/stacks", post(profile_stacks))
        .route("/internal/v1/profiles/series", post(profile_series))
}

/// This replica's share of a peer's TraceQL metrics query (the blocks it names).
async fn metrics_part(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(part): Json<MetricsPart>,
) -> Result<Response, QueryError> {
    let groups = crate::query::peer::answer_metrics_part(&s.engine, &tenant, part).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(groups)).into_response())
}

/// This replica's share of phase 1 of a peer's search (the blocks it names).
async fn search_part(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(part): Json<SearchPart>,
) -> Result<Response, QueryError> {
    let hits = crate::query::peer::answer_search_part(&s.engine, &tenant, part).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(hits)).into_response())
}

type ProfileAnswer = Result<Response, crate::profile::ProfileError>;

/// This replica's part of a profile question: its head and its own blocks.
async fn profile_types(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(r): Json<LabelsRequest>,
) -> ProfileAnswer {
    let types = s.profiles.profile_types_local(&tenant, r.start_ns, r.end_ns).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(types)).into_response())
}

async fn profile_label_names(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(r): Json<LabelsRequest>,
) -> ProfileAnswer {
    let names = s.profiles.label_names_local(&tenant, &r.matchers, r.start_ns, r.end_ns).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(names)).into_response())
}

async fn profile_label_values(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(r): Json<LabelsRequest>,
) -> ProfileAnswer {
    let p = &s.profiles;
    let values = p.label_values_local(&tenant, &r.name, &r.matchers, r.start_ns, r.end_ns).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(values)).into_response())
}

async fn profile_stacks(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(r): Json<MergeRequest>,
) -> ProfileAnswer {
    let stacks = s.profiles.merged_stacks(&tenant, r).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(stacks)).into_response())
}

async fn profile_series(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(r): Json<ProfileSeriesRequest>,
) -> ProfileAnswer {
    let buckets = s.profiles.series_buckets(&tenant, r).await?;
    Ok(([(NODE_HEADER, node(&s))], Json(buckets)).into_response())
}

fn node(s: &AppState) -> String {
    s.engine.store.node().map(|n| n.to_string()).unwrap_or_default()
}

async fn spans(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(scope): Json<SpanScope>,
) -> Result<Response, QueryError> {
    let body = s.engine.answer_peer_spans(&tenant, &scope).await?;
    Ok(([(NODE_HEADER, node(&s))], body).into_response())
}

async fn tags(State(s): State<AppState>, Tenant(tenant): Tenant) -> Result<Response, QueryError> {
    let tags = s.engine.answer_peer_tags(&tenant)?;
    Ok(([(NODE_HEADER, node(&s))], Json(tags)).into_response())
}

/// This replica's span-metric series (not rule output: each replica evaluates its rules over
/// the federated series itself).
async fn series(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
    Json(req): Json<SeriesRequest>,
) -> Result<Response, crate::promql::PromqlError> {
    let storage = s.span_metrics.storage(&tenant);
    let node = node(&s);
    let found = series::answer(storage.as_ref(), &node, &req)?;
    Ok(([(NODE_HEADER, node)], Json(found)).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_routes_are_the_paths_peers_call() {
        let v = crate::cluster::API_VERSION;
        use crate::cluster::series::SERIES_PATH;
        use crate::profile::federate::{LABEL_NAMES, LABEL_VALUES, SERIES, STACKS, TYPES};
        use crate::query::peer::{SPANS_PATH, TAGS_PATH};
        for p in
            [SPANS_PATH, TAGS_PATH, SERIES_PATH, TYPES, LABEL_NAMES, LABEL_VALUES, STACKS, SERIES]
        {
            let route = format!("/internal/{v}/{p}");
            assert!(include_str!("internal.rs").contains(&format!("route(\"{route}\"")), "{route}");
        }
    }
}
