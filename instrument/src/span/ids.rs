//! Trace and span ids from a per-thread generator: no lock, no syscall per id.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::propagation::{SpanId, TraceId};

thread_local! {
    // Seeded from std's per-process random keys mixed with the thread's identity, so threads
    // and processes draw independent sequences.
    static STATE: Cell<u64> =
        Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// wyrand: one multiply per 64 random bits, passes PractRand; not cryptographic (ids need only
/// be unique, as the W3C spec says).
fn next() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

pub(crate) fn span_id() -> SpanId {
    loop {
        let v = next();
        if v != 0 {
            return SpanId(v.to_be_bytes());
        }
    }
}

pub(crate) fn trace_id() -> TraceId {
    loop {
        let (hi, lo) = (next(), next());
        if hi | lo != 0 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&hi.to_be_bytes());
            b[8..].copy_from_slice(&lo.to_be_bytes());
            return TraceId(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_valid_and_distinct_across_threads() {
        let ids = |_: usize| (0..10_000).map(|_| span_id().0).collect::<Vec<_>>();
        let a = std::thread::spawn(move || ids(0)).join().unwrap();
        let b = ids(1);
        let all: HashSet<[u8; 8]> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(all.len(), 20_000);
        assert!(trace_id().is_valid());
    }
}
