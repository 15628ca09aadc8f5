//! The durable write path, two threads in a pipeline:
//! - the WAL thread group-commits queued exports (one write, one fsync per group);
//! - the applier thread applies each durable group to the head in sequence order, then
//!   acknowledges its exports. While it converts group N to Arrow, group N+1 is being fsynced.
//!
//! Admission is bounded by bytes in flight, so a slow disk turns into 429 / UNAVAILABLE for
//! clients instead of unbounded memory. The bytes are held by a permit that travels with the
//! export and is released when the export is done with, however that happens: a client that
//! gives up (a gRPC deadline, a reset stream) drops only its wait, while its queued export is
//! still made durable, applied and counted once. WAL truncation never passes the last applied
//! sequence: records not yet in the head are not yet in any block either.
//!
//! The applier drops spans stored recently under the same (trace id, span id) (`dedupe.rs`)
//! and catches a panic of the head as a last resort: that export is refused, the collector
//! reports itself not ready (the tenant's open head data may be inconsistent until a restart,
//! whose replay quarantines the record), and later exports are still served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::oneshot;

use super::dedupe::RecentSpans;
use crate::error::{Coded, ErrorCode};
use crate::head::{HeadError, SpanHead};
use crate::health::{Check, Health};
use crate::telemetry::Telemetry;
use crate::wal::{Wal, WalError};

