//! Live series of one tenant: cumulative counters (histograms are a counter per bucket plus
//! `_sum` and `_count`, as in the Prometheus text format), each with its last few exemplars.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::promql::labels::{Labels, METRIC_NAME};

/// Exemplars kept per series: the most recent ones, enough to link a panel to a few traces.
pub const EXEMPLARS_PER_SERIES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub value: f64,
    pub t_ms: i64,
}

#[derive(Debug)]
pub struct LiveSeries {
    pub labels: Labels,
    pub value: f64,
    /// Last update (ms); series idle longer than the stale period are no longer sampled.
    pub touched_ms: i64,
    pub exemplars: VecDeque<Exemplar>,
}

/// The series ids making up one histogram.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// One per bound, the last being `+Inf`.
    pub buckets: Vec<usize>,
    pub sum: usize,
    pub count: usize,
}

impl Histogram {
    /// Its series' ids after [`Registry::remove`]; None if any of them was removed.
    pub fn renumber(&self, map: &[Option<usize>]) -> Option<Histogram> {
        Some(Histogram {
            buckets: self.buckets.iter().map(|&i| renumber(map, i)).collect::<Option<_>>()?,
            sum: renumber(map, self.sum)?,
            count: renumber(map, self.count)?,
        })
    }
}

/// A series id after [`Registry::remove`].
pub fn renumber(map: &[Option<usize>], id: usize) -> Option<usize> {
    map.get(id).copied().flatten()
}

#[derive(Debug)]
pub struct Registry {
    pub series: Vec<LiveSeries>,
    index: HashMap<Labels, usize>,
    /// Most series this registry holds (`--max-span-metric-series`).
    max_series: usize,
    /// New label sets not created for lack of room, since the last `take_dropped`.
    dropped: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_limit(usize::MAX)
    }
}

/// `le` as Prometheus client libraries write it (`0.002`, `+Inf`).
fn le(bound: f64) -> String {
    if bound == f64::INFINITY { "+Inf".into() } else { crate::promql::value::format_value(bound) }
}

impl Registry {
    pub fn with_limit(max_series: usize) -> Self {
        Registry { series: Vec::new(), index: HashMap::new(), max_series, dropped: 0 }
    }

    /// Whether `n` more series fit; if not, the label set asking is counted as dropped.
    pub fn room_for(&mut self, n: usize) -> bool {
        let fits = self.series.len().saturating_add(n) <= self.max_series;
        if !fits {
            self.dropped = self.dropped.saturating_add(1);
        }
        fits
    }

    /// Label sets dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Removes the series `dead` and renumbers the rest; returns each old id's new id.
    pub fn remove(&mut self, dead: &HashSet<usize>) -> Vec<Option<usize>> {
        let old = std::mem::take(&mut self.series);
        let mut map = Vec::with_capacity(old.len());
        for (i, s) in old.into_iter().enumerate() {
            if dead.contains(&i) {
                map.push(None);
            } else {
                map.push(Some(self.series.len()));
                self.series.push(s);
            }
        }
        self.index.retain(|_, id| match renumber(&map, *id) {
            Some(n) => {
                *id = n;
                true
            }
            None => false,
        });
        map
    }

    pub fn series_id(&mut self, labels: Labels) -> usize {
        if let Some(&i) = self.index.get(&labels) {
            return i;
        }
        let i = self.series.len();
        self.series.push(LiveSeries {
            labels: labels.clone(),
            value: 0.0,
            touched_ms: 0,
            exemplars: VecDeque::new(),
        });
        self.index.insert(labels, i);
        i
    }

    pub fn counter(&mut self, name: &str, base: &Labels) -> usize {
        let mut l = base.clone();
        l.set(METRIC_NAME, name);
        self.series_id(l)
    }

    /// Series of histogram `name` (`name_bucket{le=…}`, `name_sum`, `name_count`); `bounds`
    /// are the finite upper bounds.
    pub fn histogram(&mut self, name: &str, base: &Labels, bounds: &[f64]) -> Histogram {
        let bucket_name = format!("{name}_bucket");
        let buckets = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| {
                let mut l = base.clone();
                l.set(METRIC_NAME, &bucket_name);
                l.set("le", &le(b));
                self.series_id(l)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.counter(&format!("{name}_sum"), base),
            count: self.counter(&format!("{name}_count"), base),
        }
    }

