//! Immutable blocks: one tenant's spans sorted by (trace_id, start_time) in `spans.parquet`,
//! per-trace summaries in `traces.parquet`, a trace-id bloom filter and `meta.json`. The meta
//! file is written last: a block exists once its meta exists.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, Int64Builder, RecordBatch,
    StringBuilder, UInt32Builder,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Int8Type, Int64Type, Schema, SchemaRef};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::StoreError;
use super::bloom::Bloom;
use super::search;
use crate::spanrows::{DedicatedColumns, TagKeys, col, span_schema};
use crate::wal::SeqRanges;

/// `ranges`, or for metas written before ranges were recorded, `1..=wal_seq`.
pub fn legacy_covered(ranges: &SeqRanges, wal_seq: u64) -> SeqRanges {
    if ranges.is_empty() { SeqRanges::range(1, wal_seq) } else { ranges.clone() }
}

pub const META_FILE: &str = "meta.json";
pub const SPANS_FILE: &str = "spans.parquet";
pub const TRACES_FILE: &str = "traces.parquet";
pub const BLOOM_FILE: &str = "bloom.bin";
/// The block's search index (`search.rs`); blocks written before it have none.
pub const SEARCH_FILE: &str = "search.parquet";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlockMeta {
    pub format: u32,
    pub id: String,
    pub tenant: String,
    /// Earliest span start and latest span end, unix nanoseconds.
    pub min_time: i64,
    pub max_time: i64,
    pub spans: u64,
    pub traces: u64,
    pub spans_bytes: u64,
    pub traces_bytes: u64,
    /// Highest WAL sequence of this tenant in the block (what blocks written before
    /// `wal_ranges` existed recorded instead).
    pub wal_seq: u64,
    /// The tenant's WAL sequences whose records this block holds.
    #[serde(default)]
    pub wal_ranges: SeqRanges,
    #[serde(default)]
    pub compacted_from: Vec<String>,
    pub dedicated: DedicatedColumns,
    pub tags: TagKeys,
    pub created_unix: i64,
    /// Size of `search.parquet`; `None` for blocks written before search indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_bytes: Option<u64>,
}

impl BlockMeta {
    pub fn dir(tenant: &str, id: &str) -> Path {
        Path::from(format!("{tenant}/{id}"))
    }
    pub fn file(&self, name: &str) -> Path {
        Self::dir(&self.tenant, &self.id).join(name)
    }
    pub fn bytes(&self) -> u64 {
        self.spans_bytes + self.traces_bytes + self.search_bytes.unwrap_or(0)
    }
    /// WAL sequences this block holds; a block from before `wal_ranges` claims everything up
    /// to its `wal_seq`, which is what such blocks promised.
    pub fn covered(&self) -> SeqRanges {
        legacy_covered(&self.wal_ranges, self.wal_seq)
    }
}

/// Column names of `traces.parquet` (one row per trace of the block).
pub mod trace_col {
    pub const TRACE_ID: &str = "trace_id";
    pub const START: &str = "start_time";
    pub const END: &str = "end_time";
    pub const ROOT_SERVICE: &str = "root_service";
    pub const ROOT_NAME: &str = "root_name";
    pub const SPAN_COUNT: &str = "span_count";
    pub const ERROR_COUNT: &str = "error_count";
}

/// Schema of `traces.parquet`.
pub fn traces_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(trace_col::TRACE_ID, DataType::FixedSizeBinary(16), false),
        Field::new(trace_col::START, DataType::Int64, false),
        Field::new(trace_col::END, DataType::Int64, false),
        Field::new(trace_col::ROOT_SERVICE, DataType::Utf8, true),
        Field::new(trace_col::ROOT_NAME, DataType::Utf8, true),
        Field::new(trace_col::SPAN_COUNT, DataType::UInt32, false),
        Field::new(trace_col::ERROR_COUNT, DataType::UInt32, false),
    ]))
}

fn span_props() -> WriterProperties {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default());
    let mut b = WriterProperties::builder()
        .set_compression(zstd)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(64 * 1024))
        .set_data_page_row_count_limit(8 * 1024);
    // Random ids gain nothing from dictionaries. Times and durations are high-entropy in
    // their low bytes: byte-stream-split lets zstd compress the slowly changing high bytes
    // (measured smaller than delta encoding, whose bit width jumps at every trace boundary).
    for c in [col::SPAN_ID, col::PARENT_SPAN_ID] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    for c in [col::START, col::DURATION] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::BYTE_STREAM_SPLIT);
    }
    b.build()
}

