//! Decoded Parquet footers and page indexes of block files, kept across queries. Block files
//! never change once published (a new block gets a new id), so a footer read once stays right
//! for as long as the file exists; reading and decoding it again for every query was a fixed
//! cost of each block a search touched. The cache is bounded by the decoded size and evicts
//! the least recently used; an entry of a block that compaction or retention deleted just
//! ages out.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicate, ArrowReaderMetadata, ArrowReaderOptions, RowFilter,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::async_reader::{ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::store::StoreError;

/// Default budget: footers of a few thousand blocks (a 1M-span block's index footer with its
/// page index decodes to ~100 KiB).
pub const DEFAULT_BUDGET: usize = 64 << 20;

pub struct Footers {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(Path, u64), Entry>,
    bytes: usize,
    tick: u64,
}

struct Entry {
    meta: ArrowReaderMetadata,
    bytes: usize,
    used: u64,
}

impl Footers {
    pub fn new(budget: usize) -> Self {
        Footers { budget, inner: Mutex::new(Inner::default()) }
    }

    /// The footer (with page index, when the file has one) of the file at `path`, whose size
    /// the block's meta recorded.
    pub async fn get(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        size: u64,
    ) -> Result<ArrowReaderMetadata, StoreError> {
        let key = (path.clone(), size);
        {
            let mut inner = self.inner.lock();
            inner.tick = inner.tick.wrapping_add(1);
            let tick = inner.tick;
            if let Some(e) = inner.entries.get_mut(&key) {
                e.used = tick;
                return Ok(e.meta.clone());
            }
        }
        let mut reader = FileReader::new(store.clone(), path.clone(), size);
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load_async(&mut reader, options).await?;
        let bytes = meta.metadata().memory_size();
        let mut inner = self.inner.lock();
        if bytes <= self.budget {
            while inner.bytes.saturating_add(bytes) > self.budget {
                let Some(oldest) =
                    inner.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(e) = inner.entries.remove(&oldest) {
                    inner.bytes = inner.bytes.saturating_sub(e.bytes);
                }
            }
            let used = inner.tick;
            if let Some(old) = inner.entries.insert(key, Entry { meta: meta.clone(), bytes, used })
            {
                inner.bytes = inner.bytes.saturating_sub(old.bytes);
            }
            inner.bytes = inner.bytes.saturating_add(bytes);
        }
        Ok(meta)
    }

    /// Decoded bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

/// What reading block files without a plan needs, cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct BlockFiles {
    pub store: Arc<dyn ObjectStore>,
    pub footers: Arc<Footers>,
}

impl BlockFiles {
    pub async fn meta(&self, path: &Path, size: u64) -> Result<ArrowReaderMetadata, StoreError> {
        self.footers.get(&self.store, path, size).await
    }

    pub fn reader(&self, path: Path, size: u64) -> FileReader {
        FileReader::new(self.store.clone(), path, size)
    }

    /// The `selected` rows of a file, as batches of the `projection` columns.
    pub fn selected(
        &self,
        (path, size): (Path, u64),
        meta: ArrowReaderMetadata,
        projection: ProjectionMask,
        selected: super::page_prune::Selected,
    ) -> ParquetRecordBatchStreamBuilder<FileReader> {
        ParquetRecordBatchStreamBuilder::new_with_metadata(self.reader(path, size), meta)
            .with_projection(projection)
            .with_row_groups(selected.row_groups)
            .with_row_selection(selected.selection)
            .with_batch_size(8192)
    }

    /// The rows of the `selected` pages of a file that pass `filter`, as batches of the
    /// `projection` columns.
    pub fn filtered(
        &self,
        file: (Path, u64),
        meta: ArrowReaderMetadata,
        projection: ProjectionMask,
        selected: super::page_prune::Selected,
        filter: Box<dyn ArrowPredicate>,
    ) -> Result<ParquetRecordBatchStream<FileReader>, StoreError> {
        Ok(self
            .selected(file, meta, projection, selected)
            .with_row_filter(RowFilter::new(vec![filter]))
            .build()?)
    }
}

/// Runs `work` as its own task, so that blocks read at once decode on different threads.
pub async fn spawned<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, super::QueryError>> + Send + 'static,
) -> Result<T, super::QueryError> {
    tokio::spawn(work)
        .await
        .map_err(|e| super::QueryError::Internal(format!("block read task failed: {e}")))?
}

/// A block file of known size, read in ranges (the size comes from the block's meta, so the
/// footer is read without a HEAD request).
pub struct FileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl FileReader {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        FileReader { store, path, size }
    }
}

fn parquet_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for FileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(parquet_err) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(parquet_err) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use parquet::arrow::ArrowWriter;

    async fn put_file(store: &Arc<dyn ObjectStore>, name: &str) -> (Path, u64) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
                .unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), schema, None).unwrap();
        w.write(&batch).unwrap();
        let bytes = w.into_inner().unwrap();
        let path = Path::from(name);
        let size = bytes.len() as u64;
        store.put(&path, PutPayload::from(bytes)).await.unwrap();
        (path, size)
    }

    #[tokio::test]
    async fn a_cached_footer_is_served_without_reading_the_file_again() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (path, size) = put_file(&store, "a.parquet").await;
        let footers = Footers::new(DEFAULT_BUDGET);
        let first = footers.get(&store, &path, size).await.unwrap();
        store.delete(&path).await.unwrap();
        let again = footers.get(&store, &path, size).await.unwrap();
        assert_eq!(first.metadata().file_metadata().num_rows(), 3);
        assert!(Arc::ptr_eq(first.metadata(), again.metadata()));
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_budget_evicting_the_least_recently_used() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (a, sa) = put_file(&store, "a.parquet").await;
        let (b, sb) = put_file(&store, "b.parquet").await;
        let (c, sc) = put_file(&store, "c.parquet").await;
        let one = Footers::new(usize::MAX).get(&store, &a, sa).await.unwrap();
        let each = one.metadata().memory_size();
        let footers = Footers::new(each * 2);
        footers.get(&store, &a, sa).await.unwrap();
        footers.get(&store, &b, sb).await.unwrap();
        footers.get(&store, &a, sa).await.unwrap();
        footers.get(&store, &c, sc).await.unwrap();
        assert!(footers.bytes() <= each * 2);
        // b was the least recently used: gone; a is still served from memory.
        store.delete(&a).await.unwrap();
        store.delete(&b).await.unwrap();
        assert!(footers.get(&store, &a, sa).await.is_ok());
        assert!(footers.get(&store, &b, sb).await.is_err());
    }
}
