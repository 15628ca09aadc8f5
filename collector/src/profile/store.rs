//! Profile blocks on the object store: loading the catalog at start, flushing frozen head
//! parts, compaction and retention. The directory plumbing (clean-up of interrupted writes and
//! compactions, deletion, retention, which blocks to merge) is the span store's
//! (`store::blocks`); this file says what a profile block is made of and how two are merged.
//! Every change ends in a catalog update (`store::catalog`), so a query sees either the old
//! blocks or the new one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::ProfileError;
use super::block::{self, BlockMeta, META_FILE, PREFIX, SAMPLES_FILE, STACKS_FILE, now_unix};
use super::head::FrozenSamples;
use super::service::blocking;
use super::stack::{StackTable, frames_from_batch};
use crate::store::blocks::{self, BlockDir, CompactionPolicy};
use crate::store::catalog::Catalog;
use crate::store::catalog::CatalogEntry;
use crate::wal::SeqRanges;

/// Blocks with fewer samples than half of this are merged together, up to this size. A merge
/// holds its inputs decoded in memory (roughly 100-150 bytes a row), so this also bounds the
/// memory compaction takes.
pub const COMPACT_TARGET_SAMPLES: u64 = 500_000;
/// Most blocks merged at once.
const MAX_MERGE_INPUTS: usize = 16;

/// Files of a profile block besides `meta.json`.
const DATA_FILES: &[&str] = &[SAMPLES_FILE, STACKS_FILE];

pub struct BlockStore {
    dir: BlockDir,
    catalog: Catalog<BlockMeta>,
}

/// What a new block is made of.
struct NewBlock {
    tenant: String,
    samples: RecordBatch,
    stacks: RecordBatch,
    wal_ranges: SeqRanges,
    profile_types: BTreeSet<String>,
    label_names: BTreeSet<String>,
    compacted_from: Vec<String>,
}

impl BlockStore {
    /// Loads the catalog; damaged blocks are quarantined and counted in `quarantined`.
    pub async fn open(
        object_store: Arc<dyn ObjectStore>,
        quarantined: prometheus::IntCounter,
    ) -> Result<BlockStore, ProfileError> {
        let dir = BlockDir::new(
            object_store,
            Some(PREFIX),
            META_FILE,
            DATA_FILES,
            "profile block",
            quarantined,
        );
        let s = BlockStore { dir, catalog: Catalog::default() };
        let metas = s.dir.scan::<BlockMeta>().await?;
        s.catalog.replace(metas.into_iter().map(|m| (m.tenant.clone(), Arc::new(m))));
        Ok(s)
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes, ProfileError> {
        Ok(self.dir.get(path).await?)
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
            wal_seq: nb.wal_ranges.max(),
            wal_ranges: nb.wal_ranges,
            profile_types: nb.profile_types,
            label_names: nb.label_names,
            compacted_from: nb.compacted_from,
            created_unix: now_unix(),
        };
        let object_store = self.dir.object_store();
        object_store.put(&meta.file(SAMPLES_FILE), samples_pq.into()).await?;
        object_store.put(&meta.file(STACKS_FILE), stacks_pq.into()).await?;
        let json =
            serde_json::to_vec_pretty(&meta).map_err(|e| ProfileError::Internal(e.to_string()))?;
        object_store.put(&meta.file(META_FILE), Bytes::from(json).into()).await?;
        Ok(meta)
    }

    /// Writes a frozen head part as a block and publishes it; `on_publish` (releasing the
    /// frozen head) runs under the same catalog lock, atomically for queries using [`view`].
    ///
    /// [`view`]: BlockStore::view
    pub async fn flush(
        &self,
        frozen: &FrozenSamples,
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
                wal_ranges: SeqRanges::range(frozen.min_seq, frozen.max_seq),
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
    /// adds up to half the target or its oldest block is `after` old (the span store's policy,
    /// [`blocks::compaction_plan`]). Returns blocks merged away.
    pub async fn compact(&self, after: Duration) -> Result<usize, ProfileError> {
        let policy = CompactionPolicy {
            target_rows: COMPACT_TARGET_SAMPLES,
            max_inputs: MAX_MERGE_INPUTS,
            after,
        };
        // Inputs of earlier merges that queries were still reading.
        self.dir.delete_unread().await;
        let mut merged = 0;
        for (tenant, group) in blocks::compaction_plan(&self.catalog, &policy, now_unix()) {
            merged += self.merge(&tenant, group).await?;
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
                wal_ranges: {
                    let mut r = SeqRanges::new();
                    for b in &inputs {
                        r.extend(&b.wal_ranges());
                    }
                    r
                },
                profile_types: inputs.iter().flat_map(|b| b.profile_types.clone()).collect(),
                label_names: inputs.iter().flat_map(|b| b.label_names.clone()).collect(),
                compacted_from: inputs.iter().map(|b| b.id.clone()).collect(),
            })
            .await?;
        self.catalog.swap(tenant, &inputs, Arc::new(meta));
        let n = inputs.len();
        self.dir.retire(inputs).await;
        tracing::info!(tenant, inputs = n, "compacted profile blocks");
        Ok(n)
    }

    /// Deletes blocks whose newest sample is older than `now - retention`.
    pub async fn apply_retention(&self, retention: Duration) -> Result<usize, ProfileError> {
        let expired = self.dir.expire(&self.catalog, retention).await;
        if expired > 0 {
            tracing::info!(blocks = expired, "retention deleted profile blocks");
        }
        Ok(expired)
    }
}

fn time_range(samples: &RecordBatch) -> (i64, i64) {
    use arrow::array::AsArray;
    let Some(t) = samples.column_by_name(super::schema::col::TIME) else { return (0, 0) };
    let Some(t) = t.as_primitive_opt::<arrow::datatypes::Int64Type>() else { return (0, 0) };
    (arrow::compute::min(t).unwrap_or(0), arrow::compute::max(t).unwrap_or(0))
}
