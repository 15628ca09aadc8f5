//! PromQL functions: range-vector functions (`rate`, `*_over_time`, …) with Prometheus 2.x's
//! extrapolation rules, element-wise math, and `histogram_quantile`.

/// The window a range function sees: samples in `(start, end]` (ms).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    fn seconds(&self) -> f64 {
        (self.end - self.start) as f64 / 1000.0
    }
}

/// Which range functions exist; the evaluator rejects every other name.
pub fn is_range_function(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "irate"
            | "increase"
            | "delta"
            | "idelta"
            | "changes"
            | "resets"
            | "avg_over_time"
            | "min_over_time"
            | "max_over_time"
            | "sum_over_time"
            | "count_over_time"
            | "last_over_time"
            | "present_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "quantile_over_time"
    )
}

/// Evaluates a range function over one series' points in the window; `None` = no output
/// sample (too few points). `param` is φ of `quantile_over_time`.
pub fn range_function(name: &str, pts: &[(i64, f64)], w: Window, param: f64) -> Option<f64> {
    if pts.is_empty() {
        return None;
    }
    let values = || pts.iter().map(|p| p.1);
    let n = pts.len() as f64;
    match name {
        "rate" => extrapolated_rate(pts, w, true, true),
        "increase" => extrapolated_rate(pts, w, true, false),
        "delta" => extrapolated_rate(pts, w, false, false),
        "irate" => instant_delta(pts, true),
        "idelta" => instant_delta(pts, false),
        "changes" => Some(pts.windows(2).filter(|p| p[0].1 != p[1].1).count() as f64),
        "resets" => Some(pts.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64),
        "avg_over_time" => Some(values().sum::<f64>() / n),
        "min_over_time" => values().reduce(|a, b| if b < a || a.is_nan() { b } else { a }),
        "max_over_time" => values().reduce(|a, b| if b > a || a.is_nan() { b } else { a }),
        "sum_over_time" => Some(values().sum()),
        "count_over_time" => Some(n),
        "last_over_time" => pts.last().map(|p| p.1),
        "present_over_time" => Some(1.0),
        "stdvar_over_time" => Some(variance(values())),
        "stddev_over_time" => Some(variance(values()).sqrt()),
        "quantile_over_time" => Some(quantile(param, values().collect())),
        _ => None,
    }
}

/// Prometheus 2.x `extrapolatedRate`: the increase between the first and last sample,
/// corrected for counter resets, extrapolated towards the window edges (by at most half an
/// average sample interval when the series starts or ends inside the window, and never below
/// zero for counters).
fn extrapolated_rate(pts: &[(i64, f64)], w: Window, counter: bool, rate: bool) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let (first, last) = (pts[0], pts[pts.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = 0.0;
        for &(_, v) in pts {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - w.start) as f64 / 1000.0;
    let to_end = (w.end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg_step = sampled / (pts.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold { to_start } else { avg_step / 2.0 };
    interval += if to_end < threshold { to_end } else { avg_step / 2.0 };
    let mut factor = interval / sampled;
    if rate {
        factor /= w.seconds();
    }
    Some(result * factor)
}

/// `irate` / `idelta`: from the last two samples only.
fn instant_delta(pts: &[(i64, f64)], rate: bool) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let (prev, last) = (pts[pts.len() - 2], pts[pts.len() - 1]);
    let mut d = last.1 - prev.1;
    if rate && last.1 < prev.1 {
        // Counter reset: the new value is all that was counted since.
        d = last.1;
    }
    if !rate {
        return Some(d);
    }
    let secs = (last.0 - prev.0) as f64 / 1000.0;
    if secs == 0.0 { None } else { Some(d / secs) }
}

fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        let delta = v - mean;
        mean += delta / n;
        m2 += delta * (v - mean);
    }
    if n == 0.0 { f64::NAN } else { m2 / n }
}

