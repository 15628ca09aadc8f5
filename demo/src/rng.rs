//! A tiny xorshift generator: the shop's randomness (faults, ids, generated orders) needs no
//! cryptographic quality, only speed and, in tests, a fixed seed.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        // Never zero: xorshift would stay at zero forever.
        XorShift(splitmix64(seed) | 1)
    }

    /// Seeded from the clock and a process-wide counter, so threads get different streams.
    pub(crate) fn from_time() -> XorShift {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        XorShift::new(nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }

    /// xorshift64*.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A uniformly chosen element (`None` for an empty slice).
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get((self.next_u64() % items.len() as u64) as usize)
    }
}

/// SplitMix64's output function: a strong 64-bit mixer.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

thread_local! {
    static THREAD_RNG: Cell<Option<XorShift>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's generator.
pub(crate) fn with<R>(f: impl FnOnce(&mut XorShift) -> R) -> R {
    THREAD_RNG.with(|cell| {
        let mut rng = cell.take().unwrap_or_else(XorShift::from_time);
        let r = f(&mut rng);
        cell.set(Some(rng));
        r
    })
}

/// A random id like `ord_3f9c0a1b2c3d4e5f`.
pub(crate) fn id(prefix: &str) -> String {
    format!("{prefix}_{:016x}", with(XorShift::next_u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_ranges_hold() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let v = a.between(3, 5);
            assert!((3..=5).contains(&v));
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            b.between(3, 5);
            b.unit();
        }
        assert_eq!(XorShift::new(0).between(9, 9), 9);
        assert_eq!(XorShift::new(0).pick::<u8>(&[]), None);
    }
}
