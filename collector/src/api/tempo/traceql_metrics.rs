//! `GET /api/metrics/query_range` and `GET /api/metrics/query`: TraceQL metrics as Grafana's
//! Tempo datasource requests them: `q` (or the older
//! `query`), `start`/`end` (unix seconds, or nanoseconds when longer than 10 digits, or
//! fractional seconds, or RFC 3339, as Tempo's `parseTimestamp`), `since` (default 1h),
//! `step` (seconds or a Go duration; Tempo's default for the range otherwise) and `exemplars`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query as QueryParams, State};

use super::super::AppState;
use crate::promql::answer_limits::AnswerLimits;
use crate::promql::time_range::{Epoch, NANOS, TimeRangeError};
use crate::query::QueryError;
use crate::query::metrics_eval::{
    DEFAULT_EXEMPLARS, Grid, MAX_EXEMPLARS, MetricsRequest, QueryInstantResponse,
    QueryRangeResponse,
};
use crate::query::traceql::{self, parse_duration};
use crate::tenant::Tenant;

type Params = QueryParams<HashMap<String, String>>;

const HOUR_NS: i64 = 3_600_000_000_000;
const SEC_NS: i64 = 1_000_000_000;

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::BadRequest(msg.into())
}

fn out_of_range(e: TimeRangeError) -> QueryError {
    QueryError::BadRequest(e.to_string())
}

fn param<'a>(p: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    p.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A timestamp as Tempo reads it: fractional seconds, integer seconds (≤ 10 digits),
/// integer nanoseconds, or RFC 3339.
/// Times outside [`NANOS`] (about 1824..2116) are refused rather than saturated.
pub fn parse_timestamp(key: &str, v: &str) -> Result<i64, QueryError> {
    let invalid = || bad(format!("could not parse '{key}' parameter: {v:?}"));
    if v.contains('.')
        && let Ok(f) = v.parse::<f64>()
    {
        // Tempo rounds the fraction to milliseconds.
        const MS: Epoch = Epoch { max_abs: NANOS.max_abs / 1_000_000, per_second: 1_000 };
        let ms = MS.from_seconds(key, f).map_err(out_of_range)?;
        return Ok(ms.saturating_mul(1_000_000));
    }
    let t = match v.parse::<i64>() {
        Ok(n) if v.trim_start_matches('-').len() <= 10 => n.saturating_mul(SEC_NS),
        Ok(n) => n,
        Err(_) => {
            let t = humantime::parse_rfc3339_weak(v).map_err(|_| invalid())?;
            let d = t.duration_since(UNIX_EPOCH).map_err(|_| invalid())?;
            i64::try_from(d.as_nanos()).map_err(|_| invalid())?
        }
    };
    NANOS.time(key, t).map_err(out_of_range)
}

/// `since` as Prometheus durations: Go units plus `d`, `w`, `y`.
fn parse_since(v: &str) -> Result<i64, QueryError> {
    let invalid = || bad(format!("could not parse 'since' parameter: {v:?}"));
    if let Some(d) = parse_duration(v) {
        return Ok(d);
    }
    let (num, unit) = v.split_at(v.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| invalid())?;
    let day = 24 * HOUR_NS;
    let per = match unit {
        "d" => day,
        "w" => 7 * day,
        "y" => 365 * day,
        _ => return Err(invalid()),
    };
    n.checked_mul(per).ok_or_else(invalid)
}

/// `step` as Tempo reads it: float seconds or a Go duration.
pub fn parse_step(v: &str) -> Result<i64, QueryError> {
    if let Ok(f) = v.parse::<f64>() {
        return NANOS
            .from_seconds("step", f)
            .map_err(|_| bad(format!("cannot parse {v:?} to a valid duration")));
    }
    parse_duration(v)
        .filter(|d| *d <= NANOS.max_abs)
        .ok_or_else(|| bad(format!("cannot parse {v:?} to a valid duration")))
}

/// Tempo's `DefaultQueryRangeStep`: about 240 points, rounded down to 5 s (or 1 s) multiples.
pub fn default_step(start: i64, end: i64) -> i64 {
    let baseline = end.saturating_sub(start).max(0) / 240;
    let mut interval = baseline / (5 * SEC_NS) * (5 * SEC_NS);
    if interval < 5 * SEC_NS {
        interval = baseline / SEC_NS * SEC_NS;
    }
    interval.max(SEC_NS)
}

/// `[start, end)` in unix ns, defaulting to the `since` (1h) before `end` (or now).
pub fn bounds(p: &HashMap<String, String>) -> Result<(i64, i64), QueryError> {
    let now = now_ns();
    let since = param(p, "since").map(parse_since).transpose()?.unwrap_or(HOUR_NS);
    let end = param(p, "end").map(|v| parse_timestamp("end", v)).transpose()?.unwrap_or(now);
    let start = match param(p, "start") {
        Some(v) => parse_timestamp("start", v)?,
        None => NANOS.back("since", end.min(now), since).map_err(out_of_range)?,
    };
    if end <= start {
        return Err(bad(format!(
            "http parameter start must be before end. received start={start} end={end}"
        )));
    }
    Ok((start, end))
}

/// The buckets asked for: one for an instant query, else `step`s over the range.
fn grid(p: &HashMap<String, String>, instant: bool) -> Result<Grid, QueryError> {
    let (start, end) = bounds(p)?;
    if instant {
        Grid::single(start, end)
    } else {
        let step = match param(p, "step") {
            Some(v) => parse_step(v)?,
            None => default_step(start, end),
        };
        Grid::aligned(start, end, step)
    }
}

