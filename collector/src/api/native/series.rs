//! Window aggregates over the span-metric and service-graph series (the compact store filled
//! at ingest): counter increases per interval, summed by a grouping key, and latency quantiles
//! from the summed histogram buckets. The services, operations and RED endpoints are built on
//! these.
//!
//! Unlike PromQL's `increase()`, which only sees changes between samples, a series whose
//! first sample falls inside the window counts from zero: a counter created at ingest already
//! holds the calls it was created for. A series sampled before the window (up to
//! [`BASELINE_LOOKBACK_MS`] before it) starts from its last earlier sample. Counter resets
//! (collector restarts) are added back as Prometheus does.

use std::collections::BTreeMap;

use crate::promql::functions::bucket_quantile;
use crate::promql::labels::Labels;
use crate::promql::{PromqlError, Storage};

/// How far before the window a series' baseline sample is looked for.
pub const BASELINE_LOOKBACK_MS: i64 = 3_600_000;

/// Interval boundaries `b0 < b1 < … < bn = end` (ms): whole `step`s ending at `end` (the most
/// recent interval is always complete; what is left of the window before `b0` is not covered),
/// or the one interval `[start, end]` when `step` is `None` or longer than the window.
pub fn boundaries(start_ms: i64, end_ms: i64, step_ms: Option<i64>) -> Vec<i64> {
    if end_ms <= start_ms {
        return vec![start_ms];
    }
    let span = end_ms.saturating_sub(start_ms);
    match step_ms.filter(|s| *s > 0 && *s <= span) {
        Some(step) => {
            // Callers bound the points (time_range::points); saturating keeps a missed bound
            // from wrapping.
            let n = span / step;
            (0..=n)
                .map(|k| end_ms.saturating_sub(n.saturating_sub(k).saturating_mul(step)))
                .collect()
        }
        None => vec![start_ms, end_ms],
    }
}

/// Increase of one counter in each interval between consecutive `bounds` (ms, ascending).
pub fn interval_increases(points: &[(i64, f64)], bounds: &[i64]) -> Vec<f64> {
    let Some(&start) = bounds.first() else { return Vec::new() };
    // Cumulative increase at each point; a series born inside the window counts from zero.
    let mut cum = Vec::with_capacity(points.len());
    let mut prev: Option<f64> = None;
    let mut total = 0.0;
    for (i, &(t, v)) in points.iter().enumerate() {
        total += match prev {
            None if i == 0 && t <= start => 0.0,
            None => v,
            Some(p) if v >= p => v - p,
            Some(_) => v,
        };
        prev = Some(v);
        cum.push(total);
    }
    let at = |b: i64| -> f64 {
        match points.partition_point(|&(t, _)| t <= b) {
            0 => 0.0,
            k => cum[k - 1],
        }
    };
    bounds.windows(2).map(|w| (at(w[1]) - at(w[0])).max(0.0)).collect()
}

/// Increases per interval of every series matching `matches`, summed by `key` (series for
/// which `key` is `None` are skipped).
pub fn sum_by<K: Ord>(
    storage: &dyn Storage,
    matches: &dyn Fn(&Labels) -> bool,
    key: impl Fn(&Labels) -> Option<K>,
    bounds: &[i64],
) -> Result<BTreeMap<K, Vec<f64>>, PromqlError> {
    let (Some(&start), Some(&end)) = (bounds.first(), bounds.last()) else {
        return Ok(BTreeMap::new());
    };
    let n = bounds.len().saturating_sub(1);
    let mut out: BTreeMap<K, Vec<f64>> = BTreeMap::new();
    for s in storage.select(matches, start.saturating_sub(BASELINE_LOOKBACK_MS), end)? {
        let Some(k) = key(&s.labels) else { continue };
        let inc = interval_increases(&s.points, bounds);
        let acc = out.entry(k).or_insert_with(|| vec![0.0; n]);
        for (a, v) in acc.iter_mut().zip(inc) {
            *a += v;
        }
    }
    Ok(out)
}

/// A histogram's bucket increases per interval, by key: `(le, counts per interval)`.
pub type Buckets = Vec<(f64, Vec<f64>)>;

