//! The in-memory head: recent spans per tenant as Arrow batches, visible to queries at once.
//!
//! The WAL writer thread applies every durable export here in WAL sequence order, so a head
//! knows the highest sequence it holds. Flushing freezes the active data (still visible to
//! queries) until its block is committed; then the frozen part is released and the WAL can be
//! truncated up to its sequence.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;

use crate::store::schema::{Dedicated, SpanBatchBuilder, tag_keys_of};

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("building head batch: {0}")]
    Arrow(#[from] ArrowError),
}

/// Seal the open builder into an immutable batch after this many rows.
const SEAL_ROWS: usize = 16 * 1024;

/// Attribute keys seen, for tag autocomplete.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TagKeys {
    pub resource: BTreeSet<String>,
    pub span: BTreeSet<String>,
}

impl TagKeys {
    pub fn extend(&mut self, other: &TagKeys) {
        self.resource.extend(other.resource.iter().cloned());
        self.span.extend(other.span.iter().cloned());
    }
}

/// Data of one tenant frozen for flushing.
#[derive(Debug)]
pub struct Frozen {
    pub id: u64,
    pub tenant: String,
    pub batches: Vec<RecordBatch>,
    pub spans: usize,
    pub min_time: i64,
    pub max_time: i64,
    /// Lowest and highest WAL sequence whose spans are in `batches`.
    pub min_seq: u64,
    pub max_seq: u64,
    pub tags: TagKeys,
}

struct TenantHead {
    builder: SpanBatchBuilder,
    sealed: Vec<RecordBatch>,
    frozen: Vec<Arc<Frozen>>,
    spans: usize,
    bytes: usize,
    min_time: i64,
    max_time: i64,
    min_seq: u64,
    max_seq: u64,
    since: Option<Instant>,
}

impl TenantHead {
    fn new(dedicated: &Dedicated) -> Self {
        TenantHead {
            builder: SpanBatchBuilder::new(dedicated),
            sealed: Vec::new(),
            frozen: Vec::new(),
            spans: 0,
            bytes: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            min_seq: u64::MAX,
            max_seq: 0,
            since: None,
        }
    }

    fn seal(&mut self) -> Result<(), ArrowError> {
        if self.builder.rows() > 0 {
            self.bytes += self.builder.bytes();
            let batch = self.builder.finish()?;
            self.sealed.push(batch);
        }
        Ok(())
    }
}

/// Head statistics for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadStats {
    pub spans: u64,
    pub bytes: u64,
    pub tenants: u64,
}

pub struct Head {
    dedicated: Dedicated,
    tenants: Mutex<HashMap<String, Arc<Mutex<TenantHead>>>>,
    next_frozen: AtomicU64,
    /// Spans not yet in a committed block (active + frozen), all tenants.
    unflushed: AtomicUsize,
}

impl Head {
    pub fn new(dedicated: Dedicated) -> Self {
        Head {
            dedicated,
            tenants: Mutex::new(HashMap::new()),
            next_frozen: AtomicU64::new(1),
            unflushed: AtomicUsize::new(0),
        }
    }

    pub fn dedicated(&self) -> &Dedicated {
        &self.dedicated
    }

