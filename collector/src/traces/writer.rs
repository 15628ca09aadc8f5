//! The durable write path, two threads in a pipeline:
//! - the WAL thread group-commits queued exports (one write, one fsync per group);
//! - the applier thread applies each durable group to the head in sequence order, then
//!   acknowledges its exports. While it converts group N to Arrow, group N+1 is being fsynced.
//!
//! Admission is bounded by bytes in flight, so a slow disk turns into 429 / UNAVAILABLE for
//! clients instead of unbounded memory. WAL truncation never passes the last applied sequence:
//! records not yet in the head are not yet in any block either.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::oneshot;

use crate::error::{Coded, ErrorCode};
use crate::head::{HeadError, SpanHead};
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
    #[error("writer has stopped")]
    Closed,
}

impl Coded for WriteError {
    fn code(&self) -> ErrorCode {
        match self {
            WriteError::Overloaded => ErrorCode::Overloaded,
            WriteError::Wal(e) => e.code(),
            WriteError::Head(e) => e.code(),
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
        metrics: Arc<Telemetry>,
        max_inflight: usize,
        max_unflushed_spans: usize,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> std::io::Result<(Writer, WriterThread)> {
        let (tx, rx) = mpsc::channel();
        let (applied_tx, applied_rx) = mpsc::channel::<Durable>();
        let inflight = Arc::new(AtomicUsize::new(0));
        let applied_seq = Arc::new(AtomicU64::new(wal.last_seq()));
        let (h, a) = (head.clone(), applied_seq.clone());
        let handle = head.clone();
        let applier = std::thread::Builder::new()
            .name("skein-head-applier".into())
            .spawn(move || apply_loop(&h, &a, observer.as_deref(), applied_rx))?;
        let writer = std::thread::Builder::new()
            .name("skein-wal-writer".into())
            .spawn(move || run(wal, head, metrics, rx, applied_tx, applied_seq))?;
        let thread = WriterThread { tx: tx.clone(), joins: vec![writer, applier] };
        Ok((Writer { tx, inflight, max_inflight, head: handle, max_unflushed_spans }, thread))
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
        let size = payload.len();
        let before = self.inflight.fetch_add(size, Ordering::AcqRel);
        // One oversized request may pass alone; otherwise stay under the bound.
        if before > 0 && before + size > self.max_inflight {
            self.inflight.fetch_sub(size, Ordering::AcqRel);
            return Err(WriteError::Overloaded);
        }
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Append(Pending { tenant, req, payload, done }));
        let result = match sent {
            Ok(()) => rx.await.unwrap_or(Err(WriteError::Closed)),
            Err(_) => Err(WriteError::Closed),
        };
        self.inflight.fetch_sub(size, Ordering::AcqRel);
        result
    }

    /// Truncates the WAL through what all tenants have flushed; returns that sequence.
    pub async fn truncate(&self) -> Result<u64, WriteError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Msg::Truncate(done)).map_err(|_| WriteError::Closed)?;
        rx.await.unwrap_or(Err(WriteError::Closed))
    }
}

fn apply_loop(
    head: &SpanHead,
    applied_seq: &AtomicU64,
    observer: Option<&dyn ApplyObserver>,
    rx: mpsc::Receiver<Durable>,
) {
    while let Ok(Durable { first_seq, group }) = rx.recv() {
        let n = group.len() as u64;
        let mut acks = Vec::with_capacity(group.len());
        for (i, p) in group.into_iter().enumerate() {
            let r = head
                .apply(first_seq + i as u64, &p.tenant, &p.req)
                .map_err(|e| WriteError::Head(Arc::new(e)));
            // Aggregated before the ack, so an acknowledged span is already counted.
            if let (Some(o), Ok(())) = (observer, &r) {
                o.applied(&p.tenant, &p.req);
            }
            acks.push((p.done, r));
        }
        applied_seq.store(first_seq + n - 1, Ordering::Release);
        for (done, r) in acks {
            let _ = done.send(r);
        }
    }
}

fn run(
    mut wal: Wal,
    head: Arc<SpanHead>,
    metrics: Arc<Telemetry>,
    rx: mpsc::Receiver<Msg>,
    applier: mpsc::Sender<Durable>,
    applied_seq: Arc<AtomicU64>,
) {
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
                    let r = wal
                        .truncate_through(through)
                        .map(|()| through)
                        .map_err(|e| WriteError::Wal(Arc::new(e)));
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
            if let Some(durable) = commit(&mut wal, &metrics, &mut group) {
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
fn commit(wal: &mut Wal, metrics: &Telemetry, group: &mut Vec<Pending>) -> Option<Durable> {
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
        Ok(first_seq) => Some(Durable { first_seq, group: std::mem::take(group) }),
        Err(e) => {
            tracing::error!(error = %e, "WAL append failed; refusing the group");
            let err = WriteError::Wal(Arc::new(e));
            for p in group.drain(..) {
                let _ = p.done.send(Err(err.clone()));
            }
            None
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

    #[tokio::test]
    async fn refuses_while_unflushed_spans_exceed_the_limit_and_recovers_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let head = Arc::new(SpanHead::new(DedicatedColumns::default()));
        let (writer, thread) =
            Writer::start(wal, head.clone(), Arc::new(Telemetry::new()), 1 << 20, 5, None).unwrap();
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
}