/// Replaces parent ids found in the same trace within `sorted` by row offsets (a few bits
/// instead of 8 random bytes). Parents outside the block keep their id.
pub fn encode_parents(sorted: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let schema = sorted.schema();
    let (Some(pi), Some(oi)) =
        (schema.index_of(col::PARENT_SPAN_ID).ok(), schema.index_of(col::PARENT_OFFSET).ok())
    else {
        return Err(StoreError::Corrupt("span batch without parent columns".into()));
    };
    let tid = sorted.column(schema.index_of(col::TRACE_ID)?).as_fixed_size_binary();
    let sid = sorted.column(schema.index_of(col::SPAN_ID)?).as_fixed_size_binary();
    let parent = sorted.column(pi).as_fixed_size_binary();
    let n = sorted.num_rows();
    let mut ids = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut offsets = arrow::array::Int32Builder::with_capacity(n);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && tid.value(j) == tid.value(i) {
            j += 1;
        }
        let rows: std::collections::HashMap<&[u8], usize> =
            (i..j).map(|r| (sid.value(r), r)).collect();
        for r in i..j {
            if parent.is_null(r) {
                ids.append_null();
                offsets.append_null();
            } else if let Some(&p) = rows.get(parent.value(r)) {
                ids.append_null();
                offsets.append_value(r as i32 - p as i32);
            } else {
                ids.append_value(parent.value(r))?;
                offsets.append_null();
            }
        }
        i = j;
    }
    let mut cols = sorted.columns().to_vec();
    cols[pi] = Arc::new(ids.finish());
    cols[oi] = Arc::new(offsets.finish());
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// Inverse of [`encode_parents`] for rows read back in file order (a contiguous run of rows
/// holding every span of each trace present, as trace-by-id and compaction read them).
pub fn decode_parents(batches: &[RecordBatch]) -> Result<Option<RecordBatch>, StoreError> {
    let Some(first) = batches.first() else { return Ok(None) };
    let schema = first.schema();
    let all = concat_batches(&schema, batches)?;
    let (Some(pi), Some(oi)) =
        (schema.index_of(col::PARENT_SPAN_ID).ok(), schema.index_of(col::PARENT_OFFSET).ok())
    else {
        return Ok(Some(all));
    };
    let sid = all.column(schema.index_of(col::SPAN_ID)?).as_fixed_size_binary();
    let parent = all.column(pi).as_fixed_size_binary();
    let off = all.column(oi).as_primitive::<arrow::datatypes::Int32Type>();
    let n = all.num_rows();
    let mut ids = FixedSizeBinaryBuilder::with_capacity(n, 8);
    for r in 0..n {
        if parent.is_valid(r) {
            ids.append_value(parent.value(r))?;
        } else if off.is_valid(r) {
            let p = r as i64 - i64::from(off.value(r));
            if p < 0 || p >= n as i64 {
                return Err(StoreError::Corrupt(format!(
                    "parent offset {} out of range",
                    off.value(r)
                )));
            }
            ids.append_value(sid.value(p as usize))?;
        } else {
            ids.append_null();
        }
    }
    let mut cols = all.columns().to_vec();
    cols[pi] = Arc::new(ids.finish());
    cols[oi] = arrow::array::new_null_array(&DataType::Int32, n);
    Ok(Some(RecordBatch::try_new(schema, cols)?))
}

fn traces_props() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_dictionary_enabled(ColumnPath::from(trace_col::TRACE_ID), false);
    for c in [trace_col::START, trace_col::END] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::BYTE_STREAM_SPLIT);
    }
    b.build()
}

fn encode_parquet(batch: &RecordBatch, props: WriterProperties) -> Result<Bytes, StoreError> {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(Bytes::from(buf))
}

