//! The critical path of a trace: the chain of spans that determined its end-to-end duration.
//!
//! Classic algorithm (as Jaeger's trace view): start at the root; among its children take the
//! one that finishes last, then, going backwards from that child's start, the next child that
//! finishes before it, and so on; recurse into every child taken. Time of a span not covered
//! by the children taken is its own (`self_ns`) time on the path. Children are clamped to their
//! parent's interval first, so clock skew between hosts never puts a child outside its parent
//! nor makes the path longer than the root.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::TracesData;

use super::{QueryEngine, QueryError};
use crate::spanrows::SERVICE_NAME_KEY;

/// One span of a trace, flattened out of OTLP nesting, with its attributes as strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub service: String,
    pub name: String,
    pub kind: i32,
    pub start_ns: i64,
    pub end_ns: i64,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// Span attributes (unscoped keys) with scalar values as strings.
    pub attrs: Vec<(String, String)>,
    /// Resource attributes other than `service.name`.
    pub resource: Vec<(String, String)>,
    /// Names of the span's events.
    pub events: Vec<String>,
}

/// A scalar attribute value as a string; arrays, maps and bytes are left out.
pub fn value_string(v: Option<&AnyValue>) -> Option<String> {
    Some(match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        _ => return None,
    })
}

/// The spans of `data`; spans with malformed ids are skipped.
pub fn flatten(data: &TracesData) -> Vec<TraceSpan> {
    let mut out = Vec::new();
    for rs in &data.resource_spans {
        let attrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let mut service = String::new();
        let mut resource = Vec::new();
        for kv in attrs {
            let Some(v) = value_string(kv.value.as_ref()) else { continue };
            if kv.key == SERVICE_NAME_KEY {
                service = v;
            } else {
                resource.push((kv.key.clone(), v));
            }
        }
        for span in rs.scope_spans.iter().flat_map(|s| s.spans.iter()) {
            let (Ok(trace_id), Ok(span_id)) = (
                <[u8; 16]>::try_from(span.trace_id.as_slice()),
                <[u8; 8]>::try_from(span.span_id.as_slice()),
            ) else {
                continue;
            };
            let start_ns = i64::try_from(span.start_time_unix_nano).unwrap_or(i64::MAX);
            let end_ns = i64::try_from(span.end_time_unix_nano).unwrap_or(i64::MAX).max(start_ns);
            out.push(TraceSpan {
                trace_id,
                span_id,
                parent: <[u8; 8]>::try_from(span.parent_span_id.as_slice())
                    .ok()
                    .filter(|p| p != &[0u8; 8]),
                service: service.clone(),
                name: span.name.clone(),
                kind: span.kind,
                start_ns,
                end_ns,
                status: span.status.as_ref().map_or(0, |s| s.code),
                attrs: span
                    .attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), value_string(kv.value.as_ref())?)))
                    .collect(),
                resource: resource.clone(),
                events: span.events.iter().map(|e| e.name.clone()).collect(),
            });
        }
    }
    out
}

/// Children (indices into `spans`) of every span, by parent index.
pub fn children_index(spans: &[TraceSpan]) -> Vec<Vec<usize>> {
    let by_id: HashMap<[u8; 8], usize> =
        spans.iter().enumerate().map(|(i, s)| (s.span_id, i)).collect();
    let mut kids = vec![Vec::new(); spans.len()];
    for (i, s) in spans.iter().enumerate() {
        if let Some(p) = s.parent.and_then(|p| by_id.get(&p)).filter(|&&p| p != i) {
            kids[*p].push(i);
        }
    }
    kids
}

/// A span on the critical path, its interval clamped into its parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSpan {
    /// Index into the spans the path was computed from.
    pub index: usize,
    pub start_ns: i64,
    pub end_ns: i64,
    /// Time on the path spent in this span itself (not in a child on the path).
    pub self_ns: i64,
}

/// The root a trace's path starts from: the longest span without a parent in the trace
/// (a trace missing its root has several), earliest first on ties.
fn root(spans: &[TraceSpan]) -> Option<usize> {
    let ids: std::collections::HashSet<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.parent.is_none_or(|p| !ids.contains(&p) || p == s.span_id))
        .min_by_key(|(_, s)| (std::cmp::Reverse(s.end_ns - s.start_ns), s.start_ns))
        .map(|(i, _)| i)
}

