//! PromQL over skein's own time series (span metrics and service-graph edges): parsing by
//! promql-parser, evaluation here. Whatever is not implemented is refused with an error naming
//! it, never approximated.

pub mod aggregate;
pub mod answer_limits;
pub mod binary;
pub mod depth;
pub mod eval;
pub mod federation;
pub mod functions;
pub mod labels;
pub mod literals;
pub mod time_range;
pub mod value;

use promql_parser::parser::Expr;
use promql_parser::parser::value::ValueType;

use answer_limits::{AnswerLimitError, AnswerLimits};
use depth::DepthError;
use eval::Evaluator;
pub use eval::{now_ms, selector_matches};
use labels::Labels;
use time_range::{Steps, TimeRangeError};
use value::{Series, Value};

#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    /// The query or a parameter is malformed (Prometheus `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Valid PromQL that skein does not evaluate (answered as `bad_data` too).
    #[error("unsupported in skein's PromQL: {0}")]
    Unsupported(String),
    /// Evaluation failed on the data (Prometheus `execution`).
    #[error("{0}")]
    Execution(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    TimeRange(#[from] TimeRangeError),
    #[error(transparent)]
    Depth(#[from] DepthError),
    #[error(transparent)]
    Answer(#[from] AnswerLimitError),
    #[error(transparent)]
    InvalidTenant(#[from] crate::tenant::InvalidTenant),
    /// Evaluation runs off the async workers; the task panicked or was cancelled.
    #[error("internal error: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl crate::error::Coded for PromqlError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            PromqlError::BadData(_) | PromqlError::Unsupported(_) => ErrorCode::InvalidArgument,
            PromqlError::InvalidTenant(e) => e.code(),
            PromqlError::TimeRange(e) => e.code(),
            PromqlError::Depth(e) => e.code(),
            PromqlError::Answer(e) => e.code(),
            PromqlError::Execution(_) => ErrorCode::Unprocessable,
            PromqlError::Internal(_) | PromqlError::Task(_) => ErrorCode::Internal,
        }
    }
}

/// Staleness lookback of instant selectors, as Prometheus' default.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

impl PromqlError {
    /// The `reason` label of `skein_queries_refused_total` when this is a refusal by a limit.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            PromqlError::TimeRange(_) => Some("time_range"),
            PromqlError::Depth(_) => Some("depth"),
            PromqlError::Answer(e) => Some(e.reason()),
            _ => None,
        }
    }
}

/// Where selectors read series from.
pub trait Storage: Send + Sync {
    /// Series matching `matches` with their points in `[start, end]` (ms), in time order.
    /// Series without a point in the range are left out.
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError>;
}

/// Parses a query whose text and tree are within [`depth`]'s bounds.
pub fn parse(query: &str) -> Result<Expr, PromqlError> {
    depth::check_text(query)?;
    literals::check_text(query).map_err(|e| PromqlError::BadData(e.to_string()))?;
    // The literal check covers the panics known in promql-parser; anything else it panics on
    // must still not take the request down with it.
    let parsed = std::panic::catch_unwind(|| promql_parser::parser::parse(query))
        .map_err(|_| PromqlError::BadData(format!("cannot parse {query:?}: value out of range")))?;
    let expr = parsed.map_err(PromqlError::BadData)?;
    depth::check_expr(&expr)?;
    Ok(expr)
}

