//! What a latency alert adds to its annotations so that whoever gets it can start looking at
//! once: the trace ids of the slowest recent calls (from the exemplars the span-metrics latency
//! histogram keeps per bucket — the high buckets carry the slow calls) and a link to the
//! flamegraph of that operation's calls at least as slow as those. Everything comes from the
//! alert's tenant's spans, and a link is only given where following it shows that tenant's
//! data (see [`annotate`]).

use std::collections::BTreeMap;

use promql_parser::parser::Expr;
use promql_parser::parser::token;

use crate::promql::labels::{Labels, METRIC_NAME};
use crate::span_metrics::SpanMetrics;
use crate::span_metrics::calls::LATENCY;
use crate::tenant::DEFAULT_TENANT;

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

/// Which exemplars a latency alert lists: derived once from its expression, at rule load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Focus {
    /// The window the expression looks at (its longest range selector), in ms.
    pub window_ms: i64,
    /// Only calls slower than this (seconds) are listed, when the alert is `… > N`.
    pub threshold: Option<f64>,
}

impl Focus {
    /// `None` unless the expression reads the span-metrics latency histogram (only those
    /// alerts get exemplar annotations).
    pub fn of(query: &str, expr: &Expr) -> Option<Focus> {
        query
            .contains(LATENCY)
            .then(|| Focus { window_ms: window_ms(expr), threshold: threshold(expr) })
    }
}

/// The longest range selector of `expr` (the window the alert looks at), in ms.
fn window_ms(expr: &Expr) -> i64 {
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

/// The latency an alert of the form `<latency expression> > N` (or `N < …`, `>=`, `<=`) fires
/// above, in the histogram's unit (seconds): calls slower than it are the ones to show.
fn threshold(expr: &Expr) -> Option<f64> {
    fn strip(e: &Expr) -> &Expr {
        match e {
            Expr::Paren(p) => strip(&p.expr),
            e => e,
        }
    }
    fn number(e: &Expr) -> Option<f64> {
        match strip(e) {
            Expr::NumberLiteral(n) => Some(n.val),
            _ => None,
        }
    }
    let Expr::Binary(b) = strip(expr) else { return None };
    match b.op.id() {
        token::T_GTR | token::T_GTE => number(&b.rhs).filter(|_| number(&b.lhs).is_none()),
        token::T_LSS | token::T_LTE => number(&b.lhs).filter(|_| number(&b.rhs).is_none()),
        _ => None,
    }
}

/// `&`-joined, percent-encoded query string.
fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Adds the slow trace ids and flamegraph links for `tenant`'s alert with `labels` at `t` (ms).
/// With a threshold only calls slower than it are picked, unless none is: a quantile
/// interpolated inside a wide bucket can cross the threshold while every call stays under it,
/// and then the slowest calls are still the ones to look at.
///
/// A link opened in a browser carries no `X-Scope-OrgID`, so it answers for the default
/// tenant. Other tenants' alerts therefore get no native-API link, and their web UI link names
/// the tenant (`tenant=`), which the UI sends as its `X-Scope-OrgID` (the server still decides
/// what that request may see).
pub fn annotate(
    generator: &SpanMetrics,
    tenant: &str,
    labels: &Labels,
    t: i64,
    focus: Focus,
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
        .exemplars(tenant, &matches, t - focus.window_ms, t)
        .into_iter()
        .flat_map(|(l, ex)| ex.into_iter().map(move |e| (e.value, e.trace_id, l.clone())))
        .collect();
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    if let Some(th) = focus.threshold {
        let above = found.iter().take_while(|(v, _, _)| *v > th).count();
        if above > 0 {
            found.truncate(above);
        }
    }
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
    let base = external_url.trim_end_matches('/');
    if tenant == DEFAULT_TENANT {
        let q = query_string(&pairs);
        out.insert(FLAMEGRAPH_URL.into(), format!("{base}/skein/api/flamegraph?{q}"));
        out.insert(FLAMEGRAPH_UI_URL.into(), format!("{base}/flamegraph?{q}"));
    } else {
        pairs.push(("tenant", tenant));
        out.insert(FLAMEGRAPH_UI_URL.into(), format!("{base}/flamegraph?{}", query_string(&pairs)));
    }
    if !ids.is_empty() {
        out.insert(SLOW_TRACE_IDS.into(), ids.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Expr {
        promql_parser::parser::parse(q).unwrap()
    }

    #[test]
    fn threshold_is_the_number_a_latency_alert_compares_against() {
        let q =
            "histogram_quantile(0.99, sum by (le) (rate(traces_spanmetrics_latency_bucket[5m])))";
        assert_eq!(threshold(&parse(&format!("{q} > 1.2"))), Some(1.2));
        assert_eq!(threshold(&parse(&format!("({q}) >= 0.5"))), Some(0.5));
        assert_eq!(threshold(&parse(&format!("2 < {q}"))), Some(2.0));
    }

    #[test]
    fn only_latency_alerts_get_a_focus_with_the_window_they_look_at() {
        let q = "histogram_quantile(0.9, sum by (le) (rate(traces_spanmetrics_latency_bucket[10m]))) > 2";
        assert_eq!(
            Focus::of(q, &parse(q)),
            Some(Focus { window_ms: 600_000, threshold: Some(2.0) })
        );
        let q = "sum(rate(traces_spanmetrics_calls_total[5m])) > 2";
        assert_eq!(Focus::of(q, &parse(q)), None);
    }

    #[test]
    fn no_threshold_without_a_comparison_against_a_number() {
        let q =
            "histogram_quantile(0.99, sum by (le) (rate(traces_spanmetrics_latency_bucket[5m])))";
        assert_eq!(threshold(&parse(q)), None);
        assert_eq!(threshold(&parse(&format!("{q} < 1"))), None);
        assert_eq!(threshold(&parse(&format!("{q} > {q}"))), None);
        assert_eq!(threshold(&parse(&format!("{q} * 2"))), None);
    }
}
