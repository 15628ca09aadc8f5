//! TraceQL search, answered in two phases:
//! 1. per spanset filter, the matching traces with their latest matching start and match count
//!    (aggregated in DataFusion, limited when there is a single filter); filters combined with
//!    `&&` / `||` at trace level;
//!    With several filters each one's trace ids are collected (at most
//!    `--max-search-trace-ids`, else 422);
//! 2. for the `limit` most recent traces only, their merged summaries and up to `spss` matching
//!    spans, reading just the blocks whose bloom filters hold those trace ids.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::expr_fn::{count, max, sum};
use datafusion::prelude::{Expr, cast, col, lit, when};
use serde::Serialize;

use super::compile::{
    T_DURATION, T_END, T_ROOT_NAME, T_ROOT_SERVICE, T_START, T_TRACE_ID, filter_expr, needs_trace,
    trace_id_in,
};
use super::peer::{ask_search_part, shared_work};
use super::search_index::{self, Source};
use super::tables::{Viewed, assemble, span_tables, trace_summaries, view};
use super::trace_rows::{Wanted, trace_rows};
use super::trace_scan;
use super::traceql::{Filter, Query};
use super::{QueryEngine, QueryError, Tables, parse_trace_id};
use crate::cluster::SpanScope;
use crate::spanrows::{col as c, column};
use crate::store::block::{trace_col, trace_key};

/// Columns of intermediate results, beside span table columns.
mod out_col {
    /// Latest start of a trace's matching spans.
    pub const LAST: &str = "last";
    pub const COUNT: &str = "n";
    pub const ERRORS: &str = "errors";
    /// Service name as UTF-8.
    pub const SERVICE: &str = "svc";
    pub const IS_ROOT: &str = "is_root";
    pub const MATCHED: &str = "matched";
}

pub struct SearchRequest {
    pub query: Query,
    pub limit: usize,
    pub spss: usize,
    /// Unix nanoseconds, inclusive.
    pub range: Option<(i64, i64)>,
}

// Protojson of tempopb.SearchResponse: lowerCamel names as declared (traceID, spanID), 64-bit
// integers as strings, zero values omitted. Only fields Grafana's vendored proto knows.
#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SearchResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<TraceSearchMetadata>,
    pub metrics: SearchMetrics,
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TraceSearchMetadata {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root_service_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root_trace_name: String,
    #[serde(skip_serializing_if = "is_zero_str")]
    pub start_time_unix_nano: String,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub duration_ms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_set: Option<SpanSet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub span_sets: Vec<SpanSet>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_stats: BTreeMap<String, ServiceStats>,
}

#[derive(Debug, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStats {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub span_count: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub error_count: u32,
}

#[derive(Debug, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SpanSet {
    pub spans: Vec<SearchSpan>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub matched: u32,
}

#[derive(Debug, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpan {
    #[serde(rename = "spanID")]
    pub span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "is_zero_str")]
    pub start_time_unix_nano: String,
    #[serde(skip_serializing_if = "is_zero_str")]
    pub duration_nanos: String,
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SearchMetrics {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub inspected_traces: u32,
    #[serde(skip_serializing_if = "is_zero_str")]
    pub inspected_bytes: String,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub total_blocks: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub completed_jobs: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub total_jobs: u32,
    #[serde(skip_serializing_if = "is_zero_str")]
    pub total_block_bytes: String,
    #[serde(skip_serializing_if = "is_zero_str")]
    pub inspected_spans: String,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_str(v: &String) -> bool {
    v.is_empty() || v == "0"
}

/// A trace matched by phase 1.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hit {
    pub last_start: i64,
    pub matched: u64,
}

impl Hit {
    /// Adds this part of trace `id`'s matches (another block's, share's or table's) to `out`.
    pub(super) fn add_to(self, out: &mut HashMap<[u8; 16], Hit>, id: [u8; 16]) {
        out.entry(id)
            .and_modify(|o| {
                o.last_start = o.last_start.max(self.last_start);
                o.matched = o.matched.saturating_add(self.matched);
            })
            .or_insert(self);
    }
}

