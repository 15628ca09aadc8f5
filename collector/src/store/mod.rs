//! Block storage on `object_store` (local disk or S3) and the in-memory block catalog with its
//! trace-id index. Flush, compaction and retention all end in an atomic catalog swap, so a
//! query sees either the old blocks or the new one, never both or neither.

pub mod block;
pub mod bloom;
pub mod catalog;
pub mod compact;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::error::ArrowError;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::head::{Frozen, TagKeys};
use crate::metrics::Metrics;
use block::{BLOOM_FILE, BlockMeta, META_FILE, NewBlock, SPANS_FILE};
use bloom::Bloom;
use catalog::{Catalog, CatalogEntry};
use schema::Dedicated;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("invalid storage url {0}")]
    Url(String),
    #[error("corrupt block data: {0}")]
    Corrupt(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl crate::error::Coded for StoreError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            StoreError::ObjectStore(_) | StoreError::Io(_) => ErrorCode::Unavailable,
            StoreError::Url(_) => ErrorCode::InvalidArgument,
            StoreError::Parquet(_)
            | StoreError::Arrow(_)
            | StoreError::Corrupt(_)
            | StoreError::Task(_) => ErrorCode::Internal,
        }
    }
}

/// Most blocks merged at once: each open input holds a decoded row group in memory.
pub const MAX_MERGE_INPUTS: usize = 8;

/// Small blocks that never add up to half a target block are still merged after this long.
pub const COMPACT_AFTER: Duration = Duration::from_secs(600);

/// Runs CPU-heavy block work off the async workers, which serve ingest and queries.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(StoreError::Task)?
}

/// A committed block and its trace-id filter.
#[derive(Debug)]
pub struct Block {
    pub meta: BlockMeta,
    pub bloom: Bloom,
}

impl CatalogEntry for Block {
    fn id(&self) -> &str {
        &self.meta.id
    }
    fn min_time(&self) -> i64 {
        self.meta.min_time
    }
    fn max_time(&self) -> i64 {
        self.meta.max_time
    }
    fn wal_seq(&self) -> u64 {
        self.meta.wal_seq
    }
}

/// Opens the object store for a `file://` or `s3://` URL, rooted at the URL's path.
pub fn open_object_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let parsed = url::Url::parse(url).map_err(|e| StoreError::Url(format!("{url}: {e}")))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|()| StoreError::Url(url.to_string()))?;
            std::fs::create_dir_all(&path)?;
            Ok(Arc::new(object_store::local::LocalFileSystem::new_with_prefix(path)?))
        }
        "s3" => {
            let bucket = parsed.host_str().ok_or_else(|| StoreError::Url(url.to_string()))?;
            // AWS_* variables give credentials, region and (for S3-compatible servers)
            // AWS_ENDPOINT_URL / AWS_ALLOW_HTTP.
            let s3 =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)))
            }
        }
        other => Err(StoreError::Url(format!("unsupported scheme {other}"))),
    }
}

pub struct Store {
    pub object_store: Arc<dyn ObjectStore>,
    dedicated: Dedicated,
    catalog: Catalog<Block>,
    metrics: Arc<Metrics>,
}

impl Store {
    /// Opens storage and loads the catalog. Leftovers of interrupted writes (block directories
    /// without meta) and inputs of committed compactions are deleted.
    pub async fn open(
        object_store: Arc<dyn ObjectStore>,
        dedicated: Dedicated,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let store = Store { object_store, dedicated, catalog: Catalog::default(), metrics };
        store.load().await?;
        Ok(store)
    }

