//! The spans other replicas hold in memory, both ways: what this replica answers a peer
//! (its head's rows in a [`SpanScope`], with the ids of its own blocks taken atomically with
//! them), and what it asks its peers for while assembling a query's tables. A peer's answer
//! names exactly the blocks its rows are not in, so the asking replica reads exactly those
//! blocks of that peer's namespace with them: every span once, before and after the peer
//! flushes. See `cluster/DESIGN.md`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::prelude::{Expr, SessionContext, col};
use serde::{Deserialize, Serialize};

use super::compile::{filter_expr, needs_trace, trace_id_in};
use super::traceql::{self, Filter, Query};
use super::{QueryEngine, QueryError, parse_trace_id};
use crate::cluster::{SpanScope, wire};
use crate::spanrows::{DedicatedColumns, TagKeys, col as c, span_schema, tag_keys_of};
use crate::store::Block;

/// Internal endpoints (under `/internal/v1/`).
pub const SPANS_PATH: &str = "spans";
pub const TAGS_PATH: &str = "tags";

/// What a peer's rows need to be understood.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeadMeta {
    /// Ids of the peer's own blocks of the tenant, at the moment its rows were taken.
    pub blocks: Vec<String>,
    /// The columns of the rows.
    pub dedicated: DedicatedColumns,
}

/// The tag keys a peer's head holds, and its blocks (whose keys are in their metas).
#[derive(Debug, Serialize, Deserialize)]
pub struct HeadTags {
    pub blocks: Vec<String>,
    pub tags: TagKeys,
}

/// One peer's part of a query's tables.
pub struct PeerPart {
    pub node: String,
    pub base: String,
    pub blocks: Vec<String>,
    pub dedicated: DedicatedColumns,
    pub rows: Vec<RecordBatch>,
}

/// This replica's head rows of `tenant` in `scope`, and its block ids (a peer asks).
pub async fn answer_spans(
    engine: &QueryEngine,
    tenant: &str,
    scope: &SpanScope,
) -> Result<Bytes, QueryError> {
    let (blocks, head) = engine.store.view(tenant, |bs| {
        let ids: Vec<String> = bs.iter().map(|b| b.meta.id.clone()).collect();
        engine.head.snapshot(tenant).map(|h| (ids, h))
    })?;
    let dedicated = engine.head.dedicated().clone();
    let schema = span_schema(&dedicated);
    let overlaps = match (scope.range, engine.head.time_range(tenant)) {
        (Some((s, e)), Some((lo, hi))) => hi >= s && lo <= e,
        (_, None) => false,
        (None, Some(_)) => true,
    };
    let rows = if overlaps && !head.is_empty() {
        select_rows(engine, head, &dedicated, scope).await?
    } else {
        Vec::new()
    };
    let meta = HeadMeta { blocks, dedicated };
    wire::encode(&meta, &schema, &rows).map_err(|e| QueryError::Internal(e.to_string()))
}

/// This replica's head tag keys of `tenant` and its block ids (a peer asks).
pub fn answer_tags(engine: &QueryEngine, tenant: &str) -> Result<HeadTags, QueryError> {
    let (blocks, head) = engine.store.view(tenant, |bs| {
        let ids: Vec<String> = bs.iter().map(|b| b.meta.id.clone()).collect();
        engine.head.snapshot(tenant).map(|h| (ids, h))
    })?;
    Ok(HeadTags { blocks, tags: tag_keys_of(&head, engine.head.dedicated()) })
}

