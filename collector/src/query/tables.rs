//! The tables a query reads: the selected blocks' Parquet files plus a head snapshot, taken
//! atomically with respect to flushes, registered with a DataFusion context.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::compile::{T_END, T_ROOT_NAME, T_ROOT_SERVICE, T_SPAN_COUNT, T_START};
use super::engine::BLOCKS_URL;
use super::{QueryEngine, QueryError, peer, udf};
use crate::cluster::SpanScope;
use crate::spanrows::{DedicatedColumns, col as c, span_schema};
use crate::store::Block;
use crate::store::block::{SPANS_FILE, TRACES_FILE, align, trace_col, traces_schema};

/// The span (and optionally trace-summary) tables of one query.
pub struct Tables {
    pub ctx: SessionContext,
    pub spans: DataFrame,
    pub dedicated: DedicatedColumns,
    pub schema: SchemaRef,
    pub blocks: Vec<Arc<Block>>,
    /// The rows not in blocks yet (this replica's head and its peers'), aligned to `schema`.
    pub head: Vec<RecordBatch>,
}

pub(super) fn context(engine: &QueryEngine) -> SessionContext {
    context_with(engine, 2)
}

/// A context whose scans keep file row order (one partition, no byte-range splitting):
/// needed where rows are decoded relative to each other (parent offsets).
fn ordered_context(engine: &QueryEngine) -> SessionContext {
    let ctx = context_with(engine, 1);
    ctx.state_ref().write().config_mut().options_mut().optimizer.repartition_file_scans = false;
    ctx
}

fn context_with(engine: &QueryEngine, partitions: usize) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(partitions).with_batch_size(8192);
    let opts = config.options_mut();
    // Late materialisation: filter on cheap columns before decoding attribute lists.
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.parquet.reorder_filters = true;
    let ctx = SessionContext::new_with_config_rt(config, engine.runtime.clone());
    for f in udf::all_udfs() {
        ctx.register_udf(f);
    }
    ctx
}

/// Spans of one block file, in file order, as read by an ordered context.
pub(super) async fn block_rows(
    engine: &QueryEngine,
    block: &Block,
    schema: SchemaRef,
    filter: datafusion::prelude::Expr,
) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = ordered_context(engine);
    let Some(table) = listing(vec![block.file(SPANS_FILE).to_string()], schema)? else {
        return Ok(Vec::new());
    };
    Ok(ctx.read_table(table)?.filter(filter)?.collect().await?)
}

pub(super) fn listing(
    files: Vec<String>,
    schema: SchemaRef,
) -> Result<Option<Arc<ListingTable>>, QueryError> {
    if files.is_empty() {
        return Ok(None);
    }
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(format!("{BLOCKS_URL}/{f}")))
        .collect::<Result<Vec<_>, _>>()?;
    let opts =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let cfg = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(opts)
        .with_schema(schema);
    Ok(Some(Arc::new(ListingTable::try_new(cfg)?)))
}

/// What one query reads: blocks (this replica's and, with peers, every namespace's) and the
/// rows not in blocks yet (this replica's head and its peers'), aligned to one schema.
pub(super) struct Viewed {
    pub blocks: Vec<Arc<Block>>,
    pub head: Vec<RecordBatch>,
    pub dedicated: DedicatedColumns,
    pub schema: SchemaRef,
    /// Base URLs of the peers whose heads are in `head` (live, so they may share the work).
    pub answered: Vec<String>,
}

/// The blocks `select` keeps and the rows not in blocks yet. This replica's blocks and head
/// are taken atomically with respect to its flushes; each peer's rows come with the blocks
/// they are not in (`peer.rs`), which are the blocks of its namespace read. `scope` says which
/// of the peers' rows the query can use (a superset is always right).
pub(super) async fn view(
    engine: &QueryEngine,
    tenant: &str,
    select: impl Fn(&Block) -> bool,
    scope: &SpanScope,
) -> Result<Viewed, QueryError> {
    let parts = peer::peer_parts(engine, tenant, scope).await;
    let mut blocks: Vec<Arc<Block>> = peer::shared_blocks(engine, tenant, &parts)
        .await?
        .into_iter()
        .filter(|b| select(b))
        .collect();
    let head = engine.store.view(tenant, |own| {
        blocks.extend(own.iter().filter(|b| select(b)).cloned());
        engine.head.snapshot(tenant)
    })?;
    let dedicated = parts
        .iter()
        .fold(engine.store.dedicated_columns(&blocks), |acc, p| acc.union(&p.dedicated));
    let schema = span_schema(&dedicated);
    let mut aligned = Vec::with_capacity(head.len());
    for b in head.iter().chain(parts.iter().flat_map(|p| p.rows.iter())) {
        aligned.push(align(b, &schema)?);
    }
    let answered = parts.into_iter().map(|p| p.base).collect();
    Ok(Viewed { blocks, head: aligned, dedicated, schema, answered })
}

