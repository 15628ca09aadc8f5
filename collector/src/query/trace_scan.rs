//! Phase 1 of a search filter on trace-level fields only (`rootServiceName`, `rootName`,
//! `traceDuration`) from the blocks' `traces.parquet`, without reading a span. Each block's
//! summaries are read (one row per trace, a tenth of the spans; only the columns the filter
//! needs, root names as dictionaries) and judged on their own, blocks in parallel; a trace
//! split over blocks (or a block and the head) is found by merging the blocks' id-sorted ids
//! and judged again on its merged summary. A trace passing the filter has every span
//! matching, so its latest span start in the range is what ranks it; summaries bound it (at
//! most `min(end, range end)`), and the exact value is read, from the spans of the few
//! best-bounded candidates, until the `limit`-th exact one is at least the next candidate's
//! bound. See `DESIGN.md` ("Search on trace-level fields").

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeBinaryArray, Int64Array, RecordBatch,
    StringArray,
};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, UInt32Type};
use datafusion::prelude::{Expr, SessionContext};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::compile::{T_DURATION, T_END, T_ROOT_NAME, T_ROOT_SERVICE, T_START, physical};
use super::footers::{BlockFiles, spawned};
use super::search::Hit;
use super::tables::{Tables, Viewed, assemble, trace_summaries};
use super::trace_rows::{Wanted, trace_rows};
use super::{QueryEngine, QueryError, page_prune};
use crate::spanrows::{col as c, dict_utf8};
use crate::store::block::{SPANS_FILE, TRACES_FILE, trace_col, trace_key};
use crate::store::{Block, StoreError};

/// Blocks read at once.
const PARALLEL_BLOCKS: usize = 2;

/// Columns a trace-level predicate may read.
const TRACE_FIELDS: [&str; 5] = [T_START, T_END, T_DURATION, T_ROOT_SERVICE, T_ROOT_NAME];

/// Whether `expr` reads trace-level fields only (so every span of a passing trace matches).
pub(super) fn trace_level_only(expr: &Expr) -> bool {
    let refs = expr.column_refs();
    !refs.is_empty() && refs.iter().all(|r| TRACE_FIELDS.contains(&r.name.as_str()))
}

/// The root fields a predicate reads (times are always read: they rank the traces).
#[derive(Debug, Clone, Copy)]
struct Needs {
    service: bool,
    name: bool,
}

impl Needs {
    fn of(expr: &Expr) -> Needs {
        let refs = expr.column_refs();
        let reads = |f: &str| refs.iter().any(|r| r.name == f);
        Needs { service: reads(T_ROOT_SERVICE), name: reads(T_ROOT_NAME) }
    }
}

/// One source of summaries, sorted by trace id: a block's `traces.parquet` or the head's.
/// Root fields are there when the predicate reads them (UTF-8 or dictionary-encoded).
struct Summaries {
    ids: FixedSizeBinaryArray,
    /// The ids as big-endian integers (their byte order), for the merge.
    keys: Vec<u128>,
    start: Int64Array,
    end: Int64Array,
    root_service: Option<ArrayRef>,
    root_name: Option<ArrayRef>,
    /// The predicate on this source's own summary of each trace (NULL counts as false).
    passed: BooleanArray,
    /// A block's: the block, and where each trace's spans are in its `spans.parquet` (rows
    /// `offsets[i]..offsets[i + 1]`: both files are sorted by trace id, so the offsets are the
    /// running sum of span counts); `None` for the head or when the counts do not add up.
    block: Option<(Arc<Block>, Option<Offsets>)>,
}

/// First rows of a block's traces in its `spans.parquet`, and the end of the last.
type Offsets = Arc<Vec<u64>>;

