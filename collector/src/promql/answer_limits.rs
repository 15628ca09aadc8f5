//! Caps on the size of one query's answer, checked while it is being built (not after): the
//! series it holds and the samples (points) it has read or produced. A `by()` over a
//! high-cardinality attribute or a selector over every series is refused with 422 as soon
//! as it crosses a cap, before its memory is spent.
#![deny(clippy::arithmetic_side_effects)]

/// `--max-query-series` and `--max-query-samples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerLimits {
    pub max_series: usize,
    pub max_samples: usize,
    /// When evaluation must stop (the query runner's `--query-timeout`), if set.
    pub deadline: Option<std::time::Instant>,
}

pub const DEFAULT_MAX_SERIES: usize = 10_000;
pub const DEFAULT_MAX_SAMPLES: usize = 1_000_000;

impl Default for AnswerLimits {
    fn default() -> Self {
        AnswerLimits {
            max_series: DEFAULT_MAX_SERIES,
            max_samples: DEFAULT_MAX_SAMPLES,
            deadline: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerLimitError {
    #[error(
        "query too expensive: more than {0} series (--max-query-series); narrow the selector or the by()"
    )]
    Series(usize),
    #[error(
        "query too expensive: more than {0} samples (--max-query-samples); use a shorter range or a larger step"
    )]
    Samples(usize),
    #[error("the query ran longer than --query-timeout and was stopped")]
    Timeout,
}

impl crate::error::Coded for AnswerLimitError {
    fn code(&self) -> crate::error::ErrorCode {
        match self {
            AnswerLimitError::Timeout => crate::error::ErrorCode::Unavailable,
            _ => crate::error::ErrorCode::ResourceExhausted,
        }
    }
}

impl AnswerLimitError {
    /// The `reason` label of `skein_queries_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AnswerLimitError::Series(_) => "series",
            AnswerLimitError::Samples(_) => "samples",
            AnswerLimitError::Timeout => "timeout",
        }
    }
}

impl AnswerLimits {
    /// Refuses once `n` series are held.
    pub fn series(&self, n: usize) -> Result<(), AnswerLimitError> {
        if n > self.max_series { Err(AnswerLimitError::Series(self.max_series)) } else { Ok(()) }
    }

    /// Refuses once `n` samples are held.
    pub fn samples(&self, n: usize) -> Result<(), AnswerLimitError> {
        if n > self.max_samples { Err(AnswerLimitError::Samples(self.max_samples)) } else { Ok(()) }
    }

    /// Refuses once the deadline has passed.
    pub fn time(&self) -> Result<(), AnswerLimitError> {
        match self.deadline {
            Some(d) if std::time::Instant::now() >= d => Err(AnswerLimitError::Timeout),
            _ => Ok(()),
        }
    }

    /// Refuses once `series` series of `points` points each would be held.
    pub fn grid(&self, series: usize, points: usize) -> Result<(), AnswerLimitError> {
        self.series(series)?;
        self.samples(series.saturating_mul(points))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_only_past_the_limit() {
        let l = AnswerLimits { max_series: 2, max_samples: 10, deadline: None };
        assert!(l.series(2).is_ok());
        assert_eq!(l.series(3), Err(AnswerLimitError::Series(2)));
        assert!(l.samples(10).is_ok());
        assert_eq!(l.samples(11).unwrap_err().reason(), "samples");
        assert!(l.grid(2, 5).is_ok());
        assert!(l.grid(2, 6).is_err());
        assert!(l.grid(usize::MAX, usize::MAX).is_err(), "no overflow");
    }
}
