//! A block's search index, `search.parquet`: one row per span with only the columns most
//! searches filter on (service, name, start, duration, status, kind) and the span's trace as
//! an ordinal into `traces.parquet`, sorted by (service, name, start) within each row group.
//! Spans themselves are sorted by trace id (trace by id reads one range), so page statistics
//! of `spans.parquet` cannot skip anything for a service or a time window; here they skip all
//! but the pages of the service and window asked for. See `store/DESIGN.md`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::StoreError;
use crate::spanrows::{col, dict_utf8};

/// Trace ordinal: the row of the span's trace in the block's `traces.parquet`.
pub const TRACE: &str = "trace";

/// Span columns the index holds, in index order after the sort keys.
pub const SPAN_COLUMNS: [&str; 6] =
    [col::SERVICE, col::NAME, col::START, col::DURATION, col::STATUS_CODE, col::KIND];

/// Rows sorted together: one row group. Bounds the memory of a block being written (about
/// 30 bytes a row) while keeping each service's rows of a group in a few pages.
const GROUP_ROWS: usize = 256 * 1024;

/// Schema of `search.parquet`: the span schema's types for the span columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SERVICE, dict_utf8(), true),
        Field::new(col::NAME, dict_utf8(), false),
        Field::new(col::START, DataType::Int64, false),
        Field::new(col::DURATION, DataType::Int64, false),
        Field::new(col::STATUS_CODE, DataType::Int8, false),
        Field::new(col::KIND, DataType::Int8, false),
        Field::new(TRACE, DataType::UInt32, false),
    ]))
}

fn props() -> WriterProperties {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default());
    let mut b = WriterProperties::builder()
        .set_compression(zstd)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(GROUP_ROWS))
        .set_data_page_row_count_limit(8 * 1024);
    // Starts ascend within a (service, name) run: deltas are small. Durations and ordinals
    // are random in their low bytes.
    b = b
        .set_column_dictionary_enabled(ColumnPath::from(col::START), false)
        .set_column_encoding(ColumnPath::from(col::START), Encoding::DELTA_BINARY_PACKED);
    for c in [col::DURATION, TRACE] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::BYTE_STREAM_SPLIT);
    }
    b.build()
}

/// The index rows of `sorted` (spans sorted by trace, whole traces), whose first trace is
/// trace number `first_trace` of the block.
pub fn rows(sorted: &RecordBatch, first_trace: u32) -> Result<RecordBatch, StoreError> {
    let get = |name: &str| {
        sorted
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("missing column {name}")))
    };
    let tid = get(col::TRACE_ID)?;
    let tid = tid.as_fixed_size_binary();
    let mut ordinals = Vec::with_capacity(tid.len());
    let mut current = first_trace;
    for i in 0..tid.len() {
        if i > 0 && tid.value(i) != tid.value(i - 1) {
            current = current
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("more than 2^32 traces in one block".into()))?;
        }
        ordinals.push(current);
    }
    let mut cols: Vec<ArrayRef> =
        SPAN_COLUMNS.iter().map(|c| get(c)).collect::<Result<Vec<_>, _>>()?;
    cols.push(Arc::new(UInt32Array::from(ordinals)));
    Ok(RecordBatch::try_new(schema(), cols)?)
}

/// Writes index rows, sorting each row group by (service, name, start).
pub struct SearchWriter {
    writer: ArrowWriter<Vec<u8>>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl SearchWriter {
    pub fn new() -> Result<Self, StoreError> {
        let writer = ArrowWriter::try_new(Vec::new(), schema(), Some(props()))?;
        Ok(SearchWriter { writer, pending: Vec::new(), pending_rows: 0 })
    }

    pub fn push(&mut self, rows: RecordBatch) -> Result<(), StoreError> {
        self.pending_rows += rows.num_rows();
        self.pending.push(rows);
        if self.pending_rows >= GROUP_ROWS {
            self.write_group()?;
        }
        Ok(())
    }

    fn write_group(&mut self) -> Result<(), StoreError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let all = concat_batches(&schema(), &self.pending)?;
        self.pending.clear();
        self.pending_rows = 0;
        let keys: Vec<SortColumn> = [col::SERVICE, col::NAME, col::START]
            .iter()
            .filter_map(|c| all.column_by_name(c))
            .map(|values| SortColumn { values: values.clone(), options: None })
            .collect();
        let order = lexsort_to_indices(&keys, None)?;
        self.writer.write(&take_record_batch(&all, &order)?)?;
        self.writer.flush()?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<Bytes, StoreError> {
        self.write_group()?;
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, FixedSizeBinaryArray, Int8Array, Int64Array};
    use arrow::datatypes::{Int32Type, UInt32Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn spans(traces: &[u8], services: &[&str], starts: &[i64]) -> RecordBatch {
        let n = traces.len();
        let ids: Vec<[u8; 16]> = traces.iter().map(|t| [*t; 16]).collect();
        let svc: DictionaryArray<Int32Type> = services.iter().copied().collect();
        let name: DictionaryArray<Int32Type> = std::iter::repeat_n("op", n).collect();
        // The span table's trace id, then the index's span columns.
        let index = schema();
        let mut fields =
            vec![Arc::new(Field::new(col::TRACE_ID, DataType::FixedSizeBinary(16), false))];
        fields.extend(index.fields().iter().take(SPAN_COLUMNS.len()).cloned());
        let schema = Arc::new(Schema::new(fields));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(FixedSizeBinaryArray::try_from_iter(ids.into_iter()).unwrap()),
                Arc::new(svc),
                Arc::new(name),
                Arc::new(Int64Array::from(starts.to_vec())),
                Arc::new(Int64Array::from(vec![5; n])),
                Arc::new(Int8Array::from(vec![0; n])),
                Arc::new(Int8Array::from(vec![1; n])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn trace_ordinals_count_traces_across_chunks_and_rows_sort_by_service_then_start() {
        let a = spans(&[1, 1, 2], &["b", "a", "b"], &[30, 20, 10]);
        let b = spans(&[3, 3], &["a", "b"], &[5, 40]);
        let ra = rows(&a, 0).unwrap();
        let rb = rows(&b, 2).unwrap();
        let ord = |r: &RecordBatch| r.column(6).as_primitive::<UInt32Type>().values().to_vec();
        assert_eq!(ord(&ra), vec![0, 0, 1]);
        assert_eq!(ord(&rb), vec![2, 2]);

        let mut w = SearchWriter::new().unwrap();
        w.push(ra).unwrap();
        w.push(rb).unwrap();
        let bytes = w.finish().unwrap();
        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let all = concat_batches(&schema(), &read).unwrap();
        assert_eq!(all.schema(), schema());
        let svc = arrow::compute::cast(all.column(0), &DataType::Utf8).unwrap();
        let svc: Vec<&str> = svc.as_string::<i32>().iter().flatten().collect();
        let start = all.column(2).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        assert_eq!(svc, vec!["a", "a", "b", "b", "b"]);
        assert_eq!(start, vec![5, 20, 10, 30, 40]);
        assert_eq!(ord(&all), vec![2, 0, 1, 0, 2]);
    }
}