/// The head rows in `scope`: every span of each trace that has a span matching one of the
/// scope's spanset filters (or of the scope's traces).
async fn select_rows(
    engine: &QueryEngine,
    head: Vec<RecordBatch>,
    dedicated: &DedicatedColumns,
    scope: &SpanScope,
) -> Result<Vec<RecordBatch>, QueryError> {
    let ids = scope.trace_ids.iter().map(|s| parse_trace_id(s)).collect::<Result<Vec<_>, _>>()?;
    let matching = match &scope.traceql {
        Some(q) => matching_expr(q, dedicated)?,
        None => None,
    };
    if ids.is_empty() && matching.is_none() {
        return Ok(head);
    }
    let ctx = SessionContext::new_with_config_rt(Default::default(), engine.runtime.clone());
    let schema = head[0].schema();
    let df = ctx.read_table(Arc::new(MemTable::try_new(schema, vec![head])?))?;
    let df = if ids.is_empty() { df } else { df.filter(trace_id_in(&ids))? };
    let df = match matching {
        None => df,
        Some(expr) => {
            let traces = df
                .clone()
                .filter(expr)?
                .select(vec![col(c::TRACE_ID).alias("matched_trace")])?
                .distinct()?;
            df.join(traces, JoinType::LeftSemi, &[c::TRACE_ID], &["matched_trace"], None)?
        }
    };
    Ok(df.collect().await?)
}

/// A span predicate every span that can make a trace match `q` satisfies (one of its spanset
/// filters); `None` when some filter matches any span or needs the whole trace to decide.
fn matching_expr(q: &str, dedicated: &DedicatedColumns) -> Result<Option<Expr>, QueryError> {
    let query = match traceql::parse(q) {
        Ok(query) => query,
        Err(_) => traceql::parse_metrics(q)?.spans,
    };
    let mut filters = Vec::new();
    collect_filters(&query, &mut filters);
    let mut out: Option<Expr> = None;
    for f in filters {
        if needs_trace(f) {
            return Ok(None);
        }
        let Some(e) = filter_expr(f, dedicated)? else { return Ok(None) };
        out = Some(match out {
            Some(o) => o.or(e),
            None => e,
        });
    }
    Ok(out)
}

fn collect_filters<'a>(q: &'a Query, out: &mut Vec<&'a Filter>) {
    match q {
        Query::Filter(f) => out.push(f),
        Query::And(a, b) | Query::Or(a, b) => {
            collect_filters(a, out);
            collect_filters(b, out);
        }
    }
}

/// Asks every peer for its head rows of `tenant` in `scope`.
pub(super) async fn peer_parts(
    engine: &QueryEngine,
    tenant: &str,
    scope: &SpanScope,
) -> Vec<PeerPart> {
    let Some(cluster) = &engine.cluster else { return Vec::new() };
    let mut out = Vec::new();
    for reply in cluster.ask(SPANS_PATH, tenant, scope).await {
        match wire::decode::<HeadMeta>(&reply.body) {
            Ok((meta, rows)) => out.push(PeerPart {
                node: reply.node,
                base: reply.base,
                blocks: meta.blocks,
                dedicated: meta.dedicated,
                rows,
            }),
            Err(e) => crate::partial::note(format!("peer {}: unreadable answer: {e}", reply.node)),
        }
    }
    out
}

/// The other namespaces' blocks of `tenant`: of each peer that answered, exactly the blocks it
/// named; of every other namespace (a peer that is down, a retired replica, the root), what
/// the last listing found.
pub(super) async fn shared_blocks(
    engine: &QueryEngine,
    tenant: &str,
    parts: &[PeerPart],
) -> Result<Vec<Arc<Block>>, QueryError> {
    let Some(cluster) = &engine.cluster else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut pinned = HashSet::new();
    for p in parts {
        out.extend(cluster.shared.pinned(&p.node, tenant, &p.blocks).await?);
        pinned.insert(p.node.clone());
    }
    let cutoff = crate::store::blocks::cutoff_nanos(cluster.retention());
    out.extend(cluster.shared.blocks(tenant, &pinned, cutoff));
    Ok(out)
}

