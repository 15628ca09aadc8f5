//! Evaluation times, windows and step grids taken from requests, validated once so that no
//! later arithmetic on them can overflow: every time lies within [`Epoch`] bounds, every step
//! is positive, and a grid has at most [`MAX_POINTS`] points. Shared by PromQL, TraceQL metrics
//! and the native RED/series endpoints (it imports nothing of theirs); each works in its own
//! unit (ms or ns) and says which through its [`Epoch`].
#![deny(clippy::arithmetic_side_effects)]

use std::time::Duration;

/// Points per series at most, as Prometheus ("exceeded maximum resolution of 11,000 points
/// per timeseries").
pub const MAX_POINTS: usize = 11_000;

/// The times a unit can express without overflow, and how many of it make a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// Largest |time| accepted (also the longest window or offset).
    pub max_abs: i64,
    pub per_second: i64,
}

/// Milliseconds, a quarter of i64 (±73 million years): clients send far-future ends (Grafana
/// exemplar queries pass ms where seconds are meant), and sums of two such times still fit.
pub const MILLIS: Epoch = Epoch { max_abs: i64::MAX / 4, per_second: 1_000 };

/// Nanoseconds, about 1824..2116: half of i64, so that a window plus a step still fits.
pub const NANOS: Epoch = Epoch { max_abs: i64::MAX / 2, per_second: 1_000_000_000 };

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimeRangeError(pub String);

impl crate::error::Coded for TimeRangeError {
    fn code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidArgument
    }
}

fn err(msg: impl Into<String>) -> TimeRangeError {
    TimeRangeError(msg.into())
}

impl Epoch {
    /// `t` itself, if within the bounds.
    pub fn time(&self, key: &str, t: i64) -> Result<i64, TimeRangeError> {
        if t.checked_abs().is_some_and(|a| a <= self.max_abs) {
            Ok(t)
        } else {
            Err(err(format!("invalid parameter {key:?}: time {t} is out of range")))
        }
    }

    /// Float seconds (as clients send them) in this unit, rounded.
    pub fn from_seconds(&self, key: &str, secs: f64) -> Result<i64, TimeRangeError> {
        #[allow(clippy::arithmetic_side_effects)] // floats: no overflow, checked below
        let v = (secs * self.per_second as f64).round();
        // The bound is far below 2^63, so the cast is exact in range.
        if !v.is_finite() || v.abs() > self.max_abs as f64 {
            return Err(err(format!("invalid parameter {key:?}: {secs} is out of range")));
        }
        Ok(v as i64)
    }

    /// A duration (window, offset, lookback) in this unit, if not longer than the epoch.
    pub fn span(&self, what: &str, d: Duration) -> Result<i64, TimeRangeError> {
        let per = u128::try_from(self.per_second).unwrap_or(1);
        let v = d.as_nanos().checked_mul(per).map(|n| n / 1_000_000_000);
        match v.and_then(|v| i64::try_from(v).ok()) {
            Some(v) if v <= self.max_abs => Ok(v),
            _ => Err(err(format!("{what} {d:?} is too long"))),
        }
    }

    /// `t - by`, if the result is still within the bounds.
    pub fn back(&self, what: &str, t: i64, by: i64) -> Result<i64, TimeRangeError> {
        t.checked_sub(by)
            .filter(|v| v.checked_abs().is_some_and(|a| a <= self.max_abs))
            .ok_or_else(|| err(format!("{what} reaches outside the representable time range")))
    }
}

/// Evaluation times `start, start + step, …` up to `end` (inclusive), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    pub start: i64,
    pub end: i64,
    pub step: i64,
    points: usize,
}

