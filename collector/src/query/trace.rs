//! Trace by id: bloom-pruned blocks + head, then span rows back into OTLP `TracesData`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::prelude::{Expr, SessionContext, col, lit};
use opentelemetry_proto::tonic::trace::v1::TracesData;

use super::tables::{block_rows, view};
use super::{QueryEngine, QueryError};
use crate::spanrows::{DedicatedColumns, col as c, span_schema, to_traces_data};
use crate::store::Block;
use crate::store::block::{align, decode_parents};

/// All spans of one trace, without needing a time range. `range` (unix nanos) only
/// narrows the blocks read.
pub(super) async fn trace_by_id(
    engine: &QueryEngine,
    tenant: &str,
    id: [u8; 16],
    range: Option<(i64, i64)>,
) -> Result<TracesData, QueryError> {
    let started = std::time::Instant::now();
    let id_eq = || col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec()))));
    let (batches, dedicated) = whole_trace_rows(
        engine,
        tenant,
        |b| {
            b.bloom.contains(&id)
                && range.is_none_or(|(s, e)| b.meta.max_time >= s && b.meta.min_time <= e)
        },
        id_eq,
    )
    .await?;
    let data = to_traces_data(&batches, &dedicated)?;
    engine.observe("trace_by_id", started);
    if data.resource_spans.is_empty() {
        return Err(QueryError::NotFound);
    }
    Ok(data)
}

/// Rows passing `filter` (which must keep every row of a trace it keeps) from the blocks
/// `select` keeps and the head, with parent ids restored, aligned to one schema; and the
/// dedicated columns of that schema.
pub(super) async fn whole_trace_rows(
    engine: &QueryEngine,
    tenant: &str,
    select: impl Fn(&Block) -> bool,
    filter: impl Fn() -> Expr,
) -> Result<(Vec<RecordBatch>, DedicatedColumns), QueryError> {
    let (blocks, head) = view(engine, tenant, select)?;
    let dedicated = engine.store.dedicated_columns(&blocks);
    let schema = span_schema(&dedicated);
    // Each block is read on its own, in file order, so parent offsets can be resolved
    // (all rows of a trace pass the filter, so offsets within it stay valid).
    let per_block = futures::future::try_join_all(
        blocks.iter().map(|b| block_rows(engine, b, schema.clone(), filter())),
    )
    .await?;
    let mut batches = Vec::new();
    for rows in per_block {
        batches.extend(decode_parents(&rows)?);
    }
    if !head.is_empty() {
        let ctx = SessionContext::new();
        let mem = Arc::new(MemTable::try_new(head[0].schema(), vec![head])?);
        for b in ctx.read_table(mem)?.filter(filter())?.collect().await? {
            batches.push(align(&b, &schema)?);
        }
    }
    Ok((batches, dedicated))
}