/// Bucket increases of histogram series (`<name>_bucket`) matching `matches`, by `key`.
pub fn buckets_by<K: Ord + Clone>(
    storage: &dyn Storage,
    matches: &dyn Fn(&Labels) -> bool,
    key: impl Fn(&Labels) -> Option<K>,
    bounds: &[i64],
) -> Result<BTreeMap<K, Buckets>, PromqlError> {
    let by = sum_by(
        storage,
        matches,
        |l| {
            let le = match l.get("le")? {
                "+Inf" => f64::INFINITY,
                v => v.parse::<f64>().ok()?,
            };
            Some((key(l)?, LeKey(le)))
        },
        bounds,
    )?;
    let mut out: BTreeMap<K, Buckets> = BTreeMap::new();
    for ((k, le), counts) in by {
        out.entry(k).or_default().push((le.0, counts));
    }
    Ok(out)
}

/// An `le` bound as an ordered map key.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LeKey(f64);
impl Eq for LeKey {}
impl PartialOrd for LeKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for LeKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Quantile `q` in integer nanoseconds of interval `i` of second-valued buckets; `None` when
/// the interval has no observations.
pub fn quantile_ns(buckets: &Buckets, i: usize, q: f64) -> Option<i64> {
    let b: Vec<(f64, f64)> = buckets.iter().filter_map(|(le, c)| Some((*le, *c.get(i)?))).collect();
    let v = bucket_quantile(q, b);
    v.is_finite().then(|| (v * 1e9).round() as i64)
}

/// Adds the buckets of `b` into `a` (same histogram layout, summed per bound).
pub fn add_buckets(a: &mut Buckets, b: &Buckets) {
    for (le, counts) in b {
        match a.iter_mut().find(|(l, _)| l == le) {
            Some((_, acc)) => {
                for (x, y) in acc.iter_mut().zip(counts) {
                    *x += y;
                }
            }
            None => a.push((*le, counts.clone())),
        }
    }
}

/// `errors / calls`, 0 without calls.
pub fn ratio(errors: f64, calls: f64) -> f64 {
    if calls > 0.0 { errors / calls } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span_metrics::tsdb::Tsdb;

    /// The real series store behind the `Storage` trait.
    struct Db(Tsdb);
    impl Storage for Db {
        fn select(
            &self,
            m: &dyn Fn(&Labels) -> bool,
            start: i64,
            end: i64,
        ) -> Result<Vec<crate::promql::value::Series>, PromqlError> {
            Ok(self.0.select(m, start, end))
        }
    }

    #[test]
    fn counters_born_in_the_window_count_from_zero_and_resets_are_added_back() {
        let b = boundaries(1000, 4000, Some(1000));
        assert_eq!(b, vec![1000, 2000, 3000, 4000]);
        // Born at 1500 holding 5 calls, +2 by 2500, reset to 1 at 3500.
        let pts = [(1500, 5.0), (2500, 7.0), (3500, 1.0)];
        assert_eq!(interval_increases(&pts, &b), vec![5.0, 2.0, 1.0]);
        // A baseline before the window is not counted.
        let pts = [(500, 10.0), (1500, 12.0), (3500, 13.0)];
        assert_eq!(interval_increases(&pts, &b), vec![2.0, 0.0, 1.0]);
        assert_eq!(boundaries(0, 2500, Some(1000)), vec![500, 1500, 2500], "aligned to the end");
        assert_eq!(boundaries(0, 2500, Some(5000)), vec![0, 2500]);
        assert_eq!(boundaries(0, 2500, None), vec![0, 2500]);
        assert_eq!(boundaries(10, 10, None), vec![10]);
    }

    #[test]
    fn grouped_bucket_quantiles() {
        let l = |svc: &str, le: &str| {
            Labels::new([("__name__", "lat_bucket"), ("service", svc), ("le", le)])
        };
        let (a1, a2, a3, b) = (l("a", "0.1"), l("a", "0.2"), l("a", "+Inf"), l("b", "+Inf"));
        let mut db = Tsdb::default();
        db.append(1500, [(&a1, 5.0), (&a2, 10.0), (&a3, 10.0), (&b, 1.0)]);
        let st = Db(db);
        let bounds = boundaries(1000, 2000, None);
        let by =
            buckets_by(&st, &|_| true, |l| l.get("service").map(String::from), &bounds).unwrap();
        assert_eq!(quantile_ns(&by["a"], 0, 0.5), Some(100_000_000));
        assert_eq!(quantile_ns(&by["a"], 0, 0.75), Some(150_000_000));
        assert_eq!(quantile_ns(&by["b"], 0, 0.5), None, "a single bucket has no quantile");
        let mut sum = by["a"].clone();
        add_buckets(&mut sum, &by["b"]);
        assert_eq!(sum.iter().find(|b| b.0.is_infinite()).unwrap().1, vec![11.0]);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }
}
