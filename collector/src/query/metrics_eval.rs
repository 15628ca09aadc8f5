//! TraceQL metrics (`{ ... } | rate() by(...)`, `count_over_time`, `quantile_over_time`,
//! `histogram_over_time`) computed from stored spans, answered in Tempo's `QueryRangeResponse` /
//! `QueryInstantResponse` protojson.
//!
//! One DataFusion aggregation over head + blocks does the work: matching spans are grouped by
//! the `by()` values and the time bucket, counting spans and picking the slowest span of each
//! group as its exemplar. Duration functions also collect the group's raw durations
//! (`array_agg`), so quantiles are exact rather than estimated from a histogram; those
//! accumulators are charged to the query memory pool, and a query that outgrows it fails with
//! `ResourcesExhausted` instead of being answered approximately.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::functions_aggregate::expr_fn::{array_agg, count, first_value};
use datafusion::prelude::{Expr, cast, coalesce, col, lit, when};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::compile::{T_DURATION, T_ROOT_NAME, T_ROOT_SERVICE, attr, string_attr};
use super::peer::{ask_metrics_part, shared_work};
use super::search::{SearchMetrics, filtered_with};
use super::tables::{assemble, view};
use super::traceql::{Attribute, CmpOp, Intrinsic, MetricsFunction, MetricsQuery, Query, Scope};
use super::udf::Slot;
use super::{QueryEngine, QueryError};
use crate::promql::answer_limits::{AnswerLimitError, AnswerLimits};
use crate::promql::time_range::{self, NANOS};
use crate::spanrows::{DedicatedColumns, col as c, column};

/// Tempo's (and Prometheus') cap on points per series.
pub const MAX_INTERVALS: i64 = time_range::MAX_POINTS as i64;
/// Exemplars per series when the request does not say.
pub const DEFAULT_EXEMPLARS: usize = 10;
pub const MAX_EXEMPLARS: usize = 100;

const NANOS_PER_SEC: f64 = 1e9;

/// The buckets of a query: `intervals` steps of `step` ns from `start` (unix ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub start: i64,
    pub step: i64,
    pub intervals: i64,
}

impl Grid {
    /// A range query's grid: `start` rounded down and `end` rounded up to a multiple of `step`,
    /// as Tempo aligns them, so that the same step always yields the same bucket boundaries.
    pub fn aligned(start: i64, end: i64, step: i64) -> Result<Grid, QueryError> {
        if step <= 0 {
            return Err(bad("zero or negative query resolution step widths are not accepted"));
        }
        let range = |e: time_range::TimeRangeError| bad(e.to_string());
        let start = NANOS.time("start", start).map_err(range)?;
        let end = NANOS.time("end", end).map_err(range)?;
        if end <= start {
            return Err(bad(format!("end ({end}) must be after start ({start})")));
        }
        let step = NANOS.time("step", step).map_err(range)?;
        let start = start.div_euclid(step).saturating_mul(step);
        let end = end.saturating_add(step.saturating_sub(1)).div_euclid(step).saturating_mul(step);
        // Points are bucket starts: the grid's end is not one.
        let intervals = time_range::points(start, end.saturating_sub(step), step).map_err(range)?;
        Ok(Grid { start, step, intervals: i64::try_from(intervals).map_err(|_| bad("too many"))? })
    }

    /// An instant query's grid: exactly one bucket, `[start, end)`.
    pub fn single(start: i64, end: i64) -> Result<Grid, QueryError> {
        if end <= start {
            return Err(bad(format!("end ({end}) must be after start ({start})")));
        }
        let step = end.checked_sub(start).ok_or_else(|| bad("time range out of bounds"))?;
        Ok(Grid { start, step, intervals: 1 })
    }

    /// Exclusive end.
    pub fn end(&self) -> i64 {
        self.start.saturating_add(self.step.saturating_mul(self.intervals))
    }

    /// The bucket of a span starting at `t`, if inside the grid.
    pub fn interval_of(&self, t: i64) -> Option<usize> {
        if t < self.start || t >= self.end() {
            return None;
        }
        usize::try_from(t.checked_sub(self.start)? / self.step).ok()
    }

