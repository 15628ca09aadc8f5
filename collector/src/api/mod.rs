//! HTTP surfaces on `--http-addr`: Tempo-, Pyroscope- and Prometheus-compatible APIs and operations
//! endpoints.

pub mod error;
pub mod native;
pub mod ops;
pub mod prometheus;
pub mod pyroscope;
pub mod tempo;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};

use crate::health::Health;
use crate::profile::Profiles;
use crate::query::QueryEngine;
use crate::span_metrics::SpanMetrics;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<QueryEngine>,
    pub profiles: Arc<Profiles>,
    pub span_metrics: Arc<SpanMetrics>,
    pub health: Arc<Health>,
}

pub fn router(state: AppState) -> Router {
    // Every query endpoint runs through the engine's query runner (its own runtime, the
    // concurrency limit and the timeout); ingest, operations and the UI do not.
    let queries = Router::new()
        .merge(tempo::router())
        .merge(prometheus::router())
        .merge(native::router())
        .route_layer(from_fn_with_state(state.clone(), run_query));
    let profiles =
        pyroscope::router().route_layer(from_fn_with_state(state.clone(), run_profile_query));
    Router::new()
        .merge(queries)
        .merge(profiles)
        .merge(ops::router())
        .merge(ui::router())
        .with_state(state)
}

/// Answers the request on the query runtime, within the query limits.
async fn run_query(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.engine.runner.run(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// As [`run_query`] for the Pyroscope querier; its push endpoints are ingest.
async fn run_profile_query(state: State<AppState>, req: Request, next: Next) -> Response {
    let querier = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str().starts_with("/pyroscope/querier."));
    if querier { run_query(state, req, next).await } else { next.run(req).await }
}
