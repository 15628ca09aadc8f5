//! The in-memory profile head: per tenant, recent samples as Arrow batches plus the stack table
//! they refer to, visible to queries as soon as a push is durable.
//!
//! Pushes are applied in WAL sequence order. Freezing hands the current batches *and* the
//! current stack table to a flush (the active part starts a fresh table), so every frozen part
//! and every block carries exactly the stacks its samples need.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use parking_lot::RwLock;

use super::ProfileError;
use super::model::Batch;
use super::schema::{Row, RowsBuilder, col};
use super::stack::{StackTable, stack_id};
use crate::head::tenants::{TenantFlushState, Tenants};

/// Seal the open builder into an immutable batch after this many rows.
const SEAL_ROWS: usize = 16 * 1024;

/// Service of samples that name none.
pub const UNKNOWN_SERVICE: &str = "unknown";

pub type SharedStacks = Arc<RwLock<StackTable>>;

/// Samples of one tenant (and the stacks they refer to) frozen for flushing.
#[derive(Debug)]
pub struct FrozenSamples {
    pub id: u64,
    pub tenant: String,
    pub batches: Vec<RecordBatch>,
    pub stacks: SharedStacks,
    pub samples: usize,
    pub min_time: i64,
    pub max_time: i64,
    pub min_seq: u64,
    pub max_seq: u64,
    pub profile_types: BTreeSet<String>,
    pub label_names: BTreeSet<String>,
}

/// What a query sees of a tenant's head.
#[derive(Default)]
pub struct Snapshot {
    pub batches: Vec<RecordBatch>,
    pub stacks: Vec<SharedStacks>,
    pub profile_types: BTreeSet<String>,
    pub label_names: BTreeSet<String>,
    pub min_time: i64,
    pub max_time: i64,
}

/// One tenant's head (see [`ProfileHead::parts`]).
pub struct TenantHead {
    rows: RowsBuilder,
    sealed: Vec<RecordBatch>,
    stacks: SharedStacks,
    frozen: Vec<Arc<FrozenSamples>>,
    samples: usize,
    min_time: i64,
    max_time: i64,
    min_seq: u64,
    max_seq: u64,
    since: Option<Instant>,
    profile_types: BTreeSet<String>,
    label_names: BTreeSet<String>,
}

impl TenantHead {
    fn new(tenant: &str) -> Self {
        TenantHead {
            rows: RowsBuilder::new(tenant),
            sealed: Vec::new(),
            stacks: SharedStacks::default(),
            frozen: Vec::new(),
            samples: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            min_seq: u64::MAX,
            max_seq: 0,
            since: None,
            profile_types: BTreeSet::new(),
            label_names: BTreeSet::new(),
        }
    }

    fn seal(&mut self) -> Result<(), ProfileError> {
        if self.rows.rows() > 0 {
            let batch = self.rows.finish()?;
            self.sealed.push(batch);
        }
        Ok(())
    }
}

impl TenantFlushState for TenantHead {
    fn first_unflushed_seq(&self) -> u64 {
        self.frozen.iter().map(|f| f.min_seq).fold(self.min_seq, u64::min)
    }

    fn release(&mut self, id: u64) -> Option<usize> {
        let i = self.frozen.iter().position(|f| f.id == id)?;
        Some(self.frozen.remove(i).samples)
    }

    fn active(&self) -> (usize, Option<Instant>) {
        (self.samples, self.since)
    }
}

fn hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A trace id label: 32 hex digits, or 16 (64-bit ids, left-padded as trace-by-id does).
fn trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex_id(s),
        16 => hex_id::<8>(s).map(|low| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }),
        _ => None,
    }
}

/// The profile head: every tenant's recent samples, in profile WAL sequence order.
#[derive(Default)]
pub struct ProfileHead {
    /// Counts sample rows as the rows not yet in a committed block.
    tenants: Tenants<TenantHead>,
}