    /// Start of bucket `i` in unix milliseconds (Tempo's sample timestamp).
    pub fn timestamp_ms(&self, i: usize) -> i64 {
        let offset = i64::try_from(i).unwrap_or(i64::MAX).saturating_mul(self.step);
        self.start.saturating_add(offset).div_euclid(1_000_000)
    }

    pub fn step_seconds(&self) -> f64 {
        self.step as f64 / NANOS_PER_SEC
    }
}

pub struct MetricsRequest {
    pub query: MetricsQuery,
    pub grid: Grid,
    /// Most exemplars per series.
    pub exemplars: usize,
    /// Series and samples the answer may hold.
    pub limits: AnswerLimits,
}

/// A label value, typed as Tempo's `AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Protojson of `AnyValue`: exactly one member set, 64-bit integers as strings.
impl Serialize for LabelValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self {
            LabelValue::Str(v) => m.serialize_entry("stringValue", v)?,
            LabelValue::Int(v) => m.serialize_entry("intValue", &v.to_string())?,
            LabelValue::Float(v) => m.serialize_entry("doubleValue", v)?,
            LabelValue::Bool(v) => m.serialize_entry("boolValue", v)?,
        }
        m.end()
    }
}

/// Reads the protojson [`LabelValue`] is written as (peers send grouped partial results).
impl<'de> serde::Deserialize<'de> for LabelValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct AnyValue {
            string_value: Option<String>,
            int_value: Option<String>,
            double_value: Option<f64>,
            bool_value: Option<bool>,
        }
        let v = AnyValue::deserialize(d)?;
        match (v.string_value, v.int_value, v.double_value, v.bool_value) {
            (Some(s), None, None, None) => Ok(LabelValue::Str(s)),
            (None, Some(i), None, None) => {
                i.parse().map(LabelValue::Int).map_err(serde::de::Error::custom)
            }
            (None, None, Some(f), None) => Ok(LabelValue::Float(f)),
            (None, None, None, Some(b)) => Ok(LabelValue::Bool(b)),
            _ => Err(serde::de::Error::custom("an AnyValue needs exactly one value")),
        }
    }
}

