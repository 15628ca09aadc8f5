//! Storages that put several replicas' series into one PromQL evaluation, like Prometheus
//! external labels: each replica's series carry the `skein_node` label, so series of
//! different replicas stay apart and `sum by (...)` adds them up. Rule output is the
//! exception: every replica evaluates its rules over all replicas' series, so its recorded
//! series already hold the whole answer and are read as they are, from this replica only.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::labels::Labels;
use super::value::Series;
use super::{PromqlError, Storage};

/// The label naming the replica a series comes from.
pub const NODE_LABEL: &str = "skein_node";

/// This replica's span-metric series (with its node label when it has peers), its rule output
/// as it is, and series fetched from the peers (which carry their node labels).
pub struct Federated {
    pub local: Arc<dyn Storage>,
    /// This replica's node id; `None` for a replica alone (no label is added).
    pub node: Option<String>,
    pub remote: Vec<Series>,
    /// Rule output (recorded series, `ALERTS`).
    pub rules: Option<Arc<dyn Storage>>,
}

impl Federated {
    /// A replica alone: its series and rule output, unlabelled.
    pub fn alone(local: Arc<dyn Storage>, rules: Option<Arc<dyn Storage>>) -> Self {
        Federated { local, node: None, remote: Vec::new(), rules }
    }
}

impl Storage for Federated {
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        let labeled = |l: &Labels| {
            let mut l = l.clone();
            if let Some(node) = &self.node {
                l.set(NODE_LABEL, node);
            }
            l
        };
        let mut out: Vec<Series> = self
            .local
            .select(&|l| matches(&labeled(l)), start, end)?
            .into_iter()
            .map(|s| Series { labels: labeled(&s.labels), points: s.points })
            .collect();
        if let Some(rules) = &self.rules {
            out.extend(rules.select(matches, start, end)?);
        }
        for s in &self.remote {
            if !matches(&s.labels) {
                continue;
            }
            let points: Vec<(i64, f64)> =
                s.points.iter().copied().filter(|(t, _)| *t >= start && *t <= end).collect();
            if !points.is_empty() {
                out.push(Series { labels: s.labels.clone(), points });
            }
        }
        Ok(out)
    }
}

/// Passes reads through and remembers the widest time range asked for: what a dry run over
/// the local series tells about the range the peers must send.
pub struct Recording {
    pub inner: Arc<dyn Storage>,
    min: AtomicI64,
    max: AtomicI64,
}

impl Recording {
    pub fn new(inner: Arc<dyn Storage>) -> Recording {
        Recording { inner, min: AtomicI64::new(i64::MAX), max: AtomicI64::new(i64::MIN) }
    }

    /// The widest range read, if anything was read.
    pub fn range(&self) -> Option<(i64, i64)> {
        let (lo, hi) = (self.min.load(Ordering::Relaxed), self.max.load(Ordering::Relaxed));
        (lo <= hi).then_some((lo, hi))
    }
}

impl Storage for Recording {
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        self.min.fetch_min(start, Ordering::Relaxed);
        self.max.fetch_max(end, Ordering::Relaxed);
        self.inner.select(matches, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(Series);
    impl Storage for One {
        fn select(
            &self,
            m: &dyn Fn(&Labels) -> bool,
            start: i64,
            end: i64,
        ) -> Result<Vec<Series>, PromqlError> {
            let points: Vec<(i64, f64)> =
                self.0.points.iter().copied().filter(|(t, _)| (start..=end).contains(t)).collect();
            Ok(if m(&self.0.labels) {
                vec![Series { labels: self.0.labels.clone(), points }]
            } else {
                Vec::new()
            })
        }
    }

    #[test]
    fn local_series_get_the_node_label_and_remote_ones_keep_theirs() {
        let s = |node: Option<&str>| Series {
            labels: Labels::new(
                [("__name__", "calls_total")].into_iter().chain(node.map(|n| (NODE_LABEL, n))),
            ),
            points: vec![(10, 1.0), (20, 2.0)],
        };
        let f = Federated {
            local: Arc::new(One(s(None))),
            node: Some("a".into()),
            remote: vec![s(Some("b"))],
            rules: None,
        };
        let all = f.select(&|_| true, 0, 15).unwrap();
        let nodes: Vec<_> = all.iter().map(|s| s.labels.get(NODE_LABEL).unwrap()).collect();
        assert_eq!(nodes, vec!["a", "b"]);
        assert!(all.iter().all(|s| s.points == vec![(10, 1.0)]));
        let only_b = f.select(&|l| l.get(NODE_LABEL) == Some("b"), 0, 30).unwrap();
        assert_eq!(only_b.len(), 1);
    }

    #[test]
    fn rule_output_is_read_as_it_is_and_a_replica_alone_adds_no_label() {
        let recorded = Series {
            labels: Labels::new([("__name__", "job:calls:sum")]),
            points: vec![(10, 6.0)],
        };
        let calls =
            Series { labels: Labels::new([("__name__", "calls_total")]), points: vec![(10, 1.0)] };
        let f = Federated {
            local: Arc::new(One(calls.clone())),
            node: Some("a".into()),
            remote: Vec::new(),
            rules: Some(Arc::new(One(recorded.clone()))),
        };
        let all = f.select(&|_| true, 0, 15).unwrap();
        assert_eq!(all[0].labels.get(NODE_LABEL), Some("a"));
        assert_eq!(all[1].labels, recorded.labels, "rule output keeps its labels");
        let alone = Federated::alone(Arc::new(One(calls.clone())), None);
        assert_eq!(alone.select(&|_| true, 0, 15).unwrap()[0].labels, calls.labels);
    }
}
