//! The in-memory head: recent spans per tenant as Arrow batches, visible to queries at once.
//!
//! The WAL writer thread applies every durable export here in WAL sequence order, so a head
//! knows the highest sequence it holds. Flushing freezes the active data (still visible to
//! queries) until its block is committed; then the frozen part is released and the WAL can be
//! truncated up to its sequence.

pub mod tenants;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;

use crate::spanrows::{DedicatedColumns, SealedRows, SpanBatchBuilder, TagKeys, tag_keys_of};
use tenants::{TenantFlushState, Tenants};

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("building head batch: {0}")]
    Arrow(#[from] ArrowError),
}

impl crate::error::Coded for HeadError {
    fn code(&self) -> crate::error::ErrorCode {
        match self {
            HeadError::Arrow(_) => crate::error::ErrorCode::Internal,
        }
    }
}

/// Seal the open builder into an immutable batch after this many rows.
const SEAL_ROWS: usize = 16 * 1024;

struct TenantHead {
    builder: SpanBatchBuilder,
    sealed: Vec<RecordBatch>,
    frozen: Vec<Arc<SealedRows>>,
    spans: usize,
    bytes: usize,
    min_time: i64,
    max_time: i64,
    min_seq: u64,
    max_seq: u64,
    since: Option<Instant>,
}

impl TenantHead {
    fn new(dedicated: &DedicatedColumns) -> Self {
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

impl TenantFlushState for TenantHead {
    fn first_unflushed_seq(&self) -> u64 {
        self.frozen.iter().map(|f| f.min_seq).fold(self.min_seq, u64::min)
    }

    fn release(&mut self, id: u64) -> Option<usize> {
        let i = self.frozen.iter().position(|f| f.id == id)?;
        Some(self.frozen.remove(i).spans)
    }

    fn active(&self) -> (usize, Option<Instant>) {
        (self.spans, self.since)
    }
}

/// Head statistics for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadStats {
    pub spans: u64,
    pub bytes: u64,
    pub tenants: u64,
}

/// The span head: every tenant's recent spans, in WAL sequence order.
pub struct SpanHead {
    dedicated: DedicatedColumns,
    /// Counts spans as the rows not yet in a committed block.
    tenants: Tenants<TenantHead>,
}

impl SpanHead {
    pub fn new(dedicated: DedicatedColumns) -> Self {
        SpanHead { dedicated, tenants: Tenants::default() }
    }

    pub fn dedicated(&self) -> &DedicatedColumns {
        &self.dedicated
    }

    fn tenant(&self, tenant: &str) -> Arc<Mutex<TenantHead>> {
        self.tenants.get_or_insert_with(tenant, || TenantHead::new(&self.dedicated))
    }

    fn existing(&self, tenant: &str) -> Option<Arc<Mutex<TenantHead>>> {
        self.tenants.get(tenant)
    }

    pub fn tenants(&self) -> Vec<String> {
        self.tenants.names()
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
        self.tenants.add_unflushed(n);
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
    ) -> Result<Vec<Arc<SealedRows>>, HeadError> {
        self.tenants.freeze_due(max_spans, max_age, force, |name, h| {
            h.seal()?;
            let tags = tag_keys_of(&h.sealed, &self.dedicated);
            let frozen = Arc::new(SealedRows {
                id: self.tenants.next_frozen_id(),
                tenant: name.to_string(),
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
            Ok(frozen)
        })
    }

    /// Drops everything the head holds for `tenant`. Replay uses it to rebuild a tenant's head
    /// after applying a record failed half-way.
    pub fn forget(&self, tenant: &str) {
        if let Some(t) = self.tenants.remove(tenant) {
            let h = t.lock();
            let rows = h.spans + h.frozen.iter().map(|f| f.spans).sum::<usize>();
            self.tenants.sub_unflushed(rows);
        }
    }

    /// Drops frozen data once its block is committed and visible.
    pub fn release(&self, frozen: &SealedRows) {
        self.tenants.release(&frozen.tenant, frozen.id);
    }

    /// Spans not yet in a committed block; ingest refuses work while this is too high.
    pub fn unflushed_spans(&self) -> usize {
        self.tenants.unflushed()
    }

    /// The highest WAL sequence at or below which every record is in a committed block.
    pub fn flushed_through(&self, last_seq: u64) -> u64 {
        self.tenants.flushed_through(last_seq)
    }

    pub fn stats(&self) -> HeadStats {
        let tenants = self.tenants.all();
        let mut s = HeadStats { tenants: tenants.len() as u64, ..Default::default() };
        for (_, t) in tenants {
            let h = t.lock();
            s.spans += h.spans as u64 + h.frozen.iter().map(|f| f.spans as u64).sum::<u64>();
            s.bytes += (h.bytes + h.builder.bytes()) as u64;
        }
        s
    }
}