impl Summaries {
    /// Takes the columns of `b` (named as in `traces.parquet`), checks their order and judges
    /// each row with `expr`.
    fn judged(
        b: &RecordBatch,
        needs: Needs,
        ctx: &SessionContext,
        expr: &Expr,
    ) -> Result<Summaries, QueryError> {
        let get = |name: &str| {
            b.column_by_name(name)
                .cloned()
                .ok_or_else(|| QueryError::Internal(format!("trace summaries lack {name}")))
        };
        let ints = |name: &str| -> Result<Int64Array, QueryError> {
            let a = get(name)?;
            match a.as_primitive_opt::<Int64Type>() {
                Some(v) if v.null_count() == 0 => Ok(v.clone()),
                _ => Err(QueryError::Internal(format!("trace summaries: {name} type"))),
            }
        };
        let ids = get(trace_col::TRACE_ID)?;
        let ids = ids
            .as_fixed_size_binary_opt()
            .ok_or_else(|| QueryError::Internal("trace summaries: id type".into()))?
            .clone();
        let root_service = needs.service.then(|| get(trace_col::ROOT_SERVICE)).transpose()?;
        let root_name = needs.name.then(|| get(trace_col::ROOT_NAME)).transpose()?;
        let (start, end) = (ints(trace_col::START)?, ints(trace_col::END)?);
        let passed = evaluate(ctx, expr, &start, &end, root_service.clone(), root_name.clone())?;
        let keys = match ids.value_length() {
            16 => ids
                .value_data()
                .chunks_exact(16)
                .map(|k| u128::from_be_bytes(k.try_into().unwrap_or_default()))
                .collect(),
            _ => (0..ids.len()).map(|i| u128::from_be_bytes(trace_key(&ids, i))).collect(),
        };
        Ok(Summaries { ids, keys, start, end, root_service, root_name, passed, block: None })
    }

    fn sorted(&self) -> bool {
        self.keys.windows(2).all(|w| w[0] < w[1])
    }
}

/// `expr` over summaries given as columns: true where it holds (NULL is false).
fn evaluate(
    ctx: &SessionContext,
    expr: &Expr,
    start: &Int64Array,
    end: &Int64Array,
    root_service: Option<ArrayRef>,
    root_name: Option<ArrayRef>,
) -> Result<BooleanArray, QueryError> {
    let duration: Int64Array =
        start.values().iter().zip(end.values()).map(|(s, e)| Some(e.saturating_sub(*s))).collect();
    let mut fields = vec![
        Field::new(T_START, DataType::Int64, false),
        Field::new(T_END, DataType::Int64, false),
        Field::new(T_DURATION, DataType::Int64, false),
    ];
    let mut cols: Vec<ArrayRef> =
        vec![Arc::new(start.clone()), Arc::new(end.clone()), Arc::new(duration)];
    for (name, a) in [(T_ROOT_SERVICE, root_service), (T_ROOT_NAME, root_name)] {
        if let Some(a) = a {
            fields.push(Field::new(name, a.data_type().clone(), true));
            cols.push(a);
        }
    }
    let n = start.len();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    let phys = physical(ctx, expr.clone(), &batch.schema())?;
    let passed = phys.evaluate(&batch)?.into_array(n)?;
    let Some(passed) = passed.as_boolean_opt() else {
        return Err(QueryError::Internal("trace predicate is not boolean".into()));
    };
    let values = match passed.nulls() {
        Some(valid) => passed.values() & valid.inner(),
        None => passed.values().clone(),
    };
    Ok(BooleanArray::new(values, None))
}

/// Row `i` of a UTF-8 or dictionary-encoded string column.
fn str_at(a: &dyn Array, i: usize) -> Option<&str> {
    if !a.is_valid(i) {
        return None;
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        return Some(s.value(i));
    }
    let d = a.as_dictionary_opt::<Int32Type>()?;
    let values = d.values().as_string_opt::<i32>()?;
    let k = usize::try_from(d.keys().value(i)).ok().filter(|k| *k < values.len())?;
    values.is_valid(k).then(|| values.value(k))
}