/// Tag keys of `tenant` on the peers: their heads' keys (their blocks' keys come from the
/// shared catalog).
pub(super) async fn peer_tags(engine: &QueryEngine, tenant: &str) -> TagKeys {
    let mut tags = TagKeys::default();
    let Some(cluster) = &engine.cluster else { return tags };
    for reply in cluster.ask(TAGS_PATH, tenant, &()).await {
        match serde_json::from_slice::<HeadTags>(&reply.body) {
            Ok(t) => tags.extend(&t.tags),
            Err(e) => crate::partial::note(format!("peer {}: unreadable answer: {e}", reply.node)),
        }
    }
    let cutoff = crate::store::blocks::cutoff_nanos(cluster.retention());
    tags.extend(&cluster.shared.tag_keys(tenant, cutoff));
    tags
}

pub const METRICS_PART_PATH: &str = "metrics-part";

/// A block as every replica names it: its namespace (a node id; empty for the root) and id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockRef {
    pub node: String,
    pub id: String,
}

/// A peer's share of a TraceQL metrics query: the query, its grid, and the blocks to read
/// (no head: the replica asked reads every head).
#[derive(Debug, Serialize, Deserialize)]
pub struct MetricsPart {
    pub query: String,
    pub start: i64,
    pub step: i64,
    pub intervals: i64,
    pub blocks: Vec<BlockRef>,
}

fn block_ref(b: &Block) -> BlockRef {
    // `nodes/<id>` or the root.
    let node = b.root.filename().unwrap_or_default().to_string();
    BlockRef { node, id: b.meta.id.clone() }
}

/// A peer's base URL and the blocks it is to read.
pub(super) type Share = (String, Vec<Arc<Block>>);

/// Splits `blocks` between this replica and the live peers `answered` so that each reads about
/// as many spans: largest block first, each to the share with the fewest spans so far (ties:
/// by block id, then this replica first, so every replica splits the same blocks alike). This
/// replica's share, and each peer's.
pub(super) fn share_blocks(
    engine: &QueryEngine,
    blocks: Vec<Arc<Block>>,
    answered: &[String],
) -> (Vec<Arc<Block>>, Vec<Share>) {
    if engine.cluster.is_none() || answered.is_empty() || blocks.len() < 2 {
        return (blocks, Vec::new());
    }
    let mut parts = balance(blocks, answered.len() + 1, |b| b.meta.spans, |b| &b.meta.id);
    let mine = parts.remove(0);
    let mut shares: Vec<Share> = answered.iter().cloned().zip(parts).collect();
    shares.retain(|(_, s)| !s.is_empty());
    (mine, shares)
}

/// Deals `items` into `n` parts of about equal total `weight` (longest processing time first).
fn balance<T, K: Ord + ?Sized>(
    mut items: Vec<T>,
    n: usize,
    weight: impl Fn(&T) -> u64,
    key: impl Fn(&T) -> &K,
) -> Vec<Vec<T>> {
    items.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| key(a).cmp(key(b))));
    let mut parts: Vec<(u64, Vec<T>)> = (0..n.max(1)).map(|_| (0, Vec::new())).collect();
    for item in items {
        let w = weight(&item);
        // `min_by_key` keeps the first of equals: the lowest part index.
        if let Some(p) = parts.iter_mut().min_by_key(|p| p.0) {
            p.0 = p.0.saturating_add(w);
            p.1.push(item);
        }
    }
    parts.into_iter().map(|(_, p)| p).collect()
}

/// Runs `work` over this replica's share of `viewed`'s blocks (with every head) while each
/// live peer computes its share (`ask`); a share whose peer fails is computed here instead, so
/// the parts always cover every block and head exactly once. The caller merges the parts.
pub(super) async fn shared_work<T, W, WF, A, AF>(
    engine: &QueryEngine,
    viewed: super::tables::Viewed,
    work: W,
    ask: A,
) -> Result<Vec<T>, QueryError>
where
    W: Fn(super::tables::Viewed) -> WF,
    WF: Future<Output = Result<T, QueryError>>,
    A: Fn(String, Vec<Arc<Block>>) -> AF,
    AF: Future<Output = Option<T>>,
{
    let super::tables::Viewed { blocks, head, dedicated, schema, answered } = viewed;
    let (mine, shares) = share_blocks(engine, blocks, &answered);
    let local = super::tables::Viewed { blocks: mine, head, dedicated, schema, answered };
    let asks = futures::future::join_all(
        shares.iter().map(|(base, blocks)| ask(base.clone(), blocks.clone())),
    );
    let (local, parts) = futures::join!(work(local), asks);
    let mut out = vec![local?];
    for ((_, blocks), part) in shares.into_iter().zip(parts) {
        match part {
            Some(p) => out.push(p),
            // The peer failed after it answered for its head: its share is read here.
            None => out.push(work(blocks_only(engine, blocks)).await?),
        }
    }
    Ok(out)
}

