//! Queries over head + blocks with DataFusion: trace by id, TraceQL search and metrics, tag
//! names/values.
//!
//! Every query first prunes blocks (by time range, or by the trace-id bloom filters), then
//! builds a DataFusion plan over exactly those Parquet files plus a snapshot of the head. All
//! queries share one bounded memory pool: a query that needs more fails with
//! `ResourcesExhausted` instead of taking the process down.

pub mod compare;
pub mod compile;
pub mod critical_path;
pub mod operation;
pub mod search;
pub mod tags;
pub mod trace;
pub mod traceql;
pub mod traceql_metrics;
pub mod udf;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::head::Head;
use crate::metrics::Metrics;
use crate::store::block::{SPANS_FILE, TRACES_FILE, align, traces_schema};
use crate::store::schema::{Dedicated, span_schema};
use crate::store::{Block, Store, StoreError};

/// Object-store URL under which block files are registered with DataFusion.
const BLOCKS_URL: &str = "skein://blocks";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid TraceQL: {0}")]
    TraceQl(#[from] traceql::ParseError),
    #[error("not found")]
    NotFound,
    #[error("query needs more memory than allowed: {0}")]
    ResourcesExhausted(String),
    #[error("query failed: {0}")]
    Internal(String),
    #[error("query failed: {0}")]
    DataFusion(#[source] DataFusionError),
    #[error("query failed: {0}")]
    Store(#[from] StoreError),
    #[error("query failed: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("query failed: {0}")]
    Head(#[from] crate::head::HeadError),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => QueryError::ResourcesExhausted(m.clone()),
            _ => QueryError::DataFusion(e),
        }
    }
}

impl crate::error::Coded for QueryError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            QueryError::BadRequest(_) | QueryError::TraceQl(_) => ErrorCode::InvalidArgument,
            QueryError::NotFound => ErrorCode::NotFound,
            QueryError::ResourcesExhausted(_) => ErrorCode::ResourceExhausted,
            QueryError::Internal(_)
            | QueryError::DataFusion(_)
            | QueryError::Store(_)
            | QueryError::Arrow(_)
            | QueryError::Head(_) => ErrorCode::Internal,
        }
    }
}

pub struct QueryEngine {
    pub store: Arc<Store>,
    pub head: Arc<Head>,
    pub metrics: Arc<Metrics>,
    runtime: Arc<RuntimeEnv>,
}

/// The span (and optionally trace-summary) tables of one query.
pub struct Tables {
    pub ctx: SessionContext,
    pub spans: DataFrame,
    pub layout: Dedicated,
    pub schema: SchemaRef,
    pub blocks: Vec<Arc<Block>>,
    /// The head snapshot taken together with `blocks` (not aligned to `schema`).
    pub head: Vec<RecordBatch>,
}