/// The traces of `tables` whose merged summary passes `expr` (trace-level fields only), ranked
/// by their latest span start in `range`, the `limit` latest with exact latest starts and
/// counts of spans in range. `None` when a block's summaries have another layout.
pub(super) async fn matches(
    engine: &QueryEngine,
    tables: &Tables,
    expr: &Expr,
    range: Option<(i64, i64)>,
    limit: usize,
) -> Result<Option<HashMap<[u8; 16], Hit>>, QueryError> {
    let files = engine.files();
    let needs = Needs::of(expr);
    let ctx = SessionContext::new();
    let mut reads = futures::stream::iter(tables.blocks.iter().cloned())
        .map(|b| spawned(read_block(files.clone(), b, needs, ctx.clone(), expr.clone())))
        .buffered(PARALLEL_BLOCKS);
    let mut sources = Vec::with_capacity(tables.blocks.len() + 1);
    while let Some(s) = reads.next().await {
        match s? {
            Some(s) => sources.push(s),
            None => return Ok(None),
        }
    }
    let head = match tables.head.iter().any(|b| b.num_rows() > 0) {
        true => Some(head_only(engine, tables)?),
        false => None,
    };
    if let Some(head) = &head
        && let Some(summaries) = head_summaries(head, needs, &ctx, expr).await?
    {
        sources.push(summaries);
    }
    let (mut candidates, splits) = candidates(&sources, &ctx, expr, range)?;
    // Best upper bound first; the lower id among equals (the order the answer uses).
    candidates.sort_unstable_by(|a, b| b.bound.cmp(&a.bound).then(a.id.cmp(&b.id)));
    let mut exact: Vec<([u8; 16], Hit)> = Vec::new();
    let chunk = limit.saturating_mul(2).max(64);
    let mut next = 0;
    while next < candidates.len() {
        if exact.len() >= limit && limit > 0 {
            exact.sort_unstable_by(|a, b| b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0)));
            if exact[limit - 1].1.last_start >= candidates[next].bound {
                break;
            }
        }
        let upto = next.saturating_add(chunk).min(candidates.len());
        let chosen = &candidates[next..upto];
        next = upto;
        if let Some(found) =
            exact_hits(engine, head.as_ref(), &sources, &splits, chosen, range).await?
        {
            exact.extend(found);
            continue;
        }
        let ids: Vec<[u8; 16]> = chosen.iter().map(|c| c.id).collect();
        match latest_in_range(engine, tables, &ids, range).await? {
            Some(found) => exact.extend(found),
            None => return Ok(None),
        }
    }
    exact.sort_unstable_by(|a, b| b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0)));
    exact.truncate(limit);
    Ok(Some(exact.into_iter().collect()))
}