    async fn load(&self) -> Result<(), StoreError> {
        let objects: Vec<object_store::ObjectMeta> =
            self.object_store.list(None).try_collect().await?;
        let mut dirs: HashMap<(String, String), Vec<Path>> = HashMap::new();
        for o in objects {
            let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
            if parts.len() == 3 {
                dirs.entry((parts[0].clone(), parts[1].clone())).or_default().push(o.location);
            }
        }
        let mut metas = Vec::new();
        for ((tenant, id), files) in &dirs {
            if !files.iter().any(|p| p.filename() == Some(META_FILE)) {
                tracing::warn!(tenant, block = id, "removing incomplete block");
                self.delete_files(files).await;
                continue;
            }
            let bytes = self
                .object_store
                .get(&BlockMeta::dir(tenant, id).join(META_FILE))
                .await?
                .bytes()
                .await?;
            let meta: BlockMeta = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{tenant}/{id}/meta.json: {e}")))?;
            metas.push(meta);
        }
        let superseded = catalog::superseded(
            metas.iter().map(|m| (m.tenant.as_str(), m.compacted_from.as_slice())),
        );
        let mut catalog = Vec::new();
        for meta in metas {
            let key = (meta.tenant.clone(), meta.id.clone());
            if superseded.contains(&key) {
                tracing::info!(
                    tenant = meta.tenant,
                    block = meta.id,
                    "removing compacted-away block"
                );
                if let Some(files) = dirs.get(&key) {
                    self.delete_files(files).await;
                }
                continue;
            }
            let bloom_bytes = self.object_store.get(&meta.file(BLOOM_FILE)).await?.bytes().await?;
            let bloom = Bloom::from_bytes(&bloom_bytes)
                .ok_or_else(|| StoreError::Corrupt(format!("{}/{} bloom", meta.tenant, meta.id)))?;
            catalog.push((meta.tenant.clone(), Arc::new(Block { meta, bloom })));
        }
        self.catalog.replace(catalog);
        self.update_metrics();
        Ok(())
    }

    async fn delete_files(&self, files: &[Path]) {
        for f in files {
            if let Err(e) = self.object_store.delete(f).await {
                tracing::warn!(path = %f, error = %e, "delete failed");
            }
        }
    }

    fn update_metrics(&self) {
        let all = self.catalog.all();
        let bytes: u64 = all.iter().map(|b| b.meta.bytes()).sum();
        self.metrics.blocks.set(all.len() as i64);
        self.metrics.block_bytes.set(bytes as i64);
    }

    pub fn dedicated(&self) -> &Dedicated {
        &self.dedicated
    }

    pub fn tenants(&self) -> Vec<String> {
        self.catalog.tenants()
    }

    pub fn blocks(&self, tenant: &str) -> Vec<Arc<Block>> {
        self.catalog.blocks(tenant)
    }

    /// Runs `f` on the tenant's blocks while no flush can publish a block or release head
    /// data, so a query that also snapshots the head inside `f` sees every span exactly once.
    pub fn view<R>(&self, tenant: &str, f: impl FnOnce(&[Arc<Block>]) -> R) -> R {
        self.catalog.view(tenant, f)
    }

    /// Per tenant, the WAL sequence through which its records are in blocks.
    pub fn watermarks(&self) -> HashMap<String, u64> {
        self.catalog.watermarks()
    }

    pub fn tag_keys(&self, tenant: &str) -> TagKeys {
        let mut tags = TagKeys::default();
        for b in self.blocks(tenant) {
            tags.extend(&b.meta.tags);
        }
        tags
    }

    /// Dedicated-column layout covering the configuration and every block of `blocks`.
    pub fn layout(&self, blocks: &[Arc<Block>]) -> Dedicated {
        blocks.iter().fold(self.dedicated.clone(), |acc, b| acc.union(&b.meta.dedicated))
    }

    /// Writes a frozen head part as a block and publishes it; `on_publish` (releasing the
    /// frozen head) runs under the same catalog lock, atomically for queries using [`view`].
    ///
    /// [`view`]: Store::view
    pub async fn flush(
        &self,
        frozen: &Frozen,
        on_publish: impl FnOnce(),
    ) -> Result<Arc<Block>, StoreError> {
        let timer = std::time::Instant::now();
        let (batches, dedicated) = (frozen.batches.clone(), self.dedicated.clone());
        let prepared = blocking(move || block::prepare_block(&batches, &dedicated)).await?;
        let (meta, bloom) = block::commit_block(
            &self.object_store,
            NewBlock {
                tenant: &frozen.tenant,
                batches: &[],
                dedicated: &self.dedicated,
                wal_seq: frozen.max_seq,
                tags: frozen.tags.clone(),
                compacted_from: Vec::new(),
            },
            prepared,
        )
        .await?;
        let block = Arc::new(Block { meta, bloom });
        self.catalog.publish(&frozen.tenant, block.clone(), on_publish);
        self.metrics.flush_seconds.observe(timer.elapsed().as_secs_f64());
        self.metrics.flushes.inc();
        self.update_metrics();
        tracing::info!(
            tenant = frozen.tenant,
            block = block.meta.id,
            spans = block.meta.spans,
            bytes = block.meta.bytes(),
            "flushed head to block"
        );
        Ok(block)
    }

