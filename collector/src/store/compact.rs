//! Streaming compaction: a k-way merge of blocks already sorted by (trace_id, start_time).
//!
//! Each input's compressed file (fetched by the caller) is decoded batch by batch, in whole-trace chunks (parent offsets only
//! make sense within a trace's rows of one file); a heap picks the next row; output is cut
//! into whole-trace chunks for the [`BlockWriter`]. Memory stays at a few batches per input
//! instead of the merged blocks' size. A span stored twice (a client's retry after a lost ack)
//! is written once: the heap yields a trace's rows together, so the span ids seen since the
//! trace began are enough to drop repeats.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{concat_batches, interleave};
use arrow::datatypes::{Int64Type, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::StoreError;
use super::block::{BlockWriter, align, decode_parents, trace_key};
use crate::spanrows::col;

/// Rows per output chunk (rounded up to the next trace boundary).
pub const CHUNK_ROWS: usize = 64 * 1024;

/// Reads one block in order and yields decoded batches that end at trace boundaries.
struct Cursor {
    reader: ParquetRecordBatchReader,
    pending: Option<RecordBatch>,
    schema: SchemaRef,
}

/// Index of the first row of the last trace in `b` (0 if `b` holds one trace).
fn last_trace_start(b: &RecordBatch) -> Result<usize, StoreError> {
    let tid = b
        .column_by_name(col::TRACE_ID)
        .ok_or_else(|| StoreError::Corrupt("block without trace_id".into()))?
        .as_fixed_size_binary();
    let n = b.num_rows();
    let mut i = n.saturating_sub(1);
    while i > 0 && tid.value(i - 1) == tid.value(n - 1) {
        i -= 1;
    }
    Ok(i)
}

impl Cursor {
    fn open(bytes: Bytes, schema: SchemaRef) -> Result<Self, StoreError> {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(8192).build()?;
        Ok(Cursor { reader, pending: None, schema })
    }

    fn next_chunk(&mut self) -> Result<Option<RecordBatch>, StoreError> {
        loop {
            match self.reader.next() {
                Some(b) => {
                    let b = align(&b?, &self.schema)?;
                    let all = match self.pending.take() {
                        Some(p) => concat_batches(&self.schema, &[p, b])?,
                        None => b,
                    };
                    let cut = last_trace_start(&all)?;
                    self.pending = Some(all.slice(cut, all.num_rows() - cut));
                    if cut > 0 {
                        return decode_parents(&[all.slice(0, cut)]);
                    }
                }
                None => {
                    return match self.pending.take() {
                        Some(p) if p.num_rows() > 0 => decode_parents(&[p]),
                        _ => Ok(None),
                    };
                }
            }
        }
    }
}

/// The decoded chunk one input is being merged from, and the next row to take from it.
struct InputChunk {
    batch: RecordBatch,
    row: usize,
    /// Index of `batch` in the current output's source list.
    source: usize,
}

fn key(b: &RecordBatch, row: usize) -> ([u8; 16], i64) {
    // Batches are aligned to the span schema, so both columns exist.
    let tid = b.column_by_name(col::TRACE_ID).map(|c| trace_key(c.as_fixed_size_binary(), row));
    let start = b.column_by_name(col::START).map(|c| c.as_primitive::<Int64Type>().value(row));
    (tid.unwrap_or_default(), start.unwrap_or(0))
}

fn span_key(b: &RecordBatch, row: usize) -> [u8; 8] {
    let mut k = [0u8; 8];
    if let Some(c) = b.column_by_name(col::SPAN_ID) {
        let v = c.as_fixed_size_binary().value(row);
        let n = v.len().min(8);
        k[..n].copy_from_slice(&v[..n]);
    }
    k
}

/// Merges the span files `inputs` (each sorted) into `out`, streaming, keeping one row per
/// (trace id, span id). Returns how many repeated rows were dropped. CPU-bound: run it on a
/// blocking thread.
pub fn merge_into(
    inputs: Vec<Bytes>,
    schema: SchemaRef,
    out: &mut BlockWriter,
    chunk_rows: usize,
) -> Result<u64, StoreError> {
    let mut cursors = Vec::with_capacity(inputs.len());
    for bytes in inputs {
        cursors.push(Cursor::open(bytes, schema.clone())?);
    }
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut chunks: Vec<Option<InputChunk>> = Vec::with_capacity(cursors.len());
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        let h = c.next_chunk()?.map(|batch| {
            sources.push(batch.clone());
            InputChunk { batch, row: 0, source: sources.len() - 1 }
        });
        if let Some(h) = &h {
            heap.push(Reverse((key(&h.batch, 0), i)));
        }
        chunks.push(h);
    }
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(chunk_rows + 1024);
    let mut last_trace: Option<[u8; 16]> = None;
    // Span ids of `last_trace` written so far.
    let mut seen: HashSet<[u8; 8]> = HashSet::new();
    let mut dropped = 0u64;
    while let Some(Reverse(((trace, _), i))) = heap.pop() {
        if last_trace != Some(trace) {
            if picks.len() >= chunk_rows {
                flush(&mut sources, &mut picks, &mut chunks, &schema, out)?;
            }
            seen.clear();
        }
        last_trace = Some(trace);
        let Some(h) = chunks[i].as_mut() else { continue };
        if seen.insert(span_key(&h.batch, h.row)) {
            picks.push((h.source, h.row));
        } else {
            dropped += 1;
        }
        h.row += 1;
        if h.row >= h.batch.num_rows() {
            chunks[i] = cursors[i].next_chunk()?.map(|batch| {
                sources.push(batch.clone());
                InputChunk { batch, row: 0, source: sources.len() - 1 }
            });
        }
        if let Some(h) = &chunks[i] {
            heap.push(Reverse((key(&h.batch, h.row), i)));
        }
    }
    flush(&mut sources, &mut picks, &mut chunks, &schema, out)?;
    Ok(dropped)
}