fn leaves(q: &Query, out: &mut Vec<Filter>) {
    match q {
        Query::Filter(f) => out.push(f.clone()),
        Query::And(a, b) | Query::Or(a, b) => {
            leaves(a, out);
            leaves(b, out);
        }
    }
}

/// Evaluates the spanset combinators over per-filter hit sets (in `leaves` order).
fn combine(
    q: &Query,
    hits: &mut std::slice::Iter<'_, HashMap<[u8; 16], Hit>>,
) -> HashMap<[u8; 16], Hit> {
    match q {
        Query::Filter(_) => hits.next().cloned().unwrap_or_default(),
        Query::And(a, b) => {
            let l = combine(a, hits);
            let r = combine(b, hits);
            l.into_iter()
                .filter_map(|(k, h)| {
                    r.get(&k).map(|o| {
                        (
                            k,
                            Hit {
                                last_start: h.last_start.max(o.last_start),
                                matched: h.matched + o.matched,
                            },
                        )
                    })
                })
                .collect()
        }
        Query::Or(a, b) => {
            let mut l = combine(a, hits);
            for (k, o) in combine(b, hits) {
                l.entry(k)
                    .and_modify(|h| {
                        h.last_start = h.last_start.max(o.last_start);
                        h.matched += o.matched;
                    })
                    .or_insert(o);
            }
            l
        }
    }
}

/// Spans of `tables` that satisfy `f`, with trace summaries joined in when needed.
fn filtered(
    tables: &Tables,
    f: &Filter,
    range: Option<(i64, i64)>,
) -> Result<DataFrame, QueryError> {
    filtered_with(tables, f, range, false)
}

/// As [`filtered`]; `with_trace` joins the trace summaries (`t_root_name`,
/// `t_root_service`, `t_duration`) even when the filter itself does not need them.
pub(super) fn filtered_with(
    tables: &Tables,
    f: &Filter,
    range: Option<(i64, i64)>,
    with_trace: bool,
) -> Result<DataFrame, QueryError> {
    let mut df = tables.spans.clone();
    if let Some((s, e)) = range {
        df = df.filter(col(c::START).gt_eq(lit(s)).and(col(c::START).lt_eq(lit(e))))?;
    }
    if with_trace || needs_trace(f) {
        let t = trace_summaries(tables)?
            .with_column(T_DURATION, col(T_END) - col(T_START))?
            .with_column_renamed(trace_col::TRACE_ID, T_TRACE_ID)?;
        df = df.join(t, JoinType::Inner, &[c::TRACE_ID], &[T_TRACE_ID], None)?;
    }
    if let Some(expr) = filter_expr(f, &tables.dedicated)? {
        df = df.filter(expr)?;
    }
    Ok(df)
}

/// Phase 1 of one spanset filter: its matching traces over every block of the range and every
/// head. Without trace-level fields the blocks are shared across the live replicas (each
/// computes [`matches`] over its share) and the parts merged here; a trace-level field needs
/// each trace's summary over all its blocks, so such a filter is read here alone.
async fn phase1(
    engine: &QueryEngine,
    tenant: &str,
    f: &Filter,
    range: Option<(i64, i64)>,
    limit: Option<usize>,
) -> Result<HashMap<[u8; 16], Hit>, QueryError> {
    let scope = SpanScope {
        traceql: Some(Query::Filter(f.clone()).to_string()),
        range,
        ..Default::default()
    };
    let viewed = view(
        engine,
        tenant,
        |b| range.is_none_or(|(s, e)| b.meta.max_time >= s && b.meta.min_time <= e),
        &scope,
    )
    .await?;
    let work = |v| async move { matches(engine, &assemble(engine, v)?, f, range, limit).await };
    let parts = if needs_trace(f) {
        vec![work(viewed).await?]
    } else {
        let ask = |base, blocks| async move {
            let hits = ask_search_part(engine, tenant, f, range, limit, base, blocks).await?;
            let mut out = HashMap::with_capacity(hits.len());
            for (id, last_start, matched) in hits {
                out.insert(parse_trace_id(&id).ok()?, Hit { last_start, matched });
            }
            Some(out)
        };
        shared_work(engine, viewed, work, ask).await?
    };
    // A trace whose spans are in several shares is in several parts. With a limit each part
    // holds its own most recent traces: the merged most recent `limit` are among them (a
    // trace's latest match is its latest in some part), but a trace's count may miss a part
    // that cut it, so phase 2 counts the chosen traces' matches again.
    let mut out: HashMap<[u8; 16], Hit> = HashMap::new();
    for part in parts {
        for (id, h) in part {
            h.add_to(&mut out, id);
        }
    }
    let max_ids = engine.runner.limits().max_search_trace_ids;
    if limit.is_none() && out.len() > max_ids {
        engine.runner.refused("search_trace_ids");
        return Err(QueryError::TooExpensive(format!(
            "a spanset of the query matches more than {max_ids} traces \
             (--max-search-trace-ids); narrow the query or the time range"
        )));
    }
    Ok(out)
}

