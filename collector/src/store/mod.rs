//! Block storage on `object_store` (local disk or S3) and the in-memory block catalog with its
//! trace-id index. Flush, compaction and retention all end in an atomic catalog swap, so a
//! query sees either the old blocks or the new one, never both or neither.

pub mod block;
pub mod blocks;
pub mod bloom;
pub mod catalog;
pub mod compact;
pub mod durable;
pub mod faults;
pub mod metered;
pub mod namespace;
pub mod prefix;
pub mod search;
pub mod shared;
mod span_ids;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::error::ArrowError;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::spanrows::{DedicatedColumns, SealedRows, TagKeys};
use crate::telemetry::Telemetry;
use crate::wal::SeqRanges;
use block::{BLOOM_FILE, BlockMeta, META_FILE, NewBlock, SPANS_FILE};
use blocks::{BlockDir, BlockDirError, BlockMetaFile, CompactionPolicy};
use bloom::Bloom;
use catalog::{Catalog, CatalogEntry};

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
    /// The namespace directory the block lives in, from the storage root (`nodes/<node>`, or
    /// empty for blocks at the root).
    pub root: object_store::path::Path,
}

impl Block {
    /// File `name` of this block, from the storage root (what queries read through
    /// [`Store::object_store`]).
    pub fn file(&self, name: &str) -> object_store::path::Path {
        self.root.parts().chain(self.meta.file(name).parts()).collect()
    }
}

impl From<BlockDirError> for StoreError {
    fn from(e: BlockDirError) -> Self {
        match e {
            BlockDirError::ObjectStore(e) => StoreError::ObjectStore(e),
            meta @ BlockDirError::Meta { .. } => StoreError::Corrupt(meta.to_string()),
        }
    }
}

/// Files of a span block besides `meta.json`.
const DATA_FILES: &[&str] = &[SPANS_FILE, block::TRACES_FILE, block::SEARCH_FILE, BLOOM_FILE];

impl BlockMetaFile for BlockMeta {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn compacted_from(&self) -> &[String] {
        &self.compacted_from
    }
    fn recorded_size(&self, file: &str) -> Option<u64> {
        match file {
            SPANS_FILE => Some(self.spans_bytes),
            block::TRACES_FILE => Some(self.traces_bytes),
            block::SEARCH_FILE => self.search_bytes,
            _ => None,
        }
    }
    fn expects(&self, file: &str) -> bool {
        file != block::SEARCH_FILE || self.search_bytes.is_some()
    }
}

impl CatalogEntry for Block {
    fn tenant(&self) -> &str {
        &self.meta.tenant
    }
    fn id(&self) -> &str {
        &self.meta.id
    }
    fn min_time(&self) -> i64 {
        self.meta.min_time
    }
    fn max_time(&self) -> i64 {
        self.meta.max_time
    }
    fn wal_ranges(&self) -> SeqRanges {
        self.meta.covered()
    }
    fn rows(&self) -> u64 {
        self.meta.spans
    }
    fn created_unix(&self) -> i64 {
        self.meta.created_unix
    }
}

/// Opens the object store for a `file://` or `s3://` URL, rooted at the URL's path. Local
/// writes are fsynced before they return ([`durable`]), an S3 prefix is applied by
/// [`prefix::PrefixedStore`], and failed calls are counted in `metrics.storage_failures`.
pub fn open_object_store(
    url: &str,
    metrics: &Telemetry,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let parsed = url::Url::parse(url).map_err(|e| StoreError::Url(format!("{url}: {e}")))?;
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|()| StoreError::Url(url.to_string()))?;
            std::fs::create_dir_all(&path)?;
            Arc::new(durable::DurableStore::new(path)?)
        }
        "s3" => {
            let bucket = parsed.host_str().ok_or_else(|| StoreError::Url(url.to_string()))?;
            // AWS_* variables give credentials, region and (for S3-compatible servers)
            // AWS_ENDPOINT_URL / AWS_ALLOW_HTTP.
            let s3 =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(prefix::PrefixedStore::new(Arc::new(s3), prefix))
            }
        }
        other => return Err(StoreError::Url(format!("unsupported scheme {other}"))),
    };
    Ok(Arc::new(metered::MeteredStore::new(store, metrics.storage_failures.clone())))
}

