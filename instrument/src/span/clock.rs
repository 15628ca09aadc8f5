//! The span clock: `fastant` (fastrace's clock), which reads the TSC directly where the kernel
//! itself uses it as its clock source and falls back to the monotonic clock elsewhere. Two reads
//! per span are a large part of a span's cost; unlike `quanta::Instant::now`, no thread-local
//! mock-clock check per read. Export converts instants to Unix time against an anchor read from
//! the same clock (`export/otlp.rs`).

pub(crate) type Instant = fastant::Instant;

#[inline]
pub(crate) fn now() -> Instant {
    fastant::Instant::now()
}
