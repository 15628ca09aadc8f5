//! What a latency alert adds to its annotations so that whoever gets it can start looking at
//! once: the trace ids of the slowest recent calls (from the exemplars the span-metrics latency
//! histogram keeps per bucket — the high buckets carry the slow calls) and a link to the
//! flamegraph of that operation's calls at least as slow as those.

use std::collections::BTreeMap;

use promql_parser::parser::Expr;

use crate::metrics_gen::Generator;
use crate::metrics_gen::spanmetrics::LATENCY;
use crate::promql::labels::{Labels, METRIC_NAME};

pub const SLOW_TRACE_IDS: &str = "skein_slow_trace_ids";
/// The native API's SVG flamegraph.
pub const FLAMEGRAPH_URL: &str = "skein_flamegraph_url";
/// The web UI's flamegraph page.
pub const FLAMEGRAPH_UI_URL: &str = "skein_flamegraph_ui_url";
/// Trace ids per alert.
pub const MAX_TRACE_IDS: usize = 5;
/// Span-metrics labels an alert's labels narrow the exemplars by.
const KEYS: [&str; 4] = ["service", "span_name", "span_kind", "status_code"];
/// Exemplar window when the expression has no range selector.
const DEFAULT_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Alerts on the span-metrics latency histogram get exemplar annotations.
pub fn is_latency_query(query: &str) -> bool {
    query.contains(LATENCY)
}

/// The longest range selector of `expr` (the window the alert looks at), in ms.
pub fn window_ms(expr: &Expr) -> i64 {
    fn walk(e: &Expr, max: &mut i64) {
        match e {
            Expr::MatrixSelector(ms) => {
                *max = (*max).max(i64::try_from(ms.range.as_millis()).unwrap_or(i64::MAX))
            }
            Expr::Paren(p) => walk(&p.expr, max),
            Expr::Unary(u) => walk(&u.expr, max),
            Expr::Subquery(s) => walk(&s.expr, max),
            Expr::Binary(b) => {
                walk(&b.lhs, max);
                walk(&b.rhs, max);
            }
            Expr::Aggregate(a) => walk(&a.expr, max),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, max)),
            _ => {}
        }
    }
    let mut max = 0;
    walk(expr, &mut max);
    if max == 0 { DEFAULT_WINDOW_MS } else { max }
}

/// `&`-joined, percent-encoded query string.
fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Adds the slow trace ids and flamegraph links for the alert with `labels` at `t` (ms).
pub fn annotate(
    generator: &Generator,
    tenant: &str,
    labels: &Labels,
    t: i64,
    window_ms: i64,
    external_url: &str,
    out: &mut BTreeMap<String, String>,
) {
    let bucket = format!("{LATENCY}_bucket");
    let wanted: Vec<(&str, &str)> =
        KEYS.iter().filter_map(|k| labels.get(k).map(|v| (*k, v))).collect();
    let matches = |l: &Labels| {
        l.get(METRIC_NAME) == Some(bucket.as_str())
            && wanted.iter().all(|(k, v)| l.get(k) == Some(*v))
    };
    let mut found: Vec<(f64, [u8; 16], Labels)> = generator
        .exemplars(tenant, &matches, t - window_ms, t)
        .into_iter()
        .flat_map(|(l, ex)| ex.into_iter().map(move |e| (e.value, e.trace_id, l.clone())))
        .collect();
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut ids: Vec<String> = Vec::new();
    let mut fastest_kept = f64::INFINITY;
    for (v, id, _) in &found {
        let id = hex::encode(id);
        if !ids.contains(&id) {
            ids.push(id);
            fastest_kept = fastest_kept.min(*v);
        }
        if ids.len() == MAX_TRACE_IDS {
            break;
        }
    }
    // The operation: the alert's own, else the slowest call's.
    let slowest = found.first().map(|(_, _, l)| l);
    let pick = |k: &str| labels.get(k).or_else(|| slowest.and_then(|l| l.get(k)));
    let (Some(service), Some(span_name)) = (pick("service"), pick("span_name")) else {
        if !ids.is_empty() {
            out.insert(SLOW_TRACE_IDS.into(), ids.join(","));
        }
        return;
    };
    let min_duration =
        fastest_kept.is_finite().then(|| format!("{}ms", (fastest_kept * 1000.0).floor() as i64));
    let mut pairs = vec![("service", service), ("span_name", span_name)];
    if let Some(m) = &min_duration {
        pairs.push(("min_duration", m));
    }
    let q = query_string(&pairs);
    let base = external_url.trim_end_matches('/');
    out.insert(FLAMEGRAPH_URL.into(), format!("{base}/skein/api/flamegraph?{q}"));
    out.insert(FLAMEGRAPH_UI_URL.into(), format!("{base}/flamegraph?{q}"));
    if !ids.is_empty() {
        out.insert(SLOW_TRACE_IDS.into(), ids.join(","));
    }
}