/// Every series selector `e` reads (vector selectors and those of range vectors).
pub fn collect_selectors(e: &Expr) -> Vec<&promql_parser::parser::VectorSelector> {
    fn walk<'e>(e: &'e Expr, out: &mut Vec<&'e promql_parser::parser::VectorSelector>) {
        match e {
            Expr::VectorSelector(vs) => out.push(vs),
            Expr::MatrixSelector(ms) => out.push(&ms.vs),
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Aggregate(a) => walk(&a.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// Evaluates at one time (ms) under the default [`AnswerLimits`].
pub fn instant(storage: &dyn Storage, expr: &Expr, t: i64) -> Result<Value, PromqlError> {
    instant_limited(storage, expr, t, &AnswerLimits::default())
}

/// Evaluates at one time (ms); a range selector at the top yields its raw points.
pub fn instant_limited(
    storage: &dyn Storage,
    expr: &Expr,
    t: i64,
    limits: &AnswerLimits,
) -> Result<Value, PromqlError> {
    let t = time_range::MILLIS.time("time", t)?;
    let ev = Evaluator::new(storage, expr, t, t, LOOKBACK_MS)?;
    let v = ev.eval(expr, t)?;
    match &v {
        Value::Vector(samples) => {
            limits.series(samples.len())?;
            check_unique(samples.iter().map(|s| &s.labels))?;
        }
        Value::Matrix(m) => {
            limits.series(m.len())?;
            limits.samples(m.iter().fold(0usize, |n, s| n.saturating_add(s.points.len())))?;
        }
        Value::Scalar(_) | Value::String(_) => {}
    }
    Ok(v)
}

/// Evaluates at every step of `steps` (ms) into a matrix, refusing as soon as the answer
/// outgrows `limits`.
pub fn range(
    storage: &dyn Storage,
    expr: &Expr,
    steps: &Steps,
    limits: &AnswerLimits,
) -> Result<Value, PromqlError> {
    let (start, end) = (steps.start, steps.end);
    match expr.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        other => {
            return Err(PromqlError::BadData(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                match other {
                    ValueType::Matrix => "range vector",
                    _ => "string",
                }
            )));
        }
    }
    let ev = Evaluator::new(storage, expr, start, end, LOOKBACK_MS)?;
    let mut order: Vec<Labels> = Vec::new();
    let mut series: std::collections::HashMap<Labels, Vec<(i64, f64)>> = Default::default();
    let mut samples_held: usize = 0;
    for t in steps.times() {
        limits.time()?;
        let samples = match ev.eval(expr, t)? {
            Value::Scalar(v) => vec![value::Sample { labels: Labels::default(), v }],
            Value::Vector(v) => v,
            other => {
                return Err(PromqlError::BadData(format!(
                    "range query step yielded a {}",
                    other.type_name()
                )));
            }
        };
        check_unique(samples.iter().map(|s| &s.labels))?;
        samples_held = samples_held.saturating_add(samples.len());
        limits.samples(samples_held)?;
        for s in samples {
            series
                .entry(s.labels)
                .or_insert_with_key(|k| {
                    order.push(k.clone());
                    Vec::new()
                })
                .push((t, s.v));
        }
        limits.series(series.len())?;
    }
    let mut out: Vec<Series> = order
        .into_iter()
        .filter_map(|labels| series.remove(&labels).map(|points| Series { labels, points }))
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(Value::Matrix(out))
}

/// Two results with one label set would be indistinguishable: Prometheus refuses them.
fn check_unique<'l>(labels: impl Iterator<Item = &'l Labels>) -> Result<(), PromqlError> {
    let mut seen = std::collections::HashSet::new();
    for l in labels {
        if !seen.insert(l) {
            return Err(PromqlError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

/// Series held in memory: the storage of evaluator tests and of the PromQL fuzz target.
pub struct MemStorage(pub Vec<Series>);

impl Storage for MemStorage {
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        Ok(self
            .0
            .iter()
            .filter(|s| matches(&s.labels))
            .map(|s| Series {
                labels: s.labels.clone(),
                points: s.points.iter().copied().filter(|p| p.0 >= start && p.0 <= end).collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use value::Sample;

    /// Counters growing by `per_step` every 15 s from t=0 to 10 min.
    fn counter(labels: &[(&str, &str)], per_step: f64) -> Series {
        Series {
            labels: Labels::new(labels.iter().copied()),
            points: (0..=40).map(|i| (i * 15_000, per_step * i as f64)).collect(),
        }
    }

    fn store() -> MemStorage {
        let calls = |svc, status, n| {
            counter(
                &[
                    ("__name__", "traces_spanmetrics_calls_total"),
                    ("service", svc),
                    ("span_kind", "SPAN_KIND_SERVER"),
                    ("status_code", status),
                ],
                n,
            )
        };
        let bucket = |le, n| {
            counter(
                &[("__name__", "traces_spanmetrics_latency_bucket"), ("service", "a"), ("le", le)],
                n,
            )
        };
        MemStorage(vec![
            calls("a", "STATUS_CODE_UNSET", 30.0),
            calls("a", "STATUS_CODE_ERROR", 15.0),
            calls("b", "STATUS_CODE_UNSET", 15.0),
            bucket("0.1", 15.0),
            bucket("0.2", 30.0),
            bucket("+Inf", 45.0),
        ])
    }

    fn steps(start: i64, end: i64, step: i64) -> Steps {
        Steps::new(time_range::MILLIS, start, end, step).unwrap()
    }

    fn vector(q: &str, t: i64) -> Vec<Sample> {
        match instant(&store(), &parse(q).unwrap(), t).unwrap() {
            Value::Vector(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_plus_one_is_a_scalar() {
        assert_eq!(instant(&store(), &parse("1+1").unwrap(), 4000).unwrap(), Value::Scalar(2.0));
    }

    #[test]
    fn red_queries_over_steady_counters() {
        let t = 600_000;
        let v = vector("sum by (service) (rate(traces_spanmetrics_calls_total[1m0s]))", t);
        let a = v.iter().find(|s| s.labels.get("service") == Some("a")).unwrap();
        assert!((a.v - 3.0).abs() < 1e-9, "{a:?}");
        let v = vector(
            "sum(rate(traces_spanmetrics_calls_total{status_code=\"STATUS_CODE_ERROR\"}[5m])) by (service) / sum(rate(traces_spanmetrics_calls_total[5m])) by (service)",
            t,
        );
        // Service b has no error series, so no ratio (as in Prometheus).
        assert_eq!(v.len(), 1);
        let a = v.iter().find(|s| s.labels.get("service") == Some("a")).unwrap();
        assert!((a.v - 1.0 / 3.0).abs() < 1e-9, "{a:?}");
        let v = vector(
            "histogram_quantile(0.5, sum by (le) (rate(traces_spanmetrics_latency_bucket[5m])))",
            t,
        );
        // rank 1.5 of 3 per second: in (0.1, 0.2], halfway.
        assert!((v[0].v - 0.15).abs() < 1e-9, "{v:?}");
        let v = vector("topk(1, sum by (service) (rate(traces_spanmetrics_calls_total[5m])))", t);
        assert_eq!(v[0].labels.get("service"), Some("a"));
    }

    #[test]
    fn lookback_and_offset() {
        // Last sample at 600 s: visible for 5 minutes, then gone.
        assert_eq!(vector("traces_spanmetrics_calls_total{service=\"b\"}", 899_000).len(), 1);
        assert!(vector("traces_spanmetrics_calls_total{service=\"b\"}", 900_001).is_empty());
        let v = vector("traces_spanmetrics_calls_total{service=\"b\"} offset 1m", 600_000);
        assert_eq!(v[0].v, 15.0 * 36.0);
    }

    #[test]
    fn regex_and_negative_matchers() {
        assert_eq!(vector("traces_spanmetrics_calls_total{service=~\"a|b\"}", 600_000).len(), 3);
        assert_eq!(vector("traces_spanmetrics_calls_total{service!~\"a\"}", 600_000).len(), 1);
        assert_eq!(vector("{__name__=~\"traces_.*\", service!=\"a\"}", 600_000).len(), 1);
    }

    #[test]
    fn range_query_evaluates_every_step() {
        let e = parse("sum(rate(traces_spanmetrics_calls_total[1m]))").unwrap();
        let Value::Matrix(m) =
            range(&store(), &e, &steps(300_000, 600_000, 60_000), &AnswerLimits::default())
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].points.len(), 6);
        assert!(m[0].points.iter().all(|p| (p.1 - 4.0).abs() < 1e-9), "{m:?}");
        let Value::Matrix(m) = range(
            &store(),
            &parse("1+1").unwrap(),
            &steps(0, 60_000, 15_000),
            &AnswerLimits::default(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            m[0].points,
            vec![(0, 2.0), (15_000, 2.0), (30_000, 2.0), (45_000, 2.0), (60_000, 2.0)]
        );
    }

    #[test]
    fn unsupported_constructs_are_refused_not_guessed() {
        for q in [
            "rate(traces_spanmetrics_calls_total[5m])[10m:1m]",
            "count_values(\"x\", traces_spanmetrics_calls_total)",
            "predict_linear(traces_spanmetrics_calls_total[5m], 60)",
        ] {
            let r = parse(q).and_then(|e| instant(&store(), &e, 600_000));
            assert!(matches!(r, Err(PromqlError::Unsupported(_))), "{q}: {r:?}");
        }
        assert!(matches!(parse("sum("), Err(PromqlError::BadData(_))));
        let e = parse("traces_spanmetrics_calls_total[5m]").unwrap();
        assert!(matches!(
            range(&store(), &e, &steps(0, 60_000, 15_000), &AnswerLimits::default()),
            Err(PromqlError::BadData(_))
        ));
    }

    #[test]
    fn series_that_collide_after_dropping_the_name_are_an_error() {
        let e = parse("rate({__name__=~\"traces_spanmetrics_calls_total|other\"}[5m])").unwrap();
        let mut s = store();
        let mut other = s.0[0].clone();
        other.labels.set("__name__", "other");
        s.0.push(other);
        assert!(matches!(instant(&s, &e, 600_000), Err(PromqlError::Execution(_))));
    }

    #[test]
    fn answers_are_refused_once_they_outgrow_the_caps() {
        let raw = parse("traces_spanmetrics_calls_total").unwrap();
        let two_series = AnswerLimits { max_series: 2, max_samples: 1000, deadline: None };
        let r = range(&store(), &raw, &steps(0, 60_000, 15_000), &two_series);
        assert!(matches!(r, Err(PromqlError::Answer(AnswerLimitError::Series(2)))), "{r:?}");
        let r = instant_limited(&store(), &raw, 600_000, &two_series);
        assert!(matches!(r, Err(PromqlError::Answer(AnswerLimitError::Series(2)))), "{r:?}");
        let sum = parse("sum(traces_spanmetrics_calls_total)").unwrap();
        let three_samples = AnswerLimits { max_series: 10, max_samples: 3, deadline: None };
        let r = range(&store(), &sum, &steps(0, 60_000, 15_000), &three_samples);
        assert!(matches!(r, Err(PromqlError::Answer(AnswerLimitError::Samples(3)))), "{r:?}");
        assert!(range(&store(), &sum, &steps(0, 30_000, 15_000), &three_samples).is_ok());
    }

    #[test]
    fn hostile_queries_are_refused_not_evaluated() {
        let deep = format!("{}1{}", "(".repeat(50_000), ")".repeat(50_000));
        assert!(matches!(parse(&deep), Err(PromqlError::Depth(_))));
        assert!(matches!(parse("x[1e300]"), Err(PromqlError::BadData(_))), "parser panic caught");
        let e = parse("rate(traces_spanmetrics_calls_total[99999999y])").unwrap();
        assert!(matches!(instant(&store(), &e, 600_000), Err(PromqlError::TimeRange(_))));
        let e = parse("traces_spanmetrics_calls_total offset 99999999y").unwrap();
        assert!(matches!(instant(&store(), &e, 600_000), Err(PromqlError::TimeRange(_))));
        assert!(matches!(
            instant(&store(), &parse("1").unwrap(), i64::MAX),
            Err(PromqlError::TimeRange(_))
        ));
    }
}
