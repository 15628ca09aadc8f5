//! The Prometheus text exposition format (0.0.4) of a tenant's live series, for a real
//! Prometheus to scrape, and the family metadata the `/api/v1/metadata` endpoint reports.

use std::fmt::Write;

use super::calls::{CALLS, LATENCY};
use super::registry::LiveSeries;
use super::servicegraph::{CLIENT_SECONDS, REQUEST_FAILED_TOTAL, REQUEST_TOTAL, SERVER_SECONDS};
use crate::promql::labels::{METRIC_NAME, escape_value};
use crate::promql::value::format_value;

pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

pub const FAMILIES: [Family; 6] = [
    Family { name: CALLS, kind: "counter", help: "Spans per service, operation, kind and status." },
    Family { name: LATENCY, kind: "histogram", help: "Span durations in seconds." },
    Family { name: REQUEST_TOTAL, kind: "counter", help: "Requests between two services." },
    Family {
        name: REQUEST_FAILED_TOTAL,
        kind: "counter",
        help: "Failed requests between two services.",
    },
    Family {
        name: SERVER_SECONDS,
        kind: "histogram",
        help: "Request durations seen by the server, in seconds.",
    },
    Family {
        name: CLIENT_SECONDS,
        kind: "histogram",
        help: "Request durations seen by the client, in seconds.",
    },
];

/// The family a series name belongs to (`x_bucket` → `x` for histograms).
pub fn family_of(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| {
        f.name == name
            || (f.kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.name)))
    })
}

/// Sort key within a family: label set without name and `le`, then buckets by bound, sum, count.
fn order(s: &LiveSeries) -> (String, u8, f64) {
    let name = s.labels.get(METRIC_NAME).unwrap_or("");
    let rest = s.labels.retain(|n| n != METRIC_NAME && n != "le").to_string();
    let le = s.labels.get("le").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let rank = if name.ends_with("_bucket") {
        0
    } else if name.ends_with("_sum") {
        1
    } else {
        2
    };
    (rest, rank, le)
}

pub fn render<'a>(series: impl IntoIterator<Item = &'a LiveSeries>) -> String {
    let mut by_family: Vec<Vec<&LiveSeries>> = FAMILIES.iter().map(|_| Vec::new()).collect();
    for s in series {
        let name = s.labels.get(METRIC_NAME).unwrap_or("");
        if let Some(i) =
            FAMILIES.iter().position(|f| family_of(name).is_some_and(|g| g.name == f.name))
        {
            by_family[i].push(s);
        }
    }
    let mut out = String::new();
    for (f, mut members) in FAMILIES.iter().zip(by_family) {
        if members.is_empty() {
            continue;
        }
        members.sort_by(|a, b| {
            let (a, b) = (order(a), order(b));
            a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2))
        });
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in members {
            out.push_str(s.labels.get(METRIC_NAME).unwrap_or(""));
            let mut first = true;
            for (n, v) in s.labels.iter().filter(|(n, _)| *n != METRIC_NAME) {
                out.push(if first { '{' } else { ',' });
                first = false;
                let _ = write!(out, "{n}=\"{}\"", escape_value(v));
            }
            if !first {
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(s.value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::registry::Registry;
    use super::*;
    use crate::promql::labels::Labels;

    #[test]
    fn histograms_are_grouped_with_buckets_in_bound_order() {
        let mut r = Registry::default();
        let base = Labels::new([("service", "a\"b")]);
        let h = r.histogram(LATENCY, &base, &[0.25, 0.5]);
        r.observe(&h, &[0.25, 0.5], 0.3, 1, None);
        let c = r.counter(CALLS, &base);
        r.add(c, 1.0, 1);
        let text = render(&r.series);
        let expected = "# HELP traces_spanmetrics_calls_total Spans per service, operation, kind and status.\n\
# TYPE traces_spanmetrics_calls_total counter\n\
traces_spanmetrics_calls_total{service=\"a\\\"b\"} 1\n\
# HELP traces_spanmetrics_latency Span durations in seconds.\n\
# TYPE traces_spanmetrics_latency histogram\n\
traces_spanmetrics_latency_bucket{le=\"0.25\",service=\"a\\\"b\"} 0\n\
traces_spanmetrics_latency_bucket{le=\"0.5\",service=\"a\\\"b\"} 1\n\
traces_spanmetrics_latency_bucket{le=\"+Inf\",service=\"a\\\"b\"} 1\n\
traces_spanmetrics_latency_sum{service=\"a\\\"b\"} 0.3\n\
traces_spanmetrics_latency_count{service=\"a\\\"b\"} 1\n";
        assert_eq!(text, expected);
        assert_eq!(
            family_of("traces_service_graph_request_server_seconds_bucket").map(|f| f.kind),
            Some("histogram")
        );
        assert!(family_of("traces_spanmetrics_calls_total_bucket").is_none());
    }
}
