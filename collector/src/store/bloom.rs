//! A small bloom filter over trace ids, one per block, kept in memory so trace-by-id needs no
//! time range: every block is checked in nanoseconds and only candidates are read.

/// Bits per trace id; with 7 probes this gives about 1% false positives.
const BITS_PER_KEY: usize = 10;
const PROBES: u64 = 7;

#[derive(Debug, Clone, PartialEq)]
pub struct Bloom {
    bits: Vec<u64>,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser: spreads ids that are not random (e.g. 64-bit B3 ids padded with zeros).
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hashes(id: &[u8; 16]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&id[..8]);
    b.copy_from_slice(&id[8..]);
    let h1 = mix(u64::from_le_bytes(a) ^ mix(u64::from_le_bytes(b)));
    let h2 = mix(h1 ^ u64::from_le_bytes(b)) | 1;
    (h1, h2)
}

impl Bloom {
    pub fn with_capacity(keys: usize) -> Self {
        let words = (keys.max(1) * BITS_PER_KEY).div_ceil(64);
        Bloom { bits: vec![0; words] }
    }

    fn nbits(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    pub fn insert(&mut self, id: &[u8; 16]) {
        let (h1, h2) = hashes(id);
        let m = self.nbits();
        for i in 0..PROBES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, id: &[u8; 16]) -> bool {
        let (h1, h2) = hashes(id);
        let m = self.nbits();
        (0..PROBES).all(|i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.is_empty() || !b.len().is_multiple_of(8) {
            return None;
        }
        let bits = b
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Some(Bloom { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[8..].copy_from_slice(&i.to_be_bytes());
        out
    }

    #[test]
    fn inserted_ids_are_found_and_false_positive_rate_is_low() {
        let mut b = Bloom::with_capacity(10_000);
        for i in 0..10_000 {
            b.insert(&id(i));
        }
        assert!((0..10_000).all(|i| b.contains(&id(i))));
        let fp = (10_000..110_000).filter(|i| b.contains(&id(*i))).count();
        assert!(fp < 2_000, "false positive rate {fp}/100000 too high");
        let back = Bloom::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(back, b);
    }
}