impl QueryEngine {
    pub fn new(
        store: Arc<Store>,
        head: Arc<Head>,
        metrics: Arc<Metrics>,
        memory_bytes: usize,
    ) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(memory_bytes)))
            .build_arc()?;
        let url = url::Url::parse(BLOCKS_URL).map_err(|e| QueryError::Internal(e.to_string()))?;
        runtime.register_object_store(&url, store.object_store.clone());
        Ok(QueryEngine { store, head, metrics, runtime })
    }

    fn context(&self) -> SessionContext {
        self.context_with(2)
    }

    /// A context whose scans keep file row order (one partition, no byte-range splitting):
    /// needed where rows are decoded relative to each other (parent offsets).
    fn ordered_context(&self) -> SessionContext {
        let ctx = self.context_with(1);
        ctx.state_ref().write().config_mut().options_mut().optimizer.repartition_file_scans = false;
        ctx
    }

    fn context_with(&self, partitions: usize) -> SessionContext {
        let mut config =
            SessionConfig::new().with_target_partitions(partitions).with_batch_size(8192);
        let opts = config.options_mut();
        // Late materialisation: filter on cheap columns before decoding attribute lists.
        opts.execution.parquet.pushdown_filters = true;
        opts.execution.parquet.reorder_filters = true;
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        for f in udf::all_udfs() {
            ctx.register_udf(f);
        }
        ctx
    }

    /// Spans of one block file, in file order, as read by an ordered context.
    pub async fn block_rows(
        &self,
        block: &Block,
        schema: SchemaRef,
        filter: datafusion::prelude::Expr,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let ctx = self.ordered_context();
        let Some(table) = self.listing(vec![block.meta.file(SPANS_FILE).to_string()], schema)?
        else {
            return Ok(Vec::new());
        };
        Ok(ctx.read_table(table)?.filter(filter)?.collect().await?)
    }

    fn listing(
        &self,
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

    /// The blocks `select` keeps and the head, taken atomically with respect to flushes.
    pub fn view(
        &self,
        tenant: &str,
        select: impl Fn(&Block) -> bool,
    ) -> Result<(Vec<Arc<Block>>, Vec<RecordBatch>), QueryError> {
        self.store.view(tenant, |blocks| {
            let chosen: Vec<Arc<Block>> = blocks.iter().filter(|b| select(b)).cloned().collect();
            Ok((chosen, self.head.snapshot(tenant)?))
        })
    }

    /// Spans of `tenant` from the selected blocks plus the head, as one DataFrame.
    pub fn span_tables(
        &self,
        tenant: &str,
        select: impl Fn(&Block) -> bool,
    ) -> Result<Tables, QueryError> {
        let (blocks, head) = self.view(tenant, select)?;
        let ctx = self.context();
        let layout = self.store.layout(&blocks);
        let schema = span_schema(&layout);
        let files: Vec<String> =
            blocks.iter().map(|b| b.meta.file(SPANS_FILE).to_string()).collect();
        let aligned: Vec<RecordBatch> =
            head.iter().map(|b| align(b, &schema)).collect::<Result<_, _>>()?;
        let spans = self.union(&ctx, files, aligned, schema.clone())?;
        Ok(Tables { ctx, spans, layout, schema, blocks, head })
    }

    fn union(
        &self,
        ctx: &SessionContext,
        files: Vec<String>,
        head: Vec<RecordBatch>,
        schema: SchemaRef,
    ) -> Result<DataFrame, QueryError> {
        let listing = self.listing(files, schema.clone())?;
        let mem = Arc::new(MemTable::try_new(schema, vec![head])?);
        let mem_df = ctx.read_table(mem)?;
        Ok(match listing {
            Some(l) => ctx.read_table(l)?.union(mem_df)?,
            None => mem_df,
        })
    }

    /// Per-trace summaries (start, end, root service/name) for traces in `blocks` and the head,
    /// merged across blocks: a trace may be split over several.
    pub fn trace_summaries(&self, tables: &Tables) -> Result<DataFrame, QueryError> {
        use datafusion::functions_aggregate::expr_fn::{max, min, sum};
        use datafusion::prelude::*;
        let files: Vec<String> =
            tables.blocks.iter().map(|b| b.meta.file(TRACES_FILE).to_string()).collect();
        // Unqualified names on both sides of the union keep later references unambiguous.
        let unqualified = |df: DataFrame| -> Result<DataFrame, QueryError> {
            let cols: Vec<Expr> =
                traces_schema().fields().iter().map(|f| ident(f.name()).alias(f.name())).collect();
            Ok(df.select(cols)?)
        };
        let mut df = match self.listing(files, traces_schema())? {
            Some(l) => Some(unqualified(tables.ctx.read_table(l)?)?),
            None => None,
        };
        {
            let head = tables.head.clone();
            if !head.is_empty() {
                let schema = span_schema(self.head.dedicated());
                let mem = Arc::new(MemTable::try_new(schema, vec![head])?);
                let is_root = col("parent_span_id").is_null();
                let h = tables.ctx.read_table(mem)?.aggregate(
                    vec![col("trace_id")],
                    vec![
                        min(col("start_time")).alias("start_time"),
                        max(col("start_time") + col("duration")).alias("end_time"),
                        max(when(
                            is_root.clone(),
                            cast(col("service_name"), arrow::datatypes::DataType::Utf8),
                        )
                        .end()?)
                        .alias("root_service"),
                        max(when(
                            is_root.clone(),
                            cast(col("name"), arrow::datatypes::DataType::Utf8),
                        )
                        .end()?)
                        .alias("root_name"),
                        cast(count_all(), arrow::datatypes::DataType::UInt32).alias("span_count"),
                        cast(
                            sum(when(col("status_code").eq(lit(2i8)), lit(1u32))
                                .otherwise(lit(0u32))?),
                            arrow::datatypes::DataType::UInt32,
                        )
                        .alias("error_count"),
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
            None => tables
                .ctx
                .read_table(Arc::new(MemTable::try_new(traces_schema(), vec![vec![]])?))?,
        };
        Ok(df
            .aggregate(
                vec![col("trace_id")],
                vec![
                    min(col("start_time")).alias("t_start"),
                    max(col("end_time")).alias("t_end"),
                    max(col("root_service")).alias("t_root_service"),
                    max(col("root_name")).alias("t_root_name"),
                    sum(col("span_count")).alias("t_span_count"),
                ],
            )?
            // Grouping an already grouped input makes DataFusion carry the functionally dependent
            // input columns along; keep only the summary.
            .select_columns(&[
                "trace_id",
                "t_start",
                "t_end",
                "t_root_service",
                "t_root_name",
                "t_span_count",
            ])?)
    }

    pub fn observe(&self, endpoint: &str, started: std::time::Instant) {
        self.metrics
            .query_seconds
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
    }
}

fn count_all() -> datafusion::prelude::Expr {
    datafusion::functions_aggregate::expr_fn::count(datafusion::prelude::lit(1u8))
}

/// Unix seconds → nanoseconds, saturating.
pub fn secs_to_nanos(s: i64) -> i64 {
    s.saturating_mul(1_000_000_000)
}

pub fn parse_trace_id(s: &str) -> Result<[u8; 16], QueryError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(QueryError::BadRequest(format!(
            "invalid trace id {s:?}: expected up to 32 hex digits"
        )));
    }
    // Shorter ids (64-bit B3) are left-padded with zeros, as Tempo does.
    let padded = format!("{s:0>32}");
    let mut out = [0u8; 16];
    hex::decode_to_slice(&padded, &mut out)
        .map_err(|e| QueryError::BadRequest(format!("invalid trace id: {e}")))?;
    Ok(out)
}
