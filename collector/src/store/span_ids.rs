//! The (trace id, span id) of every span in a block, read from the two id columns only: what
//! ingest-time dedupe is seeded with at start-up, so a retry arriving after a restart is still
//! recognised when its first copy was already flushed.

use arrow::array::AsArray;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::block::SPANS_FILE;
use super::{Block, Store, StoreError, blocking};
use crate::spanrows::col;

impl Store {
    pub async fn span_ids(&self, block: &Block) -> Result<Vec<([u8; 16], [u8; 8])>, StoreError> {
        let bytes = self.dir.get(&block.meta.file(SPANS_FILE)).await?;
        blocking(move || {
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
            let mask =
                ProjectionMask::columns(builder.parquet_schema(), [col::TRACE_ID, col::SPAN_ID]);
            let mut out = Vec::new();
            for batch in builder.with_projection(mask).build()? {
                let batch = batch?;
                let (Some(t), Some(s)) =
                    (batch.column_by_name(col::TRACE_ID), batch.column_by_name(col::SPAN_ID))
                else {
                    return Err(StoreError::Corrupt("block without id columns".into()));
                };
                let (t, s) = (t.as_fixed_size_binary(), s.as_fixed_size_binary());
                for r in 0..batch.num_rows() {
                    if let (Ok(t), Ok(s)) = (t.value(r).try_into(), s.value(r).try_into()) {
                        out.push((t, s));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}