/// Spans of `tenant` from the selected blocks plus the head, as one DataFrame.
pub(super) async fn span_tables(
    engine: &QueryEngine,
    tenant: &str,
    select: impl Fn(&Block) -> bool,
    scope: &SpanScope,
) -> Result<Tables, QueryError> {
    assemble(engine, view(engine, tenant, select, scope).await?)
}

/// The tables over exactly what `viewed` holds.
pub(super) fn assemble(engine: &QueryEngine, viewed: Viewed) -> Result<Tables, QueryError> {
    let Viewed { blocks, head, dedicated, schema, .. } = viewed;
    let ctx = context(engine);
    let files: Vec<String> = blocks.iter().map(|b| b.file(SPANS_FILE).to_string()).collect();
    let spans = union(&ctx, files, head.clone(), schema.clone())?;
    Ok(Tables { ctx, spans, dedicated, schema, blocks, head })
}

fn union(
    ctx: &SessionContext,
    files: Vec<String>,
    head: Vec<RecordBatch>,
    schema: SchemaRef,
) -> Result<DataFrame, QueryError> {
    let listing = listing(files, schema.clone())?;
    let mem = Arc::new(MemTable::try_new(schema, vec![head])?);
    let mem_df = ctx.read_table(mem)?;
    Ok(match listing {
        Some(l) => ctx.read_table(l)?.union(mem_df)?,
        None => mem_df,
    })
}

/// Per-trace summaries (start, end, root service/name) for traces in `blocks` and the head,
/// merged across blocks: a trace may be split over several.
pub(super) fn trace_summaries(tables: &Tables) -> Result<DataFrame, QueryError> {
    use datafusion::functions_aggregate::expr_fn::{max, min, sum};
    use datafusion::prelude::*;
    let files: Vec<String> =
        tables.blocks.iter().map(|b| b.file(TRACES_FILE).to_string()).collect();
    // Unqualified names on both sides of the union keep later references unambiguous.
    let unqualified = |df: DataFrame| -> Result<DataFrame, QueryError> {
        let cols: Vec<Expr> =
            traces_schema().fields().iter().map(|f| ident(f.name()).alias(f.name())).collect();
        Ok(df.select(cols)?)
    };
    let mut df = match listing(files, traces_schema())? {
        Some(l) => Some(unqualified(tables.ctx.read_table(l)?)?),
        None => None,
    };
    {
        let head = tables.head.clone();
        if !head.is_empty() {
            let mem = Arc::new(MemTable::try_new(tables.schema.clone(), vec![head])?);
            let is_root = col(c::PARENT_SPAN_ID).is_null();
            let h = tables.ctx.read_table(mem)?.aggregate(
                vec![col(c::TRACE_ID)],
                vec![
                    min(col(c::START)).alias(trace_col::START),
                    max(col(c::START) + col(c::DURATION)).alias(trace_col::END),
                    max(when(
                        is_root.clone(),
                        cast(col(c::SERVICE), arrow::datatypes::DataType::Utf8),
                    )
                    .end()?)
                    .alias(trace_col::ROOT_SERVICE),
                    max(when(
                        is_root.clone(),
                        cast(col(c::NAME), arrow::datatypes::DataType::Utf8),
                    )
                    .end()?)
                    .alias(trace_col::ROOT_NAME),
                    cast(count_all(), arrow::datatypes::DataType::UInt32)
                        .alias(trace_col::SPAN_COUNT),
                    cast(
                        sum(when(col(c::STATUS_CODE).eq(lit(2i8)), lit(1u32))
                            .otherwise(lit(0u32))?),
                        arrow::datatypes::DataType::UInt32,
                    )
                    .alias(trace_col::ERROR_COUNT),
                ],
            )?;
            let h = unqualified(h)?;
            df = Some(match df {
                Some(d) => d.union(h)?,
                None => h,
            });
        }
    }
    let df = match df {
        Some(d) => d,
        None => {
            tables.ctx.read_table(Arc::new(MemTable::try_new(traces_schema(), vec![vec![]])?))?
        }
    };
    Ok(df
        .aggregate(
            vec![col(c::TRACE_ID)],
            vec![
                min(col(trace_col::START)).alias(T_START),
                max(col(trace_col::END)).alias(T_END),
                max(col(trace_col::ROOT_SERVICE)).alias(T_ROOT_SERVICE),
                max(col(trace_col::ROOT_NAME)).alias(T_ROOT_NAME),
                sum(col(trace_col::SPAN_COUNT)).alias(T_SPAN_COUNT),
            ],
        )?
        // Grouping an already grouped input makes DataFusion carry the functionally dependent
        // input columns along; keep only the summary.
        .select_columns(&[
            trace_col::TRACE_ID,
            T_START,
            T_END,
            T_ROOT_SERVICE,
            T_ROOT_NAME,
            T_SPAN_COUNT,
        ])?)
}

fn count_all() -> datafusion::prelude::Expr {
    datafusion::functions_aggregate::expr_fn::count(datafusion::prelude::lit(1u8))
}