/// The traces of `tables` with spans matching `f` in `range`: the latest matching start and
/// the number of matching spans of each; the `limit` most recent, or (without a limit) at most
/// one more than `--max-search-trace-ids`, so the caller can refuse.
pub(super) async fn matches(
    engine: &QueryEngine,
    tables: &Tables,
    f: &Filter,
    range: Option<(i64, i64)>,
    limit: Option<usize>,
) -> Result<HashMap<[u8; 16], Hit>, QueryError> {
    if needs_trace(f) {
        // Only trace-level fields, and a limit to rank by: from the trace summaries alone.
        if let Some(l) = limit
            && let Some(expr) = filter_expr(f, &tables.dedicated)?
            && trace_scan::trace_level_only(&expr)
            && let Some(found) = trace_scan::matches(engine, tables, &expr, range, l).await?
        {
            return Ok(found);
        }
        return scanned_matches(engine, tables, f, range, limit).await;
    }
    // Indexed blocks are read through their indexes when the filter is on indexed columns
    // only, the other blocks through `spans.parquet`, both newest first and without a plan;
    // the head and blocks of an older layout are scanned with a plan.
    let index_expr = match tables.blocks.iter().any(|b| search_index::indexed(b)) {
        true => search_index::indexable(f, &tables.dedicated)?,
        false => None,
    };
    let (with_index, without): (Vec<_>, Vec<_>) = tables
        .blocks
        .iter()
        .cloned()
        .partition(|b| index_expr.is_some() && search_index::indexed(b));
    let cap = engine.runner.limits().max_search_trace_ids.saturating_add(1);
    let mut out = HashMap::new();
    let mut planned = Vec::new();
    let sources = [
        (with_index, Source::Index, index_expr),
        (without, Source::Spans, Some(filter_expr(f, &tables.dedicated)?)),
    ];
    for (blocks, source, expr) in sources {
        let Some(expr) = expr else { continue };
        let unread =
            search_index::add_matches(engine, &blocks, source, expr, range, limit, cap, &mut out)
                .await?;
        planned.extend(unread);
    }
    let scanned = match planned.is_empty() && tables.head.is_empty() {
        true => HashMap::new(),
        false => {
            let rest = assemble(
                engine,
                Viewed {
                    blocks: planned,
                    head: tables.head.clone(),
                    dedicated: tables.dedicated.clone(),
                    schema: tables.schema.clone(),
                    answered: Vec::new(),
                },
            )?;
            scanned_matches(engine, &rest, f, range, limit).await?
        }
    };
    for (id, h) in scanned {
        h.add_to(&mut out, id);
    }
    let keep = limit.unwrap_or(cap);
    if out.len() > keep {
        let mut all: Vec<([u8; 16], Hit)> = out.into_iter().collect();
        all.sort_by(|a, b| b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0)));
        all.truncate(keep);
        out = all.into_iter().collect();
    }
    Ok(out)
}

