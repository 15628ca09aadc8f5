//! The export pipeline: a bounded queue fed by the per-thread buffers and one background
//! thread that batches spans into OTLP requests (gRPC or HTTP/protobuf).
//!
//! The request path never waits: when the queue is full, spans are dropped and counted; a
//! failed export is dropped and counted too (no retry queue that could grow without bound).
//! Drops are reported as a warning at most every ten seconds and through [`stats`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::config::{Config, Protocol};
use crate::propagation::composite::Propagators;
use crate::sampler::Sampler;
use crate::span::Record;

pub(crate) mod otlp;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("a skein-instrument pipeline is already installed in this process")]
    AlreadyInstalled,
    #[error("invalid OTLP endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("cannot start the export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Counters since the pipeline was installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Spans the backend acknowledged.
    pub exported: u64,
    /// Spans dropped because the export queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped because their export request failed or timed out.
    pub dropped_export_failed: u64,
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
}

/// Per-thread buffers are handed over whole (no per-span copy) and come back empty from the
/// export thread for reuse, so steady state allocates nothing.
#[derive(Default)]
struct QueueState {
    batches: Vec<Vec<Record>>,
    /// Spans in `batches`.
    queued: usize,
    /// Emptied buffers, handed back to threads that flush.
    spare: Vec<Vec<Record>>,
    shutdown: bool,
    flush_requested: u64,
    flush_done: u64,
}

pub(crate) struct Pipeline {
    pub sampler: Sampler,
    pub propagators: Propagators,
    active: AtomicBool,
    capacity: usize,
    batch: usize,
    state: Mutex<QueueState>,
    /// Wakes the export thread (batch ready, flush, shutdown).
    wake: Condvar,
    /// Wakes callers of [`flush`].
    flushed: Condvar,
    counters: Counters,
    done: Mutex<Option<mpsc::Receiver<()>>>,
    export_timeout: Duration,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

const MAX_SPARE: usize = 1024;
/// Buffers with at least this many spans are handed over whole; fewer are copied.
const HANDOVER_MIN: usize = 16;
const TAIL_BATCH: usize = 256;
const MAX_SPARE_CAPACITY: usize = 4096;

/// The installed, running pipeline.
pub(crate) fn pipeline() -> Option<&'static Pipeline> {
    PIPELINE.get().filter(|p| p.active.load(Ordering::Relaxed))
}

