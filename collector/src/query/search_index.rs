//! Phase 1 of search over blocks' search indexes (`store/search.rs`): a filter that only reads
//! service, name, start, duration, status and kind is answered from `search.parquet`, whose
//! page statistics skip everything outside the asked service and window, instead of
//! `spans.parquet`. Blocks are read newest first; with a limit the scan stops once the next
//! block cannot beat the `limit`-th latest match found so far (Tempo's "return as soon as
//! there is enough"). Trace ordinals are turned into trace ids by reading only the pages of
//! `traces.parquet` that hold them.

use std::collections::HashMap;
use std::sync::Arc;

type FastHash = foldhash::fast::RandomState;
use std::sync::atomic::{AtomicI64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, Schema, UInt32Type};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::prelude::{Expr, SessionContext, col, lit};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::RowSelection;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::compile::{filter_expr, needs_trace, physical};
use super::footers::{BlockFiles, spawned};
use super::search::Hit;
use super::traceql::Filter;
use super::{QueryEngine, QueryError};
use super::{page_prune, span_scan};
use crate::spanrows::{DedicatedColumns, col as c};
use crate::store::block::{SEARCH_FILE, TRACES_FILE, trace_col, trace_key};
use crate::store::{Block, StoreError, search};

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

/// Which file of a block phase 1 reads without a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// `search.parquet` (the block must be [`indexed`] and the predicate [`indexable`]).
    Index,
    /// `spans.parquet` itself ([`super::span_scan`]), for predicates on any span column.
    Spans,
}

