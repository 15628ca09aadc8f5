//! `/ready`, `/healthz`, `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ready", get(|| async { "ready" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.engine.metrics;
    let head = s.engine.head.stats();
    m.head_spans.set(head.spans as i64);
    m.head_bytes.set(head.bytes as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}