impl LabelValue {
    fn prom(&self) -> String {
        match self {
            LabelValue::Str(s) => s.clone(),
            LabelValue::Int(i) => i.to_string(),
            LabelValue::Float(f) => f.to_string(),
            LabelValue::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: LabelValue,
}

// Protojson of tempopb.QueryRangeResponse / QueryInstantResponse: lowerCamel names, 64-bit
// integers as strings, empty fields omitted. Sample and instant values are always written,
// zeros included: Grafana's 11.0 browser parser reads `value` as a number and would see
// `undefined` otherwise, and Go's protojson decoder accepts explicit zeros.
#[derive(Debug, Serialize, Default)]
pub struct QueryRangeResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<TimeSeries>,
    pub metrics: SearchMetrics,
}

#[derive(Debug, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeSeries {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prom_labels: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exemplars: Vec<Exemplar>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub timestamp_ms: String,
    pub value: f64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exemplar {
    pub labels: Vec<KeyValue>,
    pub value: f64,
    pub timestamp_ms: String,
}

#[derive(Debug, Serialize, Default)]
pub struct QueryInstantResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<InstantSeries>,
    pub metrics: SearchMetrics,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct InstantSeries {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<KeyValue>,
    pub value: f64,
}

impl From<QueryRangeResponse> for QueryInstantResponse {
    /// An instant answer is a one-bucket range answer.
    fn from(r: QueryRangeResponse) -> Self {
        let series = r
            .series
            .into_iter()
            .filter_map(|s| {
                let value = s.samples.first()?.value;
                Some(InstantSeries { labels: s.labels, value })
            })
            .collect();
        QueryInstantResponse { series, metrics: r.metrics }
    }
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::BadRequest(msg.into())
}

/// How one `by()` attribute is grouped: one column, or (for span/resource attributes, whose
/// type is not known up front) one column per value type.
enum KeyColumns {
    Str,
    Int,
    Typed,
}

/// Group-by expressions of one `by()` attribute (aliased `k{i}_{j}`).
fn key_exprs(
    a: &Attribute,
    dedicated: &DedicatedColumns,
) -> Result<(Vec<Expr>, KeyColumns), QueryError> {
    let code_name = |column: &str, names: &[(i8, &str)]| -> Result<Expr, QueryError> {
        let mut w = when(col(column).eq(lit(names[0].0)), lit(names[0].1));
        for (code, name) in &names[1..] {
            w = w.when(col(column).eq(lit(*code)), lit(*name));
        }
        Ok(w.end()?)
    };
    let utf8 = |e: Expr| cast(e, DataType::Utf8);
    Ok(match a {
        Attribute::Intrinsic(i) => match i {
            Intrinsic::Name => (vec![utf8(col(c::NAME))], KeyColumns::Str),
            Intrinsic::StatusMessage => (vec![utf8(col(c::STATUS_MESSAGE))], KeyColumns::Str),
            Intrinsic::RootName => (vec![utf8(col(T_ROOT_NAME))], KeyColumns::Str),
            Intrinsic::RootServiceName => (vec![utf8(col(T_ROOT_SERVICE))], KeyColumns::Str),
            Intrinsic::Status => (
                vec![code_name(c::STATUS_CODE, &[(0, "unset"), (1, "ok"), (2, "error")])?],
                KeyColumns::Str,
            ),
            Intrinsic::Kind => (
                vec![code_name(
                    c::KIND,
                    &[
                        (0, "unspecified"),
                        (1, "internal"),
                        (2, "server"),
                        (3, "client"),
                        (4, "producer"),
                        (5, "consumer"),
                    ],
                )?],
                KeyColumns::Str,
            ),
            Intrinsic::Duration => (vec![col(c::DURATION)], KeyColumns::Int),
            Intrinsic::TraceDuration => (vec![col(T_DURATION)], KeyColumns::Int),
        },
        Attribute::Scoped { scope, name } => {
            // `.x` prefers the span attribute, as Tempo does.
            let sides: &[bool] = match scope {
                Scope::Span => &[false],
                Scope::Resource => &[true],
                Scope::Any => &[false, true],
            };
            let pick = |f: &dyn Fn(bool) -> Expr| {
                let all: Vec<Expr> = sides.iter().map(|r| f(*r)).collect();
                match <[Expr; 1]>::try_from(all) {
                    Ok([one]) => one,
                    Err(all) => coalesce(all),
                }
            };
            (
                vec![
                    pick(&|r| string_attr(r, name, dedicated, CmpOp::Match)),
                    pick(&|r| attr(Slot::Int, r, name)),
                    pick(&|r| attr(Slot::Float, r, name)),
                    pick(&|r| attr(Slot::Bool, r, name)),
                ],
                KeyColumns::Typed,
            )
        }
    })
}

fn needs_trace(a: &Attribute) -> bool {
    matches!(
        a,
        Attribute::Intrinsic(
            Intrinsic::RootName | Intrinsic::RootServiceName | Intrinsic::TraceDuration
        )
    )
}

/// The value of a key at `row`; `None` when the span lacks the attribute.
fn key_value(cols: &[ArrayRef], kind: &KeyColumns, row: usize) -> Option<LabelValue> {
    let valid = |i: usize| cols.get(i).filter(|a| a.is_valid(row));
    match kind {
        KeyColumns::Str => {
            valid(0).map(|a| LabelValue::Str(a.as_string::<i32>().value(row).into()))
        }
        KeyColumns::Int => {
            valid(0).map(|a| LabelValue::Int(a.as_primitive::<Int64Type>().value(row)))
        }
        KeyColumns::Typed => {
            if let Some(a) = valid(0) {
                Some(LabelValue::Str(a.as_string::<i32>().value(row).into()))
            } else if let Some(a) = valid(1) {
                Some(LabelValue::Int(a.as_primitive::<Int64Type>().value(row)))
            } else if let Some(a) = valid(2) {
                Some(LabelValue::Float(a.as_primitive::<Float64Type>().value(row)))
            } else {
                valid(3).map(|a| LabelValue::Bool(a.as_boolean().value(row)))
            }
        }
    }
}

/// Tempo's label for a span without the grouped attribute.
fn nil() -> LabelValue {
    LabelValue::Str("nil".into())
}

/// Exact quantile `q` of sorted values, interpolating linearly between the closest ranks.
pub fn quantile(sorted: &[i64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = last as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    let (a, b) = (*sorted.get(lo)? as f64, *sorted.get(hi)? as f64);
    Some(a + (b - a) * (h - lo as f64))
}

/// Upper bound (ns) of the power-of-two bucket holding `d`, as Tempo's `Log2Bucketize`.
pub fn log2_bucket(d: i64) -> i64 {
    if d <= 0 {
        return 0;
    }
    i64::try_from((d as u64).next_power_of_two()).unwrap_or(i64::MAX)
}

/// One group of the aggregation: matching spans of one series in one bucket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Group {
    interval: usize,
    count: i64,
    /// Raw durations (duration functions only), unsorted.
    durations: Vec<i64>,
    /// The slowest span: (trace id, start ns, duration ns).
    exemplar: Option<([u8; 16], i64, i64)>,
}

/// A series under construction.
struct Building {
    labels: Vec<KeyValue>,
    values: Vec<Option<f64>>,
    /// Candidate exemplars: (interval, trace id, start ns, value).
    exemplars: Vec<(usize, [u8; 16], i64, f64)>,
}

impl Building {
    fn new(labels: Vec<KeyValue>, grid: &Grid, zero: bool) -> Self {
        let n = usize::try_from(grid.intervals).unwrap_or(0);
        Building { labels, values: vec![zero.then_some(0.0); n], exemplars: Vec::new() }
    }
}

pub(super) async fn traceql_metrics(
    engine: &QueryEngine,
    tenant: &str,
    req: &MetricsRequest,
) -> Result<QueryRangeResponse, QueryError> {
    let started = std::time::Instant::now();
    let Query::Filter(filter) = &req.query.spans else {
        return Err(bad(
            "unsupported: metrics over spansets combined with && or ||; use a single { } filter",
        ));
    };
    let grid = req.grid;
    let (start, end) = (grid.start, grid.end());
    let peers = crate::cluster::SpanScope {
        traceql: Some(req.query.spans.to_string()),
        range: Some((start, end.saturating_sub(1))),
        ..Default::default()
    };
    let viewed =
        view(engine, tenant, |b| b.meta.max_time >= start && b.meta.min_time < end, &peers).await?;
    let total_blocks = viewed.blocks.len();
    // Blocks are dealt to this replica and the peers that answered; each peer aggregates
    // its share (`metrics_part`), this replica its own share plus every head.
    let parts = shared_work(
        engine,
        viewed,
        |v| async move { partial_groups(engine, assemble(engine, v)?, req, filter).await },
        |base, blocks| ask_metrics_part(engine, tenant, req, base, blocks),
    )
    .await?;
    let mut groups = BTreeMap::new();
    for part in parts {
        merge_groups(&mut groups, part);
    }
    build_response(engine, req, groups, total_blocks, started)
}

/// The grouped aggregates of the spans in `tables` matching `filter`, per by() key: what one
/// replica contributes to a TraceQL metrics answer (merged by concatenating the groups).
pub(super) async fn partial_groups(
    engine: &QueryEngine,
    tables: super::Tables,
    req: &MetricsRequest,
    filter: &super::traceql::Filter,
) -> Result<GroupMap, QueryError> {
    let grid = req.grid;
    let (start, end) = (grid.start, grid.end());
    let with_trace = req.query.by.iter().any(needs_trace);
    let df = filtered_with(&tables, filter, Some((start, end - 1)), with_trace)?;

    let mut group = Vec::new();
    let mut kinds = Vec::new();
    let mut widths = Vec::new();
    for (i, a) in req.query.by.iter().enumerate() {
        let (exprs, kind) = key_exprs(a, &tables.dedicated)?;
        widths.push(exprs.len());
        for (j, e) in exprs.into_iter().enumerate() {
            group.push(e.alias(out_col::key(i, j)));
        }
        kinds.push(kind);
    }
    group.push(((col(c::START) - lit(start)) / lit(grid.step)).alias(out_col::BUCKET));
    let slowest = || vec![col(c::DURATION).sort(false, false)];
    let mut aggs = vec![
        cast(count(lit(1u8)), DataType::Int64).alias(out_col::COUNT),
        first_value(col(c::TRACE_ID), slowest()).alias(out_col::EX_TRACE),
        first_value(col(c::START), slowest()).alias(out_col::EX_START),
        first_value(col(c::DURATION), slowest()).alias(out_col::EX_DURATION),
    ];
    let raw = matches!(
        req.query.function,
        MetricsFunction::QuantileOverTime(_) | MetricsFunction::HistogramOverTime
    );
    if raw {
        aggs.push(array_agg(col(c::DURATION)).alias(out_col::DURATIONS));
    }
    let batches = df.aggregate(group, aggs)?.collect().await?;

    // Series key: the by() values in order (`None` = attribute missing).
    let mut groups: BTreeMap<String, (Vec<Option<LabelValue>>, Vec<Group>)> = BTreeMap::new();
    let refuse = |e: AnswerLimitError| {
        engine.metrics.queries_refused.with_label_values(&[e.reason()]).inc();
        QueryError::ResourcesExhausted(e.to_string())
    };
    let intervals = usize::try_from(grid.intervals).unwrap_or(usize::MAX);
    // Series per by() key at least (histograms add one per bucket seen, counted below).
    let per_key = match &req.query.function {
        MetricsFunction::QuantileOverTime(qs) => qs.len().max(1),
        _ => 1,
    };
    for b in &batches {
        read_groups(b, &kinds, &widths, &grid, raw, &mut groups)?;
        // Counted per batch, before the series (each `intervals` long) are allocated.
        req.limits.grid(groups.len().saturating_mul(per_key), intervals).map_err(refuse)?;
    }
    Ok(groups)
}

/// Per by() key (its debug text): the typed key values and the groups of every replica.
pub type GroupMap = BTreeMap<String, (Vec<Option<LabelValue>>, Vec<Group>)>;

/// One group per interval: several replicas' groups of an interval added up (counts summed,
/// durations joined, the slowest exemplar kept).
fn combine(groups: Vec<Group>) -> Vec<Group> {
    let mut by: BTreeMap<usize, Group> = BTreeMap::new();
    for g in groups {
        match by.get_mut(&g.interval) {
            None => {
                by.insert(g.interval, g);
            }
            Some(into) => {
                into.count = into.count.saturating_add(g.count);
                into.durations.extend(g.durations);
                if g.exemplar.map(|e| e.2) > into.exemplar.map(|e| e.2) {
                    into.exemplar = g.exemplar;
                }
            }
        }
    }
    by.into_values().collect()
}

fn merge_groups(into: &mut GroupMap, part: GroupMap) {
    for (k, (keys, gs)) in part {
        into.entry(k).or_insert_with(|| (keys, Vec::new())).1.extend(gs);
    }
}

fn build_response(
    engine: &QueryEngine,
    req: &MetricsRequest,
    groups: GroupMap,
    total_blocks: usize,
    started: std::time::Instant,
) -> Result<QueryRangeResponse, QueryError> {
    let grid = req.grid;
    let refuse = |e: AnswerLimitError| {
        engine.metrics.queries_refused.with_label_values(&[e.reason()]).inc();
        QueryError::ResourcesExhausted(e.to_string())
    };
    let intervals = usize::try_from(grid.intervals).unwrap_or(usize::MAX);
    let mut series = Vec::new();
    for (keys, gs) in groups.into_values() {
        let gs = combine(gs);
        let labels: Vec<KeyValue> = req
            .query
            .by
            .iter()
            .zip(keys)
            .map(|(a, v)| KeyValue { key: a.tag_name(), value: v.unwrap_or_else(nil) })
            .collect();
        series.extend(build_series(&req.query.function, labels, gs, &grid));
        req.limits.grid(series.len(), intervals).map_err(refuse)?;
    }
    let mut out = QueryRangeResponse {
        series: series.into_iter().map(|s| finish(s, &grid, req.exemplars)).collect(),
        metrics: SearchMetrics::default(),
    };
    out.metrics.total_blocks = u32::try_from(total_blocks).unwrap_or(u32::MAX);
    engine.observe("traceql_metrics", started);
    Ok(out)
}

/// Columns of the aggregation's output.
mod out_col {
    pub const BUCKET: &str = "bucket";
    pub const COUNT: &str = "n";
    pub const EX_TRACE: &str = "ex_trace";
    pub const EX_START: &str = "ex_start";
    pub const EX_DURATION: &str = "ex_duration";
    pub const DURATIONS: &str = "durations";

