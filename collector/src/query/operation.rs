//! Spans of one operation (service + span name) in a time range, optionally only those slower
//! (or faster) than a threshold: the selection behind operation flamegraphs and slow-vs-normal
//! comparisons.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use datafusion::prelude::{col, ident, lit};

use super::tables::span_tables;
use super::{QueryEngine, QueryError};
use crate::spanrows::{col as c, column};

#[derive(Debug, Clone, PartialEq)]
pub struct OperationQuery {
    pub service: String,
    pub span_name: String,
    pub start_ns: i64,
    pub end_ns: i64,
    /// Only spans at least this long.
    pub min_duration_ns: Option<i64>,
    /// Only spans shorter than this.
    pub below_duration_ns: Option<i64>,
    /// The slowest `limit` spans are kept.
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub start_ns: i64,
    pub duration_ns: i64,
}

/// The operation's spans, slowest first.
pub(super) async fn operation_spans(
    engine: &QueryEngine,
    tenant: &str,
    q: &OperationQuery,
) -> Result<Vec<OperationSpan>, QueryError> {
    let peers =
        crate::cluster::SpanScope { range: Some((q.start_ns, q.end_ns)), ..Default::default() };
    let tables = span_tables(
        engine,
        tenant,
        |b| b.meta.max_time >= q.start_ns && b.meta.min_time <= q.end_ns,
        &peers,
    )
    .await?;
    let mut pred = ident(c::SERVICE)
        .eq(lit(q.service.as_str()))
        .and(ident(c::NAME).eq(lit(q.span_name.as_str())))
        .and(col(c::START).gt_eq(lit(q.start_ns)))
        .and(col(c::START).lt_eq(lit(q.end_ns)));
    if let Some(min) = q.min_duration_ns {
        pred = pred.and(col(c::DURATION).gt_eq(lit(min)));
    }
    if let Some(below) = q.below_duration_ns {
        pred = pred.and(col(c::DURATION).lt(lit(below)));
    }
    let df = tables
        .spans
        .filter(pred)?
        .select(vec![
            ident(c::TRACE_ID).alias(c::TRACE_ID),
            ident(c::SPAN_ID).alias(c::SPAN_ID),
            ident(c::START).alias(c::START),
            ident(c::DURATION).alias(c::DURATION),
        ])?
        .sort(vec![col(c::DURATION).sort(false, false)])?
        .limit(0, Some(q.limit))?;
    let mut out = Vec::new();
    for b in df.collect().await? {
        let tids = column(&b, c::TRACE_ID)?.as_fixed_size_binary();
        let sids = column(&b, c::SPAN_ID)?.as_fixed_size_binary();
        let start = column(&b, c::START)?.as_primitive::<Int64Type>();
        let dur = column(&b, c::DURATION)?.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let (Ok(trace_id), Ok(span_id)) =
                (<[u8; 16]>::try_from(tids.value(i)), <[u8; 8]>::try_from(sids.value(i)))
            else {
                continue;
            };
            if start.is_valid(i) && dur.is_valid(i) {
                out.push(OperationSpan {
                    trace_id,
                    span_id,
                    start_ns: start.value(i),
                    duration_ns: dur.value(i),
                });
            }
        }
    }
    Ok(out)
}
