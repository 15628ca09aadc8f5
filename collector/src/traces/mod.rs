//! [`Traces`]: the span write path behind one handle, as `Profiles` is for
//! profiles. `open` loads the block catalog, opens the WAL and replays into the head what no
//! block holds (`replay.rs`), then starts the writer and applier threads (`writer.rs`); `write` is what
//! OTLP ingest hands each validated export to; `run` is the maintenance loop
//! (`maintenance.rs`: flush, WAL truncation, compaction, retention). Design notes: `DESIGN.md`.
//!
//! Dependencies point one way: `ingest` → `traces` → {`wal`, `head`, `store`}.

pub mod dedupe;
mod maintenance;
pub mod quarantine;
mod replay;
pub mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;

use crate::error::{Coded, ErrorCode};
use crate::head::{HeadLimits, SpanHead};
use crate::health::{Check, Health};
use crate::spanrows::DedicatedColumns;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;
use crate::wal::{Wal, WalConfig, WalError};
use dedupe::RecentSpans;
use quarantine::Quarantine;
pub use writer::{ApplyObserver, WriteError};
use writer::{Writer, WriterConfig, WriterThread};

/// Spans remembered per tenant and generation for ingest-time dedupe (`dedupe.rs`): two
/// generations cost about 10 MiB per active tenant.
const DEDUPE_KEYS: usize = 512 * 1024;
/// ... and at most this long, which covers exporters' retry schedules (the OpenTelemetry SDKs
/// give up within a few minutes).
const DEDUPE_AGE: Duration = Duration::from_secs(600);

/// When the span head is flushed, and how much unflushed data it may hold.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// Flush a tenant's head after this many spans ...
    pub max_spans: usize,
    /// ... or at the latest after this age.
    pub max_age: Duration,
    /// Writes are refused while this many spans are not yet in blocks.
    pub max_unflushed_spans: usize,
}

/// Span block storage.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `file://` or `s3://` URL of the object store (profile blocks live there too).
    pub url: String,
    /// Attributes stored in columns of their own.
    pub dedicated: DedicatedColumns,
    /// Blocks smaller than half of this are compacted together, up to this size.
    pub block_target_spans: usize,
    /// How long blocks (and span-metrics history) are kept.
    pub retention: Duration,
    /// This replica's namespace of a shared storage root (`None`: blocks at the root).
    pub node: Option<crate::store::namespace::NodeId>,
}

/// What the span write path is opened with (sections of the collector's `Config`).
#[derive(Debug, Clone)]
pub struct TracesConfig {
    pub wal: WalConfig,
    pub head: HeadConfig,
    pub store: StoreConfig,
    /// Bytes of accepted-but-not-yet-durable exports before writes are refused.
    pub max_inflight_bytes: usize,
    /// Where WAL records and head parts that cannot be stored normally are kept
    /// (`quarantine.rs`).
    pub quarantine_dir: std::path::PathBuf,
    /// Attribute values are cut to this many bytes (0: kept whole).
    pub max_attribute_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("WAL: {0}")]
    Wal(#[from] WalError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Coded for TracesError {
    fn code(&self) -> ErrorCode {
        match self {
            TracesError::Store(e) => e.code(),
            TracesError::Wal(e) => e.code(),
            TracesError::Io(_) => ErrorCode::Unavailable,
        }
    }
}

pub struct Traces {
    store: Arc<Store>,
    head: Arc<SpanHead>,
    writer: Writer,
    /// Taken by [`Traces::stop`].
    writer_thread: Mutex<Option<WriterThread>>,
    /// Where this write path reports what is wrong with it.
    health: Arc<Health>,
    quarantine: Quarantine,
    dedupe: Arc<RecentSpans>,
    metrics: Arc<Telemetry>,
    head_cfg: HeadConfig,
    block_target_spans: usize,
    retention: std::time::Duration,
}