    /// Column `j` of `by()` attribute `i`.
    pub fn key(i: usize, j: usize) -> String {
        format!("k{i}_{j}")
    }
}

fn read_groups(
    b: &RecordBatch,
    kinds: &[KeyColumns],
    widths: &[usize],
    grid: &Grid,
    raw: bool,
    groups: &mut BTreeMap<String, (Vec<Option<LabelValue>>, Vec<Group>)>,
) -> Result<(), QueryError> {
    let bucket = column(b, out_col::BUCKET)?.as_primitive::<Int64Type>();
    let n = column(b, out_col::COUNT)?.as_primitive::<Int64Type>();
    let ex_trace = column(b, out_col::EX_TRACE)?.as_fixed_size_binary();
    let ex_start = column(b, out_col::EX_START)?.as_primitive::<Int64Type>();
    let ex_dur = column(b, out_col::EX_DURATION)?.as_primitive::<Int64Type>();
    let durations = if raw { Some(column(b, out_col::DURATIONS)?.clone()) } else { None };
    let mut per_key: Vec<Vec<ArrayRef>> = Vec::new();
    for (i, w) in widths.iter().enumerate() {
        per_key.push(
            (0..*w).map(|j| column(b, &out_col::key(i, j)).cloned()).collect::<Result<_, _>>()?,
        );
    }
    for row in 0..b.num_rows() {
        let Some(interval) =
            usize::try_from(bucket.value(row)).ok().filter(|i| (*i as i64) < grid.intervals)
        else {
            continue;
        };
        let keys: Vec<Option<LabelValue>> =
            per_key.iter().zip(kinds).map(|(cols, k)| key_value(cols, k, row)).collect();
        let key = format!("{keys:?}");
        let exemplar = (ex_trace.is_valid(row) && ex_start.is_valid(row))
            .then(|| <[u8; 16]>::try_from(ex_trace.value(row)).ok())
            .flatten()
            .map(|id| (id, ex_start.value(row), ex_dur.value(row)));
        let ds = match &durations {
            Some(list) if list.is_valid(row) => {
                let l = list.as_list::<i32>().value(row);
                l.as_primitive::<Int64Type>().iter().flatten().collect()
            }
            _ => Vec::new(),
        };
        groups.entry(key).or_insert_with(|| (keys, Vec::new())).1.push(Group {
            interval,
            count: n.value(row),
            durations: ds,
            exemplar,
        });
    }
    Ok(())
}

/// The series of one by() key: one for counting functions, one per quantile, one per bucket.
fn build_series(
    f: &MetricsFunction,
    labels: Vec<KeyValue>,
    groups: Vec<Group>,
    grid: &Grid,
) -> Vec<Building> {
    let with = |extra: KeyValue| {
        let mut l = labels.clone();
        l.push(extra);
        l
    };
    match f {
        MetricsFunction::Rate | MetricsFunction::CountOverTime => {
            let per_second = matches!(f, MetricsFunction::Rate);
            let labels = if labels.is_empty() {
                vec![KeyValue { key: "__name__".into(), value: LabelValue::Str(f.name().into()) }]
            } else {
                labels
            };
            let mut s = Building::new(labels, grid, true);
            for g in groups {
                let v =
                    if per_second { g.count as f64 / grid.step_seconds() } else { g.count as f64 };
                s.values[g.interval] = Some(v);
                if let Some((id, start, _)) = g.exemplar {
                    s.exemplars.push((g.interval, id, start, v));
                }
            }
            vec![s]
        }
        MetricsFunction::QuantileOverTime(qs) => {
            let mut out: Vec<Building> = qs
                .iter()
                .map(|q| {
                    Building::new(
                        with(KeyValue { key: "p".into(), value: LabelValue::Float(*q) }),
                        grid,
                        false,
                    )
                })
                .collect();
            for mut g in groups {
                g.durations.sort_unstable();
                let mut closest: Option<(usize, f64)> = None;
                for (s, q) in out.iter_mut().zip(qs) {
                    s.values[g.interval] = quantile(&g.durations, *q).map(|v| v / NANOS_PER_SEC);
                }
                // Tempo attaches a quantile exemplar to the one series nearest its value.
                if let Some((id, start, d)) = g.exemplar {
                    let secs = d as f64 / NANOS_PER_SEC;
                    for (i, s) in out.iter().enumerate() {
                        if let Some(v) = s.values[g.interval] {
                            let dist = (v - secs).abs();
                            if closest.is_none_or(|(_, best)| dist < best) {
                                closest = Some((i, dist));
                            }
                        }
                    }
                    if let Some((i, _)) = closest {
                        out[i].exemplars.push((g.interval, id, start, secs));
                    }
                }
            }
            out
        }
        MetricsFunction::HistogramOverTime => {
            let mut buckets: BTreeMap<i64, Building> = BTreeMap::new();
            for g in groups {
                let mut counts: BTreeMap<i64, f64> = BTreeMap::new();
                for d in &g.durations {
                    *counts.entry(log2_bucket(*d)).or_default() += 1.0;
                }
                for (bound, n) in counts {
                    let s = buckets.entry(bound).or_insert_with(|| {
                        let v = LabelValue::Float(bound as f64 / NANOS_PER_SEC);
                        Building::new(
                            with(KeyValue { key: "__bucket".into(), value: v }),
                            grid,
                            true,
                        )
                    });
                    s.values[g.interval] = Some(n);
                }
                if let Some((id, start, d)) = g.exemplar
                    && let Some(s) = buckets.get_mut(&log2_bucket(d))
                {
                    let v = s.values[g.interval].unwrap_or(0.0);
                    s.exemplars.push((g.interval, id, start, v));
                }
            }
            buckets.into_values().collect()
        }
    }
}

/// `{k="v", ...}` as Prometheus prints a label set (sorted by name).
fn prom_labels(labels: &[KeyValue]) -> String {
    let mut pairs: Vec<(String, String)> =
        labels.iter().map(|kv| (kv.key.clone(), kv.value.prom())).collect();
    pairs.sort();
    let inner: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str()))).collect();
    format!("{{{}}}", inner.join(", "))
}