/// The installed pipeline's propagators (the OpenTelemetry default when none is installed).
pub(crate) fn propagators() -> &'static Propagators {
    static DEFAULT: OnceLock<Propagators> = OnceLock::new();
    match PIPELINE.get() {
        Some(p) => &p.propagators,
        None => DEFAULT.get_or_init(Propagators::default),
    }
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent (pushes and
        // takes are single Vec operations), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Moves `buf` into the export queue, dropping (and counting) what does not fit.
pub(crate) fn enqueue(buf: &mut Vec<Record>) {
    if buf.is_empty() {
        return;
    }
    let Some(p) = PIPELINE.get() else {
        buf.clear();
        return;
    };
    let mut dropped = buf.len();
    {
        let mut q = p.lock();
        if !q.shutdown {
            let before = q.queued;
            let room = p.capacity.saturating_sub(before);
            let take = room.min(buf.len());
            if take == buf.len() && take >= HANDOVER_MIN {
                let spare = q.spare.pop().unwrap_or_else(|| Vec::with_capacity(buf.capacity()));
                q.batches.push(std::mem::replace(buf, spare));
            } else if take > 0 {
                // A few spans (a lone root span): copying them beats a buffer per flush.
                let fits = q.batches.last().is_some_and(|b| b.capacity() - b.len() >= take);
                if !fits {
                    let fresh = q.spare.pop().unwrap_or_else(|| Vec::with_capacity(TAIL_BATCH));
                    q.batches.push(fresh);
                }
                if let Some(tail) = q.batches.last_mut() {
                    tail.extend(buf.drain(..take));
                }
            }
            q.queued += take;
            dropped -= take;
            // Wake only on crossing the threshold: notify is a syscall.
            if before < p.batch && q.queued >= p.batch {
                p.wake.notify_one();
            }
        }
    }
    if dropped > 0 {
        p.counters.dropped_queue_full.fetch_add(dropped as u64, Ordering::Relaxed);
    }
    // Freed outside the lock.
    buf.clear();
}

pub fn stats() -> Stats {
    match PIPELINE.get() {
        None => Stats::default(),
        Some(p) => Stats {
            exported: p.counters.exported.load(Ordering::Relaxed),
            dropped_queue_full: p.counters.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: p.counters.dropped_export_failed.load(Ordering::Relaxed),
        },
    }
}

/// Exports every span finished so far (this thread's buffer and the queue) and waits for the
/// attempt to complete, up to the export timeout.
pub fn flush() {
    crate::context::flush_local();
    let Some(p) = pipeline() else { return };
    let mut q = p.lock();
    q.flush_requested += 1;
    let want = q.flush_requested;
    p.wake.notify_one();
    let deadline = Instant::now() + p.export_timeout + Duration::from_secs(1);
    while q.flush_done < want && !q.shutdown {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        q = p.flushed.wait_timeout(q, left).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
    }
}

/// Flushes, stops the export thread and disables span recording.
pub fn shutdown() {
    crate::context::flush_local();
    let Some(p) = PIPELINE.get() else { return };
    {
        let mut q = p.lock();
        if q.shutdown {
            return;
        }
        q.shutdown = true;
        p.wake.notify_one();
    }
    let rx = p.done.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rx) = rx {
        let _ = rx.recv_timeout(p.export_timeout + Duration::from_secs(1));
    }
    p.active.store(false, Ordering::Relaxed);
}

enum Transport {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http { client: reqwest::Client, url: String },
}

impl Transport {
    async fn send(&mut self, req: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc(c) => c
                .export(req)
                .await
                .map(|_| ())
                .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message())),
            Transport::Http { client, url } => {
                let resp = client
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(req.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", resp.status()))
                }
            }
        }
    }
}

fn http_traces_url(cfg: &Config) -> String {
    match &cfg.traces_endpoint {
        Some(u) => u.clone(),
        None => format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/')),
    }
}

/// Installs the process-wide pipeline and starts its export thread.
pub(crate) fn install(cfg: &Config) -> Result<(), ExportError> {
    let endpoint = match cfg.protocol {
        Protocol::Grpc => cfg.traces_endpoint.clone().unwrap_or_else(|| cfg.endpoint.clone()),
        Protocol::HttpProtobuf => http_traces_url(cfg),
    };
    let grpc_endpoint = match cfg.protocol {
        Protocol::Grpc => Some(
            tonic::transport::Endpoint::from_shared(endpoint.clone())
                .map_err(|e| ExportError::Endpoint(endpoint.clone(), e.to_string()))?
                .connect_timeout(cfg.batch.export_timeout)
                .timeout(cfg.batch.export_timeout),
        ),
        Protocol::HttpProtobuf => None,
    };
    let (done_tx, done_rx) = mpsc::channel();
    let pipeline = Pipeline {
        sampler: cfg.sampler,
        propagators: cfg.propagators.clone(),
        active: AtomicBool::new(true),
        capacity: cfg.batch.max_queue_size.max(1),
        batch: cfg.batch.max_export_batch_size.clamp(1, cfg.batch.max_queue_size.max(1)),
        state: Mutex::new(QueueState::default()),
        wake: Condvar::new(),
        flushed: Condvar::new(),
        counters: Counters::default(),
        done: Mutex::new(Some(done_rx)),
        export_timeout: cfg.batch.export_timeout,
    };
    if PIPELINE.set(pipeline).is_err() {
        return Err(ExportError::AlreadyInstalled);
    }
    let resource = otlp::resource(&cfg.service_name, &cfg.resource);
    let delay = cfg.batch.scheduled_delay;
    let timeout = cfg.batch.export_timeout;
    let spawned = std::thread::Builder::new().name("skein-export".into()).spawn(move || {
        crate::subscriber::suppress_on_this_thread();
        let Some(p) = PIPELINE.get() else { return };
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("skein-instrument: cannot start the export runtime: {e}");
                p.active.store(false, Ordering::Relaxed);
                return;
            }
        };
        let mut transport = rt.block_on(async {
            match grpc_endpoint {
                Some(ep) => Transport::Grpc(TraceServiceClient::new(ep.connect_lazy())),
                None => Transport::Http {
                    client: reqwest::Client::builder()
                        .timeout(timeout)
                        .build()
                        .unwrap_or_else(|_| reqwest::Client::new()),
                    url: endpoint,
                },
            }
        });
        run(p, &rt, &mut transport, &resource, delay, timeout);
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        if let Some(p) = PIPELINE.get() {
            p.active.store(false, Ordering::Relaxed);
        }
        return Err(ExportError::Thread(e));
    }
    Ok(())
}