/// Adds null columns / drops unknown ones so `batch` has exactly `schema` (dedicated columns
/// differ between blocks written under different configurations).
pub fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, StoreError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let cols = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
            None => Ok(arrow::array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Sorts spans by trace then start time: trace-by-id reads one contiguous range and the
/// repeated trace ids compress to almost nothing. Only the two sort keys are concatenated;
/// rows are gathered straight from the input batches, so the data is copied once.
pub fn sort_spans(
    batches: &[RecordBatch],
    dedicated: &DedicatedColumns,
) -> Result<RecordBatch, StoreError> {
    let schema = span_schema(dedicated);
    let aligned = batches.iter().map(|b| align(b, &schema)).collect::<Result<Vec<_>, _>>()?;
    // (trace id as a big-endian u128 — same order as its bytes —, start, batch, row), sorted
    // with a plain key sort: much cheaper than arrow's dynamic lexsort comparator.
    let mut keys: Vec<(u128, i64, u32, u32)> =
        Vec::with_capacity(aligned.iter().map(|b| b.num_rows()).sum());
    for (bi, b) in aligned.iter().enumerate() {
        let (Some(tid), Some(start)) =
            (b.column_by_name(col::TRACE_ID), b.column_by_name(col::START))
        else {
            return Err(StoreError::Corrupt("span batch without trace_id/start_time".into()));
        };
        let tid = tid.as_fixed_size_binary();
        let start = start.as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            let id = u128::from_be_bytes(trace_key(tid, r));
            keys.push((id, start.value(r), bi as u32, r as u32));
        }
    }
    keys.sort_unstable();
    let picks: Vec<(usize, usize)> = keys.iter().map(|k| (k.2 as usize, k.3 as usize)).collect();
    if aligned.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = aligned.iter().map(|b| b.column(c).as_ref()).collect();
            arrow::compute::interleave(&arrays, &picks)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Per-trace summaries of a sorted span batch holding whole traces.
pub fn summarize(sorted: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let get = |name: &str| {
        sorted
            .column_by_name(name)
            .ok_or_else(|| StoreError::Corrupt(format!("missing column {name}")))
    };
    let tid = get(col::TRACE_ID)?.as_fixed_size_binary();
    let start = get(col::START)?.as_primitive::<Int64Type>();
    let dur = get(col::DURATION)?.as_primitive::<Int64Type>();
    let parent = get(col::PARENT_SPAN_ID)?;
    let status = get(col::STATUS_CODE)?.as_primitive::<Int8Type>();
    let names = arrow::compute::cast(get(col::NAME)?, &DataType::Utf8)?;
    let names = names.as_string::<i32>();
    let services = arrow::compute::cast(get(col::SERVICE)?, &DataType::Utf8)?;
    let services = services.as_string::<i32>();

    let mut out_tid = FixedSizeBinaryBuilder::new(16);
    let (mut o_start, mut o_end) = (Int64Builder::new(), Int64Builder::new());
    let (mut o_svc, mut o_name) = (StringBuilder::new(), StringBuilder::new());
    let (mut o_count, mut o_err) = (UInt32Builder::new(), UInt32Builder::new());
    let n = sorted.num_rows();
    let mut i = 0;
    while i < n {
        let id = tid.value(i);
        let (mut lo, mut hi, mut count, mut errs) = (i64::MAX, i64::MIN, 0u32, 0u32);
        let mut root: Option<usize> = None;
        let mut j = i;
        while j < n && tid.value(j) == id {
            let s = start.value(j);
            lo = lo.min(s);
            hi = hi.max(s).max(s.saturating_add(dur.value(j)));
            count += 1;
            if status.value(j) == 2 {
                errs += 1;
            }
            if parent.is_null(j) && root.is_none() {
                root = Some(j);
            }
            j += 1;
        }
        out_tid.append_value(id)?;
        o_start.append_value(lo);
        o_end.append_value(hi.max(lo));
        o_svc.append_option(root.and_then(|r| services.is_valid(r).then(|| services.value(r))));
        o_name.append_option(root.map(|r| names.value(r)));
        o_count.append_value(count);
        o_err.append_value(errs);
        i = j;
    }
    let batch = RecordBatch::try_new(
        traces_schema(),
        vec![
            Arc::new(out_tid.finish()),
            Arc::new(o_start.finish()),
            Arc::new(o_end.finish()),
            Arc::new(o_svc.finish()),
            Arc::new(o_name.finish()),
            Arc::new(o_count.finish()),
            Arc::new(o_err.finish()),
        ],
    )?;
    Ok(batch)
}

/// Bloom filter over the trace ids of summary batches.
fn bloom_of(traces: &RecordBatch) -> Bloom {
    let Some(ids) = traces.column_by_name(trace_col::TRACE_ID) else {
        return Bloom::with_capacity(0);
    };
    let ids = ids.as_fixed_size_binary();
    let mut bloom = Bloom::with_capacity(ids.len());
    for i in 0..ids.len() {
        bloom.insert(&trace_key(ids, i));
    }
    bloom
}

/// What a new block is made from.
pub struct NewBlock<'a> {
    pub tenant: &'a str,
    /// Rows for `write_block`; unused by `commit_block`.
    pub batches: &'a [RecordBatch],
    pub dedicated: &'a DedicatedColumns,
    /// WAL sequences of the tenant whose records the block holds.
    pub wal_ranges: SeqRanges,
    pub tags: TagKeys,
    pub compacted_from: Vec<String>,
}

