//! The export pipeline: a bounded queue (`queue.rs`) fed by the per-thread buffers and one
//! background thread that batches spans into OTLP requests (gRPC or HTTP/protobuf).
//!
//! The request path never waits: when the queue is full, spans are dropped and counted; a
//! failed export is dropped and counted too (no retry queue that could grow without bound).
//! Drops are reported as a warning at most every ten seconds and through [`stats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::config::{Config, Protocol};
use crate::http_client::{self, HttpClient};
use crate::propagation::composite::Propagators;
use crate::span::{Record, sink};
use crate::tls::{Tls, TlsError};

pub(crate) mod otlp;
mod queue;

use queue::{Queue, Work};

pub use crate::flush;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("a skein-instrument pipeline is already installed in this process")]
    AlreadyInstalled,
    #[error("invalid OTLP endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("cannot start the export thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("OTLP exporter TLS: {0}")]
    Tls(#[from] TlsError),
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
    dropped_export_failed: AtomicU64,
}

struct Pipeline {
    propagators: Propagators,
    queue: Queue,
    counters: Counters,
    done: Mutex<Option<mpsc::Receiver<()>>>,
    export_timeout: Duration,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// The installed, running pipeline.
fn pipeline() -> Option<&'static Pipeline> {
    PIPELINE.get().filter(|_| sink::active().is_some())
}

/// The installed pipeline's propagators (the OpenTelemetry default when none is installed).
pub(crate) fn propagators() -> &'static Propagators {
    static DEFAULT: OnceLock<Propagators> = OnceLock::new();
    match PIPELINE.get() {
        Some(p) => &p.propagators,
        None => DEFAULT.get_or_init(Propagators::default),
    }
}

/// Moves `buf` into the export queue, dropping (and counting) what does not fit; without a
/// pipeline, just drops it.
fn enqueue(buf: &mut Vec<Record>) {
    match PIPELINE.get() {
        Some(p) => p.queue.push(buf),
        None => buf.clear(),
    }
}

pub fn stats() -> Stats {
    match PIPELINE.get() {
        None => Stats::default(),
        Some(p) => Stats {
            exported: p.counters.exported.load(Ordering::Relaxed),
            dropped_queue_full: p.queue.dropped_full(),
            dropped_export_failed: p.counters.dropped_export_failed.load(Ordering::Relaxed),
        },
    }
}

/// Exports every span queued so far and waits for the attempt to complete, up to the export
/// timeout.
pub(crate) fn flush_queue() {
    let Some(p) = pipeline() else { return };
    p.queue.flush(p.export_timeout + Duration::from_secs(1));
}

/// Stops the export thread after a last export and disables span recording.
pub(crate) fn stop() {
    let Some(p) = PIPELINE.get() else { return };
    if !p.queue.close() {
        return;
    }
    let rx = p.done.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rx) = rx {
        let _ = rx.recv_timeout(p.export_timeout + Duration::from_secs(1));
    }
    sink::deactivate();
}

enum Transport {
    /// With the configured headers, sent as metadata on every Export.
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        metadata: http::HeaderMap,
    },
    Http {
        client: Box<HttpClient>,
        uri: http::Uri,
    },
}

impl Transport {
    async fn send(&mut self, req: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc { client, metadata } => {
                let mut req = tonic::Request::new(req);
                *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(metadata.clone());
                client
                    .export(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))
            }
            Transport::Http { client, uri } => {
                let content_type = [(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                )];
                client.post(uri.clone(), &content_type, req.encode_to_vec()).await
            }
        }
    }
}

/// A transport with its configuration checked (endpoint, TLS files), not yet connected.
enum Prepared {
    Grpc(Box<tonic::transport::Endpoint>, http::HeaderMap),
    Http(Box<HttpClient>, http::Uri),
}