/// A block's summaries, judged; `None` if its `traces.parquet` lacks a column.
async fn read_block(
    files: BlockFiles,
    block: Arc<Block>,
    needs: Needs,
    ctx: SessionContext,
    expr: Expr,
) -> Result<Option<Summaries>, QueryError> {
    let path = block.file(TRACES_FILE);
    let size = block.meta.traces_bytes;
    let meta = files.meta(&path, size).await?;
    let schema = meta.schema().clone();
    let mut wanted = Vec::new();
    for (name, read) in [
        (trace_col::TRACE_ID, true),
        (trace_col::START, true),
        (trace_col::END, true),
        (trace_col::ROOT_SERVICE, needs.service),
        (trace_col::ROOT_NAME, needs.name),
    ] {
        match schema.index_of(name) {
            Ok(i) if read => wanted.push(i),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
    if let Ok(i) = schema.index_of(trace_col::SPAN_COUNT) {
        wanted.push(i);
    }
    // Root names repeat: as dictionaries each page's values are decoded once.
    let hinted: Vec<Arc<Field>> = schema
        .fields()
        .iter()
        .map(|f| match (f.name().as_str(), f.data_type()) {
            (trace_col::ROOT_SERVICE | trace_col::ROOT_NAME, DataType::Utf8) => {
                Arc::new(f.as_ref().clone().with_data_type(dict_utf8()))
            }
            _ => f.clone(),
        })
        .collect();
    let meta = ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(hinted))),
    )
    .map_err(StoreError::from)?;
    let rows = usize::try_from(meta.metadata().file_metadata().num_rows()).unwrap_or(0);
    let mask = ProjectionMask::roots(meta.parquet_schema(), wanted);
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchStreamBuilder::new_with_metadata(files.reader(path, size), meta)
            .with_projection(mask)
            // One batch for the whole file: the merge walks one sorted sequence per block.
            .with_batch_size(rows.max(1))
            .build()
            .map_err(StoreError::from)?
            .try_collect()
            .await
            .map_err(StoreError::from)?;
    let all = match batches.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        [first, ..] => arrow::compute::concat_batches(&first.schema(), &batches)?,
    };
    let mut s = Summaries::judged(&all, needs, &ctx, &expr)?;
    let offsets = all
        .column_by_name(trace_col::SPAN_COUNT)
        .and_then(|a| a.as_primitive_opt::<UInt32Type>())
        .and_then(|counts| {
            let mut offsets = Vec::with_capacity(counts.len() + 1);
            let mut at = 0u64;
            offsets.push(at);
            for n in counts.iter() {
                at = at.checked_add(u64::from(n?))?;
                offsets.push(at);
            }
            (at == block.meta.spans).then(|| Arc::new(offsets))
        });
    s.block = Some((block.clone(), offsets));
    // Written sorted by trace id; checked, since the merge relies on it.
    if !s.sorted() {
        return Err(StoreError::Corrupt(format!(
            "block {}: traces.parquet is not sorted by trace id",
            block.meta.id
        ))
        .into());
    }
    Ok(Some(s))
}

/// The head part of `tables` alone.
fn head_only(engine: &QueryEngine, tables: &Tables) -> Result<Tables, QueryError> {
    assemble(
        engine,
        Viewed {
            blocks: Vec::new(),
            head: tables.head.clone(),
            dedicated: tables.dedicated.clone(),
            schema: tables.schema.clone(),
            answered: Vec::new(),
        },
    )
}

/// The per-trace summaries of `head` (tables of the head alone, as a block's), sorted by
/// trace id and judged.
async fn head_summaries(
    head: &Tables,
    needs: Needs,
    ctx: &SessionContext,
    expr: &Expr,
) -> Result<Option<Summaries>, QueryError> {
    let batches = trace_summaries(head)?
        .select_columns(&[c::TRACE_ID, T_START, T_END, T_ROOT_SERVICE, T_ROOT_NAME])?
        .collect()
        .await?;
    let Some(first) = batches.first() else { return Ok(None) };
    let all = arrow::compute::concat_batches(&first.schema(), &batches)?;
    let renamed = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(trace_col::TRACE_ID, DataType::FixedSizeBinary(16), false),
            Field::new(trace_col::START, DataType::Int64, true),
            Field::new(trace_col::END, DataType::Int64, true),
            Field::new(trace_col::ROOT_SERVICE, all.column(3).data_type().clone(), true),
            Field::new(trace_col::ROOT_NAME, all.column(4).data_type().clone(), true),
        ])),
        all.columns().to_vec(),
    )?;
    let order = lexsort_to_indices(
        &[SortColumn { values: renamed.column(0).clone(), options: None }],
        None,
    )?;
    Ok(Some(Summaries::judged(&take_record_batch(&renamed, &order)?, needs, ctx, expr)?))
}

/// A trace found in several sources, its summary folded over its pieces.
struct Split {
    id: [u8; 16],
    start: i64,
    end: i64,
    root_service: Option<String>,
    root_name: Option<String>,
    /// (source, row) of each piece.
    pieces: Vec<(usize, usize)>,
}

