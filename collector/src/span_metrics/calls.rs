//! Span metrics as Tempo's metrics-generator writes them: `traces_spanmetrics_calls_total` and
//! the `traces_spanmetrics_latency` histogram, labelled `service, span_name, span_kind,
//! status_code` plus configured extra dimensions.

use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};

use super::attr;
use super::registry::{Exemplar, Histogram, Registry, renumber};
use crate::promql::labels::{Labels, sanitize_name};

pub const CALLS: &str = "traces_spanmetrics_calls_total";
pub const LATENCY: &str = "traces_spanmetrics_latency";

/// Tempo's default latency buckets (seconds): 2 ms doubling to 16.384 s.
pub const DEFAULT_BUCKETS: [f64; 14] = [
    0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
    16.384,
];

pub fn kind_name(kind: i32) -> &'static str {
    span::SpanKind::try_from(kind).unwrap_or(span::SpanKind::Unspecified).as_str_name()
}

pub fn status_name(span: &Span) -> &'static str {
    let code = span.status.as_ref().map_or(0, |s| s.code);
    status::StatusCode::try_from(code).unwrap_or(status::StatusCode::Unset).as_str_name()
}

pub fn is_error(span: &Span) -> bool {
    span.status.as_ref().is_some_and(|s| s.code == status::StatusCode::Error as i32)
}

pub fn duration_seconds(span: &Span) -> f64 {
    span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e9
}

pub fn exemplar(span: &Span, value: f64, now_ms: i64) -> Option<Exemplar> {
    Some(Exemplar {
        trace_id: span.trace_id.as_slice().try_into().ok()?,
        span_id: span.span_id.as_slice().try_into().ok()?,
        value,
        t_ms: now_ms,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: String,
    name: String,
    kind: i32,
    status: &'static str,
    dims: Vec<String>,
}

pub struct CallMetrics {
    bounds: Vec<f64>,
    /// (attribute key, label name)
    dims: Vec<(String, String)>,
    handles: HashMap<Key, (usize, Histogram)>,
}

impl CallMetrics {
    pub fn new(bounds: Vec<f64>, dimensions: &[String]) -> Self {
        let dims = dimensions.iter().map(|d| (d.clone(), sanitize_name(d))).collect();
        CallMetrics { bounds, dims, handles: HashMap::new() }
    }

    pub fn observe(
        &mut self,
        reg: &mut Registry,
        service: &str,
        resource: &[KeyValue],
        span: &Span,
        now_ms: i64,
    ) {
        let key = Key {
            service: service.to_string(),
            name: span.name.clone(),
            kind: span.kind,
            status: status_name(span),
            // Resource attributes first, then span attributes, as Tempo looks them up.
            dims: self
                .dims
                .iter()
                .map(|(k, _)| {
                    attr(resource, k).or_else(|| attr(&span.attributes, k)).unwrap_or_default()
                })
                .collect(),
        };
        // A new label set needs its counter and histogram (buckets, +Inf, sum, count).
        if !self.handles.contains_key(&key) && !reg.room_for(self.bounds.len().saturating_add(4)) {
            return;
        }
        let (bounds, dims) = (&self.bounds, &self.dims);
        let (calls, hist) = self.handles.entry(key).or_insert_with_key(|k| {
            let mut pairs = vec![
                ("service".to_string(), k.service.clone()),
                ("span_name".to_string(), k.name.clone()),
                ("span_kind".to_string(), kind_name(k.kind).to_string()),
                ("status_code".to_string(), k.status.to_string()),
            ];
            pairs.extend(dims.iter().map(|(_, l)| l.clone()).zip(k.dims.iter().cloned()));
            let base = Labels::new(pairs);
            (reg.counter(CALLS, &base), reg.histogram(LATENCY, &base, bounds))
        });
        let secs = duration_seconds(span);
        reg.add(*calls, 1.0, now_ms);
        let ex = exemplar(span, secs, now_ms);
        // Failed calls are the ones worth linking from the request rate.
        if is_error(span)
            && let Some(e) = ex
        {
            reg.exemplar(*calls, e);
        }
        reg.observe(hist, bounds, secs, now_ms, ex);
    }

    /// Distinct label combinations seen.
    /// Forgets label sets whose calls counter was last updated before `cutoff_ms`; their
    /// series ids go to `dead` (for [`Registry::remove`], then [`CallMetrics::renumber`]).
    pub fn evict(&mut self, reg: &Registry, cutoff_ms: i64, dead: &mut HashSet<usize>) {
        self.handles.retain(|_, (calls, hist)| {
            let live = reg.series.get(*calls).is_some_and(|s| s.touched_ms >= cutoff_ms);
            if !live {
                dead.insert(*calls);
                dead.extend(hist.buckets.iter().copied());
                dead.extend([hist.sum, hist.count]);
            }
            live
        });
    }

    pub fn renumber(&mut self, map: &[Option<usize>]) {
        self.handles.retain(|_, (calls, hist)| match (renumber(map, *calls), hist.renumber(map)) {
            (Some(c), Some(h)) => {
                *calls = c;
                *hist = h;
                true
            }
            _ => false,
        });
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn span(name: &str, kind: i32, ms: u64, error: bool) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            name: name.into(),
            kind,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            status: error.then(|| Status { code: 2, message: "boom".into() }),
            attributes: vec![super::super::kv("http.route", "/x")],
            ..Default::default()
        }
    }

    fn value(r: &Registry, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        r.series
            .iter()
            .find(|s| {
                s.labels.get("__name__") == Some(name)
                    && pairs.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn calls_and_latency_use_tempos_names_and_label_values() {
        let mut r = Registry::default();
        let mut m = CallMetrics::new(DEFAULT_BUCKETS.to_vec(), &["http.route".into()]);
        m.observe(&mut r, "shop", &[], &span("GET /x", 2, 10, false), 1);
        m.observe(&mut r, "shop", &[], &span("GET /x", 2, 30, true), 2);
        m.observe(&mut r, "shop", &[], &span("GET /x", 2, 20, true), 3);
        let ok = [
            ("service", "shop"),
            ("span_name", "GET /x"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("status_code", "STATUS_CODE_UNSET"),
            ("http_route", "/x"),
        ];
        assert_eq!(value(&r, CALLS, &ok), Some(1.0));
        let err = [("span_kind", "SPAN_KIND_SERVER"), ("status_code", "STATUS_CODE_ERROR")];
        assert_eq!(value(&r, CALLS, &err), Some(2.0));
        assert_eq!(value(&r, "traces_spanmetrics_latency_count", &err), Some(2.0));
        let sum = value(&r, "traces_spanmetrics_latency_sum", &err).unwrap();
        assert!((sum - 0.05).abs() < 1e-12);
        assert_eq!(
            value(
                &r,
                "traces_spanmetrics_latency_bucket",
                &[("status_code", "STATUS_CODE_ERROR"), ("le", "0.016")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &r,
                "traces_spanmetrics_latency_bucket",
                &[("status_code", "STATUS_CODE_ERROR"), ("le", "0.032")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &r,
                "traces_spanmetrics_latency_bucket",
                &[("status_code", "STATUS_CODE_ERROR"), ("le", "+Inf")]
            ),
            Some(2.0)
        );
        let calls = r
            .series
            .iter()
            .find(|s| {
                s.labels.get("__name__") == Some(CALLS)
                    && s.labels.get("status_code") == Some("STATUS_CODE_ERROR")
            })
            .unwrap();
        assert_eq!(calls.exemplars.len(), 2, "failed calls carry exemplars");
        assert_eq!(m.len(), 2);
    }
}
