//! [`SeqRanges`]: which WAL sequences of one tenant some block holds. A block records the
//! sequence range of the records it was built from, so replay skips exactly what is durable
//! elsewhere, whatever order flushes succeeded in (a single "highest flushed sequence" would
//! skip an older part whose flush failed while a newer one succeeded).

use serde::{Deserialize, Serialize};

/// Sorted, disjoint, non-adjacent inclusive ranges of WAL sequences.
/// Read from `meta.json` through [`SeqRanges::insert`], so a hand-edited or damaged list
/// is normalised rather than trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<(u64, u64)>", from = "Vec<(u64, u64)>")]
pub struct SeqRanges(Vec<(u64, u64)>);

impl From<Vec<(u64, u64)>> for SeqRanges {
    fn from(v: Vec<(u64, u64)>) -> Self {
        let mut r = SeqRanges::new();
        for (lo, hi) in v {
            r.insert(lo, hi);
        }
        r
    }
}

impl From<SeqRanges> for Vec<(u64, u64)> {
    fn from(r: SeqRanges) -> Self {
        r.0
    }
}

impl SeqRanges {
    pub fn new() -> Self {
        SeqRanges(Vec::new())
    }

    /// The range `first..=last` (empty when `first > last`).
    pub fn range(first: u64, last: u64) -> Self {
        let mut r = SeqRanges::new();
        r.insert(first, last);
        r
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Highest sequence covered (0 when empty).
    pub fn max(&self) -> u64 {
        self.0.last().map_or(0, |&(_, hi)| hi)
    }

    /// Adds `first..=last`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        // First range that could touch the new one (ends at or after first - 1).
        let start = self.0.partition_point(|&(_, hi)| hi.saturating_add(1) < first);
        let mut end = start;
        let (mut lo, mut hi) = (first, last);
        while end < self.0.len() && self.0[end].0 <= last.saturating_add(1) {
            lo = lo.min(self.0[end].0);
            hi = hi.max(self.0[end].1);
            end += 1;
        }
        self.0.splice(start..end, std::iter::once((lo, hi)));
    }

    /// Adds every range of `other`.
    pub fn extend(&mut self, other: &SeqRanges) {
        for &(lo, hi) in &other.0 {
            self.insert(lo, hi);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < seq);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_ranges_merge_when_they_overlap_or_touch_and_stay_apart_otherwise() {
        let mut r = SeqRanges::new();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(1, 3);
        assert_eq!(r.ranges(), &[(1, 3), (10, 20), (30, 40)]);
        r.insert(21, 29);
        assert_eq!(r.ranges(), &[(1, 3), (10, 40)]);
        r.insert(2, 12);
        assert_eq!(r.ranges(), &[(1, 40)]);
        r.insert(5, 4);
        assert_eq!(r.ranges(), &[(1, 40)], "an empty range adds nothing");
        r.insert(u64::MAX - 1, u64::MAX);
        assert_eq!(r.max(), u64::MAX);
    }

    #[test]
    fn contains_is_exact_at_range_edges() {
        let mut r = SeqRanges::range(5, 7);
        r.insert(10, 10);
        let covered: Vec<u64> = (0..12).filter(|&s| r.contains(s)).collect();
        assert_eq!(covered, vec![5, 6, 7, 10]);
        assert!(!SeqRanges::new().contains(0));
    }

    #[test]
    fn serialises_as_a_list_of_pairs() {
        let r = SeqRanges::range(3, 9);
        assert_eq!(serde_json::to_string(&r).unwrap(), "[[3,9]]");
        let back: SeqRanges = serde_json::from_str("[[4,4],[1,2],[2,3]]").unwrap();
        assert_eq!(back.ranges(), &[(1, 4)], "normalised on read");
    }
}