/// Exactly `blocks`, no head.
fn blocks_only(engine: &QueryEngine, blocks: Vec<Arc<Block>>) -> super::tables::Viewed {
    let dedicated = engine.store.dedicated_columns(&blocks);
    let schema = span_schema(&dedicated);
    super::tables::Viewed { blocks, head: Vec::new(), dedicated, schema, answered: Vec::new() }
}

/// Asks peer `base` for its part of a query at `path`; `None` if it fails (the caller then
/// reads the share itself).
async fn ask_share<Q: Serialize, R: serde::de::DeserializeOwned>(
    engine: &QueryEngine,
    tenant: &str,
    path: &str,
    base: &str,
    question: &Q,
) -> Option<R> {
    let cluster = engine.cluster.as_ref()?;
    let reply = cluster.ask_one(base, path, tenant, question).await?;
    match serde_json::from_slice(&reply.body) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(peer = base, endpoint = path, error = %e, "unreadable share of a query");
            None
        }
    }
}

/// Asks peer `base` for the grouped aggregates of its share.
pub(super) async fn ask_metrics_part(
    engine: &QueryEngine,
    tenant: &str,
    req: &super::metrics_eval::MetricsRequest,
    base: String,
    blocks: Vec<Arc<Block>>,
) -> Option<super::metrics_eval::GroupMap> {
    let part = MetricsPart {
        query: req.query.to_string(),
        start: req.grid.start,
        step: req.grid.step,
        intervals: req.grid.intervals,
        blocks: blocks.iter().map(|b| block_ref(b)).collect(),
    };
    ask_share(engine, tenant, METRICS_PART_PATH, &base, &part).await
}

/// The blocks `refs` names, of this replica's namespace and the others'. A block it cannot
/// find (compacted or expired since) fails the part, so the asking replica reads the share
/// itself.
async fn resolve(
    engine: &QueryEngine,
    tenant: &str,
    refs: &[BlockRef],
) -> Result<Vec<Arc<Block>>, QueryError> {
    let own = engine.store.node().map(|n| n.to_string()).unwrap_or_default();
    let mut by_node: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for r in refs {
        by_node.entry(r.node.as_str()).or_default().push(r.id.clone());
    }
    let mut blocks = Vec::new();
    for (node, ids) in by_node {
        let found: Vec<Arc<Block>> = if node == own {
            let mine = engine.store.blocks(tenant);
            ids.iter().filter_map(|id| mine.iter().find(|b| &b.meta.id == id).cloned()).collect()
        } else {
            match &engine.cluster {
                Some(c) => c.shared.pinned(node, tenant, &ids).await?,
                None => Vec::new(),
            }
        };
        if found.len() != ids.len() {
            return Err(QueryError::NotFound);
        }
        blocks.extend(found);
    }
    Ok(blocks)
}

/// This replica's answer to a peer's [`MetricsPart`]: the grouped aggregates of exactly the
/// named blocks.
pub async fn answer_metrics_part(
    engine: &QueryEngine,
    tenant: &str,
    part: MetricsPart,
) -> Result<super::metrics_eval::GroupMap, QueryError> {
    use super::metrics_eval::{Grid, MetricsRequest};
    let query = traceql::parse_metrics(&part.query)?;
    let Query::Filter(filter) = &query.spans else {
        return Err(QueryError::BadRequest("a metrics part needs a single { } filter".into()));
    };
    let filter = filter.clone();
    let viewed = blocks_only(engine, resolve(engine, tenant, &part.blocks).await?);
    let req = MetricsRequest {
        query,
        grid: Grid { start: part.start, step: part.step, intervals: part.intervals },
        exemplars: 0,
        limits: engine.runner.limits().answer,
    };
    let tables = super::tables::assemble(engine, viewed)?;
    super::metrics_eval::partial_groups(engine, tables, &req, &filter).await
}