pub struct Store {
    /// The storage root: every namespace's blocks are read through it ([`Block::file`]).
    pub object_store: Arc<dyn ObjectStore>,
    /// This replica's namespace: what it writes, compacts and cleans up.
    own: Arc<dyn ObjectStore>,
    /// `own`'s directory from the storage root.
    root: object_store::path::Path,
    /// This replica's node id, when it has a namespace of its own.
    node: Option<namespace::NodeId>,
    /// WAL sequences held by blocks at the storage root, written by this node before it had a
    /// namespace (an upgrade): replay must skip them as it skips its own blocks'.
    root_covered: HashMap<String, SeqRanges>,
    dir: BlockDir,
    dedicated: DedicatedColumns,
    catalog: Catalog<Block>,
    metrics: Arc<Telemetry>,
}

impl Store {
    /// Opens storage and loads the catalog. Leftovers of interrupted writes (block directories
    /// without meta) and inputs of committed compactions are deleted.
    /// Blocks live at the root of `object_store` (one replica alone; see [`Store::open_in`]).
    pub async fn open(
        object_store: Arc<dyn ObjectStore>,
        dedicated: DedicatedColumns,
        metrics: Arc<Telemetry>,
    ) -> Result<Store, StoreError> {
        Self::open_in(object_store, None, dedicated, metrics).await
    }

    /// Opens this replica's namespace `node` of the shared storage root (`nodes/<node>/`;
    /// `None`: the root itself). The catalog holds this namespace's blocks only; other
    /// namespaces are [`shared::SharedBlocks`].
    pub async fn open_in(
        object_store: Arc<dyn ObjectStore>,
        node: Option<&namespace::NodeId>,
        dedicated: DedicatedColumns,
        metrics: Arc<Telemetry>,
    ) -> Result<Store, StoreError> {
        let root = node.map(namespace::NodeId::dir).unwrap_or_default();
        let own = namespace::within(&object_store, &root);
        let quarantined = metrics.blocks_quarantined.with_label_values(&["spans"]);
        let dir = BlockDir::new(own.clone(), None, META_FILE, DATA_FILES, "block", quarantined);
        let root_covered = match node {
            Some(_) => Self::root_covered(&object_store, &metrics).await?,
            None => HashMap::new(),
        };
        let store = Store {
            object_store,
            own,
            root,
            node: node.cloned(),
            root_covered,
            dir,
            dedicated,
            catalog: Catalog::default(),
            metrics,
        };
        store.load().await?;
        Ok(store)
    }

    /// The WAL sequences of the blocks at the storage root, per tenant (nothing to read unless
    /// the root holds tenant directories).
    async fn root_covered(
        root: &Arc<dyn ObjectStore>,
        metrics: &Telemetry,
    ) -> Result<HashMap<String, SeqRanges>, StoreError> {
        let mut out: HashMap<String, SeqRanges> = HashMap::new();
        if !namespace::root_has_blocks(root).await? {
            return Ok(out);
        }
        let quarantined = metrics.blocks_quarantined.with_label_values(&["spans"]);
        let dir = BlockDir::new(root.clone(), None, META_FILE, DATA_FILES, "block", quarantined);
        for meta in dir.scan_committed::<BlockMeta>(&HashMap::new()).await?.new {
            out.entry(meta.tenant.clone()).or_default().extend(&meta.covered());
        }
        Ok(out)
    }

    async fn load(&self) -> Result<(), StoreError> {
        let mut catalog = Vec::new();
        for meta in self.dir.scan::<BlockMeta>().await? {
            let bloom = match self.dir.get(&meta.file(BLOOM_FILE)).await {
                Ok(bytes) => Bloom::from_bytes(&bytes).ok_or(bytes.len()),
                Err(object_store::Error::NotFound { .. }) => Err(0),
                Err(e) => return Err(e.into()),
            };
            let damaged = match bloom {
                Err(len) => Some(format!("{BLOOM_FILE} ({len} bytes) does not decode")),
                Ok(bloom) => match self.parquet_damage(&meta).await? {
                    None => {
                        let root = self.root.clone();
                        catalog.push((meta.tenant.clone(), Arc::new(Block { meta, bloom, root })));
                        continue;
                    }
                    some => some,
                },
            };
            if let Some(reason) = damaged {
                self.dir.quarantine(&meta.tenant, &meta.id, &reason).await;
            }
        }
        self.catalog.replace(catalog);
        self.update_metrics();
        Ok(())
    }

