//! The in-memory catalog of committed blocks per tenant, shared by the span store and the
//! profile store. Every change (publishing a flushed block, swapping compaction inputs for their
//! output, expiring blocks) happens under the write lock, so a reader using [`Catalog::view`]
//! sees either the old blocks or the new one, never both or neither.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::wal::SeqRanges;

/// What the catalog (and the block directory, `blocks.rs`) needs to know about a block.
pub trait CatalogEntry {
    fn tenant(&self) -> &str;
    fn id(&self) -> &str;
    /// Earliest and latest data in the block, unix nanoseconds.
    fn min_time(&self) -> i64;
    fn max_time(&self) -> i64;
    /// The WAL sequences of the block's tenant whose records the block holds.
    fn wal_ranges(&self) -> SeqRanges;
    /// Rows (spans, samples): what compaction sizes merges by.
    fn rows(&self) -> u64;
    /// When the block was written, unix seconds.
    fn created_unix(&self) -> i64;
}

pub struct Catalog<B> {
    map: RwLock<HashMap<String, Vec<Arc<B>>>>,
}

impl<B> Default for Catalog<B> {
    fn default() -> Self {
        Catalog { map: RwLock::new(HashMap::new()) }
    }
}

impl<B: CatalogEntry> Catalog<B> {
    /// Replaces the whole catalog (at start-up); each tenant's blocks are kept by start time.
    pub fn replace(&self, blocks: impl IntoIterator<Item = (String, Arc<B>)>) {
        let mut map: HashMap<String, Vec<Arc<B>>> = HashMap::new();
        for (tenant, b) in blocks {
            map.entry(tenant).or_default().push(b);
        }
        for v in map.values_mut() {
            v.sort_by_key(|b| b.min_time());
        }
        *self.map.write() = map;
    }

    pub fn tenants(&self) -> Vec<String> {
        self.map.read().keys().cloned().collect()
    }

    pub fn blocks(&self, tenant: &str) -> Vec<Arc<B>> {
        self.map.read().get(tenant).cloned().unwrap_or_default()
    }

    /// Every block of every tenant.
    pub fn all(&self) -> Vec<Arc<B>> {
        self.map.read().values().flatten().cloned().collect()
    }

    /// Runs `f` on the tenant's blocks while no block can be published, swapped or expired, so
    /// a query that also snapshots its head inside `f` sees every row exactly once.
    pub fn view<R>(&self, tenant: &str, f: impl FnOnce(&[Arc<B>]) -> R) -> R {
        let map = self.map.read();
        f(map.get(tenant).map(|v| v.as_slice()).unwrap_or(&[]))
    }

    /// Per tenant, the WAL sequences whose records are in its blocks.
    pub fn covered(&self) -> HashMap<String, SeqRanges> {
        let map = self.map.read();
        let mut out = HashMap::with_capacity(map.len());
        for (t, bs) in map.iter() {
            let r: &mut SeqRanges = out.entry(t.clone()).or_default();
            for b in bs {
                r.extend(&b.wal_ranges());
            }
        }
        out
    }

    /// Adds a flushed block; `on_publish` (releasing the head data it holds) runs under the same
    /// lock, atomically for readers using [`Catalog::view`].
    pub fn publish(&self, tenant: &str, block: Arc<B>, on_publish: impl FnOnce()) {
        let mut map = self.map.write();
        let v = map.entry(tenant.to_string()).or_default();
        v.push(block);
        v.sort_by_key(|b| b.min_time());
        on_publish();
    }

    /// Swaps compaction inputs for their merged output.
    pub fn swap(&self, tenant: &str, inputs: &[Arc<B>], output: Arc<B>) {
        let ids: HashSet<&str> = inputs.iter().map(|b| b.id()).collect();
        let mut map = self.map.write();
        let v = map.entry(tenant.to_string()).or_default();
        v.retain(|b| !ids.contains(b.id()));
        v.push(output);
        v.sort_by_key(|b| b.min_time());
    }

    /// Removes and returns the blocks whose newest data is older than `cutoff` (unix ns).
    pub fn expire(&self, cutoff: i64) -> Vec<Arc<B>> {
        let mut map = self.map.write();
        let mut out = Vec::new();
        for v in map.values_mut() {
            let (old, keep): (Vec<_>, Vec<_>) = v.drain(..).partition(|b| b.max_time() < cutoff);
            *v = keep;
            out.extend(old);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct B(&'static str, i64, i64, u64);

    impl CatalogEntry for B {
        fn tenant(&self) -> &str {
            "t"
        }
        fn id(&self) -> &str {
            self.0
        }
        fn min_time(&self) -> i64 {
            self.1
        }
        fn max_time(&self) -> i64 {
            self.2
        }
        fn wal_ranges(&self) -> SeqRanges {
            SeqRanges::range(self.3, self.3)
        }
        fn rows(&self) -> u64 {
            0
        }
        fn created_unix(&self) -> i64 {
            0
        }
    }

    #[test]
    fn publish_swap_and_expire_keep_blocks_sorted_and_watermarks_current() {
        let c: Catalog<B> = Catalog::default();
        c.replace([("t".to_string(), Arc::new(B("b", 20, 30, 2)))]);
        let mut published = false;
        c.publish("t", Arc::new(B("a", 10, 15, 1)), || published = true);
        assert!(published);
        let ids = |c: &Catalog<B>| c.blocks("t").iter().map(|b| b.0).collect::<Vec<_>>();
        assert_eq!(ids(&c), vec!["a", "b"]);
        assert_eq!(c.covered()["t"].ranges(), &[(1, 2)]);
        let inputs = c.blocks("t");
        c.swap("t", &inputs, Arc::new(B("ab", 10, 30, 2)));
        assert_eq!(ids(&c), vec!["ab"]);
        assert_eq!(c.expire(31).len(), 1);
        assert!(c.blocks("t").is_empty());
    }
}