impl Traces {
    /// Loads the block catalog, opens the WAL, replays what no block holds yet and starts the
    /// writer. `observer` sees every export applied from then on (not the replayed ones).
    pub async fn open(
        object_store: Arc<dyn ObjectStore>,
        cfg: TracesConfig,
        metrics: Arc<Telemetry>,
        health: Arc<Health>,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> Result<Arc<Traces>, TracesError> {
        let dedicated = cfg.store.dedicated.clone();
        let node = cfg.store.node.as_ref();
        let store =
            Arc::new(Store::open_in(object_store, node, dedicated.clone(), metrics.clone()).await?);
        let limits =
            HeadLimits { max_attribute_bytes: cfg.max_attribute_bytes, ..Default::default() };
        let head = Arc::new(SpanHead::with_limits(dedicated, limits));

        let dedupe = Arc::new(RecentSpans::new(DEDUPE_KEYS, DEDUPE_AGE));
        seed_dedupe(&store, &dedupe).await;
        let quarantine = Quarantine::new(cfg.quarantine_dir);

        health.fail(Check::Replay, "replaying the WAL");
        let covered = store.covered();
        let replay_started = Instant::now();
        let (wal, records) = Wal::open_filtered(cfg.wal, |seq, tenant| {
            !covered.get(tenant).is_some_and(|r| r.contains(seq))
        })?;
        let replayed = replay::replay(&head, &dedupe, &quarantine, &metrics, &records);
        drop(records);
        tracing::info!(
            records = replayed,
            ms = replay_started.elapsed().as_millis() as u64,
            "WAL replayed"
        );
        health.clear(Check::Replay);

        let (writer, writer_thread) = Writer::start(
            wal,
            head.clone(),
            WriterConfig {
                max_inflight: cfg.max_inflight_bytes,
                max_unflushed_spans: cfg.head.max_unflushed_spans,
                observer,
                dedupe: dedupe.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
            },
        )?;
        Ok(Arc::new(Traces {
            store,
            head,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            health,
            quarantine,
            dedupe,
            metrics,
            head_cfg: cfg.head,
            block_target_spans: cfg.store.block_target_spans,
            retention: cfg.store.retention,
        }))
    }

    /// Committed blocks (what queries read besides the head).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Recent spans not yet (or only just) in blocks.
    pub fn head(&self) -> &Arc<SpanHead> {
        &self.head
    }

    /// Resolves once the export is durable in the WAL and visible in the head. `payload` is the
    /// export's protobuf encoding, written to the WAL as it is.
    pub async fn write(
        &self,
        tenant: String,
        req: ExportTraceServiceRequest,
        payload: bytes::Bytes,
    ) -> Result<(), WriteError> {
        self.writer.write(tenant, req, payload).await
    }

    /// Stops the writer threads once every queued export is in the head and the WAL is closed.
    /// Call it after [`Traces::run`] has returned; later writes fail with
    /// [`WriteError::Closed`].
    pub fn stop(&self) {
        if let Some(t) = self.writer_thread.lock().take() {
            t.stop();
        }
    }
}

/// Remembers the span keys of blocks written within the dedupe window, so a retry of spans
/// flushed just before a restart is recognised. Best effort: a block that cannot be read is
/// only logged (its spans are still answered once by trace by id).
async fn seed_dedupe(store: &Store, dedupe: &RecentSpans) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let since = now.saturating_sub(DEDUPE_AGE.as_secs() as i64);
    for tenant in store.tenants() {
        let mut recent = store.blocks(&tenant);
        recent.retain(|b| b.meta.created_unix >= since);
        recent.sort_by_key(|b| b.meta.created_unix);
        for b in recent {
            match store.span_ids(&b).await {
                Ok(ids) => {
                    dedupe.remember(&tenant, ids.iter().map(|(t, s)| dedupe::span_key(t, s)))
                }
                Err(e) => tracing::warn!(tenant, block = b.meta.id, error = %e,
                    "cannot read span ids for dedupe"),
            }
        }
    }
}