fn run(
    p: &Pipeline,
    rt: &tokio::runtime::Runtime,
    transport: &mut Transport,
    resource: &Resource,
    delay: Duration,
    timeout: Duration,
) {
    let mut reporter = DropReporter::default();
    let mut next = Instant::now() + delay;
    loop {
        let (spans, flush_upto, stop) = {
            let mut q = p.lock();
            loop {
                let now = Instant::now();
                if q.shutdown
                    || q.flush_requested > q.flush_done
                    || q.queued >= p.batch
                    || now >= next
                {
                    break;
                }
                q = p
                    .wake
                    .wait_timeout(q, next - now)
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            q.queued = 0;
            (std::mem::take(&mut q.batches), q.flush_requested, q.shutdown)
        };
        if Instant::now() >= next {
            next = Instant::now() + delay;
        }
        let mut batches = spans;
        let mut records = batches.iter_mut().flat_map(|b| b.drain(..)).peekable();
        while records.peek().is_some() {
            let chunk: Vec<Record> = records.by_ref().take(p.batch).collect();
            let n = chunk.len() as u64;
            let req = otlp::request(resource, chunk, &otlp::Anchor::now());
            let sent = rt.block_on(async {
                tokio::time::timeout(timeout, transport.send(req))
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
            });
            match sent {
                Ok(()) => p.counters.exported.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    reporter.last_error = Some(e);
                    p.counters.dropped_export_failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        drop(records);
        {
            let mut q = p.lock();
            for mut b in batches {
                // Bounded: enough buffers for the threads that flush, none oversized.
                if q.spare.len() < MAX_SPARE && b.capacity() <= MAX_SPARE_CAPACITY {
                    b.clear();
                    q.spare.push(b);
                }
            }
        }
        reporter.maybe_report(&stats(), stop);
        {
            let mut q = p.lock();
            q.flush_done = q.flush_done.max(flush_upto);
            p.flushed.notify_all();
        }
        if stop {
            return;
        }
    }
}

/// Warns about newly dropped spans, at most every ten seconds (and once more at shutdown).
#[derive(Default)]
struct DropReporter {
    reported: Stats,
    at: Option<Instant>,
    last_error: Option<String>,
}

impl DropReporter {
    fn maybe_report(&mut self, now: &Stats, force: bool) {
        let new_full = now.dropped_queue_full - self.reported.dropped_queue_full;
        let new_failed = now.dropped_export_failed - self.reported.dropped_export_failed;
        if new_full + new_failed == 0
            || (!force && self.at.is_some_and(|t| t.elapsed() < Duration::from_secs(10)))
        {
            return;
        }
        tracing::warn!(
            target: "skein_instrument",
            queue_full = new_full,
            export_failed = new_failed,
            last_error = self.last_error.as_deref().unwrap_or(""),
            "dropped spans"
        );
        self.reported = *now;
        self.at = Some(Instant::now());
    }
}