/// A block's encoded span file and summaries, ready to upload. Producing it is the CPU-heavy
/// part (sort, encode, compress): callers run it on a blocking thread.
pub struct Prepared {
    spans_pq: Bytes,
    search_pq: Bytes,
    spans: u64,
    traces: RecordBatch,
}

/// Sorts and encodes head batches into a block's span file.
pub fn prepare_block(
    batches: &[RecordBatch],
    dedicated: &DedicatedColumns,
) -> Result<Prepared, StoreError> {
    let sorted = sort_spans(batches, dedicated)?;
    let traces = summarize(&sorted)?;
    let spans_pq = encode_parquet(&encode_parents(&sorted)?, span_props())?;
    let mut search = search::SearchWriter::new()?;
    search.push(search::rows(&sorted, 0)?)?;
    let search_pq = search.finish()?;
    Ok(Prepared { spans_pq, search_pq, spans: sorted.num_rows() as u64, traces })
}

/// Writes a block (data files first, meta last) and returns its meta and bloom filter.
pub async fn write_block(
    store: &Arc<dyn ObjectStore>,
    nb: NewBlock<'_>,
) -> Result<(BlockMeta, Bloom), StoreError> {
    let prepared = prepare_block(nb.batches, nb.dedicated)?;
    commit_block(store, nb, prepared).await
}

/// Streams whole-trace chunks, already sorted and in order, into a new block's span file.
pub struct BlockWriter {
    writer: ArrowWriter<Vec<u8>>,
    spans: u64,
    traces: Vec<RecordBatch>,
    trace_count: u32,
    search: search::SearchWriter,
}

impl BlockWriter {
    pub fn new(dedicated: &DedicatedColumns) -> Result<Self, StoreError> {
        let writer = ArrowWriter::try_new(
            Vec::with_capacity(1 << 20),
            span_schema(dedicated),
            Some(span_props()),
        )?;
        let search = search::SearchWriter::new()?;
        Ok(BlockWriter { writer, spans: 0, traces: Vec::new(), trace_count: 0, search })
    }

    /// `chunk` must hold whole traces, sorted, following the previous chunk's traces.
    pub fn write(&mut self, chunk: &RecordBatch) -> Result<(), StoreError> {
        let traces = summarize(chunk)?;
        self.search.push(search::rows(chunk, self.trace_count)?)?;
        self.trace_count = u32::try_from(traces.num_rows())
            .ok()
            .and_then(|n| self.trace_count.checked_add(n))
            .ok_or_else(|| StoreError::Corrupt("more than 2^32 traces in one block".into()))?;
        self.traces.push(traces);
        self.writer.write(&encode_parents(chunk)?)?;
        self.spans += chunk.num_rows() as u64;
        Ok(())
    }

    pub fn finish(self) -> Result<Prepared, StoreError> {
        let buf = self.writer.into_inner()?;
        let traces = concat_batches(&traces_schema(), &self.traces)?;
        let search_pq = self.search.finish()?;
        Ok(Prepared { spans_pq: Bytes::from(buf), search_pq, spans: self.spans, traces })
    }
}