fn request(
    p: &HashMap<String, String>,
    instant: bool,
    limits: AnswerLimits,
) -> Result<MetricsRequest, QueryError> {
    // `q` wins over `query`, as in Tempo.
    let q = param(p, "q")
        .or_else(|| param(p, "query"))
        .ok_or_else(|| bad("missing TraceQL metrics query: pass q, e.g. q={} | rate()"))?;
    let query = traceql::parse_metrics(q)?;
    let grid = grid(p, instant)?;
    let exemplars = match param(p, "exemplars") {
        None => DEFAULT_EXEMPLARS,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(format!("invalid exemplars: {v:?} is not a non-negative integer")))?
            .min(MAX_EXEMPLARS),
    };
    Ok(MetricsRequest { query, grid, exemplars, limits })
}

/// `--max-query-series` / `--max-query-samples` (an extension set by `serve`; defaults without).
type Limits = Option<axum::Extension<AnswerLimits>>;

async fn run(
    s: &AppState,
    tenant: &str,
    p: &HashMap<String, String>,
    instant: bool,
    limits: Limits,
) -> Result<QueryRangeResponse, QueryError> {
    let limits = limits.map(|axum::Extension(l)| l).unwrap_or_default();
    if grid(p, instant).is_err() {
        // Answer-size refusals are counted where they happen (metrics_eval).
        s.engine.metrics.queries_refused.with_label_values(&["time_range"]).inc();
    }
    let req = request(p, instant, limits)?;
    s.engine.traceql_metrics(tenant, &req).await
}

pub async fn query_range(
    State(s): State<AppState>,
    limits: Limits,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Json<QueryRangeResponse>, QueryError> {
    Ok(Json(run(&s, &tenant, &p, false, limits).await?))
}

/// The range computation over a single bucket, answered as `QueryInstantResponse`.
pub async fn query_instant(
    State(s): State<AppState>,
    limits: Limits,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Json<QueryInstantResponse>, QueryError> {
    Ok(Json(QueryInstantResponse::from(run(&s, &tenant, &p, true, limits).await?)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn timestamps_are_seconds_up_to_ten_digits_and_nanoseconds_beyond() {
        assert_eq!(parse_timestamp("start", "1700000000").unwrap(), 1_700_000_000 * SEC_NS);
        assert_eq!(
            parse_timestamp("start", "1700000000123456789").unwrap(),
            1_700_000_000_123_456_789
        );
        assert_eq!(parse_timestamp("start", "1700000000.5").unwrap(), 1_700_000_000_500_000_000);
        assert_eq!(
            parse_timestamp("start", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000 * SEC_NS
        );
        assert!(parse_timestamp("start", "yesterday").is_err());
    }

    #[test]
    fn steps_accept_seconds_and_go_durations() {
        assert_eq!(parse_step("15").unwrap(), 15 * SEC_NS);
        assert_eq!(parse_step("1m0s").unwrap(), 60 * SEC_NS);
        assert_eq!(parse_step("0.5").unwrap(), SEC_NS / 2);
        assert!(parse_step("soon").is_err());
    }

    #[test]
    fn default_step_matches_tempo() {
        assert_eq!(default_step(0, HOUR_NS), 15 * SEC_NS);
        assert_eq!(default_step(0, 10 * 60 * SEC_NS), 2 * SEC_NS);
        assert_eq!(default_step(0, 60 * SEC_NS), SEC_NS);
    }

    #[test]
    fn missing_start_means_since_before_end() {
        let (s, e) = bounds(&params(&[("end", "1700000000"), ("since", "2h")])).unwrap();
        assert_eq!(e - s, 2 * HOUR_NS);
        let (s, e) = bounds(&params(&[("end", "1700000000"), ("since", "1d")])).unwrap();
        assert_eq!(e - s, 24 * HOUR_NS);
        assert!(bounds(&params(&[("start", "1700000001"), ("end", "1700000000")])).is_err());
    }

    #[test]
    fn query_parameter_q_wins_over_legacy_query() {
        let r = request(
            &params(&[
                ("q", "{} | count_over_time()"),
                ("query", "{} | rate()"),
                ("start", "1700000040"),
                ("end", "1700003640"),
                ("step", "60"),
            ]),
            false,
            AnswerLimits::default(),
        )
        .unwrap();
        assert_eq!(r.query.function, traceql::MetricsFunction::CountOverTime);
        assert_eq!(r.grid.intervals, 60);
        assert!(request(&params(&[("q", "{ }")]), false, AnswerLimits::default()).is_err());
    }

    #[test]
    fn extreme_times_and_steps_are_refused_not_saturated() {
        assert!(parse_timestamp("start", "-1e300").is_err());
        assert!(parse_timestamp("end", "1e300").is_err());
        assert!(parse_timestamp("end", "9999999999").is_err(), "year 2286 in ns overflows");
        assert!(parse_timestamp("end", "-9223372036854775808").is_err());
        assert!(parse_step("1e300").is_err());
        let p = params(&[("start", "-1e18"), ("end", "1e18"), ("step", "1")]);
        assert!(grid(&p, false).is_err());
        let p = params(&[("start", "1.5"), ("end", "9200000000000000000"), ("step", "9e9")]);
        assert!(grid(&p, false).is_err());
        let p = params(&[("end", "1700000000"), ("since", "100000000d")]);
        assert!(grid(&p, false).is_err());
    }
}
