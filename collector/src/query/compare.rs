//! Slow-vs-normal comparison of one operation (service + span name): what distinguishes its
//! slow calls (duration ≥ a threshold, by default the operation's p90 in the window) from the
//! others — their attributes, the operations called underneath them and the services those run
//! in — ranked by how much each explains the slowness.
//!
//! Counts and percentiles cover every call in the window (up to [`MAX_CALLS`], slowest
//! first). The differences are computed on an evenly spread sample of at most
//! [`SAMPLE_PER_SIDE`] calls per side, whose whole traces are read (blocks pruned by their
//! trace-id bloom filters) to find each call's descendants.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::critical_path::{TraceSpan, children_index, flatten};
use super::metrics_eval::quantile;
use super::operation::{OperationQuery, OperationSpan};
use super::trace::whole_trace_rows;
use super::{QueryEngine, QueryError};
use crate::spanrows::to_traces_data;

/// Calls read for counts and percentiles (the slowest, if there are more).
pub const MAX_CALLS: usize = 200_000;
/// Calls per side whose traces are read for the differences.
pub const SAMPLE_PER_SIDE: usize = 200;
/// Traces are read from blocks overlapping the window widened by this much: descendants may
/// start before (skew) or end after it.
const TRACE_SLACK_NS: i64 = 600_000_000_000;
/// Example trace ids per entry.
const EXAMPLE_IDS: usize = 3;
/// Example calls per side.
const EXAMPLE_CALLS: usize = 5;
/// Share differences smaller than this are not differences.
const MIN_SHARE_DIFF: f64 = 0.05;
/// Two-proportion z score below which a share difference is taken for chance.
const MIN_Z: f64 = 2.0;
/// Children and services explaining less than this of the slowness are left out (unless their
/// share differs).
const MIN_TIME_SCORE: f64 = 0.01;

#[derive(Debug, Clone, PartialEq)]
pub struct CompareRequest {
    pub service: String,
    pub span_name: String,
    /// Unix nanoseconds, inclusive.
    pub start_ns: i64,
    pub end_ns: i64,
    /// Slow = at least this long; `None`: the operation's p90 in the window.
    pub threshold_ns: Option<i64>,
    /// Entries per list.
    pub limit: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub service: String,
    pub span_name: String,
    pub threshold_ns: i64,
    pub slow: GroupStats,
    pub normal: GroupStats,
    pub attributes: Vec<AttributeDiff>,
    pub children: Vec<ChildDiff>,
    pub services: Vec<ServiceDiff>,
    pub examples: Examples,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupStats {
    pub count: usize,
    pub p50_ns: i64,
    pub p99_ns: i64,
}

/// An attribute value (`span.x`, `resource.x`, `status` — `unset`, `ok` or `error` — or
/// `event`, the name of an event the span recorded) and the share of slow and normal calls
/// carrying it. `score = |slow_share − normal_share|`; which side it is more common on
/// is told by the shares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeDiff {
    pub key: String,
    pub value: String,
    pub slow_share: f64,
    pub normal_share: f64,
    pub score: f64,
    pub example_trace_ids: Vec<String>,
}

/// An operation called (directly or further down, same trace) under the compared span.
/// Shares are of calls having it at least once; means are of the time spent in it per call
/// that has it (union of its spans' intervals, clamped into the call). See [`time_score`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChildDiff {
    pub service: String,
    pub span_name: String,
    pub slow_share: f64,
    pub normal_share: f64,
    pub slow_mean_ns: i64,
    pub normal_mean_ns: i64,
    pub score: f64,
    pub example_trace_ids: Vec<String>,
}