/// [`matches`] by scanning the span tables.
async fn scanned_matches(
    engine: &QueryEngine,
    tables: &Tables,
    f: &Filter,
    range: Option<(i64, i64)>,
    limit: Option<usize>,
) -> Result<HashMap<[u8; 16], Hit>, QueryError> {
    let mut df = filtered(tables, f, range)?.aggregate(
        vec![col(c::TRACE_ID)],
        vec![
            max(col(c::START)).alias(out_col::LAST),
            cast(count(lit(1u8)), DataType::UInt64).alias(out_col::COUNT),
        ],
    )?;
    // Without a limit (several spansets, combined by the caller) every matching trace id comes
    // out of the memory pool into this map: at most `--max-search-trace-ids` of them.
    let max_ids = engine.runner.limits().max_search_trace_ids;
    df = match limit {
        Some(l) => df.sort(vec![col(out_col::LAST).sort(false, false)])?.limit(0, Some(l))?,
        None => df.limit(0, Some(max_ids.saturating_add(1)))?,
    };
    let mut out = HashMap::new();
    for b in df.collect().await? {
        let ids = column(&b, c::TRACE_ID)?.as_fixed_size_binary();
        let last = column(&b, out_col::LAST)?.as_primitive::<Int64Type>();
        let n = column(&b, out_col::COUNT)?.as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            out.insert(trace_key(ids, i), Hit { last_start: last.value(i), matched: n.value(i) });
        }
    }
    Ok(out)
}

/// What phase 2 finds of the chosen traces.
#[derive(Default)]
struct Details {
    meta: HashMap<[u8; 16], TraceSearchMetadata>,
    spans: HashMap<[u8; 16], BTreeMap<(i64, String), SearchSpan>>,
    /// Spans matching a filter within the search's range, per trace (one scan only).
    matched_in_range: HashMap<[u8; 16], u64>,
}

/// Whether `f` reads trace-level fields only (then every span of a passing trace matches it).
fn trace_level_only(f: &Filter, tables: &Tables) -> Result<bool, QueryError> {
    Ok(needs_trace(f)
        && filter_expr(f, &tables.dedicated)?.is_some_and(|e| trace_scan::trace_level_only(&e)))
}

/// Whether a span matches any of `filters` (none of them on trace-level fields), as a boolean
/// column of the span table.
fn any_matches(filters: &[Filter], tables: &Tables) -> Result<Expr, QueryError> {
    let mut matched: Option<Expr> = None;
    for f in filters {
        let e = filter_expr(f, &tables.dedicated)?.unwrap_or_else(|| lit(true));
        // NULL (missing attribute) means "no match".
        let e = when(e, lit(true)).otherwise(lit(false))?;
        matched = Some(match matched {
            Some(m) => m.or(e),
            None => e,
        });
    }
    Ok(matched.unwrap_or_else(|| lit(true)))
}

