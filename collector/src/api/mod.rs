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
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};

use crate::health::Health;
use crate::profile::Profiles;
use crate::query::QueryEngine;
use crate::span_metrics::SpanMetrics;
use crate::tenant::{self, Access, Gate, Reject, Role};

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<QueryEngine>,
    pub profiles: Arc<Profiles>,
    pub span_metrics: Arc<SpanMetrics>,
    pub health: Arc<Health>,
    /// Who may call what (token authentication, tenants of tokens).
    pub access: Arc<Access>,
}

/// Puts `routes` behind a tenant gate needing `role`, refusing in the surface's format.
pub fn gated<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    access: &Arc<Access>,
    role: Role,
    reject: Reject,
) -> Router<S> {
    let g = Gate { access: access.clone(), role, reject };
    routes.route_layer(from_fn_with_state(g, tenant::gate))
}

/// Every route of the HTTP API. Each is behind a tenant gate (the credentials checked before
/// anything else, the tenant resolved for its handler) except `/healthz`, `/ready` and the
/// web UI's pages and assets, which hold no data.
pub fn router(state: AppState) -> Router {
    let a = &state.access;
    use error::refuse;
    // Every query endpoint runs through the engine's query runner (its own runtime, the
    // concurrency limit and the timeout); ingest, operations and the UI do not. The gate is
    // outside the runner: a refused request never takes a query slot.
    let run =
        |routes: Router<AppState>| routes.route_layer(from_fn_with_state(state.clone(), run_query));
    let queries = Router::new()
        .merge(gated(run(tempo::router()), a, Role::Read, refuse::text))
        .merge(gated(run(prometheus::router()), a, Role::Read, refuse::prometheus))
        .merge(gated(run(native::router()), a, Role::Read, refuse::native))
        .merge(gated(run(pyroscope::querier_router()), a, Role::Read, refuse::connect));
    let pushes = Router::new()
        .merge(gated(pyroscope::ingest_router(), a, Role::Write, refuse::text))
        .merge(gated(pyroscope::push_router(), a, Role::Write, refuse::connect));
    Router::new()
        .merge(queries)
        .merge(pushes)
        .merge(gated(ops::metrics_router(), a, Role::Admin, refuse::text))
        .merge(ops::health_router())
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