    pub fn add(&mut self, id: usize, delta: f64, now_ms: i64) {
        if let Some(s) = self.series.get_mut(id) {
            s.value += delta;
            s.touched_ms = now_ms;
        }
    }

    pub fn exemplar(&mut self, id: usize, e: Exemplar) {
        if let Some(s) = self.series.get_mut(id) {
            if s.exemplars.len() == EXEMPLARS_PER_SERIES {
                s.exemplars.pop_front();
            }
            s.exemplars.push_back(e);
        }
    }

    /// Counts one observation: every bucket whose bound is ≥ `v` (cumulative buckets), the sum
    /// and the count. The exemplar goes to the smallest bucket holding `v`, so the high buckets
    /// carry the slow calls.
    pub fn observe(
        &mut self,
        h: &Histogram,
        bounds: &[f64],
        v: f64,
        now_ms: i64,
        exemplar: Option<Exemplar>,
    ) {
        let first = bounds.partition_point(|b| *b < v);
        for &id in &h.buckets[first.min(h.buckets.len() - 1)..] {
            self.add(id, 1.0, now_ms);
        }
        if let Some(e) = exemplar
            && let Some(&id) = h.buckets.get(first)
        {
            self.exemplar(id, e);
        }
        self.add(h.sum, v, now_ms);
        self.add(h.count, 1.0, now_ms);
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_exemplars_land_in_the_observed_bucket() {
        let mut r = Registry::default();
        let base = Labels::new([("service", "a")]);
        let bounds = [0.1, 0.2];
        let h = r.histogram("lat", &base, &bounds);
        let ex = Exemplar { trace_id: [1; 16], span_id: [2; 8], value: 0.15, t_ms: 5 };
        r.observe(&h, &bounds, 0.15, 5, Some(ex));
        r.observe(&h, &bounds, 0.05, 6, None);
        r.observe(&h, &bounds, 3.0, 7, None);
        let v: Vec<f64> = h.buckets.iter().map(|&i| r.series[i].value).collect();
        assert_eq!(v, vec![1.0, 2.0, 3.0]);
        assert_eq!(r.series[h.sum].value, 3.2);
        assert_eq!(r.series[h.count].value, 3.0);
        assert_eq!(r.series[h.buckets[1]].exemplars.front(), Some(&ex));
        assert_eq!(r.series[h.buckets[2]].labels.get("le"), Some("+Inf"));
        assert_eq!(r.series[h.buckets[0]].labels.get("__name__"), Some("lat_bucket"));
    }

    #[test]
    fn removed_series_are_renumbered_and_room_is_bounded() {
        let mut r = Registry::with_limit(5);
        let base = Labels::new([("service", "a")]);
        let h = r.histogram("lat", &base, &[0.1]);
        let c = r.counter("c", &base);
        assert_eq!(r.len(), 5);
        assert!(!r.room_for(1));
        assert_eq!(r.take_dropped(), 1);
        assert_eq!(r.take_dropped(), 0);
        r.add(c, 2.0, 1);
        let map = r.remove(&h.buckets.iter().copied().collect());
        assert!(h.renumber(&map).is_none());
        let c = renumber(&map, c).unwrap();
        assert_eq!(r.series[c].value, 2.0);
        assert_eq!(r.counter("c", &base), c, "the index follows");
        assert!(r.room_for(2));
    }

    #[test]
    fn only_the_last_few_exemplars_are_kept() {
        let mut r = Registry::default();
        let id = r.counter("c", &Labels::default());
        for i in 0..10 {
            r.exemplar(id, Exemplar { trace_id: [i; 16], span_id: [i; 8], value: 1.0, t_ms: 0 });
        }
        assert_eq!(r.series[id].exemplars.len(), EXEMPLARS_PER_SERIES);
        assert_eq!(r.series[id].exemplars[0].trace_id, [6; 16]);
    }
}