impl ProfileHead {
    /// Adds a durable push. Called in WAL sequence order.
    pub fn apply(&self, seq: u64, tenant: &str, batch: &Batch) -> Result<(), ProfileError> {
        let t = self.tenants.get_or_insert_with(tenant, || TenantHead::new(tenant));
        let mut h = t.lock();
        let h = &mut *h;
        let mut added = 0usize;
        let mut frames: Vec<&str> = Vec::new();
        for p in &batch.profiles {
            for s in &p.samples {
                frames.clear();
                for f in &s.frames {
                    frames.push(p.functions.get(*f as usize).map(|s| s.as_str()).ok_or_else(
                        || ProfileError::Internal(format!("sample refers to missing function {f}")),
                    )?);
                }
                let sid = stack_id(frames.iter().copied());
                if !h.stacks.read().contains(sid) {
                    h.stacks.write().insert(sid, &frames);
                }
                // Sample labels override the profile's; BTreeMap keeps the rest sorted.
                let mut labels: BTreeMap<&str, &str> = BTreeMap::new();
                for l in p.labels.iter().chain(&s.labels) {
                    labels.insert(l.name.as_str(), l.value.as_str());
                }
                let service = labels.remove(col::SERVICE).unwrap_or(UNKNOWN_SERVICE);
                let span_name = labels.remove(col::SPAN_NAME);
                let span_id = labels.get(col::SPAN_ID).and_then(|v| hex_id::<8>(v));
                if span_id.is_some() {
                    labels.remove(col::SPAN_ID);
                }
                let trace = labels.get(col::TRACE_ID).and_then(|v| trace_id(v));
                if trace.is_some() {
                    labels.remove(col::TRACE_ID);
                }
                let rest: Vec<(&str, &str)> = labels.into_iter().collect();
                for (i, pt) in p.profile_types.iter().enumerate() {
                    let value = s.values.get(i).copied().unwrap_or(0);
                    if value == 0 {
                        continue;
                    }
                    h.rows.push(&Row {
                        time: p.time_ns,
                        profile_type: pt,
                        service_name: service,
                        span_id,
                        span_name,
                        trace_id: trace,
                        labels: &rest,
                        stack_id: sid,
                        value,
                    })?;
                    added += 1;
                    if !h.profile_types.contains(pt) {
                        h.profile_types.insert(pt.clone());
                    }
                }
                for name in [
                    Some(col::SERVICE),
                    span_name.map(|_| col::SPAN_NAME),
                    span_id.map(|_| col::SPAN_ID),
                    trace.map(|_| col::TRACE_ID),
                ]
                .into_iter()
                .flatten()
                .chain(rest.iter().map(|(k, _)| *k))
                {
                    if !h.label_names.contains(name) {
                        h.label_names.insert(name.to_string());
                    }
                }
            }
            if !p.samples.is_empty() {
                h.min_time = h.min_time.min(p.time_ns);
                h.max_time = h.max_time.max(p.time_ns);
            }
        }
        h.samples += added;
        self.tenants.add_unflushed(added);
        // A push without rows needs no block: its WAL record may be truncated at any time.
        if added > 0 {
            h.max_seq = h.max_seq.max(seq);
            h.min_seq = h.min_seq.min(seq);
            h.since.get_or_insert_with(Instant::now);
        }
        if h.rows.rows() >= SEAL_ROWS {
            h.seal()?;
        }
        Ok(())
    }

    /// Everything a query must see of `tenant`: active and frozen-but-unflushed data.
    pub fn snapshot(&self, tenant: &str) -> Result<Snapshot, ProfileError> {
        let Some(t) = self.tenants.get(tenant) else { return Ok(Snapshot::default()) };
        let mut h = t.lock();
        h.seal()?;
        let mut s = Snapshot {
            batches: h.sealed.clone(),
            stacks: vec![h.stacks.clone()],
            profile_types: h.profile_types.clone(),
            label_names: h.label_names.clone(),
            min_time: h.min_time,
            max_time: h.max_time,
        };
        for f in &h.frozen {
            s.batches.extend(f.batches.iter().cloned());
            s.stacks.push(f.stacks.clone());
            s.profile_types.extend(f.profile_types.iter().cloned());
            s.label_names.extend(f.label_names.iter().cloned());
            s.min_time = s.min_time.min(f.min_time);
            s.max_time = s.max_time.max(f.max_time);
        }
        Ok(s)
    }

