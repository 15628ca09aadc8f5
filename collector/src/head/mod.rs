//! The in-memory head: recent spans per tenant as Arrow batches, visible to queries at once.
//!
//! The WAL writer thread applies every durable export here in WAL sequence order, so a head
//! knows the highest sequence it holds. Flushing freezes the active data (still visible to
//! queries) until its block is committed; then the frozen part is released and the WAL can be
//! truncated up to its sequence.
//!
//! # Limits
//! Whatever a request holds, applying it never panics and never half-applies: a request is
//! measured before anything is appended (see [`SpanHead::check`]), and refused whole
//! ([`HeadError::Refused`], a client error) when its rows would exceed
//! [`HeadLimits::max_request_bytes`] — only requests whose scope attributes repeat on every
//! span can expand that much. Attribute values longer than
//! [`HeadLimits::max_attribute_bytes`] (`--max-attribute-bytes`) are cut, and counted. The
//! open builder is sealed into a batch by rows and by bytes ([`HeadLimits::seal_bytes`]),
//! so no Arrow column (i32 offsets: 2 GiB) can overflow, and a tenant's active data is due
//! for a flush once it holds [`HeadLimits::freeze_bytes`].

pub mod tenants;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;

use crate::spanrows::{
    BuildLimits, DEFAULT_MAX_ATTRIBUTE_BYTES, DedicatedColumns, SealedRows, SpanBatchBuilder,
    TagKeys, resource_spans_cost, tag_keys_of,
};
use tenants::{TenantFlushState, Tenants};

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("building head batch: {0}")]
    Arrow(#[from] ArrowError),
    /// The request itself cannot be stored; retrying it will not help.
    #[error("{0}")]
    Refused(String),
}

impl crate::error::Coded for HeadError {
    fn code(&self) -> crate::error::ErrorCode {
        match self {
            HeadError::Arrow(_) => crate::error::ErrorCode::Internal,
            HeadError::Refused(_) => crate::error::ErrorCode::InvalidArgument,
        }
    }
}

/// Seal the open builder into an immutable batch after this many rows.
const SEAL_ROWS: usize = 16 * 1024;

/// What the head stores of a request, and how large its batches and parts grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Attribute values (strings and bytes, also inside arrays and kvlists) are cut to this
    /// many bytes; 0 keeps them whole.
    pub max_attribute_bytes: usize,
    /// A batch is sealed before a request would take its variable-length columns past this.
    pub seal_bytes: usize,
    /// A request whose rows would hold more than this is refused.
    pub max_request_bytes: usize,
    /// A tenant's active data is due for a flush once it holds this many bytes.
    pub freeze_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_attribute_bytes: DEFAULT_MAX_ATTRIBUTE_BYTES,
            // Four largest (16 MiB) requests per batch, and 32 times below Arrow's 2 GiB column
            // limit; rows usually seal first (16k spans of ordinary size are a few MiB).
            seal_bytes: 64 << 20,
            // A request larger than the seal size gets batches of its own, each at most this
            // big: still 8 times below 2 GiB. Ordinary requests stay near their encoded size
            // (16 MiB by default); only a scope's attributes repeated on every span of a large
            // request can blow one up this far, and such a request is refused.
            max_request_bytes: 256 << 20,
            // A block sorts a frozen part into one batch: keep that well below 2 GiB too.
            freeze_bytes: 512 << 20,
        }
    }
}

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
    freeze_bytes: usize,
}

impl TenantHead {
    fn new(dedicated: &DedicatedColumns, limits: &HeadLimits) -> Self {
        TenantHead {
            builder: SpanBatchBuilder::with_limits(
                dedicated,
                BuildLimits { max_attribute_bytes: limits.max_attribute_bytes },
            ),
            freeze_bytes: limits.freeze_bytes,
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
            let batch = self.builder.finish()?;
            self.bytes = self.bytes.saturating_add(batch.get_array_memory_size());
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

    fn oversized(&self) -> bool {
        self.bytes.saturating_add(self.builder.bytes()) >= self.freeze_bytes
    }
}

/// Head statistics for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadStats {
    pub spans: u64,
    pub bytes: u64,
    pub tenants: u64,
    /// Attribute values cut since the head was created (replayed records included).
    pub attributes_truncated: u64,
}

/// The span head: every tenant's recent spans, in WAL sequence order.
pub struct SpanHead {
    dedicated: DedicatedColumns,
    limits: HeadLimits,
    /// Counts spans as the rows not yet in a committed block.
    tenants: Tenants<TenantHead>,
    /// Attribute values cut, in total ...
    truncated: AtomicU64,
    /// ... and not yet taken by [`SpanHead::take_attributes_truncated`].
    truncated_untaken: AtomicU64,
}

impl SpanHead {
    /// A head with the default [`HeadLimits`].
    pub fn new(dedicated: DedicatedColumns) -> Self {
        Self::with_limits(dedicated, HeadLimits::default())
    }

