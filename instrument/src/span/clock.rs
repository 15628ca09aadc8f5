//! The span clock: `fastant`, which reads the TSC directly where the kernel itself uses it as
//! its clock source (and falls back to the monotonic clock elsewhere). Two reads per span are a
//! large part of a span's cost: `quanta` checks a thread-local mock override on every read and,
//! where it does not trust the TSC (common in VMs), goes through `clock_gettime`. Export converts
//! instants to Unix time against an anchor read from the same clock (`export/otlp.rs`).

pub(crate) type Instant = fastant::Instant;

#[inline]
pub(crate) fn now() -> Instant {
    fastant::Instant::now()
}