impl Prepared {
    fn new(cfg: &Config) -> Result<Prepared, ExportError> {
        let headers = cfg.headers.merged(&cfg.traces_headers);
        let tls = Tls::load(&cfg.traces_tls.or(&cfg.tls))?;
        let timeout = cfg.batch.export_timeout;
        match cfg.protocol {
            Protocol::Grpc => {
                let url = cfg.traces_endpoint.clone().unwrap_or_else(|| cfg.endpoint.clone());
                let bad =
                    |e: &dyn std::fmt::Display| ExportError::Endpoint(url.clone(), e.to_string());
                let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| bad(&e))?
                    .connect_timeout(timeout)
                    .timeout(timeout);
                if url.starts_with("https://") {
                    // Replaces the TLS tonic sets up by itself for https (all enabled roots).
                    ep = ep.tls_config(tls.tonic()).map_err(|e| {
                        ExportError::Tls(TlsError::Setup(http_client::error_chain(&e)))
                    })?;
                }
                Ok(Prepared::Grpc(Box::new(ep), headers.to_header_map()))
            }
            Protocol::HttpProtobuf => {
                let url = http_traces_url(cfg);
                let uri =
                    http_client::uri(&url).map_err(|e| ExportError::Endpoint(url.clone(), e))?;
                let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
                Ok(Prepared::Http(Box::new(HttpClient::new(https, &tls, &headers, timeout)?), uri))
            }
        }
    }

    /// Needs a runtime (the gRPC channel spawns its worker).
    fn connect(self) -> Transport {
        match self {
            Prepared::Grpc(ep, metadata) => {
                Transport::Grpc { client: TraceServiceClient::new((*ep).connect_lazy()), metadata }
            }
            Prepared::Http(client, uri) => Transport::Http { client, uri },
        }
    }
}

fn http_traces_url(cfg: &Config) -> String {
    match &cfg.traces_endpoint {
        Some(u) => u.clone(),
        None => format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/')),
    }
}

/// One export request through the transport `cfg` configures, as the export thread sends it
/// (for tests of the transports: headers, TLS). Outer error: the configuration; inner: the send.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub async fn export_once(
    cfg: &Config,
    req: ExportTraceServiceRequest,
) -> Result<Result<(), String>, ExportError> {
    let mut transport = Prepared::new(cfg)?.connect();
    let timeout = cfg.batch.export_timeout;
    Ok(tokio::time::timeout(timeout, transport.send(req))
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}"))))
}

/// Installs the process-wide pipeline and starts its export thread.
pub(crate) fn install(cfg: &Config) -> Result<(), ExportError> {
    let prepared = Prepared::new(cfg)?;
    cfg.headers.warn_skipped();
    cfg.traces_headers.warn_skipped();
    let (done_tx, done_rx) = mpsc::channel();
    let pipeline = Pipeline {
        propagators: cfg.propagators.clone(),
        queue: Queue::new(cfg.batch.max_queue_size, cfg.batch.max_export_batch_size),
        counters: Counters::default(),
        done: Mutex::new(Some(done_rx)),
        export_timeout: cfg.batch.export_timeout,
    };
    // Spans see the pipeline through the sink: its sampler, and where finished ones go.
    if PIPELINE.set(pipeline).is_err() || !sink::install(cfg.sampler, enqueue) {
        return Err(ExportError::AlreadyInstalled);
    }
    let resource = otlp::resource(&cfg.service_name, &cfg.resource);
    let delay = cfg.batch.scheduled_delay;
    let timeout = cfg.batch.export_timeout;
    let spawned = std::thread::Builder::new().name("skein-export".into()).spawn(move || {
        crate::suppress::suppress_on_this_thread();
        let Some(p) = PIPELINE.get() else { return };
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("skein-instrument: cannot start the export runtime: {e}");
                sink::deactivate();
                return;
            }
        };
        let mut transport = rt.block_on(async { prepared.connect() });
        run(p, &rt, &mut transport, &resource, delay, timeout);
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        sink::deactivate();
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
        let Work { mut batches, flush_upto, stop } = p.queue.take(next);
        if Instant::now() >= next {
            next = Instant::now() + delay;
        }
        let mut records = batches.iter_mut().flat_map(|b| b.drain(..)).peekable();
        while records.peek().is_some() {
            let chunk: Vec<Record> = records.by_ref().take(p.queue.batch()).collect();
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
        p.queue.recycle(batches);
        reporter.maybe_report(&stats(), stop);
        p.queue.flushed(flush_upto);
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
