//! TraceQL metrics over head + blocks, checked against a direct computation over the same spans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use crate::common::*;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use skein_collector::query::metrics_eval::{
    Grid, LabelValue, MetricsRequest, QueryInstantResponse, QueryRangeResponse, log2_bucket,
    quantile,
};
use skein_collector::query::traceql::{self, MetricsQuery};
use skein_collector::query::{QueryEngine, QueryError};

const T: &str = "single-tenant";
const SEC: i64 = 1_000_000_000;
/// A fixed clock, a multiple of every step used, so buckets start at BASE.
const BASE: i64 = 1_800_000_000 * SEC;
const TRACES: u64 = 60;
const SERVICES: [&str; 3] = ["shop", "payments", "auth"];

/// One stored span, as the direct computation sees it.
#[derive(Debug, Clone)]
struct Row {
    trace: [u8; 16],
    service: String,
    name: String,
    server: bool,
    error: bool,
    start: i64,
    duration: i64,
}

fn traces() -> Vec<ResourceSpans> {
    (1..=TRACES)
        .map(|n| {
            let start = (BASE + n as i64 * 7 * SEC + (n as i64 * 13_337) % SEC) as u64;
            let name = if n % 2 == 0 { "GET /a" } else { "GET /b" };
            let mut rs =
                trace(n, SERVICES[n as usize % 3], name, start, (n * 37) % 500 + 1, 1, n % 5 == 0);
            // Nanosecond noise so that quantiles are not all round numbers.
            rs.scope_spans[0].spans[0].end_time_unix_nano += n * 1_234;
            rs
        })
        .collect()
}

fn rows(rs: &[ResourceSpans]) -> Vec<Row> {
    let mut out = Vec::new();
    for r in rs {
        let service = r.resource.as_ref().unwrap().attributes[0].value.as_ref().unwrap();
        let service = match &service.value {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                s.clone()
            }
            _ => unreachable!(),
        };
        for s in &r.scope_spans[0].spans {
            out.push(Row {
                trace: id16(&s.trace_id),
                service: service.clone(),
                name: s.name.clone(),
                server: s.kind == 2,
                error: s.status.as_ref().is_some_and(|st| st.code == 2),
                start: s.start_time_unix_nano as i64,
                duration: (s.end_time_unix_nano - s.start_time_unix_nano) as i64,
            });
        }
    }
    out
}

/// Half the traces flushed into a block, half in the head.
async fn engine(dir: &std::path::Path) -> (QueryEngine, Vec<Row>) {
    let (store, head, metrics) = store_and_head(dir).await;
    let all = traces();
    let (first, second) = all.split_at(all.len() / 2);
    head.apply(1, T, &request(first.to_vec())).unwrap();
    for f in head.freeze_due(1, std::time::Duration::from_secs(1), true).unwrap() {
        store.flush(&f, || head.release(&f)).await.unwrap();
    }
    head.apply(2, T, &request(second.to_vec())).unwrap();
    assert!(!store.blocks(T).is_empty(), "the fixture needs spans in a block");
    (QueryEngine::new(store, head, metrics, 256 << 20).unwrap(), rows(&all))
}

fn q(s: &str) -> MetricsQuery {
    traceql::parse_metrics(s).unwrap()
}

async fn range(e: &QueryEngine, query: &str, grid: Grid) -> QueryRangeResponse {
    let req = MetricsRequest { query: q(query), grid, exemplars: 5, limits: Default::default() };
    e.traceql_metrics(T, &req).await.unwrap()
}

fn label(s: &skein_collector::query::metrics_eval::TimeSeries, key: &str) -> LabelValue {
    s.labels.iter().find(|kv| kv.key == key).unwrap().value.clone()
}

/// Sample values by bucket timestamp (ms).
fn samples(s: &skein_collector::query::metrics_eval::TimeSeries) -> BTreeMap<i64, f64> {
    s.samples.iter().map(|x| (x.timestamp_ms.parse().unwrap(), x.value)).collect()
}

fn bucket_ms(g: &Grid, t: i64) -> i64 {
    g.timestamp_ms(g.interval_of(t).unwrap())
}

fn whole_range(step: i64) -> Grid {
    Grid::aligned(BASE, BASE + 8 * 60 * SEC, step).unwrap()
}

#[tokio::test]
async fn count_over_time_counts_every_span_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let (e, rows) = engine(dir.path()).await;
    let g = whole_range(60 * SEC);
    let r = range(&e, "{ } | count_over_time()", g).await;
    assert_eq!(r.series.len(), 1);
    assert_eq!(label(&r.series[0], "__name__"), LabelValue::Str("count_over_time".into()));
    let mut want: BTreeMap<i64, f64> =
        (0..g.intervals as usize).map(|i| (g.timestamp_ms(i), 0.0)).collect();
    for row in &rows {
        *want.get_mut(&bucket_ms(&g, row.start)).unwrap() += 1.0;
    }
    assert_eq!(samples(&r.series[0]), want);
    assert_eq!(want.values().sum::<f64>(), rows.len() as f64);
}