/// As [`ChildDiff`], grouped by the service of the descendant spans; the time of a service is
/// its exclusive time: each instant of the call counts for the service of the innermost
/// descendant span running then (so a client waiting for a traced server does not count for
/// the client's service, and a server's time spent in calls to others not for the server).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceDiff {
    pub service: String,
    pub slow_share: f64,
    pub normal_share: f64,
    pub slow_mean_ns: i64,
    pub normal_mean_ns: i64,
    pub score: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Examples {
    pub slow: Vec<ExampleCall>,
    pub normal: Vec<ExampleCall>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExampleCall {
    pub trace_id: String,
    pub span_id: String,
    pub duration_ns: i64,
}

/// One sampled call: its attributes (scoped keys) and the descendants' intervals clamped
/// into the call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Call {
    pub trace_id: [u8; 16],
    pub duration_ns: i64,
    pub attrs: Vec<(String, String)>,
    /// The descendant spans.
    pub parts: Vec<Part>,
}

/// A descendant span of a call, its interval clamped into the call's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Part {
    pub service: String,
    pub span_name: String,
    pub start_ns: i64,
    pub end_ns: i64,
    /// 1 for a child of the call, 2 for a grandchild, …
    pub depth: u32,
}

/// How much of the slowness a child operation (or service) explains:
///
/// `score = clamp((slow_share·slow_mean − normal_share·normal_mean) / (slow_p50 − normal_p50), 0, 1)`
///
/// — the extra time an average slow call spends in it compared with an average normal call,
/// as a fraction of the gap between a typical slow and a typical normal call (`gap_ns`, at
/// least 1 ns). 1 means it accounts for the whole difference; 0 that it is no slower when the
/// call is slow.
pub fn time_score(
    slow_share: f64,
    slow_mean: f64,
    normal_share: f64,
    normal_mean: f64,
    gap_ns: i64,
) -> f64 {
    let extra = slow_share * slow_mean - normal_share * normal_mean;
    let s = extra / gap_ns.max(1) as f64;
    if s.is_finite() { s.clamp(0.0, 1.0) } else { 0.0 }
}

