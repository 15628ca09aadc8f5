//! Trace by id: bloom-pruned blocks + head, then span rows back into OTLP `TracesData`.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use opentelemetry_proto::tonic::trace::v1::TracesData;

use super::compile::trace_id_in;
use super::tables::{Viewed, block_rows, view};
use super::trace_rows::{member, whole_rows};
use super::{QueryEngine, QueryError};
use crate::cluster::SpanScope;
use crate::spanrows::{DedicatedColumns, col as c, to_traces_data};
use crate::store::Block;
use crate::store::block::decode_parents;

/// All spans of one trace, without needing a time range. `range` (unix nanos) only
/// narrows the blocks read.
pub(super) async fn trace_by_id(
    engine: &QueryEngine,
    tenant: &str,
    id: [u8; 16],
    range: Option<(i64, i64)>,
) -> Result<TracesData, QueryError> {
    let started = std::time::Instant::now();
    let (batches, dedicated) = whole_trace_rows(
        engine,
        tenant,
        |b| {
            b.bloom.contains(&id)
                && range.is_none_or(|(s, e)| b.meta.max_time >= s && b.meta.min_time <= e)
        },
        &[id],
        &SpanScope { trace_ids: vec![hex::encode(id)], ..Default::default() },
    )
    .await?;
    let data = to_traces_data(&batches, &dedicated)?;
    engine.observe("trace_by_id", started);
    if data.resource_spans.is_empty() {
        return Err(QueryError::NotFound);
    }
    Ok(data)
}

/// Every row of the traces `ids` from the blocks `select` keeps and the head, with parent ids
/// restored, aligned to one schema, each (trace id, span id) once; and the dedicated columns
/// of that schema.
pub(super) async fn whole_trace_rows(
    engine: &QueryEngine,
    tenant: &str,
    select: impl Fn(&Block) -> bool,
    ids: &[[u8; 16]],
    scope: &SpanScope,
) -> Result<(Vec<RecordBatch>, DedicatedColumns), QueryError> {
    let Viewed { blocks, head, dedicated, schema, .. } =
        view(engine, tenant, select, scope).await?;
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let sorted = Arc::new(sorted);
    let files = engine.files();
    // Each block is read on its own, in file order, so parent offsets can be resolved (all
    // rows of a trace are read, so offsets within it stay valid); without a plan through the
    // cached footer, or with one for a block of an older layout.
    let per_block = futures::future::try_join_all(blocks.iter().map(|b| {
        let (files, schema, sorted) = (files.clone(), schema.clone(), sorted.clone());
        async move {
            match whole_rows(files, b.clone(), schema.clone(), sorted.clone()).await? {
                Some(rows) => Ok(rows),
                None => block_rows(engine, b, schema, trace_id_in(&sorted)).await,
            }
        }
    }))
    .await?;
    let mut batches = Vec::new();
    for rows in per_block {
        batches.extend(decode_parents(&rows)?);
    }
    for b in &head {
        let Some(tid) = b.column_by_name(c::TRACE_ID) else { continue };
        let kept = filter_record_batch(b, &member(tid.as_ref(), &sorted)?)?;
        if kept.num_rows() > 0 {
            batches.push(kept);
        }
    }
    Ok((first_copies(batches)?, dedicated))
}

/// Keeps the first row of each (trace id, span id): a span a client sent twice (a retry after
/// a lost ack that ingest's dedupe window no longer remembered) may sit in two blocks, or in a
/// block and the head.
fn first_copies(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, QueryError> {
    let mut seen: HashSet<([u8; 16], [u8; 8])> = HashSet::new();
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let (Some(tid), Some(sid)) = (b.column_by_name(c::TRACE_ID), b.column_by_name(c::SPAN_ID))
        else {
            out.push(b);
            continue;
        };
        let (tid, sid) = (tid.as_fixed_size_binary(), sid.as_fixed_size_binary());
        let keep: BooleanArray = (0..b.num_rows())
            .map(|r| {
                let t = <[u8; 16]>::try_from(tid.value(r)).unwrap_or_default();
                let s = <[u8; 8]>::try_from(sid.value(r)).unwrap_or_default();
                Some(seen.insert((t, s)))
            })
            .collect();
        if keep.true_count() == b.num_rows() {
            out.push(b);
        } else {
            out.push(filter_record_batch(&b, &keep)?);
        }
    }
    Ok(out)
}
