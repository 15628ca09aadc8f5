//! Phase 1 of a search filter on trace-level fields only (`rootServiceName`, `rootName`,
//! `traceDuration`) from the blocks' `traces.parquet`, without reading a span. Each block's
//! summaries are read whole (one row per trace, a tenth of the spans); a trace split over
//! blocks (or a block and the head) is found by merging the blocks' id-sorted summaries and
//! judged on its merged summary, once. A trace passing the filter has every span matching, so
//! its latest span start in the range is what ranks it; summaries bound it (at most
//! `min(end, range end)`), and the exact value is read, from the spans of the few best-bounded
//! candidates, until the `limit`-th exact one is at least the next candidate's bound. See
//! `DESIGN.md` ("Search on trace-level fields").

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::{SortColumn, cast, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::{Expr, SessionContext};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::compile::{T_DURATION, T_END, T_ROOT_NAME, T_ROOT_SERVICE, T_START, physical};
use super::footers::{BlockFiles, spawned};
use super::search::Hit;
use super::tables::{Tables, Viewed, assemble, trace_summaries};
use super::trace_rows::{Wanted, trace_rows};
use super::{QueryEngine, QueryError};
use crate::spanrows::col as c;
use crate::store::block::{TRACES_FILE, trace_col, trace_key};
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

/// One source of summaries, sorted by trace id: a block's `traces.parquet` or the head's.
struct Summaries {
    ids: FixedSizeBinaryArray,
    start: Vec<i64>,
    end: Vec<i64>,
    root_service: StringArray,
    root_name: StringArray,
}

impl Summaries {
    fn from_batch(b: &RecordBatch) -> Result<Summaries, QueryError> {
        let get = |name: &str| {
            b.column_by_name(name)
                .cloned()
                .ok_or_else(|| QueryError::Internal(format!("trace summaries lack {name}")))
        };
        let strings = |name: &str| -> Result<StringArray, QueryError> {
            let a = cast(&get(name)?, &DataType::Utf8)?;
            Ok(a.as_string::<i32>().clone())
        };
        let ints = |name: &str| -> Result<Vec<i64>, QueryError> {
            let a = get(name)?;
            let a = a
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| QueryError::Internal(format!("trace summaries: {name} type")))?;
            Ok(a.values().to_vec())
        };
        let ids = get(trace_col::TRACE_ID)?;
        let ids = ids
            .as_fixed_size_binary_opt()
            .ok_or_else(|| QueryError::Internal("trace summaries: id type".into()))?
            .clone();
        Ok(Summaries {
            ids,
            start: ints(trace_col::START)?,
            end: ints(trace_col::END)?,
            root_service: strings(trace_col::ROOT_SERVICE)?,
            root_name: strings(trace_col::ROOT_NAME)?,
        })
    }

    fn id(&self, row: usize) -> u128 {
        u128::from_be_bytes(trace_key(&self.ids, row))
    }
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
    let mut reads = futures::stream::iter(tables.blocks.iter().cloned())
        .map(|b| spawned(read_block(files.clone(), b)))
        .buffered(PARALLEL_BLOCKS);
    let mut sources = Vec::with_capacity(tables.blocks.len() + 1);
    while let Some(s) = reads.next().await {
        match s? {
            Some(s) => sources.push(s),
            None => return Ok(None),
        }
    }
    if let Some(head) = head_summaries(engine, tables).await? {
        sources.push(head);
    }
    let mut candidates = judge(&mut sources, expr, range)?;
    // Best upper bound first; the lower id among equals (the order the answer uses).
    candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut exact: Vec<([u8; 16], Hit)> = Vec::new();
    let chunk = limit.saturating_mul(2).max(64);
    let mut next = 0;
    while next < candidates.len() {
        if exact.len() >= limit && limit > 0 {
            exact.sort_unstable_by(|a, b| b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0)));
            if exact[limit - 1].1.last_start >= candidates[next].1 {
                break;
            }
        }
        let upto = next.saturating_add(chunk).min(candidates.len());
        let ids: Vec<[u8; 16]> = candidates[next..upto].iter().map(|(id, _)| *id).collect();
        next = upto;
        match latest_in_range(engine, tables, &ids, range).await? {
            Some(found) => exact.extend(found),
            None => return Ok(None),
        }
    }
    exact.sort_unstable_by(|a, b| b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0)));
    exact.truncate(limit);
    Ok(Some(exact.into_iter().collect()))
}

