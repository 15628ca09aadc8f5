//! `/ready`, `/healthz`, `/metrics`. Readiness and liveness come from [`Health`], where each
//! subsystem records what is wrong (see `health.rs` for what each one means).
//!
//! [`Health`]: crate::health::Health

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::health::Report;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ready", get(ready))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

fn answer(report: Report, ok_text: &str) -> (StatusCode, String) {
    let status = if report.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = if report.ok { ok_text.to_string() } else { String::new() };
    for line in report.lines {
        if !body.is_empty() {
            body.push('\n');
        }
        body.push_str(&line);
    }
    body.push('\n');
    (status, body)
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    answer(s.health.readiness(), "ready")
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    answer(s.health.liveness(), "ok")
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.engine.metrics;
    let head = s.engine.head.stats();
    m.head_spans.set(head.spans as i64);
    m.head_bytes.set(head.bytes as i64);
    m.ready.set(i64::from(s.health.readiness().ok));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}