/// A trace passing the filter: the bound of its latest span start in range, and where its
/// summary rows are.
struct Candidate {
    id: [u8; 16],
    bound: i64,
    at: At,
}

#[derive(Clone, Copy)]
enum At {
    /// (source, row): in one source only.
    One(usize, usize),
    /// Index into the split traces.
    Split(usize),
}

/// The traces present in several sources (a merge of their id-sorted ids), folded: earliest
/// start, latest end, the greatest root service and name (as the planned summaries do); and,
/// per source, the rows that are pieces of them, ascending. Ids are uniformly random, so the
/// two halves of the id space are searched on two threads.
fn split_traces(sources: &[Summaries]) -> Result<(Vec<Split>, Vec<Vec<usize>>), QueryError> {
    const HALF: u128 = 1 << 127;
    let all: Vec<std::ops::Range<usize>> = sources.iter().map(|s| 0..s.keys.len()).collect();
    if all.iter().map(|r| r.len()).sum::<usize>() < 1 << 16 {
        return Ok(merge(sources, &all));
    }
    let mid: Vec<usize> = sources.iter().map(|s| s.keys.partition_point(|k| *k < HALF)).collect();
    let low: Vec<_> = mid.iter().map(|m| 0..*m).collect();
    let high: Vec<_> = mid.iter().zip(&all).map(|(m, r)| *m..r.end).collect();
    let (mut splits, mut pieces, (high_splits, high_pieces)) = std::thread::scope(|scope| {
        let high = scope.spawn(|| merge(sources, &high));
        let (splits, pieces) = merge(sources, &low);
        high.join().map(|h| (splits, pieces, h))
    })
    .map_err(|_| QueryError::Internal("split trace merge panicked".into()))?;
    splits.extend(high_splits);
    for (p, h) in pieces.iter_mut().zip(high_pieces) {
        p.extend(h);
    }
    Ok((splits, pieces))
}

/// [`split_traces`] over the rows `rows[i]` of each source `i`. Ids are uniformly random: two
/// bitsets over (below the top bit) their leading bits, sixteen slots an id, mark the slots
/// seen once and seen again; only ids in a slot seen again (the split traces' and a few
/// percent more) are sorted and compared.
fn merge(sources: &[Summaries], rows: &[std::ops::Range<usize>]) -> (Vec<Split>, Vec<Vec<usize>>) {
    let keys: Vec<&[u128]> =
        sources.iter().zip(rows).map(|(s, r)| s.keys.get(r.clone()).unwrap_or_default()).collect();
    let total: usize = keys.iter().map(|k| k.len()).sum();
    let bits = (total.max(1).next_power_of_two().trailing_zeros() + 4).clamp(10, 30);
    let slot = |k: u128| ((k << 1) >> (128 - bits)) as usize;
    let words = (1usize << bits) / 64;
    let (mut seen, mut again) = (vec![0u64; words], vec![0u64; words]);
    for &k in keys.iter().flat_map(|k| k.iter()) {
        let h = slot(k);
        let (w, bit) = (h / 64, 1u64 << (h % 64));
        if seen[w] & bit != 0 {
            again[w] |= bit;
        }
        seen[w] |= bit;
    }
    let mut shared: Vec<(u128, usize, usize)> = Vec::new();
    for (si, (k, r)) in keys.iter().zip(rows).enumerate() {
        for (i, &id) in k.iter().enumerate() {
            let h = slot(id);
            if again[h / 64] & (1u64 << (h % 64)) != 0 {
                shared.push((id, si, r.start + i));
            }
        }
    }
    shared.sort_unstable();
    let mut pieces: Vec<Vec<usize>> = vec![Vec::new(); sources.len()];
    let mut splits = Vec::new();
    for group in shared.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let mut split = Split {
            id: group[0].0.to_be_bytes(),
            start: i64::MAX,
            end: i64::MIN,
            root_service: None,
            root_name: None,
            pieces: group.iter().map(|&(_, si, r)| (si, r)).collect(),
        };
        let (mut service, mut name): (Option<&str>, Option<&str>) = (None, None);
        for &(_, sj, r) in group {
            let s = &sources[sj];
            split.start = split.start.min(s.start.value(r));
            split.end = split.end.max(s.end.value(r));
            if let Some(a) = &s.root_service {
                service = service.max(str_at(a.as_ref(), r));
            }
            if let Some(a) = &s.root_name {
                name = name.max(str_at(a.as_ref(), r));
            }
            pieces[sj].push(r);
        }
        split.root_service = service.map(str::to_string);
        split.root_name = name.map(str::to_string);
        splits.push(split);
    }
    (splits, pieces)
}

