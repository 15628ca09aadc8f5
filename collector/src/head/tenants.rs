//! What the span head and the profile head share: per-tenant state behind one lock each, and
//! the WAL-sequence bookkeeping that says how far a WAL may be truncated once frozen parts are
//! in committed blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What the flush bookkeeping needs from a tenant's head (its active data plus the frozen
/// parts waiting for their block).
pub trait TenantFlushState {
    /// The lowest WAL sequence this tenant holds that no committed block covers yet
    /// (`u64::MAX` when there is none).
    fn first_unflushed_seq(&self) -> u64;
    /// Drops the frozen part `id` once its block is published; returns the rows it held, or
    /// `None` when it was already gone.
    fn release(&mut self, id: u64) -> Option<usize>;
    /// Rows in the active (not frozen) part, and when the first of them arrived.
    fn active(&self) -> (usize, Option<Instant>);
    /// Whether the active part holds so many bytes that it is due for a flush whatever its
    /// row count and age.
    fn oversized(&self) -> bool {
        false
    }
}

pub struct Tenants<T> {
    map: Mutex<HashMap<String, Arc<Mutex<T>>>>,
    next_frozen: AtomicU64,
    /// Rows not yet in a committed block (active + frozen), all tenants.
    unflushed: AtomicUsize,
}

impl<T> Default for Tenants<T> {
    fn default() -> Self {
        Tenants {
            map: Mutex::new(HashMap::new()),
            next_frozen: AtomicU64::new(1),
            unflushed: AtomicUsize::new(0),
        }
    }
}

impl<T: TenantFlushState> Tenants<T> {
    pub fn get_or_insert_with(&self, tenant: &str, make: impl FnOnce() -> T) -> Arc<Mutex<T>> {
        self.map
            .lock()
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(make())))
            .clone()
    }

    pub fn get(&self, tenant: &str) -> Option<Arc<Mutex<T>>> {
        self.map.lock().get(tenant).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.map.lock().keys().cloned().collect()
    }

    /// Every tenant, taken out of the map lock so each can be locked in turn.
    pub fn all(&self) -> Vec<(String, Arc<Mutex<T>>)> {
        self.map.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// An id for a new frozen part.
    pub fn next_frozen_id(&self) -> u64 {
        self.next_frozen.fetch_add(1, Ordering::Relaxed)
    }

    /// Removes a tenant's head; the caller uncounts its rows with [`Tenants::sub_unflushed`].
    pub fn remove(&self, tenant: &str) -> Option<Arc<Mutex<T>>> {
        self.map.lock().remove(tenant)
    }

    /// Uncounts rows dropped from a head without being flushed.
    pub fn sub_unflushed(&self, rows: usize) {
        self.unflushed.fetch_sub(rows, Ordering::Relaxed);
    }

    /// Counts rows added to a head.
    pub fn add_unflushed(&self, rows: usize) {
        self.unflushed.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows not yet in a committed block; ingest refuses work while this is too high.
    pub fn unflushed(&self) -> usize {
        self.unflushed.load(Ordering::Relaxed)
    }

    /// Drops a frozen part once its block is published (see [`TenantFlushState::release`]).
    pub fn release(&self, tenant: &str, id: u64) {
        let released = self.get(tenant).and_then(|t| t.lock().release(id));
        if let Some(rows) = released {
            self.unflushed.fetch_sub(rows, Ordering::Relaxed);
        }
    }

    /// Calls `freeze` on every tenant whose active part is due for a flush — it holds rows and
    /// has `max_rows` of them, is `max_age` old or is oversized; any with rows when `force` —
    /// and collects
    /// what it returns. Each tenant is locked while `freeze` runs.
    pub fn freeze_due<F, E>(
        &self,
        max_rows: usize,
        max_age: Duration,
        force: bool,
        mut freeze: impl FnMut(&str, &mut T) -> Result<F, E>,
    ) -> Result<Vec<F>, E> {
        let mut out = Vec::new();
        for (name, t) in self.all() {
            let mut h = t.lock();
            let (rows, since) = h.active();
            let due = rows > 0
                && (force
                    || rows >= max_rows
                    || h.oversized()
                    || since.is_some_and(|s| s.elapsed() >= max_age));
            if due {
                out.push(freeze(&name, &mut h)?);
            }
        }
        Ok(out)
    }

    /// The highest WAL sequence at or below which every record is in a committed block.
    pub fn flushed_through(&self, last_seq: u64) -> u64 {
        let first_unflushed = self
            .all()
            .into_iter()
            .map(|(_, t)| t.lock().first_unflushed_seq())
            .min()
            .unwrap_or(u64::MAX);
        last_seq.min(first_unflushed.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Part(u64, Vec<(u64, usize)>);

    impl TenantFlushState for Part {
        fn active(&self) -> (usize, Option<Instant>) {
            (self.1.len(), None)
        }
        fn first_unflushed_seq(&self) -> u64 {
            self.0
        }
        fn release(&mut self, id: u64) -> Option<usize> {
            let i = self.1.iter().position(|(f, _)| *f == id)?;
            Some(self.1.remove(i).1)
        }
    }

    #[test]
    fn the_wal_may_be_truncated_up_to_the_lowest_unflushed_sequence() {
        let t: Tenants<Part> = Tenants::default();
        assert_eq!(t.flushed_through(9), 9, "nothing unflushed: everything");
        t.get_or_insert_with("a", || Part(5, vec![(1, 10)]));
        t.get_or_insert_with("b", || Part(u64::MAX, vec![]));
        t.add_unflushed(15);
        assert_eq!(t.flushed_through(9), 4);
        t.release("a", 1);
        assert_eq!(t.unflushed(), 5);
        t.release("a", 1);
        t.release("nobody", 1);
        assert_eq!(t.unflushed(), 5, "a part is released once");
    }
}
