//! Profile blocks on the object store: loading the catalog at start (cleaning up interrupted
//! writes and compactions), flushing frozen head parts, compaction and retention. Every change
//! ends in a catalog update (`store::catalog`), so a query sees either the old blocks or the new
//! one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::ProfileError;
use super::block::{self, BlockMeta, META_FILE, PREFIX, SAMPLES_FILE, STACKS_FILE, now_unix};
use super::head::Frozen;
use super::stack::{StackTable, frames_from_batch};
use crate::store::catalog::Catalog;

/// Blocks with fewer samples than half of this are merged together, up to this size. A merge
/// holds its inputs decoded in memory (roughly 100-150 bytes a row), so this also bounds the
/// memory compaction takes.
pub const COMPACT_TARGET_SAMPLES: u64 = 500_000;
/// Most blocks merged at once.
const MAX_MERGE_INPUTS: usize = 16;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProfileError> + Send + 'static,
) -> Result<T, ProfileError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ProfileError::Internal(e.to_string()))?
}

pub struct BlockStore {
    object_store: Arc<dyn ObjectStore>,
    catalog: Catalog<BlockMeta>,
}

/// What a new block is made of.
struct NewBlock {
    tenant: String,
    samples: RecordBatch,
    stacks: RecordBatch,
    wal_seq: u64,
    profile_types: BTreeSet<String>,
    label_names: BTreeSet<String>,
    compacted_from: Vec<String>,
}

impl BlockStore {
    pub async fn open(object_store: Arc<dyn ObjectStore>) -> Result<BlockStore, ProfileError> {
        let s = BlockStore { object_store, catalog: Catalog::default() };
        s.load().await?;
        Ok(s)
    }

    async fn load(&self) -> Result<(), ProfileError> {
        let prefix = Path::from(PREFIX);
        let objects: Vec<object_store::ObjectMeta> =
            self.object_store.list(Some(&prefix)).try_collect().await?;
        let mut dirs: HashMap<(String, String), Vec<Path>> = HashMap::new();
        for o in objects {
            let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
            if let [_, tenant, id, _] = parts.as_slice() {
                dirs.entry((tenant.clone(), id.clone())).or_default().push(o.location);
            }
        }
        let mut metas = Vec::new();
        for ((tenant, id), files) in &dirs {
            if !files.iter().any(|p| p.filename() == Some(META_FILE)) {
                tracing::warn!(tenant, block = id, "removing incomplete profile block");
                self.delete_files(files).await;
                continue;
            }
            let bytes = self.get(&BlockMeta::dir(tenant, id).join(META_FILE)).await?;
            let meta: BlockMeta = serde_json::from_slice(&bytes).map_err(|e| {
                ProfileError::Internal(format!("profile block {tenant}/{id}/meta.json: {e}"))
            })?;
            metas.push(meta);
        }
        let superseded = crate::store::catalog::superseded(
            metas.iter().map(|m| (m.tenant.as_str(), m.compacted_from.as_slice())),
        );
        let mut catalog = Vec::new();
        for meta in metas {
            let key = (meta.tenant.clone(), meta.id.clone());
            if superseded.contains(&key) {
                if let Some(files) = dirs.get(&key) {
                    self.delete_files(files).await;
                }
                continue;
            }
            catalog.push((meta.tenant.clone(), Arc::new(meta)));
        }
        self.catalog.replace(catalog);
        Ok(())
    }

    async fn delete_files(&self, files: &[Path]) {
        for f in files {
            if let Err(e) = self.object_store.delete(f).await {
                tracing::warn!(path = %f, error = %e, "delete failed");
            }
        }
    }