    /// Checks the Parquet framing of the block's data files: the magic at both ends and a
    /// footer length that fits in the file (two small reads each). Garbage that happens to have
    /// the right size would otherwise fail every query and compaction touching it, and a footer
    /// length past the start of the file makes the Parquet reader overflow. Returns what is
    /// wrong, if anything.
    async fn parquet_damage(&self, meta: &BlockMeta) -> Result<Option<String>, StoreError> {
        const MAGIC: &[u8] = b"PAR1";
        let search = meta.search_bytes.map(|len| (block::SEARCH_FILE, len));
        let files = [(SPANS_FILE, meta.spans_bytes), (block::TRACES_FILE, meta.traces_bytes)];
        for (file, len) in files.into_iter().chain(search) {
            let Some(tail) = len.checked_sub(8).filter(|&t| t >= 4) else {
                return Ok(Some(format!("{file} ({len} bytes) is too short for Parquet")));
            };
            let path = meta.file(file);
            let head = self.own.get_range(&path, 0..4).await;
            let end = self.own.get_range(&path, tail..len).await;
            let (head, end) = match (head, end) {
                (Ok(h), Ok(e)) => (h, e),
                (Err(object_store::Error::NotFound { .. }), _)
                | (_, Err(object_store::Error::NotFound { .. })) => {
                    return Ok(Some(format!("{file} is missing")));
                }
                (Err(e), _) | (_, Err(e)) => return Err(e.into()),
            };
            let footer = end.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok());
            let footer_len = footer.map_or(u64::MAX, |b| u64::from(u32::from_le_bytes(b)));
            if head.as_ref() != MAGIC || end.get(4..) != Some(MAGIC) {
                return Ok(Some(format!("{file} is not a Parquet file")));
            }
            if footer_len > tail.saturating_sub(4) {
                return Ok(Some(format!("{file}: footer of {footer_len} bytes in {len}")));
            }
        }
        Ok(None)
    }

    fn update_metrics(&self) {
        let all = self.catalog.all();
        let bytes: u64 = all.iter().map(|b| b.meta.bytes()).sum();
        self.metrics.blocks.set(all.len() as i64);
        self.metrics.block_bytes.set(bytes as i64);
    }

    pub fn dedicated(&self) -> &DedicatedColumns {
        &self.dedicated
    }

    /// This replica's node id, when its blocks live in a namespace of their own.
    pub fn node(&self) -> Option<&namespace::NodeId> {
        self.node.as_ref()
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

    /// Per tenant, the WAL sequences whose records are in blocks (what replay skips): this
    /// namespace's blocks and those this node wrote at the root before it had one.
    pub fn covered(&self) -> HashMap<String, SeqRanges> {
        let mut covered = self.catalog.covered();
        for (tenant, r) in &self.root_covered {
            covered.entry(tenant.clone()).or_default().extend(r);
        }
        covered
    }

    pub fn tag_keys(&self, tenant: &str) -> TagKeys {
        let mut tags = TagKeys::default();
        for b in self.blocks(tenant) {
            tags.extend(&b.meta.tags);
        }
        tags
    }

    /// Dedicated columns covering the configuration and every block of `blocks`.
    pub fn dedicated_columns(&self, blocks: &[Arc<Block>]) -> DedicatedColumns {
        blocks.iter().fold(self.dedicated.clone(), |acc, b| acc.union(&b.meta.dedicated))
    }

    /// Writes a frozen head part as a block and publishes it; `on_publish` (releasing the
    /// frozen head) runs under the same catalog lock, atomically for queries using [`view`].
    ///
    /// [`view`]: Store::view
    pub async fn flush(
        &self,
        frozen: &SealedRows,
        on_publish: impl FnOnce(),
    ) -> Result<Arc<Block>, StoreError> {
        let timer = std::time::Instant::now();
        let (batches, dedicated) = (frozen.batches.clone(), self.dedicated.clone());
        let prepared = blocking(move || block::prepare_block(&batches, &dedicated)).await?;
        let (meta, bloom) = block::commit_block(
            &self.own,
            NewBlock {
                tenant: &frozen.tenant,
                batches: &[],
                dedicated: &self.dedicated,
                wal_ranges: SeqRanges::range(frozen.min_seq, frozen.max_seq),
                tags: frozen.tags.clone(),
                compacted_from: Vec::new(),
            },
            prepared,
        )
        .await?;
        let block = Arc::new(Block { meta, bloom, root: self.root.clone() });
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

    /// Merges small blocks of one tenant into blocks of up to `target_spans`, at most
    /// [`MAX_MERGE_INPUTS`] at a time. A group is merged only once it adds up to half the target
    /// (or its oldest block is older than `COMPACT_AFTER`), so each span is rewritten about once
    /// instead of at every few flushes (see [`blocks::compaction_plan`]). Returns how many blocks
    /// were merged away. A group that fails to merge keeps its inputs served and does not stop
    /// the other groups; the first failure is returned after all were tried.
    pub async fn compact(&self, target_spans: usize) -> Result<usize, StoreError> {
        let policy = CompactionPolicy {
            target_rows: target_spans as u64,
            max_inputs: MAX_MERGE_INPUTS,
            after: COMPACT_AFTER,
        };
        // Inputs of earlier merges that queries were still reading.
        self.dir.delete_unread().await;
        let mut merged = 0;
        let mut failed = None;
        for (tenant, group) in blocks::compaction_plan(&self.catalog, &policy, block_now_unix()) {
            match self.merge(&tenant, group).await {
                Ok(n) => merged += n,
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "compaction of a block group failed");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(merged),
        }
    }

    async fn merge(&self, tenant: &str, inputs: Vec<Arc<Block>>) -> Result<usize, StoreError> {
        let mut tags = TagKeys::default();
        for b in &inputs {
            tags.extend(&b.meta.tags);
        }
        let dedicated = self.dedicated_columns(&inputs);
        let mut files = Vec::with_capacity(inputs.len());
        for b in &inputs {
            files.push(self.dir.get(&b.meta.file(SPANS_FILE)).await?);
        }
        let l = dedicated.clone();
        let (prepared, duplicates) = blocking(move || {
            let mut writer = block::BlockWriter::new(&l)?;
            let duplicates = compact::merge_into(
                files,
                crate::spanrows::span_schema(&l),
                &mut writer,
                compact::CHUNK_ROWS,
            )?;
            Ok((writer.finish()?, duplicates))
        })
        .await?;
        let (meta, bloom) = block::commit_block(
            &self.own,
            NewBlock {
                tenant,
                batches: &[],
                dedicated: &dedicated,
                wal_ranges: covered_by(&inputs),
                tags,
                compacted_from: inputs.iter().map(|b| b.meta.id.clone()).collect(),
            },
            prepared,
        )
        .await?;
        self.catalog.swap(
            tenant,
            &inputs,
            Arc::new(Block { meta, bloom, root: self.root.clone() }),
        );
        let n = inputs.len();
        self.dir.retire(inputs).await;
        self.metrics.compactions.inc();
        self.update_metrics();
        tracing::info!(tenant, inputs = n, duplicates, "compacted blocks");
        Ok(n)
    }

    /// Deletes blocks whose newest span ended before `now - retention`.
    pub async fn apply_retention(&self, retention: Duration) -> Result<usize, StoreError> {
        let expired = self.dir.expire(&self.catalog, retention).await;
        if expired > 0 {
            self.metrics.blocks_deleted_retention.inc_by(expired as u64);
            self.update_metrics();
            tracing::info!(blocks = expired, "retention deleted blocks");
        }
        Ok(expired)
    }
}

/// The WAL sequences a merge of `blocks` holds.
fn covered_by<B: CatalogEntry>(blocks: &[Arc<B>]) -> SeqRanges {
    let mut r = SeqRanges::new();
    for b in blocks {
        r.extend(&b.wal_ranges());
    }
    r
}

/// Now, unix seconds (what `created_unix` in block metas counts in).
fn block_now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_open_through_the_same_code_path() {
        // Building the client needs no server: requests are made lazily.
        let m = Telemetry::new();
        assert!(open_object_store("s3://bucket/some/prefix", &m).is_ok());
        assert!(open_object_store("s3://bucket", &m).is_ok());
        assert!(matches!(open_object_store("gs://bucket", &m), Err(StoreError::Url(_))));
    }

    #[test]
    fn file_urls_create_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        let url = format!("file://{}", path.display());
        assert!(open_object_store(&url, &Telemetry::new()).is_ok());
        assert!(path.is_dir());
    }
}