/// A block's summaries; `None` if its `traces.parquet` lacks a column.
async fn read_block(files: BlockFiles, block: Arc<Block>) -> Result<Option<Summaries>, QueryError> {
    let path = block.file(TRACES_FILE);
    let size = block.meta.traces_bytes;
    let meta = files.meta(&path, size).await?;
    let schema = meta.schema().clone();
    let mut wanted = Vec::new();
    for name in [
        trace_col::TRACE_ID,
        trace_col::START,
        trace_col::END,
        trace_col::ROOT_SERVICE,
        trace_col::ROOT_NAME,
    ] {
        match schema.index_of(name) {
            Ok(i) => wanted.push(i),
            Err(_) => return Ok(None),
        }
    }
    let mask = ProjectionMask::roots(meta.parquet_schema(), wanted);
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchStreamBuilder::new_with_metadata(files.reader(path, size), meta)
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(StoreError::from)?
            .try_collect()
            .await
            .map_err(StoreError::from)?;
    let Some(first) = batches.first() else { return Ok(None) };
    let all = arrow::compute::concat_batches(&first.schema(), &batches)?;
    let s = Summaries::from_batch(&all)?;
    // Written sorted by trace id; checked, since the merge relies on it.
    if (1..s.ids.len()).any(|i| s.id(i - 1) >= s.id(i)) {
        return Err(StoreError::Corrupt(format!(
            "block {}: traces.parquet is not sorted by trace id",
            block.meta.id
        ))
        .into());
    }
    Ok(Some(s))
}

/// The head's per-trace summaries (as a block's), sorted by trace id.
async fn head_summaries(
    engine: &QueryEngine,
    tables: &Tables,
) -> Result<Option<Summaries>, QueryError> {
    if tables.head.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let head = assemble(
        engine,
        Viewed {
            blocks: Vec::new(),
            head: tables.head.clone(),
            dedicated: tables.dedicated.clone(),
            schema: tables.schema.clone(),
            answered: Vec::new(),
        },
    )?;
    let batches = trace_summaries(&head)?
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
    Ok(Some(Summaries::from_batch(&take_record_batch(&renamed, &order)?)?))
}

/// A merged trace's root service and root name.
type Roots = (Option<String>, Option<String>);

/// What merging split traces changes in one source: rows judged elsewhere (a later piece of a
/// trace whose first piece is in an earlier source) and merged roots of its first pieces.
#[derive(Default)]
struct Merged {
    excluded: Vec<bool>,
    roots: HashMap<usize, Roots>,
}