    async fn delete_block(&self, meta: &BlockMeta) {
        // Meta first: a half-deleted block is then an incomplete one, cleaned up on start.
        let files: Vec<Path> =
            [META_FILE, SAMPLES_FILE, STACKS_FILE].iter().map(|f| meta.file(f)).collect();
        self.delete_files(&files).await;
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes, ProfileError> {
        Ok(self.object_store.get(path).await?.bytes().await?)
    }

    /// The tenants' committed blocks (see `store::catalog` for the consistency rules).
    pub fn catalog(&self) -> &Catalog<BlockMeta> {
        &self.catalog
    }

    /// Uploads a block (data first, meta last).
    async fn write(&self, nb: NewBlock) -> Result<BlockMeta, ProfileError> {
        let (samples, stacks) = (nb.samples, nb.stacks);
        let (rows, n_stacks) = (samples.num_rows() as u64, stacks.num_rows() as u64);
        let (min_time, max_time) = time_range(&samples);
        let (samples_pq, stacks_pq) =
            blocking(move || Ok((block::encode(&samples)?, block::encode(&stacks)?))).await?;
        let meta = BlockMeta {
            format: 1,
            id: ulid::Ulid::new().to_string(),
            tenant: nb.tenant,
            min_time,
            max_time,
            samples: rows,
            stacks: n_stacks,
            samples_bytes: samples_pq.len() as u64,
            stacks_bytes: stacks_pq.len() as u64,
            wal_seq: nb.wal_seq,
            profile_types: nb.profile_types,
            label_names: nb.label_names,
            compacted_from: nb.compacted_from,
            created_unix: now_unix(),
        };
        self.object_store.put(&meta.file(SAMPLES_FILE), samples_pq.into()).await?;
        self.object_store.put(&meta.file(STACKS_FILE), stacks_pq.into()).await?;
        let json =
            serde_json::to_vec_pretty(&meta).map_err(|e| ProfileError::Internal(e.to_string()))?;
        self.object_store.put(&meta.file(META_FILE), Bytes::from(json).into()).await?;
        Ok(meta)
    }

    /// Writes a frozen head part as a block and publishes it; `on_publish` (releasing the
    /// frozen head) runs under the same catalog lock, atomically for queries using [`view`].
    ///
    /// [`view`]: BlockStore::view
    pub async fn flush(
        &self,
        frozen: &Frozen,
        on_publish: impl FnOnce(),
    ) -> Result<Arc<BlockMeta>, ProfileError> {
        let (batches, stacks) = (frozen.batches.clone(), frozen.stacks.clone());
        let (samples, stacks) = blocking(move || {
            let stacks = stacks.read().to_batch()?;
            Ok((block::sort_samples(&batches)?, stacks))
        })
        .await?;
        let meta = self
            .write(NewBlock {
                tenant: frozen.tenant.clone(),
                samples,
                stacks,
                wal_seq: frozen.max_seq,
                profile_types: frozen.profile_types.clone(),
                label_names: frozen.label_names.clone(),
                compacted_from: Vec::new(),
            })
            .await?;
        let meta = Arc::new(meta);
        self.catalog.publish(&frozen.tenant, meta.clone(), on_publish);
        tracing::info!(
            tenant = frozen.tenant,
            block = meta.id,
            samples = meta.samples,
            stacks = meta.stacks,
            bytes = meta.bytes(),
            "flushed profile head to block"
        );
        Ok(meta)
    }

    /// Merges runs of small blocks of each tenant (see [`COMPACT_TARGET_SAMPLES`]) once a run
    /// adds up to half the target or its oldest block is `after` old. Returns blocks merged away.
    pub async fn compact(&self, after: Duration) -> Result<usize, ProfileError> {
        let now = now_unix();
        let mut merged = 0;
        for tenant in self.catalog.tenants() {
            let small: Vec<Arc<BlockMeta>> = self
                .catalog
                .blocks(&tenant)
                .into_iter()
                .filter(|b| b.samples < COMPACT_TARGET_SAMPLES / 2)
                .collect();
            let mut group: Vec<Arc<BlockMeta>> = Vec::new();
            let mut groups = Vec::new();
            for b in small {
                let total: u64 = group.iter().map(|g| g.samples).sum();
                if group.len() >= MAX_MERGE_INPUTS || total + b.samples > COMPACT_TARGET_SAMPLES {
                    groups.push(std::mem::take(&mut group));
                }
                group.push(b);
            }
            groups.push(group);
            for g in groups {
                let total: u64 = g.iter().map(|b| b.samples).sum();
                let oldest = g.iter().map(|b| b.created_unix).min().unwrap_or(now);
                let old_enough = now - oldest >= after.as_secs() as i64;
                if g.len() >= 2 && (total >= COMPACT_TARGET_SAMPLES / 2 || old_enough) {
                    merged += self.merge(&tenant, g).await?;
                }
            }
        }
        Ok(merged)
    }

    async fn merge(
        &self,
        tenant: &str,
        inputs: Vec<Arc<BlockMeta>>,
    ) -> Result<usize, ProfileError> {
        let mut sample_files = Vec::with_capacity(inputs.len());
        let mut stack_files = Vec::with_capacity(inputs.len());
        for b in &inputs {
            sample_files.push(self.get(&b.file(SAMPLES_FILE)).await?);
            stack_files.push(self.get(&b.file(STACKS_FILE)).await?);
        }
        let (samples, stacks) = blocking(move || {
            let mut batches = Vec::new();
            for f in sample_files {
                for b in block::read(f)? {
                    batches.push(b?);
                }
            }
            let mut frames = HashMap::new();
            for f in stack_files {
                for b in block::read(f)? {
                    frames_from_batch(&b?, &mut |_| true, &mut frames)?;
                }
            }
            let mut table = StackTable::default();
            for (id, f) in &frames {
                let names: Vec<&str> = f.iter().map(|s| s.as_str()).collect();
                table.insert(*id, &names);
            }
            Ok((block::sort_samples(&batches)?, table.to_batch()?))
        })
        .await?;
        let meta = self
            .write(NewBlock {
                tenant: tenant.to_string(),
                samples,
                stacks,
                wal_seq: inputs.iter().map(|b| b.wal_seq).max().unwrap_or(0),
                profile_types: inputs.iter().flat_map(|b| b.profile_types.clone()).collect(),
                label_names: inputs.iter().flat_map(|b| b.label_names.clone()).collect(),
                compacted_from: inputs.iter().map(|b| b.id.clone()).collect(),
            })
            .await?;
        self.catalog.swap(tenant, &inputs, Arc::new(meta));
        for b in &inputs {
            self.delete_block(b).await;
        }
        tracing::info!(tenant, inputs = inputs.len(), "compacted profile blocks");
        Ok(inputs.len())
    }

    /// Deletes blocks whose newest sample is older than `now - retention`.
    pub async fn apply_retention(&self, retention: Duration) -> Result<usize, ProfileError> {
        let cutoff = now_unix()
            .saturating_mul(1_000_000_000)
            .saturating_sub(retention.as_nanos().min(i64::MAX as u128) as i64);
        let expired = self.catalog.expire(cutoff);
        for b in &expired {
            self.delete_block(b).await;
        }
        if !expired.is_empty() {
            tracing::info!(blocks = expired.len(), "retention deleted profile blocks");
        }
        Ok(expired.len())
    }
}

fn time_range(samples: &RecordBatch) -> (i64, i64) {
    use arrow::array::AsArray;
    let Some(t) = samples.column_by_name(super::schema::col::TIME) else { return (0, 0) };
    let Some(t) = t.as_primitive_opt::<arrow::datatypes::Int64Type>() else { return (0, 0) };
    (arrow::compute::min(t).unwrap_or(0), arrow::compute::max(t).unwrap_or(0))
}