/// Summaries, service stats and matching spans of the chosen traces from one scan of their
/// spans; `matched` says which spans are in the span set.
async fn details_one_scan(
    engine: &QueryEngine,
    tables: &Tables,
    matched: Expr,
    ids: &[[u8; 16]],
    range: Option<(i64, i64)>,
    out: &mut Details,
) -> Result<(), QueryError> {
    let Details { meta, spans, matched_in_range } = out;
    let is_root = col(c::PARENT_SPAN_ID).is_null().and(col(c::PARENT_OFFSET).is_null());
    let wanted = Wanted {
        columns: vec![
            c::TRACE_ID,
            c::SPAN_ID,
            c::NAME,
            c::START,
            c::DURATION,
            c::SERVICE,
            c::STATUS_CODE,
        ],
        exprs: vec![(out_col::IS_ROOT, is_root.clone()), (out_col::MATCHED, matched.clone())],
    };
    let batches = match trace_rows(engine, tables, ids, &wanted).await? {
        Some(read) => read.iter().map(as_details).collect::<Result<Vec<_>, _>>()?,
        None => {
            tracing::debug!("search details: a block file lacks a column; planned scan");
            tables
                .spans
                .clone()
                .filter(trace_id_in(ids))?
                .select(vec![
                    col(c::TRACE_ID),
                    col(c::SPAN_ID),
                    cast(col(c::NAME), DataType::Utf8).alias(c::NAME),
                    col(c::START),
                    col(c::DURATION),
                    cast(col(c::SERVICE), DataType::Utf8).alias(out_col::SERVICE),
                    col(c::STATUS_CODE),
                    is_root.alias(out_col::IS_ROOT),
                    matched.alias(out_col::MATCHED),
                ])?
                .collect()
                .await?
        }
    };
    let mut bounds: HashMap<[u8; 16], (i64, i64)> = HashMap::new();
    for b in &batches {
        let tid = column(b, c::TRACE_ID)?.as_fixed_size_binary();
        let sids = column(b, c::SPAN_ID)?.as_fixed_size_binary();
        let names = column(b, c::NAME)?.as_string::<i32>();
        let start = column(b, c::START)?.as_primitive::<Int64Type>();
        let dur = column(b, c::DURATION)?.as_primitive::<Int64Type>();
        let svc = column(b, out_col::SERVICE)?.as_string::<i32>();
        let status = column(b, c::STATUS_CODE)?.as_primitive::<arrow::datatypes::Int8Type>();
        let root = column(b, out_col::IS_ROOT)?.as_boolean();
        let hit = column(b, out_col::MATCHED)?.as_boolean();
        for i in 0..b.num_rows() {
            let id = trace_key(tid, i);
            let m = meta.entry(id).or_default();
            let s = start.value(i);
            let e = s.saturating_add(dur.value(i)).max(s);
            let bound = bounds.entry(id).or_insert((s, e));
            *bound = (bound.0.min(s), bound.1.max(e));
            let service = if svc.is_valid(i) { svc.value(i) } else { "" };
            if root.value(i) {
                m.root_service_name = service.to_string();
                m.root_trace_name = names.value(i).to_string();
            }
            let st = m.service_stats.entry(service.to_string()).or_default();
            st.span_count += 1;
            if status.value(i) == 2 {
                st.error_count += 1;
            }
            if hit.value(i) {
                if range.is_none_or(|(lo, hi)| s >= lo && s <= hi) {
                    *matched_in_range.entry(id).or_default() += 1;
                }
                let sid = hex::encode(sids.value(i));
                spans.entry(id).or_default().insert(
                    (s, sid.clone()),
                    SearchSpan {
                        span_id: sid,
                        name: names.value(i).to_string(),
                        start_time_unix_nano: s.to_string(),
                        duration_nanos: dur.value(i).max(0).to_string(),
                    },
                );
            }
        }
    }
    for (id, (lo, hi)) in bounds {
        if let Some(m) = meta.get_mut(&id) {
            m.start_time_unix_nano = lo.to_string();
            m.duration_ms = u32::try_from((hi - lo) / 1_000_000).unwrap_or(u32::MAX);
        }
    }
    Ok(())
}

/// A batch of [`trace_rows`] as the plan would give it: names and services as plain strings.
fn as_details(b: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let schema = b.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, a) in schema.fields().iter().zip(b.columns()) {
        match f.name().as_str() {
            n @ (c::NAME | c::SERVICE) => {
                let name = if n == c::SERVICE { out_col::SERVICE } else { c::NAME };
                fields.push(arrow::datatypes::Field::new(name, DataType::Utf8, true));
                cols.push(arrow::compute::cast(a, &DataType::Utf8)?);
            }
            _ => {
                fields.push(f.as_ref().clone());
                cols.push(a.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)), cols)?)
}

