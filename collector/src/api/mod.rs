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
    Router::new()
        .merge(tempo::router())
        .merge(pyroscope::router())
        .merge(prometheus::router())
        .merge(native::router())
        .merge(ops::router())
        .merge(ui::router())
        .with_state(state)
}
