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

/// `/ready` and `/healthz`: open to anyone (probes carry no credentials).
pub fn health_router() -> Router<AppState> {
    Router::new().route("/ready", get(ready)).route("/healthz", get(healthz))
}

/// `/metrics`: the collector's own metrics (admin role when authentication is on: they name
/// every tenant).
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::{Check, Health};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn ready_is_503_with_the_reasons_while_not_ready_and_200_naming_what_is_degraded() {
        let h = Health::new(HOUR, HOUR);
        assert_eq!(answer(h.readiness(), "ready"), (StatusCode::OK, "ready\n".to_string()));
        h.fail(Check::Disk, "no space left on device");
        assert_eq!(
            answer(h.readiness(), "ready"),
            (StatusCode::OK, "ready\ndegraded: disk: no space left on device\n".to_string())
        );
        h.fail(Check::Replay, "replaying the WAL");
        let (status, body) = answer(h.readiness(), "ready");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: replay: replaying the WAL\ndegraded: disk: no space left on device\n"
        );
        h.clear(Check::Replay);
        h.clear(Check::Disk);
        assert_eq!(answer(h.readiness(), "ready").0, StatusCode::OK);
    }

    #[test]
    fn healthz_is_503_naming_work_busy_past_the_stall_limit() {
        let h = Health::new(HOUR, Duration::ZERO);
        assert_eq!(answer(h.liveness(), "ok"), (StatusCode::OK, "ok\n".to_string()));
        let busy = h.busy("flush");
        let (status, body) = answer(h.liveness(), "ok");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("wedged: flush busy for "), "{body}");
        drop(busy);
        assert_eq!(answer(h.liveness(), "ok").0, StatusCode::OK);
    }
}
