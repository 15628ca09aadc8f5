//! HTTP surfaces on `--http-addr`: Tempo-, Pyroscope- and Prometheus-compatible APIs and operations
//! endpoints.

pub mod error;
pub mod internal;
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
        .merge(gated(run(pyroscope::querier_router()), a, Role::Read, refuse::connect))
        // Not through the runner: a peer's query already holds a slot on the replica that
        // asks, and waiting for one here could refuse it while that replica waits.
        .merge(gated(internal::router(), a, Role::Read, refuse::text));
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

/// Answers the request on the query runtime, within the query limits. An answer that lacks a
/// peer's part says so in `x-skein-partial` (and is counted).
async fn run_query(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let api = surface(req.uri().path());
    let notes = crate::partial::Notes::default();
    let run = state.engine.runner.run(next.run(req));
    let mut resp = match crate::partial::scope(notes.clone(), run).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    let missing = notes.take();
    if !missing.is_empty() {
        state.engine.metrics.partial_answers.with_label_values(&[api]).inc();
        let text: String = missing
            .join("; ")
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .take(2000)
            .collect();
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().insert(crate::cluster::PARTIAL_HEADER, v);
        }
    }
    resp
}

/// The API surface a query path belongs to (a label of `skein_partial_answers_total`).
fn surface(path: &str) -> &'static str {
    if path.starts_with("/api/v1/") || path.starts_with("/prometheus/") {
        "prometheus"
    } else if path.starts_with("/skein/") {
        "native"
    } else if path.starts_with("/querier.v1") || path.starts_with("/pyroscope/") {
        "pyroscope"
    } else {
        "tempo"
    }
}
