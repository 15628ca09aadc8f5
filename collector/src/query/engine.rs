//! The query engine: the questions skein answers over head + blocks. Each question is worked
//! out in its own module; this is the one place that lists them.

use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use opentelemetry_proto::tonic::trace::v1::TracesData;

use super::compare::{CompareRequest, Comparison};
use super::critical_path::TraceSpan;
use super::footers::{self, Footers};
use super::metrics_eval::{MetricsRequest, QueryRangeResponse};
use super::operation::{OperationQuery, OperationSpan};
use super::search::{SearchRequest, SearchResponse};
use super::tags::{TagScope, TagValue};
use super::traceql::{Attribute, Filter};
use super::{
    QueryError, QueryLimits, QueryRunner, Tables, compare, critical_path, metrics_eval, operation,
    peer, search, tables, tags, trace,
};
use crate::cluster::{Cluster, SpanScope};
use crate::head::SpanHead;
use crate::store::{Block, Store};
use crate::telemetry::Telemetry;

/// Object-store URL under which block files are registered with DataFusion.
pub(super) const BLOCKS_URL: &str = "skein://blocks";

pub struct QueryEngine {
    pub store: Arc<Store>,
    pub head: Arc<SpanHead>,
    pub metrics: Arc<Telemetry>,
    pub(super) runtime: Arc<RuntimeEnv>,
    /// Where and for how long queries run; the API runs every query through it.
    pub runner: QueryRunner,
    /// The other replicas sharing the storage root, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// Decoded footers of block files read without a DataFusion plan.
    pub(super) footers: Arc<Footers>,
}

impl QueryEngine {
    pub fn new(
        store: Arc<Store>,
        head: Arc<SpanHead>,
        metrics: Arc<Telemetry>,
        memory_bytes: usize,
    ) -> Result<Self, QueryError> {
        Self::with_limits(store, head, metrics, QueryLimits::with_memory(memory_bytes))
    }

    pub fn with_limits(
        store: Arc<Store>,
        head: Arc<SpanHead>,
        metrics: Arc<Telemetry>,
        limits: QueryLimits,
    ) -> Result<Self, QueryError> {
        // No spilling: a sort or join that outgrows the pool fails with ResourcesExhausted
        // (422) instead of writing up to DataFusion's default 100 GiB to the temp directory.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(limits.memory_bytes)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let url = url::Url::parse(BLOCKS_URL).map_err(|e| QueryError::Internal(e.to_string()))?;
        runtime.register_object_store(&url, store.object_store.clone());
        let runner = QueryRunner::new(limits, metrics.clone());
        let footers = Arc::new(Footers::new(footers::DEFAULT_BUDGET));
        Ok(QueryEngine { store, head, metrics, runtime, runner, cluster: None, footers })
    }

    /// Block file access for reads without a DataFusion plan.
    pub(super) fn files(&self) -> footers::BlockFiles {
        footers::BlockFiles {
            store: self.store.object_store.clone(),
            footers: self.footers.clone(),
        }
    }

    /// All spans of one trace, without needing a time range. `range` (unix nanos) only
    /// narrows the blocks read.
    pub async fn trace_by_id(
        &self,
        tenant: &str,
        id: [u8; 16],
        range: Option<(i64, i64)>,
    ) -> Result<TracesData, QueryError> {
        trace::trace_by_id(self, tenant, id, range).await
    }

    /// TraceQL search: the most recent matching traces with their matching spans.
    pub async fn search(
        &self,
        tenant: &str,
        req: SearchRequest,
    ) -> Result<SearchResponse, QueryError> {
        search::search(self, tenant, req).await
    }

    /// Attribute keys per scope (`resource`, `span`, `intrinsic`), optionally one scope.
    pub async fn tag_scopes(
        &self,
        tenant: &str,
        scope: Option<&str>,
    ) -> Result<Vec<TagScope>, QueryError> {
        tags::tag_scopes(self, tenant, scope).await
    }

    /// Distinct values of `tag` among spans matching `filter` within `range`.
    pub async fn tag_values(
        &self,
        tenant: &str,
        tag: &Attribute,
        filter: Option<&Filter>,
        range: Option<(i64, i64)>,
    ) -> Result<Vec<TagValue>, QueryError> {
        tags::tag_values(self, tenant, tag, filter, range).await
    }

    /// TraceQL metrics (`{ ... } | rate() by(...)` and friends) over a time grid.
    pub async fn traceql_metrics(
        &self,
        tenant: &str,
        req: &MetricsRequest,
    ) -> Result<QueryRangeResponse, QueryError> {
        metrics_eval::traceql_metrics(self, tenant, req).await
    }

    /// The spans of one trace, flattened (for its critical path); `NotFound` if the trace is
    /// unknown.
    pub async fn trace_spans(
        &self,
        tenant: &str,
        id: [u8; 16],
    ) -> Result<Vec<TraceSpan>, QueryError> {
        critical_path::trace_spans(self, tenant, id).await
    }

    /// The spans of one operation, slowest first.
    pub async fn operation_spans(
        &self,
        tenant: &str,
        q: &OperationQuery,
    ) -> Result<Vec<OperationSpan>, QueryError> {
        operation::operation_spans(self, tenant, q).await
    }

    /// Spans of several traces from blocks overlapping `range` (unix nanos) and the head.
    pub async fn spans_of_traces(
        &self,
        tenant: &str,
        ids: &[[u8; 16]],
        range: (i64, i64),
    ) -> Result<Vec<TraceSpan>, QueryError> {
        compare::spans_of_traces(self, tenant, ids, range).await
    }

    /// Compares the slow calls of an operation with its normal ones.
    pub async fn compare(
        &self,
        tenant: &str,
        req: &CompareRequest,
    ) -> Result<Comparison, QueryError> {
        compare::compare(self, tenant, req).await
    }

    /// Spans of `tenant` from the blocks `select` keeps plus the head, as one DataFrame (the
    /// table ad-hoc SQL runs on).
    pub async fn span_tables(
        &self,
        tenant: &str,
        select: impl Fn(&Block) -> bool,
        range: (i64, i64),
    ) -> Result<Tables, QueryError> {
        let scope = SpanScope { range: Some(range), ..Default::default() };
        tables::span_tables(self, tenant, select, &scope).await
    }

    /// This replica's head rows in `scope` and its block ids, for a peer.
    pub async fn answer_peer_spans(
        &self,
        tenant: &str,
        scope: &SpanScope,
    ) -> Result<bytes::Bytes, QueryError> {
        peer::answer_spans(self, tenant, scope).await
    }

    /// This replica's head tag keys and block ids, for a peer.
    pub fn answer_peer_tags(&self, tenant: &str) -> Result<peer::HeadTags, QueryError> {
        peer::answer_tags(self, tenant)
    }

    /// Makes queries also answer for the replicas of `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Bytes queries hold in the memory pool now (0 once every query has ended).
    pub fn memory_reserved(&self) -> usize {
        self.runtime.memory_pool.reserved()
    }

    /// Records how long a query of `endpoint` took.
    pub fn observe(&self, endpoint: &str, started: std::time::Instant) {
        self.metrics
            .query_seconds
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
    }
}