/// Each trace judged once (on its own summary, or on its merged one if split): the passing
/// traces that may have a span in `range`, and the split traces.
fn candidates(
    sources: &[Summaries],
    ctx: &SessionContext,
    expr: &Expr,
    range: Option<(i64, i64)>,
) -> Result<(Vec<Candidate>, Vec<Split>), QueryError> {
    let bound = |start: i64, end: i64| match range {
        Some((lo, hi)) if start > hi || end < lo => None,
        Some((_, hi)) => Some(end.min(hi)),
        None => Some(end),
    };
    let (splits, pieces) = split_traces(sources)?;
    let mut out = Vec::new();
    for (si, (s, pieces)) in sources.iter().zip(&pieces).enumerate() {
        for i in s.passed.values().set_indices() {
            if pieces.binary_search(&i).is_ok() {
                continue;
            }
            if let Some(bound) = bound(s.start.value(i), s.end.value(i)) {
                out.push(Candidate { id: trace_key(&s.ids, i), bound, at: At::One(si, i) });
            }
        }
    }
    if splits.is_empty() {
        return Ok((out, splits));
    }
    let needs = Needs::of(expr);
    let strings = |f: fn(&Split) -> Option<&str>| -> ArrayRef {
        Arc::new(splits.iter().map(f).collect::<StringArray>())
    };
    let passed = evaluate(
        ctx,
        expr,
        &splits.iter().map(|s| s.start).collect(),
        &splits.iter().map(|s| s.end).collect(),
        needs.service.then(|| strings(|s| s.root_service.as_deref())),
        needs.name.then(|| strings(|s| s.root_name.as_deref())),
    )?;
    for i in passed.values().set_indices() {
        let s = &splits[i];
        if let Some(bound) = bound(s.start, s.end) {
            out.push(Candidate { id: s.id, bound, at: At::Split(i) });
        }
    }
    Ok((out, splits))
}

/// Exact latest span start and count of spans in `range` of each of `chosen`, read from
/// exactly their rows of each block's `spans.parquet` (and from the head); traces without a
/// span in range are left out. `None` when a block's span offsets are unknown.
async fn exact_hits(
    engine: &QueryEngine,
    head: Option<&Tables>,
    sources: &[Summaries],
    splits: &[Split],
    chosen: &[Candidate],
    range: Option<(i64, i64)>,
) -> Result<Option<Vec<([u8; 16], Hit)>>, QueryError> {
    let mut rows: Vec<Vec<(usize, [u8; 16])>> = vec![Vec::new(); sources.len()];
    for c in chosen {
        match c.at {
            At::One(s, r) => rows[s].push((r, c.id)),
            At::Split(i) => {
                for &(s, r) in splits.get(i).map(|s| s.pieces.as_slice()).unwrap_or_default() {
                    rows[s].push((r, c.id));
                }
            }
        }
    }
    let files = engine.files();
    let mut reads = Vec::new();
    let mut in_head = Vec::new();
    for (s, mut rows) in sources.iter().zip(rows) {
        if rows.is_empty() {
            continue;
        }
        match &s.block {
            Some((block, Some(offsets))) => {
                rows.sort_unstable();
                let mut ranges = Vec::with_capacity(rows.len());
                for (r, id) in rows {
                    let (Some(from), Some(to)) = (offsets.get(r), offsets.get(r + 1)) else {
                        return Err(QueryError::Internal("trace summary row out of range".into()));
                    };
                    ranges.push((*from..*to, id));
                }
                reads.push(spawned(starts_of(files.clone(), block.clone(), ranges, range)));
            }
            Some((_, None)) => return Ok(None),
            None => in_head.extend(rows.into_iter().map(|(_, id)| id)),
        }
    }
    let mut found: HashMap<[u8; 16], Hit> = HashMap::with_capacity(chosen.len());
    let mut reads = futures::stream::iter(reads).buffer_unordered(PARALLEL_BLOCKS);
    while let Some(part) = reads.next().await {
        for (id, hit) in part? {
            hit.add_to(&mut found, id);
        }
    }
    if let Some(head) = head
        && !in_head.is_empty()
    {
        match latest_in_range(engine, head, &in_head, range).await? {
            Some(part) => part.into_iter().for_each(|(id, hit)| hit.add_to(&mut found, id)),
            None => return Ok(None),
        }
    }
    Ok(Some(found.into_iter().collect()))
}

