//! `skein serve`: opens storage, replays the WAL into the head, starts the writer, the
//! maintenance loop (flush, WAL truncation, compaction, retention) and the three listeners.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::alert::notify::Targets;
use crate::alert::{Alerting, AlertingConfig};
use crate::api::{self, AppState};
use crate::config::{Config, FsyncMode};
use crate::head::{Frozen, Head};
use crate::ingest::writer::{Writer, WriterThread};
use crate::ingest::{self, Ingestor};
use crate::metrics::Metrics;
use crate::metrics_gen::{Generator, GeneratorConfig};
use crate::profile::{ProfileConfig, Profiles};
use crate::query::QueryEngine;
use crate::store::schema::Dedicated;
use crate::store::{Store, open_object_store};
use crate::wal::{FsyncPolicy, Wal, WalConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("WAL: {0}")]
    Wal(#[from] crate::wal::WalError),
    #[error("query engine: {0}")]
    Query(#[from] crate::query::QueryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("OTLP/gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("profiles: {0}")]
    Profiles(#[from] crate::profile::ProfileError),
    #[error("span metrics: {0}")]
    MetricsGen(#[from] crate::metrics_gen::MetricsGenError),
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("rules: {}", join(.0))]
    Rules(Vec<crate::alert::AlertError>),
}

fn join(errors: &[crate::alert::AlertError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

impl crate::error::Coded for ServeError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            ServeError::Store(e) => e.code(),
            ServeError::Wal(e) => e.code(),
            ServeError::Query(e) => e.code(),
            ServeError::Profiles(e) => e.code(),
            ServeError::MetricsGen(e) => e.code(),
            ServeError::Bind { .. } | ServeError::Io(_) | ServeError::Grpc(_) => {
                ErrorCode::Unavailable
            }
            ServeError::Task(_) => ErrorCode::Internal,
            ServeError::Rules(_) => ErrorCode::InvalidArgument,
        }
    }
}

/// A running collector (used by `serve`, `demo`, benchmarks and tests).
pub struct Running {
    pub engine: Arc<QueryEngine>,
    pub profiles: Arc<Profiles>,
    pub metrics_gen: Arc<Generator>,
    pub alerting: Arc<Alerting>,
    /// Bound addresses (differ from the configured ones when those use port 0).
    pub http_addr: std::net::SocketAddr,
    pub otlp_http_addr: std::net::SocketAddr,
    pub otlp_grpc_addr: std::net::SocketAddr,
    pub ingestor: Ingestor,
    pub writer: Writer,
    writer_thread: WriterThread,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        for t in self.tasks {
            match t.await {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "task panicked"),
            }
        }
        self.writer_thread.stop();
        result
    }

    /// Resolves when any listener stops (e.g. on an error).
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let (r, _, rest) = futures::future::select_all(self.tasks.drain(..)).await;
        self.tasks = rest;
        match r {
            Ok(r) => r,
            Err(e) => Err(ServeError::Task(e)),
        }
    }
}

fn fsync_policy(m: FsyncMode) -> FsyncPolicy {
    match m {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Interval => FsyncPolicy::Interval(Duration::from_secs(1)),
        FsyncMode::Never => FsyncPolicy::Never,
    }
}