    /// Merges small blocks of one tenant into blocks of up to `target_spans`. A group is merged
    /// only once it adds up to half the target (or its oldest block is older than
    /// `COMPACT_AFTER`), so each span is rewritten about once instead of at every few flushes.
    /// Returns how many blocks were merged away.
    pub async fn compact(&self, target_spans: usize) -> Result<usize, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut merged = 0;
        for tenant in self.tenants() {
            let small: Vec<Arc<Block>> = self
                .blocks(&tenant)
                .into_iter()
                .filter(|b| (b.meta.spans as usize) < target_spans / 2)
                .collect();
            let mut group: Vec<Arc<Block>> = Vec::new();
            let mut spans = 0usize;
            for b in small {
                let full =
                    spans + b.meta.spans as usize > target_spans || group.len() >= MAX_MERGE_INPUTS;
                if full && group.len() >= 2 {
                    merged += self.merge(&tenant, std::mem::take(&mut group)).await?;
                    spans = 0;
                }
                spans += b.meta.spans as usize;
                group.push(b);
            }
            let oldest = group.iter().map(|b| b.meta.created_unix).min().unwrap_or(now);
            let old_enough = now - oldest >= COMPACT_AFTER.as_secs() as i64;
            if group.len() >= 2 && (spans >= target_spans / 2 || old_enough) {
                merged += self.merge(&tenant, group).await?;
            }
        }
        Ok(merged)
    }

    async fn merge(&self, tenant: &str, inputs: Vec<Arc<Block>>) -> Result<usize, StoreError> {
        let mut tags = TagKeys::default();
        for b in &inputs {
            tags.extend(&b.meta.tags);
        }
        let layout = self.layout(&inputs);
        let mut files = Vec::with_capacity(inputs.len());
        for b in &inputs {
            files.push(self.object_store.get(&b.meta.file(SPANS_FILE)).await?.bytes().await?);
        }
        let l = layout.clone();
        let prepared = blocking(move || {
            let mut writer = block::BlockWriter::new(&l)?;
            compact::merge_into(files, schema::span_schema(&l), &mut writer, compact::CHUNK_ROWS)?;
            writer.finish()
        })
        .await?;
        let (meta, bloom) = block::commit_block(
            &self.object_store,
            NewBlock {
                tenant,
                batches: &[],
                dedicated: &layout,
                wal_seq: inputs.iter().map(|b| b.meta.wal_seq).max().unwrap_or(0),
                tags,
                compacted_from: inputs.iter().map(|b| b.meta.id.clone()).collect(),
            },
            prepared,
        )
        .await?;
        self.catalog.swap(tenant, &inputs, Arc::new(Block { meta, bloom }));
        for b in &inputs {
            self.delete_block(&b.meta).await;
        }
        self.metrics.compactions.inc();
        self.update_metrics();
        tracing::info!(tenant, inputs = inputs.len(), "compacted blocks");
        Ok(inputs.len())
    }

    async fn delete_block(&self, meta: &BlockMeta) {
        // Meta first: a half-deleted block is then an incomplete one, cleaned up on start.
        let mut files = vec![meta.file(META_FILE)];
        for f in [SPANS_FILE, block::TRACES_FILE, BLOOM_FILE] {
            files.push(meta.file(f));
        }
        self.delete_files(&files).await;
    }

    /// Deletes blocks whose newest span ended before `now - retention`.
    pub async fn apply_retention(&self, retention: Duration) -> Result<usize, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let cutoff = now.saturating_sub(retention.as_nanos() as i64);
        let expired = self.catalog.expire(cutoff);
        for b in &expired {
            self.delete_block(&b.meta).await;
            self.metrics.blocks_deleted_retention.inc();
        }
        if !expired.is_empty() {
            self.update_metrics();
            tracing::info!(blocks = expired.len(), "retention deleted blocks");
        }
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_open_through_the_same_code_path() {
        // Building the client needs no server: requests are made lazily.
        assert!(open_object_store("s3://bucket/some/prefix").is_ok());
        assert!(open_object_store("s3://bucket").is_ok());
        assert!(matches!(open_object_store("gs://bucket"), Err(StoreError::Url(_))));
    }

    #[test]
    fn file_urls_create_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        let url = format!("file://{}", path.display());
        assert!(open_object_store(&url).is_ok());
        assert!(path.is_dir());
    }
}
