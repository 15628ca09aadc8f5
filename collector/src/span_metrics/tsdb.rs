//! The sampled history of one tenant's series. Every series is sampled at the same ticks, so
//! timestamps are stored once per tenant and each series is a column of values aligned to
//! them (8 bytes per sample; NaN where the series was not sampled).

use std::collections::HashMap;

use crate::promql::labels::Labels;
use crate::promql::value::Series;

#[derive(Debug)]
struct Column {
    labels: Labels,
    /// Index into `times` of `values[0]`.
    first: usize,
    values: Vec<f64>,
}

#[derive(Debug, Default)]
pub struct Tsdb {
    times: Vec<i64>,
    /// Ticks dropped from the front by retention; keeps tick numbers stable for snapshots.
    dropped: usize,
    columns: Vec<Column>,
    index: HashMap<Labels, usize>,
}

impl Tsdb {
    /// Appends one tick. Ticks must not go back in time; a repeated or earlier timestamp
    /// (clock step) is ignored.
    pub fn append<'a>(&mut self, t: i64, samples: impl IntoIterator<Item = (&'a Labels, f64)>) {
        if self.times.last().is_some_and(|&last| t <= last) {
            return;
        }
        let tick = self.times.len();
        self.times.push(t);
        for (labels, v) in samples {
            let i = match self.index.get(labels) {
                Some(&i) => i,
                None => {
                    self.columns.push(Column {
                        labels: labels.clone(),
                        first: tick,
                        values: Vec::new(),
                    });
                    self.index.insert(labels.clone(), self.columns.len() - 1);
                    self.columns.len() - 1
                }
            };
            let c = &mut self.columns[i];
            // Pad the ticks this series missed.
            c.values.resize(tick - c.first, f64::NAN);
            c.values.push(v);
        }
    }

    /// Absolute number of the next tick (survives retention trimming).
    pub fn next_tick(&self) -> usize {
        self.dropped + self.times.len()
    }

    /// Samples of ticks `[from, next_tick)` (absolute numbers): (labels, t, v).
    pub fn since(&self, from: usize) -> Vec<(&Labels, i64, f64)> {
        let start = from.saturating_sub(self.dropped);
        let mut out = Vec::new();
        for c in &self.columns {
            for (j, &v) in c.values.iter().enumerate() {
                let tick = c.first + j;
                if tick >= start && !v.is_nan() {
                    out.push((&c.labels, self.times[tick], v));
                }
            }
        }
        out
    }

    /// Drops ticks before `min_t`.
    pub fn trim(&mut self, min_t: i64) {
        let k = self.times.partition_point(|&t| t < min_t);
        if k == 0 {
            return;
        }
        self.times.drain(..k);
        self.dropped += k;
        for c in &mut self.columns {
            let cut = k.saturating_sub(c.first).min(c.values.len());
            c.values.drain(..cut);
            c.first = c.first.saturating_sub(k);
        }
        self.columns.retain(|c| !c.values.is_empty());
        self.index = self.columns.iter().enumerate().map(|(i, c)| (c.labels.clone(), i)).collect();
    }

    /// Series matching `matches` with their samples in `[start, end]`.
    pub fn select(&self, matches: &dyn Fn(&Labels) -> bool, start: i64, end: i64) -> Vec<Series> {
        let lo = self.times.partition_point(|&t| t < start);
        let hi = self.times.partition_point(|&t| t <= end);
        let mut out = Vec::new();
        for c in &self.columns {
            if c.first >= hi || c.first + c.values.len() <= lo || !matches(&c.labels) {
                continue;
            }
            let from = lo.max(c.first);
            let to = hi.min(c.first + c.values.len());
            let points: Vec<(i64, f64)> = (from..to)
                .filter_map(|tick| {
                    let v = c.values[tick - c.first];
                    (!v.is_nan()).then(|| (self.times[tick], v))
                })
                .collect();
            if !points.is_empty() {
                out.push(Series { labels: c.labels.clone(), points });
            }
        }
        out
    }

    pub fn series_count(&self) -> usize {
        self.columns.len()
    }

    pub fn samples(&self) -> usize {
        self.columns.iter().map(|c| c.values.len()).sum()
    }

    pub fn first_time(&self) -> Option<i64> {
        self.times.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &str) -> Labels {
        Labels::new([("__name__", "m"), ("k", v)])
    }

    #[test]
    fn series_share_ticks_and_gaps_are_not_samples() {
        let mut db = Tsdb::default();
        let (a, b) = (l("a"), l("b"));
        db.append(1000, [(&a, 1.0)]);
        db.append(2000, [(&a, 2.0), (&b, 5.0)]);
        db.append(3000, [(&b, 6.0)]);
        db.append(4000, [(&a, 4.0), (&b, 7.0)]);
        db.append(4000, [(&a, 9.0)]);
        let s = db.select(&|_| true, 0, 10_000);
        assert_eq!(s[0].points, vec![(1000, 1.0), (2000, 2.0), (4000, 4.0)]);
        assert_eq!(s[1].points, vec![(2000, 5.0), (3000, 6.0), (4000, 7.0)]);
        let s = db.select(&|l| l.get("k") == Some("a"), 1500, 3500);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].points, vec![(2000, 2.0)]);
    }

    #[test]
    fn trimming_keeps_tick_numbers_for_incremental_snapshots() {
        let mut db = Tsdb::default();
        let a = l("a");
        for i in 1..=4 {
            db.append(i * 1000, [(&a, i as f64)]);
        }
        let from = db.next_tick();
        db.append(5000, [(&a, 5.0)]);
        db.trim(3000);
        assert_eq!(db.since(from), vec![(&a, 5000, 5.0)]);
        assert_eq!(
            db.select(&|_| true, 0, 10_000)[0].points,
            vec![(3000, 3.0), (4000, 4.0), (5000, 5.0)]
        );
        db.trim(6000);
        assert_eq!(db.series_count(), 0);
    }
}