pub const SEARCH_PART_PATH: &str = "search-part";

/// A peer's share of phase 1 of a search: one spanset filter (without trace-level fields),
/// its range and limit, and the blocks to read (no head).
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchPart {
    pub filter: String,
    pub range: Option<(i64, i64)>,
    pub limit: Option<usize>,
    pub blocks: Vec<BlockRef>,
}

/// One trace of a search part: hex trace id, latest matching start, matching spans.
pub type PartHit = (String, i64, u64);

/// Asks peer `base` for the traces of its share matching `filter`.
pub(super) async fn ask_search_part(
    engine: &QueryEngine,
    tenant: &str,
    filter: &Filter,
    range: Option<(i64, i64)>,
    limit: Option<usize>,
    base: String,
    blocks: Vec<Arc<Block>>,
) -> Option<Vec<PartHit>> {
    let part = SearchPart {
        filter: Query::Filter(filter.clone()).to_string(),
        range,
        limit,
        blocks: blocks.iter().map(|b| block_ref(b)).collect(),
    };
    ask_share(engine, tenant, SEARCH_PART_PATH, &base, &part).await
}

/// This replica's answer to a peer's [`SearchPart`]: the matching traces of exactly the named
/// blocks, at most as many as a search may collect.
pub async fn answer_search_part(
    engine: &QueryEngine,
    tenant: &str,
    part: SearchPart,
) -> Result<Vec<PartHit>, QueryError> {
    let started = std::time::Instant::now();
    let Query::Filter(filter) = traceql::parse(&part.filter)? else {
        return Err(QueryError::BadRequest("a search part needs a single { } filter".into()));
    };
    if needs_trace(&filter) {
        return Err(QueryError::BadRequest(
            "a search part cannot read trace-level fields (they need every block of a trace)"
                .into(),
        ));
    }
    let viewed = blocks_only(engine, resolve(engine, tenant, &part.blocks).await?);
    let tables = super::tables::assemble(engine, viewed)?;
    let max = engine.runner.limits().max_search_trace_ids.saturating_add(1);
    let limit = part.limit.map(|l| l.min(max));
    let hits = super::search::matches(engine, &tables, &filter, part.range, limit).await?;
    engine.observe("search_part", started);
    Ok(hits.into_iter().map(|(id, h)| (hex::encode(id), h.last_start, h.matched)).collect())
}

#[cfg(test)]
mod tests {
    use super::balance;

    #[test]
    fn blocks_are_dealt_so_every_share_reads_about_as_many_spans() {
        let blocks = vec![("a", 1000u64), ("b", 100), ("c", 600), ("d", 400), ("e", 500)];
        let parts = balance(blocks.clone(), 3, |b| b.1, |b| b.0);
        let totals: Vec<u64> = parts.iter().map(|p| p.iter().map(|b| b.1).sum()).collect();
        assert_eq!(totals, vec![1000, 700, 900]);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), blocks.len());
        // the same blocks in any order are dealt alike
        let mut shuffled = blocks;
        shuffled.reverse();
        assert_eq!(balance(shuffled, 3, |b| b.1, |b| b.0), parts);
    }

    #[test]
    fn equal_blocks_go_round_robin_by_id_starting_with_this_replica() {
        let blocks = vec![("b", 5u64), ("a", 5), ("c", 5)];
        let parts = balance(blocks, 2, |b| b.1, |b| b.0);
        assert_eq!(parts, vec![vec![("a", 5), ("c", 5)], vec![("b", 5)]]);
    }
}