    /// Freezes the active data of every tenant that is due (or all, with `force`).
    pub fn freeze_due(
        &self,
        max_samples: usize,
        max_age: Duration,
        force: bool,
    ) -> Result<Vec<Arc<FrozenSamples>>, ProfileError> {
        self.tenants.freeze_due(max_samples, max_age, force, |name, h| {
            h.seal()?;
            let frozen = Arc::new(FrozenSamples {
                id: self.tenants.next_frozen_id(),
                tenant: name.to_string(),
                batches: std::mem::take(&mut h.sealed),
                stacks: std::mem::take(&mut h.stacks),
                samples: std::mem::take(&mut h.samples),
                min_time: std::mem::replace(&mut h.min_time, i64::MAX),
                max_time: std::mem::replace(&mut h.max_time, i64::MIN),
                min_seq: std::mem::replace(&mut h.min_seq, u64::MAX),
                max_seq: h.max_seq,
                profile_types: std::mem::take(&mut h.profile_types),
                label_names: std::mem::take(&mut h.label_names),
            });
            h.since = None;
            h.frozen.push(frozen.clone());
            Ok(frozen)
        })
    }

    /// The per-tenant parts: releasing flushed parts, counting unflushed sample rows and the
    /// WAL truncation point.
    pub fn parts(&self) -> &Tenants<TenantHead> {
        &self.tenants
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::model::{Label, Profile, Sample};
    use crate::profile::schema::BatchView;

    fn batch() -> Batch {
        Batch {
            profiles: vec![Profile {
                profile_types: vec!["a:samples:count::".into(), "a:cpu:nanoseconds::".into()],
                time_ns: 100,
                labels: vec![Label::new("service_name", "shop"), Label::new("env", "prod")],
                functions: vec!["main".into(), "work".into()],
                samples: vec![
                    Sample {
                        frames: vec![0, 1],
                        values: vec![1, 10],
                        labels: vec![
                            Label::new("span_id", "0102030405060708"),
                            Label::new("env", "dev"),
                        ],
                    },
                    Sample { frames: vec![0], values: vec![0, 5], labels: vec![] },
                ],
            }],
        }
    }

    #[test]
    fn pushes_become_one_row_per_nonzero_value_with_sample_labels_winning() {
        let head = ProfileHead::default();
        head.apply(1, "t", &batch()).unwrap();
        let snap = head.snapshot("t").unwrap();
        let v = BatchView::new(&snap.batches[0]).unwrap();
        assert_eq!(v.len(), 3, "the zero value of the second sample is dropped");
        assert_eq!(v.label(0, "env").as_deref(), Some("dev"));
        assert_eq!(v.label(0, "span_id").as_deref(), Some("0102030405060708"));
        assert_eq!(v.labels(0).count(), 1, "span_id has its own column");
        assert_eq!(v.label(2, "env").as_deref(), Some("prod"));
        assert_eq!(v.service_name(2), "shop");
        assert_eq!(snap.stacks[0].read().len(), 2);
        assert!(snap.label_names.contains("span_id"));
        assert_eq!(snap.profile_types.len(), 2);
    }

    #[test]
    fn freezing_moves_samples_and_stacks_and_release_makes_the_wal_truncatable() {
        let head = ProfileHead::default();
        head.apply(1, "t", &batch()).unwrap();
        head.apply(2, "t", &batch()).unwrap();
        assert_eq!(head.parts().unflushed(), 6);
        let frozen = head.freeze_due(1, Duration::from_secs(60), false).unwrap();
        assert_eq!(frozen.len(), 1);
        assert_eq!(frozen[0].stacks.read().len(), 2);
        head.apply(3, "t", &batch()).unwrap();
        assert_eq!(head.snapshot("t").unwrap().stacks.len(), 2, "active and frozen tables");
        assert_eq!(head.parts().flushed_through(3), 0);
        head.parts().release("t", frozen[0].id);
        assert_eq!(head.parts().flushed_through(3), 2);
        assert_eq!(head.parts().unflushed(), 3);
    }

    #[test]
    fn span_and_trace_ids_that_are_not_hex_stay_generic_labels() {
        let mut b = batch();
        b.profiles[0].samples[0].labels =
            vec![Label::new("span_id", "nope"), Label::new("trace_id", "0102030405060708")];
        let head = ProfileHead::default();
        head.apply(1, "t", &b).unwrap();
        let snap = head.snapshot("t").unwrap();
        let v = BatchView::new(&snap.batches[0]).unwrap();
        assert_eq!(v.span_id(0), None);
        assert_eq!(v.label(0, "span_id").as_deref(), Some("nope"));
        assert_eq!(v.label(0, "trace_id").as_deref(), Some("00000000000000000102030405060708"));
    }
}