/// Adds the matches of `blocks` to `out`, which may already hold other tables' matches,
/// reading each block's `source`; with `limit`, blocks that cannot change the `limit` latest
/// are not read. Without a limit at most `cap` traces are collected (the caller refuses
/// beyond). Returns the blocks that could not be read this way (a file of an older layout),
/// for the caller to scan with a plan.
#[allow(clippy::too_many_arguments)]
pub(super) async fn add_matches(
    engine: &QueryEngine,
    blocks: &[Arc<Block>],
    source: Source,
    expr: Option<Expr>,
    range: Option<(i64, i64)>,
    limit: Option<usize>,
    cap: usize,
    out: &mut HashMap<[u8; 16], Hit>,
) -> Result<Vec<Arc<Block>>, QueryError> {
    let mut blocks: Vec<Arc<Block>> = blocks.to_vec();
    blocks.sort_by(|a, b| b.meta.max_time.cmp(&a.meta.max_time).then(a.meta.id.cmp(&b.meta.id)));
    let per_block = limit.unwrap_or(cap);
    let mut pred = expr.unwrap_or_else(|| lit(true));
    if let Some((s, e)) = range {
        pred = col(c::START).gt_eq(lit(s)).and(col(c::START).lt_eq(lit(e))).and(pred);
    }
    let ctx = SessionContext::new();
    let files = engine.files();
    // With a limit, a match older than the `limit`-th latest trace found so far cannot make
    // the answer: blocks started later skip the pages before it (their starts ascend within
    // each service and name, so most of a block's pages are older).
    let floor = AtomicI64::new(limit.and_then(|l| kth_latest(out, l)).unwrap_or(i64::MIN));
    let floor = &floor;
    let read = |b: Arc<Block>| {
        let f = limit.map(|_| floor.load(Ordering::Relaxed)).filter(|f| *f > i64::MIN);
        let (files, ctx, pred, ranked) =
            (files.clone(), ctx.clone(), pred.clone(), limit.is_some());
        spawned(async move {
            match source {
                Source::Index => {
                    block_matches(files, b, ctx, pred, per_block, ranked, f).await.map(Ok)
                }
                Source::Spans => {
                    let read =
                        span_scan::block_matches(files, b.clone(), ctx, pred, per_block, ranked, f)
                            .await?;
                    Ok(read.ok_or(b))
                }
            }
        })
    };
    // Up to PARALLEL_BLOCKS blocks are read at once, each started as soon as one finishes (in
    // whatever order), unless what is found already makes it and every older block useless.
    let mut pending = blocks.iter().cloned().peekable();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut unread = Vec::new();
    loop {
        let kth = limit.and_then(|l| kth_latest(out, l));
        if let Some(k) = kth {
            floor.store(k, Ordering::Relaxed);
        }
        // Blocks are newest first: once one cannot beat the `limit`-th latest, none after can.
        let enough = |b: &Arc<Block>| kth.is_some_and(|k| b.meta.max_time < k);
        let capped = limit.is_none() && out.len() > cap;
        while running.len() < PARALLEL_BLOCKS && !capped {
            match pending.next_if(|b| !enough(b)) {
                Some(b) => running.push(read(b)),
                None => break,
            }
        }
        let Some(part) = running.next().await else { break };
        let found = match part? {
            Ok(found) => found,
            Err(block) => {
                unread.push(block);
                Vec::new()
            }
        };
        for (id, h) in found {
            h.add_to(out, id);
        }
    }
    Ok(unread)
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
/// the `limit` latest. The index is read without a DataFusion plan: the pages the predicate
/// cannot rule out (from the cached page index) are decoded and the predicate evaluated on
/// them directly, which is all a plan would do here, without its per-block setup.
///
/// `ranked`: only the `limit` latest traces matter, not every trace's count, so matches older
/// than `floor` (the `limit`-th latest found elsewhere) and than the block's own running
/// `limit`-th latest are skipped.
async fn block_matches(
    files: BlockFiles,
    block: Arc<Block>,
    ctx: SessionContext,
    pred: Expr,
    limit: usize,
    ranked: bool,
    floor: Option<i64>,
) -> Result<Vec<([u8; 16], Hit)>, QueryError> {
    let Some(size) = block.meta.search_bytes else { return Ok(Vec::new()) };
    let pred = match floor {
        Some(f) => pred.and(col(c::START).gt_eq(lit(f))),
        None => pred,
    };
    let mut latest = Latest::new(limit, ranked, floor, TRIM_SLACK);
    let path = block.file(SEARCH_FILE);
    let meta = files.meta(&path, size).await?;
    let schema = meta.schema().clone();
    let pruning = PruningPredicateBuilder::new().with_file_schema(schema.clone()).build(physical(
        &ctx,
        pred.clone(),
        &schema,
    )?);
    let selected = page_prune::select(&meta, pruning.as_deref())?;
    if selected.rows == 0 {
        return Ok(Vec::new());
    }
    let mut wanted =
        vec![index_of(&schema, c::START, &block)?, index_of(&schema, search::TRACE, &block)?];
    for r in pred.column_refs() {
        wanted.push(index_of(&schema, &r.name, &block)?);
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mask = ProjectionMask::roots(meta.parquet_schema(), wanted.iter().copied());
    let mut stream =
        ParquetRecordBatchStreamBuilder::new_with_metadata(files.reader(path, size), meta)
            .with_projection(mask)
            .with_row_groups(selected.row_groups)
            .with_row_selection(selected.selection)
            .with_batch_size(8192)
            .build()
            .map_err(StoreError::from)?;
    let read = stream.schema().clone();
    let phys = physical(&ctx, pred.clone(), &read)?;
    let (si, ti) = (index_of(&read, c::START, &block)?, index_of(&read, search::TRACE, &block)?);
    while let Some(b) = stream.try_next().await.map_err(StoreError::from)? {
        let matched = phys.evaluate(&b)?.into_array(b.num_rows())?;
        let Some(matched) = matched.as_boolean_opt() else {
            return Err(QueryError::Internal("search predicate is not boolean".into()));
        };
        let bits = match matched.nulls() {
            Some(n) => matched.values() & n.inner(),
            None => matched.values().clone(),
        };
        let (Some(start), Some(trace)) = (
            b.column(si).as_primitive_opt::<Int64Type>(),
            b.column(ti).as_primitive_opt::<UInt32Type>(),
        ) else {
            return Err(StoreError::Corrupt(format!(
                "block {}: search index column types",
                block.meta.id
            ))
            .into());
        };
        for i in bits.set_indices() {
            latest.add(trace.value(i), start.value(i));
        }
        latest.trim();
    }
    let mut found = latest.finish();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    found.sort_unstable_by_key(|(t, _)| *t);
    let ids = trace_ids(&files, &block, found.iter().map(|(t, _)| *t as usize)).await?;
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

/// Traces held by a block read beyond `2 × limit` before its own floor is raised.
pub(super) const TRIM_SLACK: usize = 4096;

/// Per trace of one block (its ordinal, or its id): latest matching start and match count;
/// when `ranked`, only what can still be among the `limit` latest.
pub(super) struct Latest<K> {
    per_trace: HashMap<K, Hit, FastHash>,
    limit: usize,
    ranked: bool,
    floor: i64,
    trim_at: usize,
}

impl<K: Copy + Eq + std::hash::Hash + Ord> Latest<K> {
    pub(super) fn new(limit: usize, ranked: bool, floor: Option<i64>, slack: usize) -> Self {
        Latest {
            per_trace: HashMap::default(),
            limit,
            ranked,
            floor: floor.unwrap_or(i64::MIN),
            trim_at: limit.saturating_mul(2).saturating_add(slack),
        }
    }

    pub(super) fn add(&mut self, trace: K, start: i64) {
        if start < self.floor {
            return;
        }
        self.per_trace
            .entry(trace)
            .and_modify(|h| {
                h.last_start = h.last_start.max(start);
                h.matched = h.matched.saturating_add(1);
            })
            .or_insert(Hit { last_start: start, matched: 1 });
    }

    /// Raises the floor to the `limit`-th latest held and drops older traces, when many are
    /// held.
    pub(super) fn trim(&mut self) {
        if !self.ranked || self.per_trace.len() <= self.trim_at || self.limit == 0 {
            return;
        }
        let mut lasts: Vec<i64> = self.per_trace.values().map(|h| h.last_start).collect();
        let (_, kth, _) = lasts.select_nth_unstable_by(self.limit - 1, |a, b| b.cmp(a));
        self.floor = self.floor.max(*kth);
        let floor = self.floor;
        self.per_trace.retain(|_, h| h.last_start >= floor);
    }

    /// The `limit` latest (any order).
    pub(super) fn finish(self) -> Vec<(K, Hit)> {
        let mut found: Vec<(K, Hit)> = self.per_trace.into_iter().collect();
        if found.len() > self.limit {
            found.select_nth_unstable_by(self.limit, latest_first);
            found.truncate(self.limit);
        }
        found
    }
}

/// Latest match first, then the lower key (a stable choice among equal starts).
fn latest_first<K: Ord>(a: &(K, Hit), b: &(K, Hit)) -> std::cmp::Ordering {
    b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0))
}

pub(super) fn index_of(schema: &Schema, name: &str, block: &Block) -> Result<usize, QueryError> {
    schema.index_of(name).map_err(|_| {
        StoreError::Corrupt(format!("block {}: search index lacks column {name}", block.meta.id))
            .into()
    })
}

/// Trace ids of the given rows (ascending, distinct) of the block's `traces.parquet`, reading
/// only the pages that hold them.
async fn trace_ids(
    files: &BlockFiles,
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
    let path = block.file(TRACES_FILE);
    let size = block.meta.traces_bytes;
    let meta = files.meta(&path, size).await?;
    let builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(files.reader(path, size), meta);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_while_reading_keeps_the_same_latest_traces_as_holding_all() {
        // 20k spans over 5k traces, starts pseudo-random; some traces share their latest start.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let spans: Vec<(u32, i64)> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 5000) as u32, ((x >> 20) % 3000) as i64)
            })
            .collect();
        for limit in [1usize, 7, 20, 100] {
            for floor in [None, Some(2500)] {
                let mut all = Latest::new(limit, false, floor, usize::MAX);
                let mut trimmed = Latest::new(limit, true, floor, 16);
                for chunk in spans.chunks(512) {
                    for &(t, s) in chunk {
                        all.add(t, s);
                        trimmed.add(t, s);
                    }
                    trimmed.trim();
                }
                let key = |mut v: Vec<(u32, Hit)>| {
                    v.sort_by(latest_first);
                    v.into_iter().map(|(t, h)| (t, h.last_start)).collect::<Vec<_>>()
                };
                assert_eq!(
                    key(trimmed.finish()),
                    key(all.finish()),
                    "limit {limit}, floor {floor:?}"
                );
            }
        }
    }

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