/// The same details when filters need trace-level fields (joined summaries).
async fn details_joined(
    tables: &Tables,
    filters: &[Filter],
    ids: &[[u8; 16]],
    out: &mut Details,
) -> Result<(), QueryError> {
    let Details { meta, spans, .. } = out;
    let summaries = trace_summaries(tables)?.filter(trace_id_in(ids))?.collect().await?;
    for b in &summaries {
        read_summaries(b, meta)?;
    }
    let stats = tables
        .spans
        .clone()
        .filter(trace_id_in(ids))?
        .aggregate(
            vec![col(c::TRACE_ID), cast(col(c::SERVICE), DataType::Utf8).alias(out_col::SERVICE)],
            vec![
                cast(count(lit(1u8)), DataType::UInt64).alias(out_col::COUNT),
                cast(
                    sum(when(col(c::STATUS_CODE).eq(lit(2i8)), lit(1u64)).otherwise(lit(0u64))?),
                    DataType::UInt64,
                )
                .alias(out_col::ERRORS),
            ],
        )?
        .select_columns(&[c::TRACE_ID, out_col::SERVICE, out_col::COUNT, out_col::ERRORS])?
        .collect()
        .await?;
    for b in &stats {
        read_service_stats(b, meta)?;
    }
    for f in filters {
        let df = filtered(tables, f, None)?.filter(trace_id_in(ids))?.select_columns(&[
            c::TRACE_ID,
            c::SPAN_ID,
            c::NAME,
            c::START,
            c::DURATION,
        ])?;
        for b in df.collect().await? {
            read_spans(&b, spans)?;
        }
    }
    Ok(())
}

pub(super) async fn search(
    engine: &QueryEngine,
    tenant: &str,
    req: SearchRequest,
) -> Result<SearchResponse, QueryError> {
    let started = std::time::Instant::now();
    let mut filters = Vec::new();
    leaves(&req.query, &mut filters);
    let single = filters.len() == 1;
    let mut hit_sets = Vec::with_capacity(filters.len());
    for f in &filters {
        hit_sets.push(phase1(engine, tenant, f, req.range, single.then_some(req.limit)).await?);
    }
    let phase1 = started.elapsed();
    let hits = combine(&req.query, &mut hit_sets.iter());
    let mut top: Vec<([u8; 16], Hit)> = hits.into_iter().collect();
    top.sort_by(|a, b| b.1.last_start.cmp(&a.1.last_start).then(a.0.cmp(&b.0)));
    top.truncate(req.limit);
    let mut resp = SearchResponse::default();
    if top.is_empty() {
        engine.observe("search", started);
        return Ok(resp);
    }
    let ids: Vec<[u8; 16]> = top.iter().map(|(id, _)| *id).collect();

    // Phase 2: only blocks that may hold the chosen traces.
    let scope =
        SpanScope { trace_ids: ids.iter().map(hex::encode).collect(), ..Default::default() };
    let tables =
        span_tables(engine, tenant, |b| ids.iter().any(|id| b.bloom.contains(id)), &scope).await?;
    let tables_at = started.elapsed();
    let mut details = Details::default();
    // One filter on trace-level fields only: every span of a chosen trace matches it, and the
    // trace's summary is computed from its spans read anyway, so no join is needed.
    let whole_traces = single && trace_level_only(&filters[0], &tables)?;
    let joined = !whole_traces && filters.iter().any(needs_trace);
    if joined {
        details_joined(&tables, &filters, &ids, &mut details).await?;
    } else {
        let matched = match whole_traces {
            true => lit(true),
            false => any_matches(&filters, &tables)?,
        };
        details_one_scan(engine, &tables, matched, &ids, req.range, &mut details).await?;
    }
    let Details { mut meta, mut spans, matched_in_range } = details;
    for (id, hit) in &top {
        // A single filter's count from phase 1 may miss a share that cut the trace; the scan
        // of the whole trace counts every match (several filters are never cut: no limit).
        let matched = match (single && !joined, matched_in_range.get(id)) {
            (true, Some(n)) => *n,
            _ => hit.matched,
        };
        let mut m = meta.remove(id).unwrap_or_default();
        m.trace_id = hex::encode(id);
        let set = SpanSet {
            spans: spans
                .remove(id)
                .map(|s| s.into_values().take(req.spss).collect())
                .unwrap_or_default(),
            matched: u32::try_from(matched).unwrap_or(u32::MAX),
        };
        m.span_set = Some(set.clone());
        m.span_sets = vec![set];
        resp.traces.push(m);
    }
    resp.metrics.inspected_traces = u32::try_from(resp.traces.len()).unwrap_or(u32::MAX);
    resp.metrics.total_blocks =
        u32::try_from(engine.store.blocks(tenant).len()).unwrap_or(u32::MAX);
    tracing::debug!(
        phase1_ms = phase1.as_secs_f64() * 1e3,
        tables_ms = tables_at.as_secs_f64() * 1e3,
        phase2_blocks = tables.blocks.len(),
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        traces = resp.traces.len(),
        "search"
    );
    resp.metrics.completed_jobs = 1;
    resp.metrics.total_jobs = 1;
    engine.observe("search", started);
    Ok(resp)
}