/// The latest start within `range`, and the count of starts within it, of each row range of
/// a block's `spans.parquet` (one trace's spans each, ascending).
async fn starts_of(
    files: BlockFiles,
    block: Arc<Block>,
    ranges: Vec<(std::ops::Range<u64>, [u8; 16])>,
    range: Option<(i64, i64)>,
) -> Result<Vec<([u8; 16], Hit)>, QueryError> {
    let path = block.file(SPANS_FILE);
    let size = block.meta.spans_bytes;
    let meta = files.meta(&path, size).await?;
    let si = meta.schema().index_of(c::START)?;
    let rows: Vec<std::ops::Range<u64>> = ranges.iter().map(|(r, _)| r.clone()).collect();
    let selected = page_prune::select_rows(&meta, &rows);
    let mask = ProjectionMask::roots(meta.parquet_schema(), [si]);
    let mut stream =
        files.selected((path, size), meta, mask, selected).build().map_err(StoreError::from)?;
    let corrupt = |what: &str| -> QueryError {
        StoreError::Corrupt(format!("block {}: {what}", block.meta.id)).into()
    };
    let mut out = Vec::with_capacity(ranges.len());
    let mut pending = ranges.into_iter();
    let mut current: Option<([u8; 16], u64, Hit)> = None;
    while let Some(b) = stream.try_next().await.map_err(StoreError::from)? {
        let Some(starts) = b.column(0).as_primitive_opt::<Int64Type>() else {
            return Err(corrupt("span start type"));
        };
        for s in starts.values() {
            let (id, left, hit) = match current.take() {
                Some(c) => c,
                None => match pending.next() {
                    Some((r, id)) => (
                        id,
                        r.end.saturating_sub(r.start),
                        Hit { last_start: i64::MIN, matched: 0 },
                    ),
                    None => return Err(corrupt("more span rows than selected")),
                },
            };
            let mut hit = hit;
            if range.is_none_or(|(lo, hi)| *s >= lo && *s <= hi) {
                hit.last_start = hit.last_start.max(*s);
                hit.matched += 1;
            }
            match left.saturating_sub(1) {
                0 => {
                    if hit.matched > 0 {
                        out.push((id, hit));
                    }
                }
                left => current = Some((id, left, hit)),
            }
        }
    }
    if current.is_some() || pending.next().is_some() {
        return Err(corrupt("fewer span rows than selected"));
    }
    Ok(out)
}