/// The critical path of one trace's spans, root first, each span followed by the path
/// through its children in time order. Empty when there are no spans.
pub fn critical_path(spans: &[TraceSpan]) -> Vec<PathSpan> {
    let Some(r) = root(spans) else { return Vec::new() };
    let kids = children_index(spans);
    let mut visited = vec![false; spans.len()];
    let mut out = Vec::new();
    // (span, clamp interval); an explicit stack: traces can be deep.
    let mut stack = vec![(r, spans[r].start_ns, spans[r].end_ns)];
    while let Some((i, lo, hi)) = stack.pop() {
        if std::mem::replace(&mut visited[i], true) {
            continue;
        }
        let s = spans[i].start_ns.clamp(lo, hi);
        let e = spans[i].end_ns.clamp(s, hi);
        let mut children: Vec<(usize, i64, i64)> = kids[i]
            .iter()
            .filter(|&&c| !visited[c])
            .map(|&c| {
                let cs = spans[c].start_ns.clamp(s, e);
                (c, cs, spans[c].end_ns.clamp(cs, e))
            })
            .filter(|(_, cs, ce)| ce > cs)
            .collect();
        // Latest end first; the earlier start wins ties (it covers more of the gap).
        children.sort_by_key(|&(c, cs, ce)| (std::cmp::Reverse(ce), cs, c));
        let mut cursor = e;
        let mut taken = Vec::new();
        for (c, cs, ce) in children {
            if ce <= cursor {
                taken.push((c, cs, ce));
                cursor = cs;
            }
        }
        let covered: i64 = taken.iter().map(|(_, cs, ce)| ce - cs).sum();
        out.push(PathSpan { index: i, start_ns: s, end_ns: e, self_ns: (e - s) - covered });
        // `taken` runs backwards in time: pushing in that order pops the earliest first.
        stack.extend(taken);
    }
    out
}

/// The spans of one trace, flattened; `NotFound` if the trace is unknown.
pub(super) async fn trace_spans(
    engine: &QueryEngine,
    tenant: &str,
    id: [u8; 16],
) -> Result<Vec<TraceSpan>, QueryError> {
    Ok(flatten(&engine.trace_by_id(tenant, id, None).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span `id` under `parent` (0 = root) lasting [start, end] ms.
    fn span(id: u8, parent: u8, name: &str, start: i64, end: i64) -> TraceSpan {
        TraceSpan {
            span_id: [id; 8],
            parent: (parent != 0).then_some([parent; 8]),
            service: "svc".into(),
            name: name.into(),
            start_ns: start * 1_000_000,
            end_ns: end * 1_000_000,
            ..Default::default()
        }
    }

    /// (name, start ms, end ms, self ms) of the path.
    fn path(spans: &[TraceSpan]) -> Vec<(String, i64, i64, i64)> {
        critical_path(spans)
            .into_iter()
            .map(|p| {
                (
                    spans[p.index].name.clone(),
                    p.start_ns / 1_000_000,
                    p.end_ns / 1_000_000,
                    p.self_ns / 1_000_000,
                )
            })
            .collect()
    }

    fn t(name: &str, s: i64, e: i64, own: i64) -> (String, i64, i64, i64) {
        (name.to_string(), s, e, own)
    }

    #[test]
    fn sequential_children_are_all_on_the_path() {
        let spans = vec![
            span(1, 0, "root", 0, 100),
            span(2, 1, "a", 10, 40),
            span(3, 1, "b", 50, 90),
            span(4, 3, "b1", 60, 70),
        ];
        assert_eq!(
            path(&spans),
            vec![
                t("root", 0, 100, 30),
                t("a", 10, 40, 30),
                t("b", 50, 90, 30),
                t("b1", 60, 70, 10)
            ]
        );
        let total: i64 = path(&spans).iter().map(|p| p.3).sum();
        assert_eq!(total, 100, "self times add up to the root's duration");
    }

    #[test]
    fn of_overlapping_children_the_last_finishing_wins() {
        // fast and slow run in parallel from 10 ms; slow ends last, so fast is not critical.
        // early ends before slow starts and is on the path again.
        let spans = vec![
            span(1, 0, "root", 0, 100),
            span(2, 1, "early", 0, 5),
            span(3, 1, "fast", 10, 30),
            span(4, 1, "slow", 10, 80),
        ];
        assert_eq!(
            path(&spans),
            vec![t("root", 0, 100, 25), t("early", 0, 5, 5), t("slow", 10, 80, 70)]
        );
    }

    #[test]
    fn skewed_children_are_clamped_into_their_parent() {
        // The child's clock is 30 ms ahead: it appears to end after its parent.
        let spans = vec![
            span(1, 0, "root", 0, 100),
            span(2, 1, "client", 10, 90),
            span(3, 2, "server", 40, 130),
            // Entirely outside its parent: clamped to nothing, never on the path.
            span(4, 2, "ghost", 200, 300),
        ];
        assert_eq!(
            path(&spans),
            vec![t("root", 0, 100, 20), t("client", 10, 90, 30), t("server", 40, 90, 50)]
        );
    }

    #[test]
    fn orphans_cycles_and_empty_traces() {
        assert!(critical_path(&[]).is_empty());
        // No root in the trace: the longest parentless span is the root.
        let spans = vec![span(2, 9, "orphan-a", 0, 10), span(3, 9, "orphan-b", 0, 50)];
        assert_eq!(path(&spans), vec![t("orphan-b", 0, 50, 50)]);
        // A span that is its own parent, and a duplicate id: no loop, each span once.
        let mut spans = vec![span(1, 0, "root", 0, 100), span(2, 1, "a", 10, 20)];
        spans.push(span(2, 2, "dup", 30, 40));
        let p = path(&spans);
        assert_eq!(p[0], t("root", 0, 100, p[0].3));
        assert!(p.len() <= 3);
    }
}