/// Finds the traces present in several sources (a merge of their id-sorted rows) and folds
/// each into its first piece: earliest start, latest end, the greatest root service and name
/// (as the planned summaries do); the other pieces are excluded.
fn merge_split(sources: &mut [Summaries]) -> Vec<Merged> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut merged: Vec<Merged> = sources
        .iter()
        .map(|s| Merged { excluded: vec![false; s.ids.len()], roots: HashMap::new() })
        .collect();
    let mut pos = vec![0usize; sources.len()];
    let mut heap: BinaryHeap<Reverse<(u128, usize)>> = sources
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.ids.is_empty())
        .map(|(i, s)| Reverse((s.id(0), i)))
        .collect();
    let mut group: Vec<(usize, usize)> = Vec::new();
    while let Some(Reverse((id, si))) = heap.pop() {
        group.clear();
        group.push((si, pos[si]));
        while let Some(Reverse((next, sj))) = heap.peek().copied()
            && next == id
        {
            heap.pop();
            group.push((sj, pos[sj]));
        }
        for &(sj, _) in &group {
            pos[sj] += 1;
            if let Some(s) = sources.get(sj)
                && pos[sj] < s.ids.len()
            {
                heap.push(Reverse((s.id(pos[sj]), sj)));
            }
        }
        if group.len() == 1 {
            continue;
        }
        group.sort_unstable();
        let (first, row) = group[0];
        let mut start = i64::MAX;
        let mut end = i64::MIN;
        let mut service: Option<&str> = None;
        let mut name: Option<&str> = None;
        for &(sj, r) in &group {
            let s = &sources[sj];
            start = start.min(s.start[r]);
            end = end.max(s.end[r]);
            if s.root_service.is_valid(r) {
                service = service.max(Some(s.root_service.value(r)));
            }
            if s.root_name.is_valid(r) {
                name = name.max(Some(s.root_name.value(r)));
            }
        }
        let roots = (service.map(str::to_string), name.map(str::to_string));
        for &(sj, r) in &group[1..] {
            merged[sj].excluded[r] = true;
        }
        merged[first].roots.insert(row, roots);
        let s = &mut sources[first];
        s.start[row] = start;
        s.end[row] = end;
    }
    merged
}

/// Merges split traces and evaluates `expr` on every trace once: (id, upper bound of its
/// latest span start in `range`) of each passing trace that may have a span in `range`.
fn judge(
    sources: &mut [Summaries],
    expr: &Expr,
    range: Option<(i64, i64)>,
) -> Result<Vec<([u8; 16], i64)>, QueryError> {
    let merged = merge_split(sources);
    let ctx = SessionContext::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new(T_START, DataType::Int64, false),
        Field::new(T_END, DataType::Int64, false),
        Field::new(T_DURATION, DataType::Int64, false),
        Field::new(T_ROOT_SERVICE, DataType::Utf8, true),
        Field::new(T_ROOT_NAME, DataType::Utf8, true),
    ]));
    let phys = physical(&ctx, expr.clone(), &schema)?;
    let mut out = Vec::new();
    for (s, m) in sources.iter().zip(&merged) {
        let n = s.ids.len();
        let (service, name): (ArrayRef, ArrayRef) = match m.roots.is_empty() {
            true => (Arc::new(s.root_service.clone()), Arc::new(s.root_name.clone())),
            false => {
                let pick = |a: &StringArray, which: fn(&Roots) -> &Option<String>| {
                    let mut b = arrow::array::StringBuilder::with_capacity(n, a.values().len());
                    for i in 0..n {
                        match m.roots.get(&i) {
                            Some(r) => b.append_option(which(r).as_deref()),
                            None => b.append_option(a.is_valid(i).then(|| a.value(i))),
                        }
                    }
                    b.finish()
                };
                (Arc::new(pick(&s.root_service, |r| &r.0)), Arc::new(pick(&s.root_name, |r| &r.1)))
            }
        };
        let duration = Int64Array::from(
            s.start.iter().zip(&s.end).map(|(a, b)| b.saturating_sub(*a)).collect::<Vec<i64>>(),
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(s.start.clone())),
                Arc::new(Int64Array::from(s.end.clone())),
                Arc::new(duration),
                service,
                name,
            ],
        )?;
        let passed = phys.evaluate(&batch)?.into_array(n)?;
        let Some(passed) = passed.as_boolean_opt() else {
            return Err(QueryError::Internal("trace predicate is not boolean".into()));
        };
        for i in 0..n {
            if !passed.is_valid(i) || !passed.value(i) || m.excluded[i] {
                continue;
            }
            let (start, end) = (s.start[i], s.end[i]);
            let bound = match range {
                Some((lo, hi)) if start > hi || end < lo => continue,
                Some((_, hi)) => end.min(hi),
                None => end,
            };
            out.push((trace_key(&s.ids, i), bound));
        }
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
