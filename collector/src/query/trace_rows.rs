//! The spans of a few known traces, from the head and the blocks of a [`Tables`], without a
//! DataFusion plan: search's phase 2 asks for `limit` traces spread over many blocks, and a
//! plan's per-file setup cost more than the reading. A block file is read through its cached
//! footer: only the pages whose trace-id range holds one of the traces (spans are sorted by
//! trace id), and within them only the rows of those traces (a row filter on the trace id
//! decodes the other columns for matching rows only).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{Expr, SessionContext};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowPredicateFn;

use super::footers::{BlockFiles, spawned};
use super::{QueryEngine, QueryError, Tables, compile, page_prune};
use crate::spanrows::col as c;
use crate::store::block::SPANS_FILE;
use crate::store::{Block, StoreError};

/// Block files read at once.
const PARALLEL_BLOCKS: usize = 2;

/// What to return per row: span columns as stored, then expressions evaluated on them.
#[derive(Clone)]
pub(super) struct Wanted {
    pub columns: Vec<&'static str>,
    pub exprs: Vec<(&'static str, Expr)>,
}

/// Rows of the traces `ids` as batches of [`Wanted`]'s columns then expressions, in no
/// particular order; `None` when some block file lacks a column the request reads (its
/// columns come from an older layout: the caller uses a plan, which adapts them).
pub(super) async fn trace_rows(
    engine: &QueryEngine,
    tables: &Tables,
    ids: &[[u8; 16]],
    wanted: &Wanted,
) -> Result<Option<Vec<RecordBatch>>, QueryError> {
    let ctx = SessionContext::new();
    let mut sorted: Vec<[u8; 16]> = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let sorted = Arc::new(sorted);
    let mut needed: Vec<String> = wanted.columns.iter().map(|s| s.to_string()).collect();
    needed.push(c::TRACE_ID.to_string());
    for (_, e) in &wanted.exprs {
        needed.extend(e.column_refs().into_iter().map(|r| r.name.clone()));
    }
    needed.sort_unstable();
    needed.dedup();

    let mut out = Vec::new();
    if let Some(first) = tables.head.first() {
        let schema = first.schema();
        let Some(indices) = indices_of(&schema, &tables.schema, &needed) else {
            return Ok(None);
        };
        let projected = Arc::new(schema.project(&indices)?);
        let exprs = physical(&ctx, &projected, wanted)?;
        for b in &tables.head {
            let b = b.project(&indices)?;
            let keep = member(b.column(projected.index_of(c::TRACE_ID)?).as_ref(), &sorted)?;
            let b = filter_record_batch(&b, &keep)?;
            if b.num_rows() > 0 {
                out.push(finish(&b, wanted, &exprs)?);
            }
        }
    }
    let files = engine.files();
    let needed = Arc::new(needed);
    let wanted = Arc::new(Wanted { columns: wanted.columns.clone(), exprs: wanted.exprs.clone() });
    let mut parts = futures::stream::iter(tables.blocks.iter().cloned())
        .map(|b| {
            spawned(block_rows(
                files.clone(),
                ctx.clone(),
                b,
                tables.schema.clone(),
                needed.clone(),
                sorted.clone(),
                wanted.clone(),
            ))
        })
        .buffered(PARALLEL_BLOCKS);
    while let Some(part) = parts.next().await {
        match part? {
            Some(batches) => out.extend(batches),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

async fn block_rows(
    files: BlockFiles,
    ctx: SessionContext,
    block: Arc<Block>,
    unified: SchemaRef,
    needed: Arc<Vec<String>>,
    sorted: Arc<Vec<[u8; 16]>>,
    wanted: Arc<Wanted>,
) -> Result<Option<Vec<RecordBatch>>, QueryError> {
    let path = block.file(SPANS_FILE);
    let size = block.meta.spans_bytes;
    let meta = files.meta(&path, size).await?;
    let schema = meta.schema().clone();
    let Some(indices) = indices_of(&schema, &unified, &needed) else { return Ok(None) };
    let values: Vec<&[u8]> = sorted.iter().map(|v| v.as_slice()).collect();
    let selected = page_prune::select_containing(&meta, c::TRACE_ID, &values)?;
    if selected.rows == 0 {
        return Ok(Some(Vec::new()));
    }
    let tid = schema.index_of(c::TRACE_ID)?;
    let ids = sorted.clone();
    let parquet_schema = meta.parquet_schema();
    let filter = ArrowPredicateFn::new(ProjectionMask::roots(parquet_schema, [tid]), move |b| {
        member(b.column(0).as_ref(), &ids)
            .map_err(|e| arrow::error::ArrowError::ComputeError(e.to_string()))
    });
    let mask = ProjectionMask::roots(parquet_schema, indices.iter().copied());
    let mut stream = files.filtered((path, size), meta, mask, selected, Box::new(filter))?;
    let read = stream.schema().clone();
    let exprs = physical(&ctx, &read, &wanted)?;
    let mut out = Vec::new();
    while let Some(b) = stream.try_next().await.map_err(StoreError::from)? {
        if b.num_rows() > 0 {
            out.push(finish(&b, &wanted, &exprs)?);
        }
    }
    Ok(Some(out))
}

/// Every column of the rows of the traces `sorted` (ascending) in a block, in file order (as
/// parent offsets need), through its cached footer: only the pages whose trace-id range holds
/// one of them, a row filter on the trace id. `None` when the file's schema is not `unified`
/// (an older layout: a plan adapts it).
pub(super) async fn whole_rows(
    files: BlockFiles,
    block: Arc<Block>,
    unified: SchemaRef,
    sorted: Arc<Vec<[u8; 16]>>,
) -> Result<Option<Vec<RecordBatch>>, QueryError> {
    let path = block.file(SPANS_FILE);
    let size = block.meta.spans_bytes;
    let meta = files.meta(&path, size).await?;
    if meta.schema().fields() != unified.fields() {
        return Ok(None);
    }
    let values: Vec<&[u8]> = sorted.iter().map(|v| v.as_slice()).collect();
    let selected = page_prune::select_containing(&meta, c::TRACE_ID, &values)?;
    if selected.rows == 0 {
        return Ok(Some(Vec::new()));
    }
    let tid = meta.schema().index_of(c::TRACE_ID)?;
    let parquet_schema = meta.parquet_schema();
    let filter = ArrowPredicateFn::new(ProjectionMask::roots(parquet_schema, [tid]), move |b| {
        member(b.column(0).as_ref(), &sorted)
            .map_err(|e| arrow::error::ArrowError::ComputeError(e.to_string()))
    });
    let stream =
        files.filtered((path, size), meta, ProjectionMask::all(), selected, Box::new(filter))?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(StoreError::from)?;
    Ok(Some(batches.into_iter().filter(|b| b.num_rows() > 0).collect()))
}

/// Positions of `needed` in `schema`, when each is there with the unified schema's type.
fn indices_of(schema: &Schema, unified: &Schema, needed: &[String]) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(needed.len());
    for n in needed {
        let (i, f) = schema.column_with_name(n)?;
        let (_, u) = unified.column_with_name(n)?;
        if f.data_type() != u.data_type() {
            return None;
        }
        out.push(i);
    }
    out.sort_unstable();
    Some(out)
}

fn physical(
    ctx: &SessionContext,
    schema: &SchemaRef,
    wanted: &Wanted,
) -> Result<Vec<Arc<dyn PhysicalExpr>>, QueryError> {
    wanted.exprs.iter().map(|(_, e)| compile::physical(ctx, e.clone(), schema)).collect()
}

/// Whether each trace id of `ids` is in `sorted` (ascending); NULL is not. Ids compare as
/// big-endian integers: the same order as bytes, without a `memcmp` call per probe, read
/// straight from the values buffer (this runs on every row of the pages read).
pub(super) fn member(ids: &dyn Array, sorted: &[[u8; 16]]) -> Result<BooleanArray, QueryError> {
    let Some(ids) = ids.as_fixed_size_binary_opt() else {
        return Err(QueryError::Internal("trace ids are not fixed-size binary".into()));
    };
    let keys: Vec<u128> = sorted.iter().map(|id| u128::from_be_bytes(*id)).collect();
    let found = match ids.value_length() {
        16 => {
            let data = ids.value_data();
            BooleanBuffer::collect_bool(ids.len(), |i| {
                data.get(i * 16..i * 16 + 16)
                    .and_then(|v| <[u8; 16]>::try_from(v).ok())
                    .is_some_and(|v| keys.binary_search(&u128::from_be_bytes(v)).is_ok())
            })
        }
        _ => BooleanBuffer::new_unset(ids.len()),
    };
    let found = match ids.nulls() {
        Some(valid) => &found & valid.inner(),
        None => found,
    };
    Ok(BooleanArray::new(found, None))
}

fn finish(
    b: &RecordBatch,
    wanted: &Wanted,
    exprs: &[Arc<dyn PhysicalExpr>],
) -> Result<RecordBatch, QueryError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for name in &wanted.columns {
        let i = b.schema().index_of(name)?;
        fields.push(b.schema().field(i).clone());
        cols.push(b.column(i).clone());
    }
    for ((name, _), e) in wanted.exprs.iter().zip(exprs) {
        let a = e.evaluate(b)?.into_array(b.num_rows())?;
        fields.push(Field::new(*name, a.data_type().clone(), true));
        cols.push(a);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::FixedSizeBinaryArray;

    #[test]
    fn member_marks_exactly_the_wanted_ids_and_never_a_null_even_in_a_slice() {
        let id = |n: u128| n.to_be_bytes();
        let ids = FixedSizeBinaryArray::try_from_sparse_iter_with_size(
            [Some(id(9)), Some(id(1)), None, Some(id(7)), Some(id(3)), Some(id(1 << 100))]
                .into_iter(),
            16,
        )
        .unwrap();
        let sorted = [id(1), id(3), id(1 << 100)];
        let got = member(&ids, &sorted).unwrap();
        let want = [false, true, false, false, true, true];
        assert_eq!(got.iter().map(|v| v.unwrap()).collect::<Vec<_>>(), want);
        let sliced = ids.slice(2, 3);
        let got = member(&sliced, &sorted).unwrap();
        assert_eq!(got.iter().map(|v| v.unwrap()).collect::<Vec<_>>(), [false, false, true]);
    }
}