/// Whether shares `a/n1` and `b/n2` differ by more than chance and by at least
/// [`MIN_SHARE_DIFF`] (two-proportion z-test, |z| ≥ [`MIN_Z`]).
pub fn shares_differ(a: usize, n1: usize, b: usize, n2: usize) -> bool {
    if n1 == 0 || n2 == 0 {
        return false;
    }
    let (p1, p2) = (a as f64 / n1 as f64, b as f64 / n2 as f64);
    if (p1 - p2).abs() < MIN_SHARE_DIFF {
        return false;
    }
    let p = (a + b) as f64 / (n1 + n2) as f64;
    let se = (p * (1.0 - p) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    se > 0.0 && (p1 - p2).abs() / se >= MIN_Z
}

/// Total length of the union of intervals.
fn union_len(mut iv: Vec<(i64, i64)>) -> i64 {
    iv.sort_unstable();
    let mut total = 0i64;
    let mut cur: Option<(i64, i64)> = None;
    for (s, e) in iv {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + cur.map_or(0, |(s, e)| e - s)
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// Per-entry statistics of one side.
#[derive(Default)]
struct Side {
    calls: usize,
    time_ns: i64,
    traces: Vec<[u8; 16]>,
}

impl Side {
    fn add(&mut self, trace: [u8; 16], time: i64) {
        self.calls += 1;
        self.time_ns += time;
        if self.traces.len() < EXAMPLE_IDS && !self.traces.contains(&trace) {
            self.traces.push(trace);
        }
    }
    fn mean(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.time_ns as f64 / self.calls as f64 }
    }
}

/// Entries of both sides, keyed by `K`.
fn tally<K: Ord + Clone>(
    slow: &[Call],
    normal: &[Call],
    entries: impl Fn(&Call) -> BTreeMap<K, i64>,
) -> BTreeMap<K, (Side, Side)> {
    let mut out: BTreeMap<K, (Side, Side)> = BTreeMap::new();
    for (calls, is_slow) in [(slow, true), (normal, false)] {
        for call in calls {
            for (k, t) in entries(call) {
                let e = out.entry(k).or_default();
                let side = if is_slow { &mut e.0 } else { &mut e.1 };
                side.add(call.trace_id, t);
            }
        }
    }
    out
}

fn examples(s: &Side, n: &Side) -> Vec<String> {
    let ids = if s.traces.is_empty() { &n.traces } else { &s.traces };
    ids.iter().map(hex::encode).collect()
}

/// Attribute differences, most different first. Values seen on a single call and keys whose
/// values are (nearly) unique per call — ids, timestamps — are left out, as are differences
/// that could be chance.
pub fn attribute_diffs(slow: &[Call], normal: &[Call], limit: usize) -> Vec<AttributeDiff> {
    let (n1, n2) = (slow.len(), normal.len());
    if n1 == 0 || n2 == 0 {
        return Vec::new();
    }
    let t = tally(slow, normal, |c| c.attrs.iter().map(|kv| (kv.clone(), 0)).collect());
    // Per key: calls carrying it and distinct values.
    let mut keys: HashMap<&str, (usize, usize)> = HashMap::new();
    for ((k, _), (s, n)) in &t {
        let e = keys.entry(k.as_str()).or_default();
        e.0 += s.calls + n.calls;
        e.1 += 1;
    }
    let high_cardinality = |k: &str| {
        keys.get(k).is_some_and(|&(calls, distinct)| distinct >= 4 && distinct * 2 > calls)
    };
    let mut out: Vec<AttributeDiff> = t
        .iter()
        .filter(|((k, _), (s, n))| {
            s.calls + n.calls >= 2
                && !high_cardinality(k)
                && shares_differ(s.calls, n1, n.calls, n2)
        })
        .map(|((k, v), (s, n))| {
            let (ss, ns) = (share(s.calls, n1), share(n.calls, n2));
            AttributeDiff {
                key: k.clone(),
                value: v.clone(),
                slow_share: round4(ss),
                normal_share: round4(ns),
                score: round4((ss - ns).abs()),
                example_trace_ids: examples(s, n),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.slow_share.total_cmp(&a.slow_share))
            .then_with(|| (&a.key, &a.value).cmp(&(&b.key, &b.value)))
    });
    out.truncate(limit);
    out
}

/// Exclusive time per service of one call's descendants: each instant counts for the service
/// of the innermost part running then (the latest started among equally deep ones).
pub fn service_times(call: &Call) -> BTreeMap<String, i64> {
    let parts = &call.parts;
    // Ends sort before starts at the same instant; empty parts never become active.
    let mut events: Vec<(i64, bool, usize)> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.end_ns > p.start_ns)
        .flat_map(|(i, p)| [(p.start_ns, true, i), (p.end_ns, false, i)])
        .collect();
    events.sort_unstable();
    let mut active: BTreeSet<(u32, i64, usize)> = BTreeSet::new();
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    let mut prev: Option<i64> = None;
    for (t, start, i) in events {
        if let (Some(pt), Some(&(_, _, j))) = (prev, active.last())
            && t > pt
        {
            *out.entry(parts[j].service.clone()).or_default() += t - pt;
        }
        let key = (parts[i].depth, parts[i].start_ns, i);
        if start {
            active.insert(key);
        } else {
            active.remove(&key);
        }
        prev = Some(t);
    }
    out
}

/// Time per entry of one call: union of its parts' intervals.
fn times<K: Ord>(call: &Call, key: impl Fn(&Part) -> K) -> BTreeMap<K, i64> {
    let mut iv: BTreeMap<K, Vec<(i64, i64)>> = BTreeMap::new();
    for p in &call.parts {
        iv.entry(key(p)).or_default().push((p.start_ns, p.end_ns));
    }
    iv.into_iter().map(|(k, v)| (k, union_len(v))).collect()
}

struct TimeDiff<K> {
    key: K,
    slow_share: f64,
    normal_share: f64,
    slow_mean: f64,
    normal_mean: f64,
    score: f64,
    examples: Vec<String>,
}

fn time_diffs<K: Ord + Clone>(
    slow: &[Call],
    normal: &[Call],
    gap_ns: i64,
    limit: usize,
    entries: impl Fn(&Call) -> BTreeMap<K, i64> + Copy,
) -> Vec<TimeDiff<K>> {
    let (n1, n2) = (slow.len(), normal.len());
    if n1 == 0 || n2 == 0 {
        return Vec::new();
    }
    let t = tally(slow, normal, entries);
    let mut out: Vec<TimeDiff<K>> = t
        .into_iter()
        .filter_map(|(k, (s, n))| {
            let (ss, ns) = (share(s.calls, n1), share(n.calls, n2));
            let score = time_score(ss, s.mean(), ns, n.mean(), gap_ns);
            (score >= MIN_TIME_SCORE || shares_differ(s.calls, n1, n.calls, n2)).then(|| TimeDiff {
                examples: examples(&s, &n),
                key: k,
                slow_share: round4(ss),
                normal_share: round4(ns),
                slow_mean: s.mean(),
                normal_mean: n.mean(),
                score: round4(score),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then((b.slow_share - b.normal_share).total_cmp(&(a.slow_share - a.normal_share)))
            // Equally explaining: the most specific (least time, e.g. the callee rather than
            // the call waiting for it) first.
            .then(a.slow_mean.total_cmp(&b.slow_mean))
            .then_with(|| a.key.cmp(&b.key))
    });
    out.truncate(limit);
    out
}

/// Child operations, most explaining first ([`time_score`]).
pub fn child_diffs(slow: &[Call], normal: &[Call], gap_ns: i64, limit: usize) -> Vec<ChildDiff> {
    time_diffs(slow, normal, gap_ns, limit, |c| {
        times(c, |p| (p.service.clone(), p.span_name.clone()))
    })
    .into_iter()
    .map(|d| ChildDiff {
        service: d.key.0,
        span_name: d.key.1,
        slow_share: d.slow_share,
        normal_share: d.normal_share,
        slow_mean_ns: d.slow_mean.round() as i64,
        normal_mean_ns: d.normal_mean.round() as i64,
        score: d.score,
        example_trace_ids: d.examples,
    })
    .collect()
}

/// Services of the descendants, most explaining first ([`time_score`]).
pub fn service_diffs(
    slow: &[Call],
    normal: &[Call],
    gap_ns: i64,
    limit: usize,
) -> Vec<ServiceDiff> {
    time_diffs(slow, normal, gap_ns, limit, service_times)
        .into_iter()
        .map(|d| ServiceDiff {
            service: d.key,
            slow_share: d.slow_share,
            normal_share: d.normal_share,
            slow_mean_ns: d.slow_mean.round() as i64,
            normal_mean_ns: d.normal_mean.round() as i64,
            score: d.score,
        })
        .collect()
}

/// Up to `n` elements spread evenly over `v`.
fn spread<T: Copy>(v: &[T], n: usize) -> Vec<T> {
    if v.len() <= n {
        return v.to_vec();
    }
    (0..n).map(|i| v[i * v.len() / n]).collect()
}

fn stats(durations_desc: &[OperationSpan]) -> GroupStats {
    let mut d: Vec<i64> = durations_desc.iter().map(|s| s.duration_ns).collect();
    d.reverse();
    let q = |p| quantile(&d, p).map_or(0, |v| v.round() as i64);
    GroupStats { count: d.len(), p50_ns: q(0.5), p99_ns: q(0.99) }
}

fn example_calls(spans: &[OperationSpan]) -> Vec<ExampleCall> {
    spans
        .iter()
        .map(|s| ExampleCall {
            trace_id: hex::encode(s.trace_id),
            span_id: hex::encode(s.span_id),
            duration_ns: s.duration_ns,
        })
        .collect()
}

fn status_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// The sampled call `span_id` of a trace's spans, with its descendants; `None` if the span is
/// not among them.
pub fn call_of(spans: &[TraceSpan], kids: &[Vec<usize>], span_id: [u8; 8]) -> Option<Call> {
    let root = spans.iter().position(|s| s.span_id == span_id)?;
    let r = &spans[root];
    let mut attrs: Vec<(String, String)> = r
        .attrs
        .iter()
        .map(|(k, v)| (format!("span.{k}"), v.clone()))
        .chain(r.resource.iter().map(|(k, v)| (format!("resource.{k}"), v.clone())))
        .collect();
    attrs.push(("status".into(), status_name(r.status).into()));
    attrs.extend(r.events.iter().map(|e| ("event".to_string(), e.clone())));
    attrs.sort();
    attrs.dedup();
    let mut parts = Vec::new();
    let mut seen = vec![false; spans.len()];
    seen[root] = true;
    let mut stack: Vec<(usize, u32)> = kids[root].iter().map(|&k| (k, 1)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let s = &spans[i];
        let start = s.start_ns.clamp(r.start_ns, r.end_ns);
        let end = s.end_ns.clamp(start, r.end_ns);
        parts.push(Part {
            service: s.service.clone(),
            span_name: s.name.clone(),
            start_ns: start,
            end_ns: end,
            depth,
        });
        stack.extend(kids[i].iter().map(|&k| (k, depth + 1)));
    }
    Some(Call { trace_id: r.trace_id, duration_ns: r.end_ns - r.start_ns, attrs, parts })
}

/// Spans of several traces from blocks overlapping `range` (unix nanos) and the head.
pub(super) async fn spans_of_traces(
    engine: &QueryEngine,
    tenant: &str,
    ids: &[[u8; 16]],
    range: (i64, i64),
) -> Result<Vec<TraceSpan>, QueryError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let (batches, dedicated) = whole_trace_rows(
        engine,
        tenant,
        |b| {
            b.meta.max_time >= range.0
                && b.meta.min_time <= range.1
                && ids.iter().any(|id| b.bloom.contains(id))
        },
        ids,
        &crate::cluster::SpanScope {
            trace_ids: ids.iter().map(hex::encode).collect(),
            ..Default::default()
        },
    )
    .await?;
    Ok(flatten(&to_traces_data(&batches, &dedicated)?))
}

/// Compares the slow calls of an operation with its normal ones.
pub(super) async fn compare(
    engine: &QueryEngine,
    tenant: &str,
    req: &CompareRequest,
) -> Result<Comparison, QueryError> {
    let started = std::time::Instant::now();
    let q = OperationQuery {
        service: req.service.clone(),
        span_name: req.span_name.clone(),
        start_ns: req.start_ns,
        end_ns: req.end_ns,
        min_duration_ns: None,
        below_duration_ns: None,
        limit: MAX_CALLS,
    };
    // Slowest first; ties in a fixed order so answers are reproducible.
    let mut all = engine.operation_spans(tenant, &q).await?;
    all.sort_by_key(|s| (std::cmp::Reverse(s.duration_ns), s.trace_id, s.span_id));
    let mut out = Comparison {
        service: req.service.clone(),
        span_name: req.span_name.clone(),
        threshold_ns: req.threshold_ns.unwrap_or(0),
        ..Default::default()
    };
    if all.is_empty() {
        return Ok(out);
    }
    let threshold = match req.threshold_ns {
        Some(t) => t,
        None => {
            let asc: Vec<i64> = all.iter().rev().map(|s| s.duration_ns).collect();
            quantile(&asc, 0.9).map_or(0, |v| v.round() as i64)
        }
    };
    out.threshold_ns = threshold;
    let split = all.partition_point(|s| s.duration_ns >= threshold);
    let (slow, normal) = all.split_at(split);
    out.slow = stats(slow);
    out.normal = stats(normal);
    out.examples.slow = example_calls(&slow[..slow.len().min(EXAMPLE_CALLS)]);
    let mid = normal.len() / 2;
    let from = mid.saturating_sub(EXAMPLE_CALLS / 2);
    out.examples.normal = example_calls(&normal[from..(from + EXAMPLE_CALLS).min(normal.len())]);
    if slow.is_empty() || normal.is_empty() {
        engine.observe("compare", started);
        return Ok(out);
    }

    let (slow_s, normal_s) = (spread(slow, SAMPLE_PER_SIDE), spread(normal, SAMPLE_PER_SIDE));
    let ids: Vec<[u8; 16]> = slow_s
        .iter()
        .chain(normal_s.iter())
        .map(|s| s.trace_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let range =
        (req.start_ns.saturating_sub(TRACE_SLACK_NS), req.end_ns.saturating_add(TRACE_SLACK_NS));
    let spans = engine.spans_of_traces(tenant, &ids, range).await?;
    let mut by_trace: HashMap<[u8; 16], Vec<TraceSpan>> = HashMap::new();
    for s in spans {
        by_trace.entry(s.trace_id).or_default().push(s);
    }
    let kids: HashMap<[u8; 16], Vec<Vec<usize>>> =
        by_trace.iter().map(|(id, spans)| (*id, children_index(spans))).collect();
    let calls = |sample: &[OperationSpan]| -> Vec<Call> {
        sample
            .iter()
            .filter_map(|s| call_of(by_trace.get(&s.trace_id)?, kids.get(&s.trace_id)?, s.span_id))
            .collect()
    };
    let (slow_c, normal_c) = (calls(&slow_s), calls(&normal_s));
    let gap = out.slow.p50_ns - out.normal.p50_ns;
    out.attributes = attribute_diffs(&slow_c, &normal_c, req.limit);
    out.children = child_diffs(&slow_c, &normal_c, gap, req.limit);
    out.services = service_diffs(&slow_c, &normal_c, gap, req.limit);
    engine.observe("compare", started);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    /// A call of `ms` with attributes and children (service, name, start ms, end ms).
    fn call(n: u8, ms: i64, attrs: &[(&str, &str)], parts: &[(&str, &str, i64, i64)]) -> Call {
        Call {
            trace_id: [n; 16],
            duration_ns: ms * MS,
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            parts: parts
                .iter()
                .map(|(s, n, a, b)| Part {
                    service: s.to_string(),
                    span_name: n.to_string(),
                    start_ns: a * MS,
                    end_ns: b * MS,
                    depth: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn time_score_is_the_explained_share_of_the_gap() {
        // Slow calls spend 90 ms in it, normal ones never call it; the gap is 100 ms.
        assert_eq!(time_score(1.0, 90.0, 0.0, 0.0, 100), 0.9);
        // Half the slow calls spend 100 ms: 50 ms per slow call on average.
        assert_eq!(time_score(0.5, 100.0, 0.0, 0.0, 100), 0.5);
        // Same time on both sides: explains nothing; faster when slow: clamped to 0.
        assert_eq!(time_score(1.0, 10.0, 1.0, 10.0, 100), 0.0);
        assert_eq!(time_score(1.0, 1.0, 1.0, 10.0, 100), 0.0);
        // More than the gap: clamped to 1; no gap: still finite.
        assert_eq!(time_score(1.0, 500.0, 0.0, 0.0, 100), 1.0);
        assert_eq!(time_score(1.0, 5.0, 0.0, 0.0, 0), 1.0);
    }

    #[test]
    fn chance_differences_are_not_differences() {
        assert!(shares_differ(10, 10, 0, 40));
        assert!(!shares_differ(5, 10, 20, 40), "same share");
        assert!(!shares_differ(3, 5, 1, 5), "too few calls to tell");
        assert!(!shares_differ(1, 1, 0, 0), "nothing to compare with");
        assert_eq!(union_len(vec![(0, 10), (5, 15), (20, 30)]), 25);
        assert_eq!(union_len(vec![]), 0);
    }

    #[test]
    fn the_cause_ranks_first_and_noise_is_left_out() {
        let mut slow = Vec::new();
        let mut normal = Vec::new();
        for i in 0..20u8 {
            let route = if i % 2 == 0 { "/a" } else { "/b" };
            let id = format!("req-{i}");
            slow.push(call(
                i,
                100,
                &[
                    ("span.db.system", "postgres"),
                    ("span.http.route", route),
                    ("span.request.id", &id),
                    ("status", "unset"),
                ],
                &[("orders", "SELECT orders", 5, 95), ("orders", "validate", 0, 2)],
            ));
            let id = format!("req-{}", 100 + i);
            normal.push(call(
                100 + i,
                10,
                &[("span.http.route", route), ("span.request.id", &id), ("status", "unset")],
                &[("orders", "validate", 0, 2)],
            ));
        }
        let attrs = attribute_diffs(&slow, &normal, 20);
        assert_eq!(attrs.len(), 1, "{attrs:?}");
        assert_eq!(
            (attrs[0].key.as_str(), attrs[0].value.as_str()),
            ("span.db.system", "postgres")
        );
        assert_eq!((attrs[0].slow_share, attrs[0].normal_share, attrs[0].score), (1.0, 0.0, 1.0));
        assert_eq!(attrs[0].example_trace_ids.len(), EXAMPLE_IDS);

        let children = child_diffs(&slow, &normal, 90 * MS, 20);
        assert_eq!(children.len(), 1, "validate takes the same time: {children:?}");
        assert_eq!(children[0].span_name, "SELECT orders");
        assert_eq!((children[0].slow_mean_ns, children[0].normal_mean_ns), (90 * MS, 0));
        assert_eq!(children[0].score, 1.0);

        let services = service_diffs(&slow, &normal, 90 * MS, 20);
        assert_eq!(services[0].service, "orders");
        assert_eq!(services[0].slow_mean_ns, 92 * MS);
        assert_eq!(services[0].normal_mean_ns, 2 * MS);

        assert!(attribute_diffs(&slow, &[], 20).is_empty());
        assert_eq!(attribute_diffs(&slow, &normal, 0).len(), 0);
    }

    #[test]
    fn service_time_is_exclusive() {
        let part = |svc: &str, a: i64, b: i64, depth: u32| Part {
            service: svc.into(),
            span_name: "x".into(),
            start_ns: a,
            end_ns: b,
            depth,
        };
        // orders' client (10–90) waits for payment's server (20–80), which calls the bank
        // client (30–70, uninstrumented); an empty part changes nothing.
        let c = Call {
            parts: vec![
                part("orders", 10, 90, 1),
                part("payment", 20, 80, 2),
                part("payment", 30, 70, 3),
                part("orders", 95, 95, 1),
                part("inventory", 0, 5, 1),
            ],
            ..Default::default()
        };
        let t = service_times(&c);
        assert_eq!(t.get("orders"), Some(&20));
        assert_eq!(t.get("payment"), Some(&60));
        assert_eq!(t.get("inventory"), Some(&5));
    }

    #[test]
    fn calls_collect_their_descendants_only() {
        let span = |id: u8, parent: u8, name: &str, s: i64, e: i64| TraceSpan {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent: (parent != 0).then_some([parent; 8]),
            service: "svc".into(),
            name: name.into(),
            start_ns: s,
            end_ns: e,
            attrs: vec![("k".into(), "v".into())],
            resource: vec![("host.name".into(), "h1".into())],
            status: 2,
            ..Default::default()
        };
        let mut spans = vec![
            span(1, 0, "root", 0, 100),
            span(2, 1, "op", 10, 50),
            span(3, 2, "child", 20, 60),
            span(4, 3, "grandchild", 30, 40),
            span(5, 1, "sibling", 50, 90),
        ];
        spans[1].events = vec!["retry".into()];
        let kids = children_index(&spans);
        let c = call_of(&spans, &kids, [2; 8]).unwrap();
        assert_eq!(c.duration_ns, 40);
        let mut names: Vec<(&str, i64, i64, u32)> =
            c.parts.iter().map(|p| (p.span_name.as_str(), p.start_ns, p.end_ns, p.depth)).collect();
        names.sort();
        assert_eq!(names, vec![("child", 20, 50, 1), ("grandchild", 30, 40, 2)]);
        assert_eq!(
            c.attrs,
            vec![
                ("event".to_string(), "retry".to_string()),
                ("resource.host.name".into(), "h1".into()),
                ("span.k".into(), "v".into()),
                ("status".into(), "error".into())
            ]
        );
        assert!(call_of(&spans, &kids, [9; 8]).is_none());
    }
}