fn nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Starts everything and returns once all listeners are bound and the WAL is replayed.
pub async fn start(cfg: &Config) -> Result<Running, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let dedicated = Dedicated {
        span: cfg.dedicated_span_attributes.clone(),
        resource: cfg.dedicated_resource_attributes.clone(),
    };
    let store = Arc::new(
        Store::open(open_object_store(&cfg.storage)?, dedicated.clone(), metrics.clone()).await?,
    );
    let head = Arc::new(Head::new(dedicated));

    let watermarks = store.watermarks();
    let replay_started = Instant::now();
    let wal_cfg = WalConfig {
        dir: cfg.data_dir.join("wal"),
        fsync: fsync_policy(cfg.fsync),
        segment_bytes: crate::wal::DEFAULT_SEGMENT_BYTES,
    };
    let (wal, records) = Wal::open_filtered(wal_cfg, |seq, tenant| {
        seq > watermarks.get(tenant).copied().unwrap_or(0)
    })?;
    let replayed = replay(&head, records);
    tracing::info!(
        records = replayed,
        ms = replay_started.elapsed().as_millis() as u64,
        "WAL replayed"
    );

    let metrics_gen = Arc::new(Generator::open(GeneratorConfig {
        buckets: cfg.spanmetrics_buckets.clone(),
        dimensions: cfg.spanmetrics_dimensions.clone(),
        wait: cfg.servicegraph_wait,
        interval: cfg.metrics_scrape_interval,
        retention: cfg.retention,
        dir: cfg.data_dir.join("spanmetrics"),
    })?);

    // Back-pressure once unflushed spans reach a few heads' worth (at least 100k spans, ~45 MB):
    // bounds memory when block writing cannot keep up with ingest.
    let (writer, writer_thread) = Writer::start(
        wal,
        head.clone(),
        metrics.clone(),
        cfg.max_inflight_bytes,
        cfg.head_max_spans.saturating_mul(4).max(100_000),
        Some(metrics_gen.clone()),
    )?;
    let ingestor = Ingestor::new(writer.clone(), metrics.clone(), cfg.max_body_bytes);
    let profiles = Profiles::open(
        store.object_store.clone(),
        ProfileConfig {
            wal_dir: cfg.data_dir.join("profiles-wal"),
            fsync: fsync_policy(cfg.fsync),
            max_body_bytes: cfg.max_body_bytes,
            query_memory_bytes: cfg.query_memory_bytes,
            head_max_age: cfg.head_max_age,
            head_max_samples: cfg.head_max_spans,
            retention: cfg.retention,
        },
        metrics.clone(),
    )
    .await?;
    let engine = Arc::new(QueryEngine::new(
        store.clone(),
        head.clone(),
        metrics.clone(),
        cfg.query_memory_bytes,
    )?);

    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();

    let http_listener = bind(cfg.http_addr).await?;
    let otlp_http_listener = bind(cfg.otlp_http_addr).await?;
    // Bind gRPC ourselves too, so a busy port fails start-up instead of a background task.
    let grpc_listener = bind(cfg.otlp_grpc_addr).await?;
    let http_addr = http_listener.local_addr()?;
    let otlp_http_addr = otlp_http_listener.local_addr()?;
    let otlp_grpc_addr = grpc_listener.local_addr()?;
    // Small responses on long-lived connections: Nagle's algorithm would delay acks by tens of
    // milliseconds against the client's delayed ACK.
    let grpc_incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));

    let alerting = Alerting::new(
        AlertingConfig {
            rules: cfg.rules.clone(),
            tenant: crate::tenant::DEFAULT_TENANT.to_string(),
            external_url: cfg.external_url.clone().unwrap_or_else(|| format!("http://{http_addr}")),
            external_labels: cfg.external_labels.clone(),
            resend_delay: cfg.alert_resend_delay,
            targets: Targets {
                alertmanagers: cfg.alertmanager_urls.clone(),
                webhooks: cfg.alert_webhook_url.iter().cloned().collect(),
            },
        },
        metrics_gen.clone(),
    )
    .map_err(ServeError::Rules)?;
    // The Prometheus API finds the rules' state (and recorded series) as an extension, so the
    // shared AppState stays as it is.
    let app = api::router(AppState {
        engine: engine.clone(),
        profiles: profiles.clone(),
        metrics_gen: metrics_gen.clone(),
    })
    .layer(axum::Extension(alerting.clone()));
    let s = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        axum::serve(http_listener.tap_io(nodelay), app).with_graceful_shutdown(s).await?;
        Ok(())
    }));
    let otlp_app = ingest::http::router(ingestor.clone());
    let s = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        axum::serve(otlp_http_listener.tap_io(nodelay), otlp_app).with_graceful_shutdown(s).await?;
        Ok(())
    }));
    let ing = ingestor.clone();
    let s = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        ingest::grpc::serve(grpc_incoming, ing, s).await?;
        Ok(())
    }));
    let maint = Maintenance {
        store,
        head,
        writer: writer.clone(),
        max_spans: cfg.head_max_spans,
        max_age: cfg.head_max_age,
        target_spans: cfg.block_target_spans,
        retention: cfg.retention,
    };
    let s = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        maint.run(s).await;
        Ok(())
    }));
    let (p, s) = (profiles.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        p.run(s).await;
        Ok(())
    }));
    let (g, s) = (metrics_gen.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        g.run(s).await;
        Ok(())
    }));
    let (a, s) = (alerting.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        a.run(s).await;
        Ok(())
    }));
    tracing::info!(
        otlp_grpc = %otlp_grpc_addr,
        otlp_http = %otlp_http_addr,
        http = %http_addr,
        storage = cfg.storage,
        "skein ready"
    );
    Ok(Running {
        engine,
        profiles,
        metrics_gen,
        alerting,
        http_addr,
        otlp_http_addr,
        otlp_grpc_addr,
        ingestor,
        writer,
        writer_thread,
        shutdown: tx,
        tasks,
    })
}

fn replay(head: &Head, records: Vec<crate::wal::WalRecord>) -> usize {
    let mut n = 0;
    for r in records {
        match ExportTraceServiceRequest::decode(r.payload.as_slice()) {
            Ok(req) => match head.apply(r.seq, &r.tenant, &req) {
                Ok(()) => n += 1,
                Err(e) => tracing::error!(seq = r.seq, error = %e, "cannot replay WAL record"),
            },
            // Records were validated before they were written; this means disk damage.
            Err(e) => tracing::error!(seq = r.seq, error = %e, "undecodable WAL record skipped"),
        }
    }
    n
}

/// Aborts a background task when the owner stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Maintenance {
    store: Arc<Store>,
    head: Arc<Head>,
    writer: Writer,
    max_spans: usize,
    max_age: Duration,
    target_spans: usize,
    retention: Duration,
}

impl Maintenance {
    async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed: Vec<Arc<Frozen>> = Vec::new();
        let mut last_retention: Option<Instant> = None;
        // Compaction runs beside flushing so a long merge never delays the next flush.
        let (store, target) = (self.store.clone(), self.target_spans);
        let compactor = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.compact(target).await {
                    tracing::error!(error = %e, "compaction failed");
                }
            }
        });
        let _abort_compactor = AbortOnDrop(compactor);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let mut due = std::mem::take(&mut failed);
            match self.head.freeze_due(self.max_spans, self.max_age, false) {
                Ok(f) => due.extend(f),
                Err(e) => tracing::error!(error = %e, "freezing head failed"),
            }
            let flushed = !due.is_empty();
            for f in due {
                match self.store.flush(&f, || self.head.release(&f)).await {
                    Ok(_) => {}
                    Err(e) => {
                        // Still visible from the head and still in the WAL; retry next tick.
                        tracing::error!(tenant = f.tenant, error = %e, "flush failed");
                        failed.push(f);
                    }
                }
            }
            if flushed && let Err(e) = self.writer.truncate().await {
                tracing::error!(error = %e, "WAL truncation failed");
            }
            if last_retention.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_retention = Some(Instant::now());
                if let Err(e) = self.store.apply_retention(self.retention).await {
                    tracing::error!(error = %e, "retention failed");
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
