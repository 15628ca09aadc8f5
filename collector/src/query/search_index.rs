//! Phase 1 of search over blocks' search indexes (`store/search.rs`): a filter that only reads
//! service, name, start, duration, status and kind is answered from `search.parquet`, whose
//! page statistics skip everything outside the asked service and window, instead of
//! `spans.parquet`. Blocks are read newest first; with a limit the scan stops once the next
//! block cannot beat the `limit`-th latest match found so far (Tempo's "return as soon as
//! there is enough"). Trace ordinals are turned into trace ids by reading only the pages of
//! `traces.parquet` that hold them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, UInt32Type, UInt64Type};
use bytes::Bytes;
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::prelude::{Expr, cast, col, lit};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::compile::{filter_expr, needs_trace};
use super::search::Hit;
use super::tables::{context, listing};
use super::traceql::Filter;
use super::{QueryEngine, QueryError};
use crate::spanrows::{DedicatedColumns, col as c};
use crate::store::block::{SEARCH_FILE, TRACES_FILE, trace_col, trace_key};
use crate::store::{Block, StoreError, search};

const LAST: &str = "last";
const COUNT: &str = "n";

/// Blocks read at once.
const PARALLEL_BLOCKS: usize = 2;

/// The filter's predicate when the index can answer it: `Some(None)` for `{}`, `None` when it
/// needs columns the index lacks.
pub(super) fn indexable(
    f: &Filter,
    dedicated: &DedicatedColumns,
) -> Result<Option<Option<Expr>>, QueryError> {
    if needs_trace(f) {
        return Ok(None);
    }
    let expr = filter_expr(f, dedicated)?;
    let covered = expr.as_ref().is_none_or(|e| {
        e.column_refs().iter().all(|r| search::SPAN_COLUMNS.contains(&r.name.as_str()))
    });
    Ok(covered.then_some(expr))
}

/// Whether `b` has a search index.
pub(super) fn indexed(b: &Block) -> bool {
    b.meta.search_bytes.is_some()
}

/// Adds the matches of `blocks` (all indexed) to `out`, which may already hold other tables'
/// matches; with `limit`, blocks that cannot change the `limit` latest are not read. Without a
/// limit at most `cap` traces are collected (the caller refuses beyond).
pub(super) async fn add_matches(
    engine: &QueryEngine,
    blocks: &[Arc<Block>],
    expr: Option<Expr>,
    range: Option<(i64, i64)>,
    limit: Option<usize>,
    cap: usize,
    out: &mut HashMap<[u8; 16], Hit>,
) -> Result<(), QueryError> {
    let mut blocks: Vec<Arc<Block>> = blocks.to_vec();
    blocks.sort_by(|a, b| b.meta.max_time.cmp(&a.meta.max_time).then(a.meta.id.cmp(&b.meta.id)));
    let per_block = limit.unwrap_or(cap);
    let reads: Vec<_> = blocks
        .iter()
        .map(|b| block_matches(engine, b.clone(), expr.clone(), range, per_block))
        .collect();
    let mut parts = futures::stream::iter(reads).buffered(PARALLEL_BLOCKS);
    let mut next = 0;
    while let Some(part) = parts.next().await {
        for (id, h) in part? {
            out.entry(id)
                .and_modify(|o| {
                    o.last_start = o.last_start.max(h.last_start);
                    o.matched = o.matched.saturating_add(h.matched);
                })
                .or_insert(h);
        }
        next += 1;
        let Some(following) = blocks.get(next) else { break };
        let enough = match limit {
            Some(l) => kth_latest(out, l).is_some_and(|k| following.meta.max_time < k),
            None => out.len() > cap,
        };
        if enough {
            break;
        }
    }
    Ok(())
}

/// The `k`-th latest `last_start` of `hits`, if there are `k`.
fn kth_latest(hits: &HashMap<[u8; 16], Hit>, k: usize) -> Option<i64> {
    if k == 0 || hits.len() < k {
        return None;
    }
    let mut lasts: Vec<i64> = hits.values().map(|h| h.last_start).collect();
    let (_, kth, _) = lasts.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    Some(*kth)
}