/// Latest span start and count of spans within `range` of each of the traces `ids` (all of
/// whose spans match); traces without a span in range are left out. `None` when a block file
/// needs a plan.
async fn latest_in_range(
    engine: &QueryEngine,
    tables: &Tables,
    ids: &[[u8; 16]],
    range: Option<(i64, i64)>,
) -> Result<Option<Vec<([u8; 16], Hit)>>, QueryError> {
    let wanted = Wanted { columns: vec![c::TRACE_ID, c::START], exprs: Vec::new() };
    let Some(batches) = trace_rows(engine, tables, ids, &wanted).await? else { return Ok(None) };
    let mut found: HashMap<[u8; 16], Hit> = HashMap::with_capacity(ids.len());
    for b in &batches {
        let (Some(tid), Some(start)) = (
            b.column_by_name(c::TRACE_ID).and_then(|a| a.as_fixed_size_binary_opt()),
            b.column_by_name(c::START).and_then(|a| a.as_primitive_opt::<Int64Type>()),
        ) else {
            return Err(QueryError::Internal("trace rows: column types".into()));
        };
        for i in 0..b.num_rows() {
            let s = start.value(i);
            if range.is_some_and(|(lo, hi)| s < lo || s > hi) {
                continue;
            }
            Hit { last_start: s, matched: 1 }.add_to(&mut found, trace_key(tid, i));
        }
    }
    Ok(Some(found.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(mut keys: Vec<u128>) -> Summaries {
        keys.sort_unstable();
        keys.dedup();
        let n = i64::try_from(keys.len()).unwrap();
        let ids =
            FixedSizeBinaryArray::try_from_iter(keys.iter().map(|k| k.to_be_bytes())).unwrap();
        Summaries {
            ids,
            passed: BooleanArray::from(vec![false; keys.len()]),
            keys,
            start: Int64Array::from_iter_values(0..n),
            end: Int64Array::from_iter_values((0..n).map(|i| i * 3 + 7)),
            root_service: None,
            root_name: None,
            block: None,
        }
    }

    #[test]
    fn split_traces_found_on_two_threads_are_exactly_the_ids_in_several_sources() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = move || {
            let mut half = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            (u128::from(half()) << 64) | u128::from(half())
        };
        let shared: Vec<u128> = (0..3000).map(|_| random()).collect();
        let sources: Vec<Summaries> = (0..3)
            .map(|s| {
                let mut keys: Vec<u128> = (0..30_000).map(|_| random()).collect();
                // Each shared id in two of the three sources, every fifth in all three.
                keys.extend(
                    shared
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| (i + s) % 3 != 0 || i % 5 == 0)
                        .map(|(_, k)| *k),
                );
                source(keys)
            })
            .collect();
        let (splits, pieces) = split_traces(&sources).unwrap();
        // The reference: every id's (source, row)s, by id.
        let mut by_id: std::collections::BTreeMap<u128, Vec<(usize, usize)>> = Default::default();
        for (si, s) in sources.iter().enumerate() {
            for (r, k) in s.keys.iter().enumerate() {
                by_id.entry(*k).or_default().push((si, r));
            }
        }
        let mut one_pieces = vec![Vec::new(); sources.len()];
        let mut one_splits = Vec::new();
        for (id, at) in by_id.into_iter().filter(|(_, at)| at.len() > 1) {
            let (mut start, mut end) = (i64::MAX, i64::MIN);
            for &(si, r) in &at {
                start = start.min(sources[si].start.value(r));
                end = end.max(sources[si].end.value(r));
                one_pieces[si].push(r);
            }
            let (root_service, root_name) = (None, None);
            one_splits.push(Split {
                id: id.to_be_bytes(),
                start,
                end,
                root_service,
                root_name,
                pieces: at,
            });
        }
        let view = |s: &[Split]| -> Vec<String> {
            s.iter().map(|s| format!("{:?} {} {} {:?}", s.id, s.start, s.end, s.pieces)).collect()
        };
        assert_eq!(splits.len(), shared.len());
        assert_eq!(view(&splits), view(&one_splits));
        assert_eq!(pieces, one_pieces);
        assert!(pieces.iter().all(|p| p.windows(2).all(|w| w[0] < w[1])), "pieces ascend");
    }
}