impl Steps {
    pub fn new(epoch: Epoch, start: i64, end: i64, step: i64) -> Result<Steps, TimeRangeError> {
        let start = epoch.time("start", start)?;
        let end = epoch.time("end", end)?;
        if step <= 0 {
            return Err(err(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end < start {
            return Err(err("end timestamp must not be before start time"));
        }
        let points = points(start, end, step)?;
        Ok(Steps { start, end, step, points })
    }

    pub fn points(&self) -> usize {
        self.points
    }

    /// Every evaluation time, in order.
    pub fn times(&self) -> impl Iterator<Item = i64> + use<> {
        let Steps { start, step, points, .. } = *self;
        (0..points).map_while(move |k| {
            i64::try_from(k)
                .ok()
                .and_then(|k| k.checked_mul(step))
                .and_then(|d| start.checked_add(d))
        })
    }
}

/// Points of the grid `start..=end` by `step`, refused beyond [`MAX_POINTS`].
pub fn points(start: i64, end: i64, step: i64) -> Result<usize, TimeRangeError> {
    let too_many = || {
        err(format!(
            "exceeded maximum resolution of {MAX_POINTS} points per timeseries. Try decreasing the query resolution (?step=XX)"
        ))
    };
    if step <= 0 {
        return Err(err("step must be positive"));
    }
    let n = end
        .checked_sub(start)
        .ok_or_else(too_many)?
        .checked_div(step)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(too_many)?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_POINTS => Ok(n),
        Ok(_) => Err(too_many()),
        Err(_) => Err(err("end timestamp must not be before start time")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn huge_and_non_finite_seconds_are_refused_not_saturated() {
        assert_eq!(MILLIS.from_seconds("t", 4.0).unwrap(), 4000);
        assert_eq!(MILLIS.from_seconds("t", -1.5).unwrap(), -1500);
        for s in [1e300, -1e300, f64::NAN, f64::INFINITY, 1e16] {
            assert!(MILLIS.from_seconds("t", s).is_err(), "{s}");
        }
        assert_eq!(NANOS.from_seconds("t", 1.0).unwrap(), 1_000_000_000);
        assert!(NANOS.from_seconds("t", 1e10).is_err(), "year 2286 overflows i64 ns");
        assert!(MILLIS.time("t", i64::MIN).is_err());
        assert!(MILLIS.time("t", i64::MAX).is_err());
    }

    #[test]
    fn the_widest_grid_of_extreme_times_is_refused_without_overflow() {
        let max = MILLIS.max_abs;
        let e = Steps::new(MILLIS, -max, max, 1).unwrap_err();
        assert!(e.0.contains("11000 points"), "{e}");
        // (end - start) overflows i64 here: still a refusal, not a wrap.
        assert!(points(i64::MIN, i64::MAX, 1).is_err());
        assert!(points(i64::MAX, i64::MIN, 1).is_err());
        assert!(Steps::new(MILLIS, 0, 10, 0).is_err());
        assert!(Steps::new(MILLIS, 0, 10, -5).is_err());
        assert!(Steps::new(MILLIS, 10, 0, 1).is_err());
    }

    #[test]
    fn grids_up_to_eleven_thousand_points_are_walked_exactly() {
        let s = Steps::new(MILLIS, 0, 60_000, 15_000).unwrap();
        assert_eq!(s.times().collect::<Vec<_>>(), vec![0, 15_000, 30_000, 45_000, 60_000]);
        assert_eq!(Steps::new(MILLIS, 5, 5, 1).unwrap().points(), 1);
        assert_eq!(points(0, 10_999, 1).unwrap(), 11_000);
        assert!(points(0, 11_000, 1).is_err());
        let max = MILLIS.max_abs;
        let s = Steps::new(MILLIS, max - 10, max, 5).unwrap();
        assert_eq!(s.times().last(), Some(max));
    }

    #[test]
    fn windows_longer_than_the_epoch_are_refused() {
        assert_eq!(MILLIS.span("range", Duration::from_secs(60)).unwrap(), 60_000);
        assert!(MILLIS.span("range", Duration::MAX).is_err());
        assert!(MILLIS.span("range", Duration::from_secs(u64::MAX / 1_000)).is_err());
        assert_eq!(NANOS.span("step", Duration::from_millis(1)).unwrap(), 1_000_000);
        assert!(MILLIS.back("window", -MILLIS.max_abs, 1).is_err());
        assert_eq!(MILLIS.back("window", 10, 4).unwrap(), 6);
        assert!(MILLIS.back("window", i64::MIN, 1).is_err());
    }
}