fn finish(s: Building, grid: &Grid, max_exemplars: usize) -> TimeSeries {
    let samples = s
        .values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|value| Sample { timestamp_ms: grid.timestamp_ms(i).to_string(), value })
        })
        .collect();
    // Spread the kept exemplars evenly over time rather than keeping the first few buckets.
    let mut ex = s.exemplars;
    ex.sort_by_key(|e| e.0);
    let keep: Vec<_> = if ex.len() <= max_exemplars {
        ex
    } else if max_exemplars == 0 {
        Vec::new()
    } else {
        (0..max_exemplars).filter_map(|k| ex.get(k * ex.len() / max_exemplars).copied()).collect()
    };
    let exemplars = keep
        .into_iter()
        .map(|(_, id, start, value)| Exemplar {
            labels: vec![KeyValue {
                key: "trace:id".into(),
                value: LabelValue::Str(hex::encode(id)),
            }],
            value,
            timestamp_ms: start.div_euclid(1_000_000).to_string(),
        })
        .collect();
    TimeSeries { prom_labels: prom_labels(&s.labels), labels: s.labels, samples, exemplars }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn replicas_groups_of_one_interval_add_up() {
        let g = |interval, count, d: i64| Group {
            interval,
            count,
            durations: vec![d],
            exemplar: Some(([d as u8; 16], 0, d)),
        };
        let out = combine(vec![g(3, 1, 10), g(1, 2, 5), g(3, 2, 30)]);
        assert_eq!(out.iter().map(|g| (g.interval, g.count)).collect::<Vec<_>>(), [(1, 2), (3, 3)]);
        assert_eq!(out[1].durations, [10, 30]);
        assert_eq!(out[1].exemplar.map(|e| e.2), Some(30), "the slowest span is the exemplar");
    }
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn range_grid_aligns_start_down_and_end_up_to_the_step() {
        let g = Grid::aligned(65 * S, 181 * S, 60 * S).unwrap();
        assert_eq!(g, Grid { start: 60 * S, step: 60 * S, intervals: 3 });
        assert_eq!(g.end(), 240 * S);
        assert_eq!(g.timestamp_ms(1), 120_000);
    }

    #[test]
    fn spans_fall_into_the_bucket_that_starts_at_or_before_them() {
        let g = Grid::aligned(0, 30 * S, 10 * S).unwrap();
        assert_eq!(g.interval_of(0), Some(0));
        assert_eq!(g.interval_of(10 * S - 1), Some(0));
        assert_eq!(g.interval_of(10 * S), Some(1));
        assert_eq!(g.interval_of(30 * S), None);
        assert_eq!(g.interval_of(-1), None);
    }

    #[test]
    fn grids_reject_bad_steps_and_too_many_points() {
        assert!(Grid::aligned(0, 10 * S, 0).is_err());
        assert!(Grid::aligned(10 * S, 10 * S, S).is_err());
        assert!(Grid::aligned(0, (MAX_INTERVALS + 1) * S, S).is_err());
        assert_eq!(Grid::single(5, 9).unwrap(), Grid { start: 5, step: 4, intervals: 1 });
    }

    #[test]
    fn quantiles_interpolate_between_closest_ranks() {
        let v = [10, 20, 30, 40];
        assert_eq!(quantile(&v, 0.0), Some(10.0));
        assert_eq!(quantile(&v, 1.0), Some(40.0));
        assert_eq!(quantile(&v, 0.5), Some(25.0));
        assert_eq!(quantile(&[7], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two_upper_bounds() {
        assert_eq!(log2_bucket(1), 1);
        assert_eq!(log2_bucket(3), 4);
        assert_eq!(log2_bucket(4), 4);
        assert_eq!(log2_bucket(5), 8);
        assert_eq!(log2_bucket(0), 0);
    }

    #[test]
    fn label_values_serialize_as_protojson_any_values() {
        let kv = |v| serde_json::to_value(KeyValue { key: "k".into(), value: v }).unwrap();
        assert_eq!(kv(LabelValue::Int(3))["value"], serde_json::json!({"intValue": "3"}));
        assert_eq!(kv(LabelValue::Float(0.5))["value"], serde_json::json!({"doubleValue": 0.5}));
        assert_eq!(
            kv(LabelValue::Str("a".into()))["value"],
            serde_json::json!({"stringValue": "a"})
        );
        let l = vec![
            KeyValue { key: "z".into(), value: LabelValue::Str("a\"b".into()) },
            KeyValue { key: "p".into(), value: LabelValue::Float(0.9) },
        ];
        assert_eq!(prom_labels(&l), r#"{p="0.9", z="a\"b"}"#);
    }
}