/// Uploads a prepared block: data files first, `meta.json` last.
pub async fn commit_block(
    store: &Arc<dyn ObjectStore>,
    nb: NewBlock<'_>,
    prepared: Prepared,
) -> Result<(BlockMeta, Bloom), StoreError> {
    let Prepared { spans_pq, search_pq, spans, traces } = prepared;
    let (min_time, max_time) = time_range(&traces);
    let bloom = bloom_of(&traces);
    let traces_pq = encode_parquet(&traces, traces_props())?;
    let meta = BlockMeta {
        format: 1,
        id: ulid::Ulid::new().to_string(),
        tenant: nb.tenant.to_string(),
        min_time,
        max_time,
        spans,
        traces: traces.num_rows() as u64,
        spans_bytes: spans_pq.len() as u64,
        traces_bytes: traces_pq.len() as u64,
        wal_seq: nb.wal_ranges.max(),
        wal_ranges: nb.wal_ranges,
        compacted_from: nb.compacted_from,
        dedicated: nb.dedicated.clone(),
        tags: nb.tags,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        search_bytes: Some(search_pq.len() as u64),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let files = [
        (SPANS_FILE, spans_pq),
        (TRACES_FILE, traces_pq),
        (SEARCH_FILE, search_pq),
        (BLOOM_FILE, Bytes::from(bloom.to_bytes())),
        (META_FILE, Bytes::from(json)),
    ];
    for (name, bytes) in files {
        if let Err(e) = store.put(&meta.file(name), bytes.into()).await {
            abandon(store, &meta).await;
            return Err(e.into());
        }
    }
    Ok((meta, bloom))
}

/// Best-effort removal of a block whose upload failed, meta first: a put that timed out may
/// still have been stored, and the caller writes the same rows again under a new id. What
/// cannot be deleted now is an incomplete block, removed at the next start.
async fn abandon(store: &Arc<dyn ObjectStore>, meta: &BlockMeta) {
    for name in [META_FILE, SPANS_FILE, TRACES_FILE, SEARCH_FILE, BLOOM_FILE] {
        match store.delete(&meta.file(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(tenant = meta.tenant, block = meta.id, error = %e, "cannot remove a failed block upload");
                return;
            }
        }
    }
}

fn time_range(traces: &RecordBatch) -> (i64, i64) {
    let times = |name: &str| traces.column_by_name(name).map(|c| c.as_primitive::<Int64Type>());
    let lo = times(trace_col::START).and_then(arrow::compute::min).unwrap_or(0);
    let hi = times(trace_col::END).and_then(arrow::compute::max).unwrap_or(0);
    (lo, hi)
}

/// Extracts a trace id from a fixed-size binary column value.
pub fn trace_key(col: &FixedSizeBinaryArray, i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    let v = col.value(i);
    let n = v.len().min(16);
    k[..n].copy_from_slice(&v[..n]);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanrows::SpanBatchBuilder;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn span(trace: u8, id: u8, parent: Option<u8>, start: u64) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            ..Default::default()
        }
    }

    #[test]
    fn parent_offsets_round_trip_including_parents_outside_the_block() {
        let mut b = SpanBatchBuilder::new(&DedicatedColumns::default());
        let spans = vec![
            span(1, 10, None, 100),
            span(2, 20, Some(99), 50), // parent in another block
            span(1, 11, Some(10), 110),
            span(1, 12, Some(11), 90), // starts before its parent: negative offset
            span(2, 21, Some(20), 60),
        ];
        let rs = ResourceSpans {
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        };
        b.append_resource_spans(&rs, |_| {});
        let sorted = sort_spans(&[b.finish().unwrap()], &DedicatedColumns::default()).unwrap();
        let encoded = encode_parents(&sorted).unwrap();
        let ids = encoded.column_by_name(col::PARENT_SPAN_ID).unwrap();
        assert_eq!(ids.null_count(), 4, "only the outside parent keeps its id");
        let decoded = decode_parents(&[encoded.slice(0, 2), encoded.slice(2, 3)]).unwrap().unwrap();
        assert_eq!(
            decoded.column_by_name(col::PARENT_SPAN_ID).unwrap().as_fixed_size_binary(),
            sorted.column_by_name(col::PARENT_SPAN_ID).unwrap().as_fixed_size_binary()
        );
    }
}