/// Clone, because one WAL failure answers every export of its group commit: the errors it
/// carries are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("write path is full")]
    Overloaded,
    #[error("WAL write failed: {0}")]
    Wal(#[source] Arc<WalError>),
    #[error("head update failed: {0}")]
    Head(#[source] Arc<HeadError>),
    /// Applying the export panicked: refused, and the collector reports itself not ready.
    #[error("export could not be applied: {0}")]
    Unappliable(String),
    #[error("writer has stopped")]
    Closed,
}

impl Coded for WriteError {
    fn code(&self) -> ErrorCode {
        match self {
            WriteError::Overloaded => ErrorCode::Overloaded,
            WriteError::Wal(e) => e.code(),
            WriteError::Head(e) => e.code(),
            WriteError::Unappliable(_) => ErrorCode::InvalidArgument,
            WriteError::Closed => ErrorCode::Unavailable,
        }
    }
}

/// Sees every export once, right after it is applied to the head. WAL replay on start does not
/// call it, so a restart never counts a span twice.
pub trait ApplyObserver: Send + Sync {
    fn applied(&self, tenant: &str, req: &ExportTraceServiceRequest);
}

/// Most bytes group-committed by one WAL write.
const MAX_GROUP_BYTES: usize = 32 << 20;

struct Pending {
    tenant: String,
    req: ExportTraceServiceRequest,
    payload: bytes::Bytes,
    done: oneshot::Sender<Result<(), WriteError>>,
    /// Released when the export is done with, acknowledged or not.
    _permit: InflightPermit,
}

/// Bytes of one export counted in flight until dropped.
struct InflightPermit {
    inflight: Arc<AtomicUsize>,
    bytes: usize,
}

impl InflightPermit {
    /// Counts `bytes` in flight unless that would pass `max` (one oversized export may pass
    /// alone).
    fn acquire(inflight: &Arc<AtomicUsize>, bytes: usize, max: usize) -> Option<Self> {
        let before = inflight.fetch_add(bytes, Ordering::AcqRel);
        let permit = InflightPermit { inflight: inflight.clone(), bytes };
        (before == 0 || before.saturating_add(bytes) <= max).then_some(permit)
    }
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.inflight.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What the applier thread works with besides the head.
struct Applier {
    head: Arc<SpanHead>,
    applied_seq: Arc<AtomicU64>,
    observer: Option<Arc<dyn ApplyObserver>>,
    dedupe: Arc<RecentSpans>,
    metrics: Arc<Telemetry>,
    health: Arc<Health>,
}

enum Msg {
    Append(Pending),
    /// Delete WAL segments whose records are all in committed blocks. The point is computed
    /// on the writer thread, where every appended record is already applied to the head.
    Truncate(oneshot::Sender<Result<u64, WriteError>>),
    /// Finish the current group, then close the WAL and exit.
    Stop,
}

/// Owner handle of the writer threads; `stop` waits until the WAL is closed and every
/// acknowledged export is in the head.
pub struct WriterThread {
    tx: mpsc::Sender<Msg>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl WriterThread {
    pub fn stop(self) {
        let _ = self.tx.send(Msg::Stop);
        for j in self.joins {
            if j.join().is_err() {
                tracing::error!("WAL writer thread panicked");
            }
        }
    }
}

/// A durable group on its way to the head.
struct Durable {
    first_seq: u64,
    group: Vec<Pending>,
}

/// What the write path is started with besides the WAL and the head.
pub struct WriterConfig {
    /// Bytes of accepted-but-not-yet-applied exports before writes are refused.
    pub max_inflight: usize,
    /// Spans not yet in blocks before writes are refused.
    pub max_unflushed_spans: usize,
    pub observer: Option<Arc<dyn ApplyObserver>>,
    pub dedupe: Arc<RecentSpans>,
    pub metrics: Arc<Telemetry>,
    pub health: Arc<Health>,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    inflight: Arc<AtomicUsize>,
    max_inflight: usize,
    head: Arc<SpanHead>,
    max_unflushed_spans: usize,
}

impl Writer {
    /// Starts the writer thread. It stops when every `Writer` clone is dropped.
    pub fn start(
        wal: Wal,
        head: Arc<SpanHead>,
        cfg: WriterConfig,
    ) -> std::io::Result<(Writer, WriterThread)> {
        let (tx, rx) = mpsc::channel();
        let (applied_tx, applied_rx) = mpsc::channel::<Durable>();
        let inflight = Arc::new(AtomicUsize::new(0));
        let applied_seq = Arc::new(AtomicU64::new(wal.last_seq()));
        let applier = Applier {
            head: head.clone(),
            applied_seq: applied_seq.clone(),
            observer: cfg.observer,
            dedupe: cfg.dedupe,
            metrics: cfg.metrics.clone(),
            health: cfg.health.clone(),
        };
        let wal_thread = WalThread {
            head: head.clone(),
            metrics: cfg.metrics,
            health: cfg.health,
            counted: parking_lot::Mutex::new([0; 4]),
        };
        let handle = head;
        let applier = std::thread::Builder::new()
            .name("skein-head-applier".into())
            .spawn(move || applier.run(applied_rx))?;
        let writer = std::thread::Builder::new()
            .name("skein-wal-writer".into())
            .spawn(move || wal_thread.run(wal, rx, applied_tx, applied_seq))?;
        let thread = WriterThread { tx: tx.clone(), joins: vec![writer, applier] };
        let writer = Writer {
            tx,
            inflight,
            max_inflight: cfg.max_inflight,
            head: handle,
            max_unflushed_spans: cfg.max_unflushed_spans,
        };
        Ok((writer, thread))
    }

    /// Resolves once the export is durable and visible to queries.
    pub async fn write(
        &self,
        tenant: String,
        req: ExportTraceServiceRequest,
        payload: bytes::Bytes,
    ) -> Result<(), WriteError> {
        // Flushing fell behind: refuse rather than let the head grow without bound.
        if self.head.unflushed_spans() >= self.max_unflushed_spans {
            return Err(WriteError::Overloaded);
        }
        let Some(permit) =
            InflightPermit::acquire(&self.inflight, payload.len(), self.max_inflight)
        else {
            return Err(WriteError::Overloaded);
        };
        let (done, rx) = oneshot::channel();
        let pending = Pending { tenant, req, payload, done, _permit: permit };
        // If this future is dropped from here on, the export still goes through the WAL and
        // the head; only the answer is lost, and the permit is released once it is applied.
        match self.tx.send(Msg::Append(pending)) {
            Ok(()) => rx.await.unwrap_or(Err(WriteError::Closed)),
            Err(_) => Err(WriteError::Closed),
        }
    }

    /// Bytes of exports accepted and not yet applied (or refused).
    pub fn inflight_bytes(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Truncates the WAL through what all tenants have flushed; returns that sequence.
    pub async fn truncate(&self) -> Result<u64, WriteError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Msg::Truncate(done)).map_err(|_| WriteError::Closed)?;
        rx.await.unwrap_or(Err(WriteError::Closed))
    }
}

impl Applier {
    fn run(self, rx: mpsc::Receiver<Durable>) {
        while let Ok(Durable { first_seq, group }) = rx.recv() {
            let _busy = self.health.busy("applying durable writes to the head");
            let n = group.len() as u64;
            let mut acks = Vec::with_capacity(group.len());
            for (i, p) in group.into_iter().enumerate() {
                let Pending { tenant, mut req, done, _permit, .. } = p;
                let r = self.apply(first_seq + i as u64, &tenant, &mut req);
                acks.push((done, r));
            }
            self.applied_seq.store(first_seq + n - 1, Ordering::Release);
            for (done, r) in acks {
                let _ = done.send(r);
            }
        }
    }

    fn apply(
        &self,
        seq: u64,
        tenant: &str,
        req: &mut ExportTraceServiceRequest,
    ) -> Result<(), WriteError> {
        let dropped = self.dedupe.filter(tenant, req);
        self.metrics.spans_deduplicated.inc_by(dropped as u64);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.head.apply(seq, tenant, req)
        }));
        match applied {
            Ok(Ok(())) => {
                // Aggregated before the ack, so an acknowledged span is already counted.
                if let Some(o) = &self.observer {
                    o.applied(tenant, req);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(WriteError::Head(Arc::new(e))),
            Err(panic) => {
                let reason = panic_message(panic.as_ref());
                tracing::error!(seq, tenant, %reason, "applying an export to the head panicked");
                self.health.fail(
                    Check::Applier,
                    format!("applying WAL record {seq} panicked ({reason}); restart to recover"),
                );
                Err(WriteError::Unappliable(reason))
            }
        }
    }
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// The WAL thread: group commits, truncation, idle syncs.
struct WalThread {
    head: Arc<SpanHead>,
    metrics: Arc<Telemetry>,
    health: Arc<Health>,
    /// WAL failure counts already added to `metrics.wal_failures`.
    counted: parking_lot::Mutex<[u64; 4]>,
}

impl WalThread {
    fn run(
        &self,
        mut wal: Wal,
        rx: mpsc::Receiver<Msg>,
        applier: mpsc::Sender<Durable>,
        applied_seq: Arc<AtomicU64>,
    ) {
        let (head, metrics) = (&self.head, &self.metrics);
        let mut group: Vec<Pending> = Vec::new();
        // Under the interval/never policies appends may sit unsynced; sync them when idle.
        let mut dirty = false;
        loop {
            let first = match rx.recv_timeout(std::time::Duration::from_millis(500)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if dirty {
                        if let Err(e) = wal.sync() {
                            tracing::error!(error = %e, "WAL sync failed");
                            self.report(&wal, &e);
                        }
                        dirty = false;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut next = Some(first);
            let mut bytes = 0usize;
            let mut stop = false;
            // Drain what is already queued into one group commit.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(p) => {
                        bytes += p.payload.len();
                        group.push(p);
                    }
                    Msg::Truncate(done) => {
                        let applied = applied_seq.load(Ordering::Acquire);
                        let through = head.flushed_through(wal.last_seq()).min(applied);
                        let r = wal.truncate_through(through).map(|()| through).map_err(|e| {
                            self.report(&wal, &e);
                            WriteError::Wal(Arc::new(e))
                        });
                        let stats = wal.stats();
                        metrics.wal_bytes.set(stats.bytes as i64);
                        metrics.wal_segments.set(stats.segments as i64);
                        let _ = done.send(r);
                    }
                    Msg::Stop => stop = true,
                }
                if bytes < MAX_GROUP_BYTES && !stop {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                let _busy = self.health.busy("WAL group commit");
                if let Some(durable) = self.commit(&mut wal, &mut group) {
                    let _ = applier.send(durable);
                }
                dirty = true;
            }
            if stop {
                break;
            }
        }
        // Anything still queued is refused; dropping the WAL syncs and unlocks it.
        while let Ok(m) = rx.try_recv() {
            if let Msg::Append(p) = m {
                let _ = p.done.send(Err(WriteError::Closed));
            }
        }
    }

    /// Writes a group to the WAL; returns it for the applier once durable.
    fn commit(&self, wal: &mut Wal, group: &mut Vec<Pending>) -> Option<Durable> {
        let metrics = &self.metrics;
        let records: Vec<(&str, &[u8])> =
            group.iter().map(|p| (p.tenant.as_str(), p.payload.as_ref())).collect();
        let fsyncs_before = wal.stats().fsyncs;
        let appended = wal.append_batch(&records);
        drop(records);
        let stats = wal.stats();
        if stats.fsyncs > fsyncs_before {
            metrics.wal_fsync_seconds.observe(stats.last_fsync_seconds);
        }
        metrics.wal_bytes.set(stats.bytes as i64);
        metrics.wal_segments.set(stats.segments as i64);
        match appended {
            Ok(first_seq) => {
                self.health.clear(Check::Disk);
                Some(Durable { first_seq, group: std::mem::take(group) })
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL append failed; refusing the group");
                self.report(wal, &e);
                let err = WriteError::Wal(Arc::new(e));
                for p in group.drain(..) {
                    let _ = p.done.send(Err(err.clone()));
                }
                None
            }
        }
    }

    /// Tells `Health` what a WAL failure means: a full disk degrades (writes are refused until
    /// space returns), a poisoned WAL makes the collector not ready until it is restarted.
    fn report(&self, wal: &Wal, e: &WalError) {
        let s = wal.stats();
        let now = [s.write_failures, s.fsync_failures, s.create_failures, s.remove_failures];
        let mut counted = self.counted.lock();
        for (i, op) in ["write", "fsync", "create", "remove"].into_iter().enumerate() {
            let new = now[i].saturating_sub(counted[i]);
            self.metrics.wal_failures.with_label_values(&[op]).inc_by(new);
        }
        *counted = now;
        drop(counted);
        if e.is_disk_full() {
            self.health.fail(Check::Disk, e.to_string());
        }
        if wal.is_poisoned() {
            self.health.fail(Check::Wal, format!("{e}; restart to recover"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanrows::DedicatedColumns;
    use crate::wal::WalConfig;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(n: u8) -> ExportTraceServiceRequest {
        let spans = (0..n)
            .map(|i| Span { trace_id: vec![1; 16], span_id: vec![i + 1; 8], ..Default::default() })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn config(max_inflight: usize, max_unflushed_spans: usize) -> WriterConfig {
        WriterConfig {
            max_inflight,
            max_unflushed_spans,
            observer: None,
            dedupe: Arc::new(RecentSpans::new(1000, std::time::Duration::from_secs(60))),
            metrics: Arc::new(Telemetry::new()),
            health: Health::new(std::time::Duration::ZERO, std::time::Duration::from_secs(60)),
        }
    }

    #[tokio::test]
    async fn refuses_while_unflushed_spans_exceed_the_limit_and_recovers_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let head = Arc::new(SpanHead::new(DedicatedColumns::default()));
        let (writer, thread) = Writer::start(wal, head.clone(), config(1 << 20, 5)).unwrap();
        let write = |n| writer.write("t".into(), request(n), bytes::Bytes::from_static(b"x"));
        write(6).await.unwrap();
        assert!(matches!(write(1).await, Err(WriteError::Overloaded)));
        for f in head.freeze_due(1, std::time::Duration::from_secs(60), true).unwrap() {
            head.release(&f);
        }
        assert_eq!(head.unflushed_spans(), 0);
        write(1).await.unwrap();
        thread.stop();
    }

    #[tokio::test]
    async fn cancelled_writes_release_their_bytes_and_are_still_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let head = Arc::new(SpanHead::new(DedicatedColumns::default()));
        let (writer, thread) =
            Writer::start(wal, head.clone(), config(64 << 10, 1_000_000)).unwrap();
        for i in 0..50u8 {
            let mut req = request(2);
            for s in &mut req.resource_spans[0].scope_spans[0].spans {
                s.trace_id = vec![i; 16];
            }
            let mut write = Box::pin(writer.write("t".into(), req, vec![0u8; 1000].into()));
            // Queued, then abandoned, as by a client whose deadline passed.
            assert!(futures::poll!(write.as_mut()).is_pending());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while writer.inflight_bytes() > 0 {
            assert!(std::time::Instant::now() < deadline, "in-flight bytes never released");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(head.unflushed_spans(), 100, "every abandoned export applied once");
        // 50 KB were admitted at once and released; a bound of 64 KiB admits more.
        writer.write("t".into(), request(1), vec![0u8; 60_000].into()).await.unwrap();
        thread.stop();
    }
}