/// Prometheus' `quantile`: linear interpolation between the closest ranks.
pub fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Prometheus' `bucketQuantile` over classic histogram buckets `(upper bound, cumulative count)`.
pub fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce buckets with the same bound (e.g. `le="1"` and `le="1.0"`).
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    // Scrapes of different buckets are not atomic: force counts to be monotonic.
    let mut max = f64::NEG_INFINITY;
    for b in merged.iter_mut() {
        if b.1 > max {
            max = b.1;
        } else {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|b| b.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// Element-wise math functions of one argument.
pub fn math_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

/// Prometheus `round`: half up to the nearest multiple of `to`.
pub fn round(v: f64, to: f64) -> f64 {
    let inv = 1.0 / to;
    (v * inv + 0.5).floor() / inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: i64, end: i64) -> Window {
        Window { start, end }
    }

    #[test]
    fn rate_of_a_steady_counter_is_its_slope() {
        // 1 per second, sampled every 15 s, window fully covered.
        let pts: Vec<_> = (0..=4).map(|i| (i * 15_000, 100.0 + 15.0 * i as f64)).collect();
        let r = range_function("rate", &pts, w(-5_000, 65_000), 0.0).unwrap();
        assert!((r - 1.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn increase_extrapolates_by_half_an_interval_at_most_and_not_below_zero() {
        // Series starts inside the window from 0: extrapolation to the start stops at zero.
        let pts = vec![(30_000, 0.0), (45_000, 15.0), (60_000, 30.0)];
        let inc = range_function("increase", &pts, w(0, 60_000), 0.0).unwrap();
        assert!((inc - 30.0).abs() < 1e-9, "{inc}");
        // Series starts 30 s into the window at 10: Prometheus 2.x extrapolates to where the
        // counter would have been zero (10 s earlier), as that is below the 1.1 × 15 s threshold.
        let pts = vec![(30_000, 10.0), (45_000, 25.0), (60_000, 40.0)];
        let inc = range_function("increase", &pts, w(0, 60_000), 0.0).unwrap();
        assert!((inc - 40.0).abs() < 1e-9, "{inc}");
        // Far from the window start and far from zero: by half an average interval only.
        let pts = vec![(30_000, 100.0), (45_000, 115.0), (60_000, 130.0)];
        let inc = range_function("increase", &pts, w(0, 60_000), 0.0).unwrap();
        assert!((inc - 37.5).abs() < 1e-9, "{inc}");
    }

    #[test]
    fn counter_resets_are_added_back() {
        let pts = vec![(0, 10.0), (15_000, 20.0), (30_000, 5.0), (45_000, 15.0)];
        let inc = range_function("increase", &pts, w(0, 45_000), 0.0).unwrap();
        // 10 + 5 + 10 = 25 over 45 s sampled; extrapolated to the start via zero-point (≤ 0 s).
        assert!((inc - 25.0).abs() < 1e-9, "{inc}");
        assert_eq!(range_function("resets", &pts, w(0, 45_000), 0.0), Some(1.0));
        assert_eq!(range_function("irate", &pts, w(0, 45_000), 0.0), Some(10.0 / 15.0));
    }

    #[test]
    fn one_sample_has_no_rate() {
        assert_eq!(range_function("rate", &[(0, 1.0)], w(-60_000, 0), 0.0), None);
        assert_eq!(range_function("count_over_time", &[(0, 1.0)], w(-60_000, 0), 0.0), Some(1.0));
    }

    #[test]
    fn over_time_functions() {
        let pts = vec![(1, 1.0), (2, 4.0), (3, 2.0), (4, 3.0)];
        let f = |n| range_function(n, &pts, w(0, 4), 0.5).unwrap();
        assert_eq!(f("avg_over_time"), 2.5);
        assert_eq!(f("min_over_time"), 1.0);
        assert_eq!(f("max_over_time"), 4.0);
        assert_eq!(f("sum_over_time"), 10.0);
        assert_eq!(f("last_over_time"), 3.0);
        assert_eq!(f("quantile_over_time"), 2.5);
        assert_eq!(f("stdvar_over_time"), 1.25);
        assert_eq!(f("changes"), 3.0);
    }

    #[test]
    fn histogram_quantile_interpolates_inside_the_bucket() {
        let b = vec![(0.1, 50.0), (0.2, 90.0), (f64::INFINITY, 100.0)];
        assert!((bucket_quantile(0.5, b.clone()) - 0.1).abs() < 1e-12);
        assert!((bucket_quantile(0.7, b.clone()) - 0.15).abs() < 1e-12);
        // Rank in the +Inf bucket: the highest finite bound.
        assert_eq!(bucket_quantile(0.95, b.clone()), 0.2);
        assert!(bucket_quantile(0.5, vec![(0.1, 0.0), (f64::INFINITY, 0.0)]).is_nan());
        assert!(bucket_quantile(0.5, vec![(0.1, 1.0)]).is_nan());
    }

    #[test]
    fn quantile_aggregation_matches_prometheus() {
        assert_eq!(quantile(0.5, vec![1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(0.9, vec![10.0]), 10.0);
        assert!(quantile(0.5, vec![]).is_nan());
    }
}