    fn tenant(&self, tenant: &str) -> Arc<Mutex<TenantHead>> {
        let mut map = self.tenants.lock();
        map.entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(TenantHead::new(&self.dedicated))))
            .clone()
    }

    fn existing(&self, tenant: &str) -> Option<Arc<Mutex<TenantHead>>> {
        self.tenants.lock().get(tenant).cloned()
    }

    pub fn tenants(&self) -> Vec<String> {
        self.tenants.lock().keys().cloned().collect()
    }

    /// Adds a durable export. Called in WAL sequence order.
    pub fn apply(
        &self,
        seq: u64,
        tenant: &str,
        req: &ExportTraceServiceRequest,
    ) -> Result<(), HeadError> {
        let t = self.tenant(tenant);
        let mut t = t.lock();
        let h = &mut *t;
        let (mut min, mut max, mut n) = (h.min_time, h.max_time, 0usize);
        for rs in &req.resource_spans {
            h.builder.append_resource_spans(rs, |row| {
                min = min.min(row.start);
                max = max.max(row.end.max(row.start));
                n += 1;
            });
        }
        h.min_time = min;
        h.max_time = max;
        h.spans += n;
        self.unflushed.fetch_add(n, Ordering::Relaxed);
        h.max_seq = h.max_seq.max(seq);
        h.min_seq = h.min_seq.min(seq);
        if n > 0 && h.since.is_none() {
            h.since = Some(Instant::now());
        }
        if h.builder.rows() >= SEAL_ROWS {
            h.seal()?;
        }
        Ok(())
    }

    /// Every batch a query must see for `tenant`: active and frozen-but-unflushed data.
    pub fn snapshot(&self, tenant: &str) -> Result<Vec<RecordBatch>, HeadError> {
        let Some(t) = self.existing(tenant) else { return Ok(Vec::new()) };
        let mut h = t.lock();
        h.seal()?;
        let mut out: Vec<RecordBatch> = h.sealed.clone();
        for f in &h.frozen {
            out.extend(f.batches.iter().cloned());
        }
        Ok(out)
    }

    /// Time range covered by the tenant's head, if it holds spans.
    pub fn time_range(&self, tenant: &str) -> Option<(i64, i64)> {
        let t = self.existing(tenant)?;
        let h = t.lock();
        let mut lo = h.min_time;
        let mut hi = h.max_time;
        for f in &h.frozen {
            lo = lo.min(f.min_time);
            hi = hi.max(f.max_time);
        }
        (lo <= hi).then_some((lo, hi))
    }

    pub fn tag_keys(&self, tenant: &str) -> Result<TagKeys, HeadError> {
        Ok(tag_keys_of(&self.snapshot(tenant)?, &self.dedicated))
    }

    /// Freezes the active data of every tenant that is due (or all, with `force`).
    pub fn freeze_due(
        &self,
        max_spans: usize,
        max_age: Duration,
        force: bool,
    ) -> Result<Vec<Arc<Frozen>>, HeadError> {
        let tenants: Vec<(String, Arc<Mutex<TenantHead>>)> =
            self.tenants.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut out = Vec::new();
        for (name, t) in tenants {
            let mut h = t.lock();
            let due = h.spans > 0
                && (force
                    || h.spans >= max_spans
                    || h.since.is_some_and(|s| s.elapsed() >= max_age));
            if !due {
                continue;
            }
            h.seal()?;
            let tags = tag_keys_of(&h.sealed, &self.dedicated);
            let frozen = Arc::new(Frozen {
                id: self.next_frozen.fetch_add(1, Ordering::Relaxed),
                tenant: name.clone(),
                batches: std::mem::take(&mut h.sealed),
                spans: h.spans,
                min_time: h.min_time,
                max_time: h.max_time,
                min_seq: h.min_seq,
                max_seq: h.max_seq,
                tags,
            });
            h.spans = 0;
            h.bytes = 0;
            h.min_time = i64::MAX;
            h.max_time = i64::MIN;
            h.since = None;
            h.min_seq = u64::MAX;
            h.frozen.push(frozen.clone());
            out.push(frozen);
        }
        Ok(out)
    }

    /// Drops frozen data once its block is committed and visible.
    pub fn release(&self, frozen: &Frozen) {
        if let Some(t) = self.existing(&frozen.tenant) {
            let mut h = t.lock();
            let before = h.frozen.len();
            h.frozen.retain(|f| f.id != frozen.id);
            if h.frozen.len() < before {
                self.unflushed.fetch_sub(frozen.spans, Ordering::Relaxed);
            }
        }
    }

    /// Spans not yet in a committed block; ingest refuses work while this is too high.
    pub fn unflushed_spans(&self) -> usize {
        self.unflushed.load(Ordering::Relaxed)
    }

    /// The highest WAL sequence at or below which every record is in a committed block.
    pub fn flushed_through(&self, last_seq: u64) -> u64 {
        let tenants: Vec<Arc<Mutex<TenantHead>>> = self.tenants.lock().values().cloned().collect();
        let mut first_unflushed = u64::MAX;
        for t in tenants {
            let h = t.lock();
            first_unflushed = first_unflushed.min(h.min_seq);
            for f in &h.frozen {
                first_unflushed = first_unflushed.min(f.min_seq);
            }
        }
        last_seq.min(first_unflushed.saturating_sub(1))
    }

    pub fn stats(&self) -> HeadStats {
        let tenants: Vec<Arc<Mutex<TenantHead>>> = self.tenants.lock().values().cloned().collect();
        let mut s = HeadStats { tenants: tenants.len() as u64, ..Default::default() };
        for t in tenants {
            let h = t.lock();
            s.spans += h.spans as u64 + h.frozen.iter().map(|f| f.spans as u64).sum::<u64>();
            s.bytes += (h.bytes + h.builder.bytes()) as u64;
        }
        s
    }
}