    pub fn with_limits(dedicated: DedicatedColumns, limits: HeadLimits) -> Self {
        SpanHead {
            dedicated,
            limits,
            tenants: Tenants::default(),
            truncated: AtomicU64::new(0),
            truncated_untaken: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> &HeadLimits {
        &self.limits
    }

    pub fn dedicated(&self) -> &DedicatedColumns {
        &self.dedicated
    }

    fn tenant(&self, tenant: &str) -> Arc<Mutex<TenantHead>> {
        self.tenants.get_or_insert_with(tenant, || TenantHead::new(&self.dedicated, &self.limits))
    }

    fn existing(&self, tenant: &str) -> Option<Arc<Mutex<TenantHead>>> {
        self.tenants.get(tenant)
    }

    pub fn tenants(&self) -> Vec<String> {
        self.tenants.names()
    }

    /// How many bytes the rows of `req` would hold (an upper bound), or why the head refuses
    /// it. Depends on the request alone, so ingest can ask before the request is written to
    /// the WAL, and [`SpanHead::apply`] refuses nothing this accepts.
    pub fn check(&self, req: &ExportTraceServiceRequest) -> Result<usize, HeadError> {
        let limits = BuildLimits { max_attribute_bytes: self.limits.max_attribute_bytes };
        let cost = req
            .resource_spans
            .iter()
            .fold(0usize, |n, rs| n.saturating_add(resource_spans_cost(rs, limits)));
        if cost > self.limits.max_request_bytes {
            return Err(HeadError::Refused(format!(
                "the request's spans would take {cost} bytes in memory, more than the limit of {} \
                 (attribute values count up to {} bytes each; scope attributes count once per span)",
                self.limits.max_request_bytes, self.limits.max_attribute_bytes
            )));
        }
        Ok(cost)
    }

    /// Adds a durable export. Called in WAL sequence order. On error the tenant's head holds
    /// exactly the rows it held before (Arrow failing to seal the rows it already held, which
    /// only a bug can cause, would lose those too).
    pub fn apply(
        &self,
        seq: u64,
        tenant: &str,
        req: &ExportTraceServiceRequest,
    ) -> Result<(), HeadError> {
        let cost = self.check(req)?;
        let t = self.tenant(tenant);
        let mut t = t.lock();
        let h = &mut *t;
        let seal_bytes = self.limits.seal_bytes;
        // Sealing first (it changes how rows are batched, not which are held) means that if the
        // request does not fit the open batch, the builder starts out empty, so a failure below
        // can drop exactly this request's rows.
        if h.builder.rows() >= SEAL_ROWS || h.builder.cost().saturating_add(cost) > seal_bytes {
            h.seal()?;
        }
        let (mut min, mut max, mut n) = (h.min_time, h.max_time, 0usize);
        let mut sealed = Vec::new();
        let mut truncated = 0usize;
        for rs in &req.resource_spans {
            let appended = h.builder.append_resource_spans_sealing(
                rs,
                |row| {
                    min = min.min(row.start);
                    max = max.max(row.end.max(row.start));
                    n += 1;
                },
                seal_bytes,
                &mut sealed,
            );
            match appended {
                Ok(a) => truncated += a.truncated,
                Err(e) => {
                    // Only a request larger than one batch seals on the way, and it started on
                    // an empty builder: what the builder holds is this request's, like `sealed`.
                    let _ = h.builder.finish();
                    return Err(e.into());
                }
            }
        }
        for b in sealed {
            h.bytes = h.bytes.saturating_add(b.get_array_memory_size());
            h.sealed.push(b);
        }
        h.min_time = min;
        h.max_time = max;
        h.spans += n;
        self.tenants.add_unflushed(n);
        // A record left without spans (all of them copies) is in no part: it must not hold
        // back WAL truncation, and replay drops its copies again.
        if n > 0 {
            h.max_seq = h.max_seq.max(seq);
            h.min_seq = h.min_seq.min(seq);
            if h.since.is_none() {
                h.since = Some(Instant::now());
            }
        }
        if truncated > 0 {
            self.truncated.fetch_add(truncated as u64, Ordering::Relaxed);
            self.truncated_untaken.fetch_add(truncated as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Attribute values cut since the last call: for whoever counts them in the collector's
    /// metrics (each cut value is handed out once).
    pub fn take_attributes_truncated(&self) -> u64 {
        self.truncated_untaken.swap(0, Ordering::Relaxed)
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
        let mut s = HeadStats {
            tenants: tenants.len() as u64,
            attributes_truncated: self.truncated.load(Ordering::Relaxed),
            ..Default::default()
        };
        for (_, t) in tenants {
            let h = t.lock();
            s.spans += h.spans as u64 + h.frozen.iter().map(|f| f.spans as u64).sum::<u64>();
            s.bytes += (h.bytes + h.builder.bytes()) as u64;
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
