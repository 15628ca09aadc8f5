//! [`Profiles`]: the profile write path (WAL, head), start-up replay and the maintenance loop
//! (flush, WAL truncation, compaction, retention). Queries are in `query.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use parking_lot::Mutex;
use prost::Message;

use super::ProfileError;
use super::block::BlockMeta;
use super::head::{FrozenSamples, ProfileHead, UNKNOWN_SERVICE};
use super::limits::{APP_IDLE, AppCensus, Budget, DECODE_WAIT, DecodeSlots};
use super::model::Batch;
use super::schema::col;
use super::store::BlockStore;
use crate::telemetry::Telemetry;
use crate::wal::{FsyncPolicy, Wal, WalConfig};

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// The profile WAL's directory (its own, beside the span WAL).
    pub wal_dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Largest push body, also after decompression.
    pub max_body_bytes: usize,
    /// Memory one query may hold (fetched block files and aggregation state).
    pub query_memory_bytes: usize,
    /// Flush a tenant's head to a block after this age ...
    pub head_max_age: Duration,
    /// ... or this many sample rows.
    pub head_max_samples: usize,
    pub retention: Duration,
    /// A push may decode into this many times `max_body_bytes` (`--profile-decode-factor`).
    pub decode_factor: usize,
    /// Pushes decoded at once (`--profile-decode-concurrency`).
    pub decode_concurrency: usize,
    /// Distinct service names per tenant within the last hour (`--profile-max-apps`).
    pub max_apps: usize,
}

pub struct Profiles {
    wal: Mutex<Wal>,
    pub(crate) head: ProfileHead,
    pub(crate) store: BlockStore,
    pub(crate) cfg: ProfileConfig,
    metrics: Arc<Telemetry>,
    /// Frozen parts whose flush failed; still visible from the head, retried next tick.
    failed: Mutex<Vec<Arc<FrozenSamples>>>,
    decodes: DecodeSlots,
    apps: Mutex<AppCensus>,
    /// The other replicas, whose profiles queries also answer for (`federate.rs`).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// The service names a batch's samples are stored under (see `head.rs`).
fn services(batch: &Batch) -> impl Iterator<Item = &str> + Clone {
    fn label(labels: &[super::model::Label]) -> Option<&str> {
        labels.iter().find(|l| l.name == col::SERVICE).map(|l| l.value.as_str())
    }
    batch.profiles.iter().flat_map(move |p| {
        let default = label(&p.labels).unwrap_or(UNKNOWN_SERVICE);
        p.samples.iter().map(move |s| label(&s.labels).unwrap_or(default))
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProfileError> + Send + 'static,
) -> Result<T, ProfileError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ProfileError::Internal(e.to_string()))?
}

/// Profile blocks are small; merging them waits this long unless a run is already big.
const COMPACT_AFTER: Duration = Duration::from_secs(600);

impl Profiles {
    /// Loads the block catalog, opens the profile WAL and replays what no block holds yet.
    pub async fn open(
        object_store: Arc<dyn ObjectStore>,
        cfg: ProfileConfig,
        metrics: Arc<Telemetry>,
    ) -> Result<Arc<Profiles>, ProfileError> {
        let quarantined = metrics.blocks_quarantined.with_label_values(&["profiles"]);
        let store = BlockStore::open(object_store, quarantined).await?;
        let covered = store.catalog().covered();
        let wal_cfg = WalConfig {
            dir: cfg.wal_dir.clone(),
            fsync: cfg.fsync,
            segment_bytes: crate::wal::DEFAULT_SEGMENT_BYTES,
        };
        let started = Instant::now();
        let (wal, records) = blocking(move || {
            Ok(Wal::open_filtered(wal_cfg, |seq, tenant| {
                !covered.get(tenant).is_some_and(|r| r.contains(seq))
            })?)
        })
        .await?;
        let head = ProfileHead::default();
        let mut apps = AppCensus::new(cfg.max_apps, APP_IDLE);
        let mut replayed = 0;
        for r in records {
            // Records were parsed and validated before they were written; a failure here
            // means disk damage, and skipping it keeps the rest available.
            let applied = Batch::decode_wal(&r.payload).and_then(|b| {
                apps.admit(&r.tenant, services(&b), Instant::now(), true)?;
                head.apply(r.seq, &r.tenant, &b)
            });
            match applied {
                Ok(()) => replayed += 1,
                Err(e) => {
                    tracing::error!(seq = r.seq, error = %e, "cannot replay profile WAL record")
                }
            }
        }
        tracing::info!(
            records = replayed,
            ms = started.elapsed().as_millis() as u64,
            "profile WAL replayed"
        );
        Ok(Arc::new(Profiles {
            wal: Mutex::new(wal),
            head,
            store,
            decodes: DecodeSlots::new(cfg.decode_concurrency, DECODE_WAIT),
            apps: Mutex::new(apps),
            cfg,
            metrics,
            failed: Mutex::new(Vec::new()),
            cluster: std::sync::OnceLock::new(),
        }))
    }

    pub fn metrics(&self) -> &Telemetry {
        &self.metrics
    }

    pub fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }

    /// Parses a push with `parse` on a blocking thread, once one of the decode slots is free,
    /// within a fresh [`Budget`]. Refusals (busy, too large, too complex) are counted.
    pub async fn decode<T: Send + 'static>(
        &self,
        parse: impl FnOnce(&mut Budget) -> Result<T, ProfileError> + Send + 'static,
    ) -> Result<T, ProfileError> {
        let result = async {
            let _slot = self.decodes.acquire().await?;
            let mut budget = Budget::new(self.cfg.max_body_bytes, self.cfg.decode_factor);
            blocking(move || parse(&mut budget)).await
        }
        .await;
        if let Err(e) = &result {
            self.count_refusal(e);
        }
        result
    }

    /// Counts a refused push in `skein_profile_pushes_refused_total` if it is a limit's.
    pub fn count_refusal(&self, e: &ProfileError) {
        let reason = match e {
            ProfileError::TooLarge { .. } => "too_large",
            ProfileError::TooComplex { .. } => "too_complex",
            ProfileError::Busy => "busy",
            ProfileError::TooManyApps { .. } => "too_many_apps",
            _ => return,
        };
        self.metrics.profile_pushes_refused.with_label_values(&[reason]).inc();
    }

    /// The tenant's committed blocks, oldest first.
    pub fn blocks(&self, tenant: &str) -> Vec<Arc<BlockMeta>> {
        self.store.catalog().blocks(tenant)
    }

    /// Stores a parsed push: returns once it is in the WAL (synced per the fsync policy) and
    /// visible to queries. One push is one WAL record, so it is stored whole or not at all.
    pub async fn ingest(
        self: &Arc<Self>,
        tenant: String,
        batch: Batch,
    ) -> Result<(), ProfileError> {
        let samples = batch.samples();
        if samples == 0 {
            return Ok(());
        }
        // Flushing fell behind: refuse rather than let the head grow without bound.
        if self.head.parts().unflushed() >= self.cfg.head_max_samples.saturating_mul(4) {
            return Err(ProfileError::Overloaded);
        }
        // Client-chosen service names must not grow the head (and its label values) without
        // bound: a push naming one too many is refused whole.
        let admitted = self.apps.lock().admit(&tenant, services(&batch), Instant::now(), false);
        if let Err(e) = admitted {
            self.count_refusal(&e);
            return Err(e);
        }
        let this = self.clone();
        let t = tenant.clone();
        blocking(move || {
            let payload = batch.encode_to_vec();
            // Profiles arrive every few seconds per agent, so one fsync per push is cheap and
            // needs no group commit. Applying under the WAL lock keeps the head in WAL order,
            // the order replay rebuilds it in.
            let mut wal = this.wal.lock();
            let seq = wal.append_batch(&[(t.as_str(), payload.as_slice())])?;
            this.head.apply(seq, &t, &batch)
        })
        .await?;
        self.metrics
            .profile_samples_received
            .with_label_values(&[tenant.as_str()])
            .inc_by(samples as u64);
        Ok(())
    }

    /// Flushes due head parts (all with `force`) into blocks, then truncates the WAL behind
    /// them. Returns how many blocks were written.
    pub async fn flush(self: &Arc<Self>, force: bool) -> Result<usize, ProfileError> {
        let mut due = std::mem::take(&mut *self.failed.lock());
        due.extend(self.head.freeze_due(
            self.cfg.head_max_samples,
            self.cfg.head_max_age,
            force,
        )?);
        if due.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let mut first_error = None;
        for f in due {
            match self.store.flush(&f, || self.head.parts().release(&f.tenant, f.id)).await {
                Ok(_) => written += 1,
                Err(e) => {
                    tracing::error!(tenant = f.tenant, error = %e, "profile flush failed");
                    self.failed.lock().push(f);
                    first_error.get_or_insert(e);
                }
            }
        }
        let this = self.clone();
        blocking(move || this.truncate_wal()).await?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    fn truncate_wal(&self) -> Result<(), ProfileError> {
        let mut wal = self.wal.lock();
        let through = self.head.parts().flushed_through(wal.last_seq());
        wal.truncate_through(through)?;
        Ok(())
    }

    /// Merges small blocks (see `store.rs`) once a run of them is big enough or its oldest
    /// block is `after` old. Returns how many blocks were merged away.
    pub async fn compact(&self, after: Duration) -> Result<usize, ProfileError> {
        self.store.compact(after).await
    }

    /// Deletes blocks older than the retention. Returns how many.
    pub async fn apply_retention(&self) -> Result<usize, ProfileError> {
        self.store.apply_retention(self.cfg.retention).await
    }

    /// Flushes, compacts and applies retention until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_housekeeping: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.flush(false).await {
                tracing::error!(error = %e, "profile flush failed");
            }
            if last_housekeeping.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_housekeeping = Some(Instant::now());
                if let Err(e) = self.apply_retention().await {
                    tracing::error!(error = %e, "profile retention failed");
                }
                if let Err(e) = self.compact(COMPACT_AFTER).await {
                    tracing::error!(error = %e, "profile compaction failed");
                }
            }
        }
    }
}
