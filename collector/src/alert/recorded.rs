//! Series written by rules: recording-rule results and `ALERTS` / `ALERTS_FOR_STATE`.
//!
//! They are kept here, beside the span-metrics store, not in it: that store samples all of a
//! tenant's series at shared ticks (one timestamp column per tenant), and rule groups evaluate
//! on their own intervals. Queries read both through [`Layered`]. Recorded series are kept in
//! memory only, for [`RECORDED_RETENTION_MS`]; they are recomputed after a restart, not
//! restored.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::promql::labels::Labels;
use crate::promql::value::Series;
use crate::promql::{PromqlError, Storage};

/// How long recorded samples are kept (bounded memory: 6 h at 1 s is 21,600 samples a series).
pub const RECORDED_RETENTION_MS: i64 = 6 * 3600 * 1000;

#[derive(Debug, Default)]
pub struct Recorded {
    series: RwLock<HashMap<Labels, VecDeque<(i64, f64)>>>,
}

impl Recorded {
    /// Appends samples at `t`; a sample not after a series' last one is ignored (time only
    /// moves forward per series), and samples older than the retention are dropped.
    pub fn append(&self, t: i64, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let mut s = self.series.write();
        for (labels, v) in samples {
            let points = s.entry(labels).or_default();
            if points.back().is_none_or(|&(last, _)| t > last) {
                points.push_back((t, v));
            }
        }
        let min_t = t - RECORDED_RETENTION_MS;
        s.retain(|_, p| {
            while p.front().is_some_and(|&(pt, _)| pt < min_t) {
                p.pop_front();
            }
            !p.is_empty()
        });
    }

    pub fn series_count(&self) -> usize {
        self.series.read().len()
    }
}

impl Storage for Recorded {
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        let s = self.series.read();
        let mut out: Vec<Series> = s
            .iter()
            .filter(|(l, _)| matches(l))
            .filter_map(|(l, p)| {
                let points: Vec<(i64, f64)> =
                    p.iter().copied().filter(|&(t, _)| t >= start && t <= end).collect();
                (!points.is_empty()).then(|| Series { labels: l.clone(), points })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }
}

/// Span metrics first, then rule output: what PromQL reads.
pub struct Layered {
    pub base: Arc<dyn Storage>,
    pub recorded: Arc<Recorded>,
}

impl Storage for Layered {
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        let mut out = self.base.select(matches, start, end)?;
        out.extend(self.recorded.select(matches, start, end)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_move_forward_and_old_samples_expire() {
        let r = Recorded::default();
        let l = Labels::new([("__name__", "x")]);
        r.append(1000, [(l.clone(), 1.0)]);
        r.append(1000, [(l.clone(), 2.0)]);
        r.append(2000, [(l.clone(), 3.0)]);
        let s = r.select(&|_| true, 0, 10_000).unwrap();
        assert_eq!(s[0].points, vec![(1000, 1.0), (2000, 3.0)]);
        let other = Labels::new([("__name__", "y")]);
        r.append(2000 + RECORDED_RETENTION_MS + 1, [(other, 1.0)]);
        assert_eq!(r.series_count(), 1, "x expired");
    }
}
