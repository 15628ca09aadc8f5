//! Head sampling: always on/off, trace-id ratio, and parent-based ratio (the default).
//!
//! The ratio decision uses the low 8 bytes of the trace id, so every service in a trace that
//! uses the same ratio reaches the same decision without coordination.

use crate::propagation::{SpanContext, TraceId};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Sample this fraction of traces, ignoring the parent's decision.
    Ratio(f64),
    /// Follow a remote parent's decision; roots are sampled with this ratio.
    ParentBased(f64),
}

fn ratio_decision(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    // Compare the top 63 bits as a fraction of 2^63.
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

impl Sampler {
    /// Whether a new span of `trace_id` with (optional) remote `parent` is recorded and exported.
    pub fn should_sample(&self, trace_id: &TraceId, parent: Option<&SpanContext>) -> bool {
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => ratio_decision(trace_id, r),
            Sampler::ParentBased(r) => match parent {
                Some(p) => p.sampled || p.debug,
                None => ratio_decision(trace_id, r),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::SpanId;

    fn id(n: u64) -> TraceId {
        let mut b = [0u8; 16];
        // Spread n over the decision bits.
        let x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        b[8..].copy_from_slice(&x.to_be_bytes());
        TraceId(b)
    }

    #[test]
    fn ratio_samples_about_that_fraction_and_is_deterministic() {
        let s = Sampler::Ratio(0.25);
        let n = (0..100_000).filter(|i| s.should_sample(&id(*i), None)).count();
        assert!((23_000..27_000).contains(&n), "{n}");
        assert_eq!(s.should_sample(&id(42), None), s.should_sample(&id(42), None));
        assert!(!Sampler::Ratio(0.0).should_sample(&id(1), None));
        assert!(Sampler::Ratio(1.0).should_sample(&id(1), None));
    }

    #[test]
    fn parent_based_follows_the_remote_parent() {
        let parent = |sampled| SpanContext {
            trace_id: id(1),
            span_id: SpanId([1; 8]),
            sampled,
            debug: false,
            trace_state: vec![],
        };
        let s = Sampler::ParentBased(0.0);
        assert!(s.should_sample(&id(1), Some(&parent(true))));
        assert!(!Sampler::ParentBased(1.0).should_sample(&id(1), Some(&parent(false))));
        assert!(!s.should_sample(&id(1), None));
    }
}