fn read_summaries(
    b: &RecordBatch,
    out: &mut HashMap<[u8; 16], TraceSearchMetadata>,
) -> Result<(), QueryError> {
    let get =
        |n: &str| b.column_by_name(n).ok_or_else(|| QueryError::Internal(format!("missing {n}")));
    let ids = get(trace_col::TRACE_ID)?.as_fixed_size_binary();
    let start = get(T_START)?.as_primitive::<Int64Type>();
    let end = get(T_END)?.as_primitive::<Int64Type>();
    let svc = arrow::compute::cast(get(T_ROOT_SERVICE)?, &DataType::Utf8)?;
    let svc = svc.as_string::<i32>();
    let name = arrow::compute::cast(get(T_ROOT_NAME)?, &DataType::Utf8)?;
    let name = name.as_string::<i32>();
    for i in 0..b.num_rows() {
        let dur_ms = (end.value(i) - start.value(i)).max(0) / 1_000_000;
        out.insert(
            trace_key(ids, i),
            TraceSearchMetadata {
                root_service_name: if svc.is_valid(i) {
                    svc.value(i).to_string()
                } else {
                    String::new()
                },
                root_trace_name: if name.is_valid(i) {
                    name.value(i).to_string()
                } else {
                    String::new()
                },
                start_time_unix_nano: start.value(i).to_string(),
                duration_ms: u32::try_from(dur_ms).unwrap_or(u32::MAX),
                ..Default::default()
            },
        );
    }
    Ok(())
}

fn read_service_stats(
    b: &RecordBatch,
    out: &mut HashMap<[u8; 16], TraceSearchMetadata>,
) -> Result<(), QueryError> {
    let ids = column(b, c::TRACE_ID)?.as_fixed_size_binary();
    let svc = column(b, out_col::SERVICE)?.as_string::<i32>();
    let n = column(b, out_col::COUNT)?.as_primitive::<UInt64Type>();
    let errors = column(b, out_col::ERRORS)?.as_primitive::<UInt64Type>();
    for i in 0..b.num_rows() {
        let name = if svc.is_valid(i) { svc.value(i).to_string() } else { String::new() };
        let e = out.entry(trace_key(ids, i)).or_default().service_stats.entry(name).or_default();
        e.span_count += u32::try_from(n.value(i)).unwrap_or(u32::MAX);
        e.error_count += u32::try_from(errors.value(i)).unwrap_or(u32::MAX);
    }
    Ok(())
}

fn read_spans(
    b: &RecordBatch,
    out: &mut HashMap<[u8; 16], BTreeMap<(i64, String), SearchSpan>>,
) -> Result<(), QueryError> {
    let ids = column(b, c::TRACE_ID)?.as_fixed_size_binary();
    let sids = column(b, c::SPAN_ID)?.as_fixed_size_binary();
    let names = arrow::compute::cast(column(b, c::NAME)?, &DataType::Utf8)?;
    let names = names.as_string::<i32>();
    let start = column(b, c::START)?.as_primitive::<Int64Type>();
    let dur = column(b, c::DURATION)?.as_primitive::<Int64Type>();
    for i in 0..b.num_rows() {
        let sid = hex::encode(sids.value(i));
        out.entry(trace_key(ids, i)).or_default().insert(
            (start.value(i), sid.clone()),
            SearchSpan {
                span_id: sid,
                name: names.value(i).to_string(),
                start_time_unix_nano: start.value(i).to_string(),
                duration_nanos: dur.value(i).max(0).to_string(),
            },
        );
    }
    Ok(())
}