#[tokio::test]
async fn rate_is_count_per_step_second_split_by_service() {
    let dir = tempfile::tempdir().unwrap();
    let (e, rows) = engine(dir.path()).await;
    let g = whole_range(30 * SEC);
    let r = range(&e, "{ kind = server } | rate() by(resource.service.name)", g).await;
    assert_eq!(r.series.len(), SERVICES.len());
    for s in &r.series {
        let LabelValue::Str(svc) = label(s, "resource.service.name") else { panic!() };
        let mut want: BTreeMap<i64, f64> =
            (0..g.intervals as usize).map(|i| (g.timestamp_ms(i), 0.0)).collect();
        for row in rows.iter().filter(|r| r.server && r.service == svc) {
            *want.get_mut(&bucket_ms(&g, row.start)).unwrap() += 1.0 / 30.0;
        }
        let got = samples(s);
        assert_eq!(got.len(), want.len());
        for (t, v) in want {
            assert!((got[&t] - v).abs() < 1e-12, "{svc} at {t}: {} != {v}", got[&t]);
        }
        // Exemplars are spans of this series, at most the requested number.
        assert!(!s.exemplars.is_empty() && s.exemplars.len() <= 5);
        for x in &s.exemplars {
            let tid = match &x.labels[0].value {
                LabelValue::Str(h) => h.clone(),
                _ => panic!(),
            };
            assert_eq!(x.labels[0].key, "trace:id");
            let row = rows.iter().find(|r| hex::encode(r.trace) == tid && r.server).unwrap();
            assert_eq!(row.service, svc);
            assert_eq!(x.timestamp_ms, (row.start / 1_000_000).to_string());
            assert_eq!(x.value, got[&bucket_ms(&g, row.start)]);
        }
    }
}

#[tokio::test]
async fn quantiles_are_exact_over_raw_durations() {
    let dir = tempfile::tempdir().unwrap();
    let (e, rows) = engine(dir.path()).await;
    let g = whole_range(120 * SEC);
    let qs = [0.5, 0.9, 0.99];
    let r =
        range(&e, "{ kind = server } | quantile_over_time(duration, 0.5, 0.9, 0.99) by(name)", g)
            .await;
    assert_eq!(r.series.len(), 2 * qs.len());
    for s in &r.series {
        let LabelValue::Str(name) = label(s, "name") else { panic!() };
        let LabelValue::Float(p) = label(s, "p") else { panic!() };
        let mut per_bucket: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for row in rows.iter().filter(|r| r.server && r.name == name) {
            per_bucket.entry(bucket_ms(&g, row.start)).or_default().push(row.duration);
        }
        let want: BTreeMap<i64, f64> = per_bucket
            .into_iter()
            .map(|(t, mut d)| {
                d.sort();
                (t, quantile(&d, p).unwrap() / 1e9)
            })
            .collect();
        assert_eq!(samples(s), want, "{name} p{p}");
    }
}

#[tokio::test]
async fn histogram_counts_spans_per_power_of_two_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (e, rows) = engine(dir.path()).await;
    let g = whole_range(240 * SEC);
    let r = range(&e, "{ status = error } | histogram_over_time(duration)", g).await;
    let mut want: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.error) {
        let b = (log2_bucket(row.duration) as f64 / 1e9).to_string();
        *want.entry((b, bucket_ms(&g, row.start))).or_default() += 1.0;
    }
    let mut got = BTreeMap::new();
    for s in &r.series {
        let LabelValue::Float(b) = label(s, "__bucket") else { panic!() };
        for (t, v) in samples(s) {
            if v > 0.0 {
                got.insert((b.to_string(), t), v);
            }
        }
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn instant_query_is_one_bucket_over_the_whole_range() {
    let dir = tempfile::tempdir().unwrap();
    let (e, rows) = engine(dir.path()).await;
    let (start, end) = (BASE + 100 * SEC, BASE + 300 * SEC);
    let req = MetricsRequest {
        query: q("{ } | count_over_time() by(status)"),
        grid: Grid::single(start, end).unwrap(),
        exemplars: 0,
        limits: Default::default(),
    };
    let r: QueryInstantResponse = e.traceql_metrics(T, &req).await.unwrap().into();
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.start >= start && r.start < end) {
        *want.entry(if row.error { "error" } else { "unset" }.to_string()).or_default() += 1.0;
    }
    let got: BTreeMap<String, f64> = r
        .series
        .iter()
        .map(|s| match &s.labels[0].value {
            LabelValue::Str(v) => (v.clone(), s.value),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn missing_group_attributes_form_a_nil_series() {
    let dir = tempfile::tempdir().unwrap();
    let (e, rows) = engine(dir.path()).await;
    let r = range(&e, "{ } | count_over_time() by(span.attempt)", whole_range(480 * SEC)).await;
    let mut got: BTreeMap<String, f64> = BTreeMap::new();
    for s in &r.series {
        let v = match label(s, "span.attempt") {
            LabelValue::Int(i) => i.to_string(),
            LabelValue::Str(s) => s,
            other => panic!("{other:?}"),
        };
        got.insert(v, s.samples.iter().map(|x| x.value).sum());
    }
    let children = rows.iter().filter(|r| !r.server).count() as f64;
    let roots = rows.len() as f64 - children;
    assert_eq!(got, BTreeMap::from([("0".to_string(), children), ("nil".to_string(), roots)]));
}

#[tokio::test]
async fn unsupported_pipelines_are_rejected_before_running() {
    for bad in [
        "{ } | avg_over_time(duration)",
        "{ } | rate() | topk(3)",
        "{ } | quantile_over_time(span.size, 0.5)",
        "{ }",
    ] {
        assert!(traceql::parse_metrics(bad).is_err(), "{bad}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = engine(dir.path()).await;
    let req = MetricsRequest {
        query: q("{ name = \"a\" } && { name = \"b\" } | rate()"),
        grid: whole_range(60 * SEC),
        exemplars: 1,
        limits: Default::default(),
    };
    assert!(matches!(e.traceql_metrics(T, &req).await, Err(QueryError::BadRequest(_))));
}

#[tokio::test]
async fn metrics_response_shape_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = engine(dir.path()).await;
    let g = Grid::aligned(BASE, BASE + 60 * SEC, 20 * SEC).unwrap();
    let r = range(&e, r#"{ resource.service.name = "auth" } | rate() by(name, status)"#, g).await;
    insta::assert_json_snapshot!(r);
}