/// One block's matching traces from its index: latest matching start and match count each,
/// the `limit` latest.
async fn block_matches(
    engine: &QueryEngine,
    block: Arc<Block>,
    expr: Option<Expr>,
    range: Option<(i64, i64)>,
    limit: usize,
) -> Result<Vec<([u8; 16], Hit)>, QueryError> {
    let ctx = context(engine);
    let Some(table) = listing(vec![block.file(SEARCH_FILE).to_string()], search::schema())? else {
        return Ok(Vec::new());
    };
    let mut df = ctx.read_table(table)?;
    if let Some((s, e)) = range {
        df = df.filter(col(c::START).gt_eq(lit(s)).and(col(c::START).lt_eq(lit(e))))?;
    }
    if let Some(e) = expr {
        df = df.filter(e)?;
    }
    let df = df
        .aggregate(
            vec![col(search::TRACE)],
            vec![
                max(col(c::START)).alias(LAST),
                cast(count(lit(1u8)), DataType::UInt64).alias(COUNT),
            ],
        )?
        .sort(vec![col(LAST).sort(false, false), col(search::TRACE).sort(true, false)])?
        .limit(0, Some(limit))?;
    let mut found: Vec<(u32, Hit)> = Vec::new();
    for b in df.collect().await? {
        let (Some(t), Some(l), Some(n)) =
            (b.column_by_name(search::TRACE), b.column_by_name(LAST), b.column_by_name(COUNT))
        else {
            return Err(QueryError::Internal("search index aggregate lost a column".into()));
        };
        let (t, l, n) = (
            t.as_primitive::<UInt32Type>(),
            l.as_primitive::<Int64Type>(),
            n.as_primitive::<UInt64Type>(),
        );
        for i in 0..b.num_rows() {
            found.push((t.value(i), Hit { last_start: l.value(i), matched: n.value(i) }));
        }
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    found.sort_unstable_by_key(|(t, _)| *t);
    let ids = trace_ids(engine, &block, found.iter().map(|(t, _)| *t as usize)).await?;
    if ids.len() != found.len() {
        return Err(StoreError::Corrupt(format!(
            "block {}: search index names {} traces, traces.parquet gave {}",
            block.meta.id,
            found.len(),
            ids.len()
        ))
        .into());
    }
    Ok(ids.into_iter().zip(found).map(|(id, (_, h))| (id, h)).collect())
}

/// Trace ids of the given rows (ascending, distinct) of the block's `traces.parquet`, reading
/// only the pages that hold them.
async fn trace_ids(
    engine: &QueryEngine,
    block: &Block,
    rows: impl Iterator<Item = usize>,
) -> Result<Vec<[u8; 16]>, QueryError> {
    let total = usize::try_from(block.meta.traces).unwrap_or(usize::MAX);
    let rows: Vec<usize> = rows.collect();
    if rows.iter().any(|&r| r >= total) {
        return Err(StoreError::Corrupt(format!(
            "block {}: search index names a trace past its {total} traces",
            block.meta.id
        ))
        .into());
    }
    let reader = FileReader {
        store: engine.store.object_store.clone(),
        path: block.file(TRACES_FILE),
        size: block.meta.traces_bytes,
    };
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
        .await
        .map_err(StoreError::from)?;
    let Some(idx) = builder.schema().index_of(trace_col::TRACE_ID).ok() else {
        return Err(
            StoreError::Corrupt(format!("block {}: traces without ids", block.meta.id)).into()
        );
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let selection = RowSelection::from_consecutive_ranges(rows.iter().map(|&r| r..r + 1), total);
    let batches: Vec<RecordBatch> = builder
        .with_projection(mask)
        .with_row_selection(selection)
        .build()
        .map_err(StoreError::from)?
        .try_collect()
        .await
        .map_err(StoreError::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for b in &batches {
        let ids = b.column(0).as_fixed_size_binary();
        for i in 0..ids.len() {
            out.push(trace_key(ids, i));
        }
    }
    Ok(out)
}

/// A block file of known size, read in ranges (the size comes from the block's meta, so the
/// footer is read without a HEAD request).
struct FileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
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

    #[test]
    fn kth_latest_is_the_kth_largest_last_start() {
        let hits: HashMap<[u8; 16], Hit> = (0u8..5)
            .map(|i| ([i; 16], Hit { last_start: i64::from(i) * 10, matched: 1 }))
            .collect();
        assert_eq!(kth_latest(&hits, 1), Some(40));
        assert_eq!(kth_latest(&hits, 3), Some(20));
        assert_eq!(kth_latest(&hits, 6), None);
        assert_eq!(kth_latest(&hits, 0), None);
    }
}