/// Writes the picked rows as one chunk and drops source batches no longer needed.
fn flush(
    sources: &mut Vec<RecordBatch>,
    picks: &mut Vec<(usize, usize)>,
    chunks: &mut [Option<InputChunk>],
    schema: &SchemaRef,
    out: &mut BlockWriter,
) -> Result<(), StoreError> {
    if !picks.is_empty() {
        let columns = (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    sources.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, picks)
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        picks.clear();
    }
    // Keep only the batches the cursors are still reading, renumbered.
    let mut kept = Vec::new();
    for h in chunks.iter_mut().flatten() {
        kept.push(h.batch.clone());
        h.source = kept.len() - 1;
    }
    *sources = kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanrows::{DedicatedColumns, SpanBatchBuilder, TagKeys, span_schema};
    use crate::store::Block;
    use crate::store::block::{
        NewBlock, SPANS_FILE, TRACES_FILE, commit_block, trace_col, write_block,
    };
    use crate::store::bloom::Bloom;
    use object_store::{ObjectStore, ObjectStoreExt};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use std::sync::Arc;

    fn spans(traces: std::ops::Range<u64>, salt: u8) -> ResourceSpans {
        let mut out = Vec::new();
        for t in traces {
            let tid = (t * 7919 % 1000).to_be_bytes().repeat(2);
            for k in 0..5u8 {
                out.push(Span {
                    trace_id: tid.clone(),
                    span_id: vec![salt, k, t as u8, 1, 1, 1, 1, 1],
                    parent_span_id: if k == 0 {
                        vec![]
                    } else {
                        vec![salt, k - 1, t as u8, 1, 1, 1, 1, 1]
                    },
                    start_time_unix_nano: 1_000 + u64::from(k) * 10 + u64::from(salt),
                    end_time_unix_nano: 2_000,
                    ..Default::default()
                });
            }
        }
        ResourceSpans {
            scope_spans: vec![ScopeSpans { spans: out, ..Default::default() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn streaming_merge_keeps_order_parents_and_whole_traces() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let ded = DedicatedColumns::default();
        let mut blocks = Vec::new();
        let mut expected = Vec::new();
        // Overlapping trace ids across blocks: traces are split between inputs.
        for (salt, range) in [(1u8, 0..40u64), (2, 20..60), (3, 10..30)] {
            let mut b = SpanBatchBuilder::new(&ded);
            b.append_resource_spans(&spans(range, salt), |_| {});
            let batch = b.finish().unwrap();
            expected.push(batch.clone());
            let nb = NewBlock {
                tenant: "t",
                batches: &[batch],
                dedicated: &ded,
                wal_ranges: crate::wal::SeqRanges::range(1, 1),
                tags: TagKeys::default(),
                compacted_from: vec![],
            };
            let (meta, bloom): (_, Bloom) = write_block(&store, nb).await.unwrap();
            blocks.push(Arc::new(Block { meta, bloom, root: Default::default() }));
        }
        let mut files = Vec::new();
        for b in &blocks {
            files.push(store.get(&b.meta.file(SPANS_FILE)).await.unwrap().bytes().await.unwrap());
        }
        let mut w = BlockWriter::new(&ded).unwrap();
        assert_eq!(merge_into(files, span_schema(&ded), &mut w, 7).unwrap(), 0);
        let nb = NewBlock {
            tenant: "t",
            batches: &[],
            dedicated: &ded,
            wal_ranges: crate::wal::SeqRanges::range(1, 1),
            tags: TagKeys::default(),
            compacted_from: vec![],
        };
        let (meta, _) = commit_block(&store, nb, w.finish().unwrap()).await.unwrap();

        let read = |path| {
            let store = store.clone();
            async move {
                let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
                ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
            }
        };
        let merged = decode_parents(&read(meta.file(SPANS_FILE)).await).unwrap().unwrap();
        let want = crate::store::block::sort_spans(&expected, &ded).unwrap();
        assert_eq!(merged.num_rows(), want.num_rows());
        for c in [col::TRACE_ID, col::SPAN_ID, col::PARENT_SPAN_ID, col::START] {
            assert_eq!(merged.column_by_name(c).unwrap(), want.column_by_name(c).unwrap(), "{c}");
        }
        let traces = read(meta.file(TRACES_FILE)).await;
        let rows: usize = traces.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows as u64, meta.traces);
        assert_eq!(meta.traces, 60, "each trace summarised exactly once");
        let counts: u64 = traces
            .iter()
            .map(|b| {
                let counts = b.column_by_name(trace_col::SPAN_COUNT).unwrap();
                arrow::compute::sum(counts.as_primitive::<arrow::datatypes::UInt32Type>())
                    .unwrap_or(0) as u64
            })
            .sum();
        assert_eq!(counts, meta.spans);
    }

    #[tokio::test]
    async fn a_span_stored_twice_is_merged_into_one_row() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let ded = DedicatedColumns::default();
        let twice = |a: ResourceSpans, b: ResourceSpans| {
            let mut a = a;
            a.scope_spans[0].spans.extend(b.scope_spans[0].spans.clone());
            a
        };
        // Traces 5..10 are in both A and B (a retried export flushed twice); C holds traces
        // 20, 21 twice over, and trace 256, whose span ids equal trace 0's (another trace).
        let inputs = [
            spans(0..10, 1),
            spans(5..15, 1),
            twice(twice(spans(20..22, 1), spans(20..22, 1)), spans(256..257, 1)),
        ];
        let mut files = Vec::new();
        for rs in &inputs {
            let mut b = SpanBatchBuilder::new(&ded);
            b.append_resource_spans(rs, |_| {});
            let nb = NewBlock {
                tenant: "t",
                batches: &[b.finish().unwrap()],
                dedicated: &ded,
                wal_ranges: crate::wal::SeqRanges::range(1, 1),
                tags: TagKeys::default(),
                compacted_from: vec![],
            };
            let (meta, _): (_, Bloom) = write_block(&store, nb).await.unwrap();
            files.push(store.get(&meta.file(SPANS_FILE)).await.unwrap().bytes().await.unwrap());
        }
        let mut w = BlockWriter::new(&ded).unwrap();
        let dropped = merge_into(files, span_schema(&ded), &mut w, 7).unwrap();
        assert_eq!(dropped, 5 * 5 + 2 * 5);
        let nb = NewBlock {
            tenant: "t",
            batches: &[],
            dedicated: &ded,
            wal_ranges: crate::wal::SeqRanges::range(1, 1),
            tags: TagKeys::default(),
            compacted_from: vec![],
        };
        let (meta, _) = commit_block(&store, nb, w.finish().unwrap()).await.unwrap();
        assert_eq!((meta.spans, meta.traces), ((15 + 2 + 1) * 5, 15 + 2 + 1));
        let bytes = store.get(&meta.file(SPANS_FILE)).await.unwrap().bytes().await.unwrap();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let merged = decode_parents(&batches).unwrap().unwrap();
        let tid = merged.column_by_name(col::TRACE_ID).unwrap().as_fixed_size_binary();
        let sid = merged.column_by_name(col::SPAN_ID).unwrap().as_fixed_size_binary();
        let parent = merged.column_by_name(col::PARENT_SPAN_ID).unwrap().as_fixed_size_binary();
        let mut keys = std::collections::HashSet::new();
        for r in 0..merged.num_rows() {
            assert!(keys.insert((tid.value(r).to_vec(), sid.value(r).to_vec())), "row {r} twice");
        }
        for r in (0..merged.num_rows()).filter(|&r| parent.is_valid(r)) {
            let p = (tid.value(r).to_vec(), parent.value(r).to_vec());
            assert!(keys.contains(&p), "row {r} lost its parent");
        }
    }
}
