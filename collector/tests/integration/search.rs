//! TraceQL search, tags and tenant isolation over head and blocks, through the query engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use skein_collector::query::search::SearchRequest;
use skein_collector::query::traceql::{self, Attribute, Scope};
use skein_collector::query::{QueryEngine, QueryError};

const T: &str = "single-tenant";
/// A fixed clock so snapshots are stable.
const BASE: u64 = 1_800_000_000_000_000_000;

/// Five traces: half in a block, half in the head.
async fn engine(dir: &std::path::Path) -> QueryEngine {
    let (store, head, metrics) = store_and_head(dir).await;
    let sec = 1_000_000_000;
    let mut checkout = trace(3, "shop", "POST /checkout", BASE + 2 * sec, 900, 2, true);
    checkout.scope_spans[0].spans[1].attributes.push(s("db.system", "postgres"));
    head.apply(
        1,
        T,
        &request(vec![
            trace(1, "shop", "GET /", BASE, 20, 1, false),
            trace(2, "shop", "GET /items", BASE + sec, 150, 2, false),
        ]),
    )
    .unwrap();
    for f in head.freeze_due(1, std::time::Duration::from_secs(1), true).unwrap() {
        store.flush(&f, || head.release(&f)).await.unwrap();
    }
    head.apply(
        2,
        T,
        &request(vec![
            checkout,
            trace(4, "payments", "Charge", BASE + 3 * sec, 40, 0, false),
            trace(5, "shop", "GET /", BASE + 4 * sec, 30, 1, false),
        ]),
    )
    .unwrap();
    head.apply(3, "other-tenant", &request(vec![trace(6, "secret", "GET /", BASE, 5, 0, false)]))
        .unwrap();
    QueryEngine::new(store, head, metrics, 256 << 20).unwrap()
}

async fn ids(e: &QueryEngine, q: &str) -> Vec<String> {
    let r = e
        .search(
            T,
            SearchRequest { query: traceql::parse(q).unwrap(), limit: 20, spss: 3, range: None },
        )
        .await
        .unwrap();
    r.traces.into_iter().map(|t| t.trace_id[30..].to_string()).collect()
}

#[tokio::test]
async fn traceql_filters_select_the_right_traces() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    // Most recent first.
    assert_eq!(ids(&e, "{}").await, ["05", "04", "03", "02", "01"]);
    assert_eq!(ids(&e, r#"{ resource.service.name = "payments" }"#).await, ["04"]);
    assert_eq!(ids(&e, "{ duration > 100ms }").await, ["03", "02"]);
    assert_eq!(ids(&e, "{ status = error }").await, ["03"]);
    assert_eq!(ids(&e, r#"{ kind = server && name =~ "GET.*" }"#).await, ["05", "02", "01"]);
    assert_eq!(ids(&e, r#"{ span.http.route = "GET /items" }"#).await, ["02"]);
    assert_eq!(ids(&e, r#"{ .db.system = "postgres" }"#).await, ["03"]);
    assert_eq!(ids(&e, r#"{ .host.name = "h1" && name = "Charge" }"#).await, ["04"]);
    assert_eq!(ids(&e, "{ span.attempt >= 1 }").await, ["03", "02"]);
    assert_eq!(
        ids(&e, "{ span.http.response.status_code = 200 && duration < 25ms }").await,
        ["01"]
    );
    assert_eq!(ids(&e, r#"{ name = "child-1" } && { status = error }"#).await, ["03"]);
    assert_eq!(ids(&e, r#"{ name = "Charge" } || { duration > 800ms }"#).await, ["04", "03"]);
    assert_eq!(ids(&e, r#"{ rootServiceName = "payments" }"#).await, ["04"]);
    assert_eq!(ids(&e, r#"{ rootName = "GET /" && kind = client }"#).await, ["05", "01"]);
    assert_eq!(ids(&e, "{ traceDuration > 100ms }").await, ["03", "02"]);
    assert_eq!(ids(&e, "{ .nope != nil }").await, Vec::<String>::new());
}

#[tokio::test]
async fn search_response_shape_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let r = e
        .search(
            T,
            SearchRequest {
                query: traceql::parse("{ duration > 100ms }").unwrap(),
                limit: 20,
                spss: 2,
                range: None,
            },
        )
        .await
        .unwrap();
    insta::assert_json_snapshot!(r);
}

#[tokio::test]
async fn limit_and_time_window_narrow_results() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let r = e
        .search(
            T,
            SearchRequest { query: traceql::parse("{}").unwrap(), limit: 2, spss: 1, range: None },
        )
        .await
        .unwrap();
    assert_eq!(r.traces.len(), 2);
    assert_eq!(r.traces[0].span_sets[0].spans.len(), 1);
    let sec = 1_000_000_000i64;
    let b = BASE as i64;
    let r = e
        .search(
            T,
            SearchRequest {
                query: traceql::parse("{}").unwrap(),
                limit: 20,
                spss: 3,
                range: Some((b + sec, b + 2 * sec)),
            },
        )
        .await
        .unwrap();
    let got: Vec<_> = r.traces.iter().map(|t| t.trace_id[30..].to_string()).collect();
    assert_eq!(got, ["03", "02"]);
}

#[tokio::test]
async fn tags_and_values_come_from_head_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let scopes = e.tag_scopes(T, None).await.unwrap();
    let names: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["resource", "span", "intrinsic"]);
    assert!(scopes[0].tags.contains(&"service.name".to_string()));
    assert!(scopes[1].tags.contains(&"db.system".to_string()));
    assert!(scopes[1].tags.contains(&"http.route".to_string()));

    let svc = Attribute::Scoped { scope: Scope::Resource, name: "service.name".into() };
    let v: Vec<String> =
        e.tag_values(T, &svc, None, None).await.unwrap().into_iter().map(|t| t.value).collect();
    assert_eq!(v, ["payments", "shop"]);
    let route = Attribute::Scoped { scope: Scope::Span, name: "http.route".into() };
    let q = traceql::parse(r#"{ resource.service.name = "payments" }"#).unwrap();
    let traceql::Query::Filter(f) = q else { panic!() };
    let v: Vec<String> = e
        .tag_values(T, &route, Some(&f), None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.value)
        .collect();
    assert_eq!(v, ["Charge"]);
    let attempt = Attribute::Scoped { scope: Scope::Any, name: "attempt".into() };
    let v = e.tag_values(T, &attempt, None, None).await.unwrap();
    assert!(v.iter().all(|t| t.kind == "int"), "{v:?}");
}

#[tokio::test]
async fn tenants_never_see_each_others_spans() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    assert!(matches!(e.trace_by_id(T, id16(&trace_id(6)), None).await, Err(QueryError::NotFound)));
    assert!(e.trace_by_id("other-tenant", id16(&trace_id(6)), None).await.is_ok());
    assert!(matches!(
        e.trace_by_id("other-tenant", id16(&trace_id(1)), None).await,
        Err(QueryError::NotFound)
    ));
    assert!(!ids(&e, r#"{ resource.service.name = "secret" }"#).await.contains(&"06".to_string()));
    let svc = Attribute::Scoped { scope: Scope::Resource, name: "service.name".into() };
    let v: Vec<String> = e
        .tag_values("other-tenant", &svc, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.value)
        .collect();
    assert_eq!(v, ["secret"]);
}

#[tokio::test]
async fn operation_spans_are_selected_by_service_name_and_duration_over_head_and_blocks() {
    use skein_collector::query::operation::OperationQuery;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let q = |min: Option<i64>, below: Option<i64>| OperationQuery {
        service: "shop".into(),
        span_name: "GET /".into(),
        start_ns: BASE as i64,
        end_ns: (BASE + 10_000_000_000) as i64,
        min_duration_ns: min,
        below_duration_ns: below,
        limit: 10,
    };
    // "GET /" of shop: trace 1 (20 ms, in a block) and trace 5 (30 ms, in the head); the
    // other tenant's "GET /" is invisible.
    let all = e.operation_spans(T, &q(None, None)).await.unwrap();
    let ms: Vec<i64> = all.iter().map(|s| s.duration_ns / 1_000_000).collect();
    assert_eq!(ms, vec![30, 20], "slowest first");
    assert_eq!(all[1].span_id.to_vec(), span_id(1, 0));
    let slow = e.operation_spans(T, &q(Some(25_000_000), None)).await.unwrap();
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].trace_id.to_vec(), trace_id(5));
    let normal = e.operation_spans(T, &q(None, Some(25_000_000))).await.unwrap();
    assert_eq!(normal.iter().map(|s| s.trace_id.to_vec()).collect::<Vec<_>>(), vec![trace_id(1)]);
    let other = OperationQuery { service: "payments".into(), ..q(None, None) };
    assert!(e.operation_spans(T, &other).await.unwrap().is_empty(), "name must match too");
}

/// Batches of traces over many services, names and durations; every tenth trace's children
/// come one batch after its root, so such traces are split over two blocks.
fn mixed_batches() -> Vec<Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>> {
    let ms = 1_000_000u64;
    let mut batches = vec![Vec::new(); 6];
    for n in 0..300u64 {
        let start = BASE + ((n * 7919) % 1000) * 10 * ms;
        let svc = format!("svc-{}", n % 4);
        let name = format!("op-{}", n % 3);
        let mut rs = trace(n + 1, &svc, &name, start, (n * 37) % 500 + 1, n % 4, n % 7 == 0);
        let batch = (n % 5) as usize;
        if n % 10 == 3 {
            let mut later = rs.clone();
            later.scope_spans[0].spans.drain(..1);
            rs.scope_spans[0].spans.truncate(1);
            batches[batch + 1].push(later);
        }
        batches[batch].push(rs);
    }
    batches
}

/// What a search answers: trace ids, most recent first, with their match counts.
async fn answers(e: &QueryEngine, q: &str, limit: usize, range: Option<(i64, i64)>) -> Vec<String> {
    let query = traceql::parse(q).unwrap();
    let r = e.search(T, SearchRequest { query, limit, spss: 2, range }).await.unwrap();
    r.traces.iter().map(|t| format!("{}:{}", &t.trace_id[28..], t.span_sets[0].matched)).collect()
}

/// The whole answer (summaries, service stats, span sets), as JSON, one trace a line.
async fn whole_answers(
    e: &QueryEngine,
    q: &str,
    limit: usize,
    range: Option<(i64, i64)>,
) -> Vec<String> {
    let query = traceql::parse(q).unwrap();
    let r = e.search(T, SearchRequest { query, limit, spss: 3, range }).await.unwrap();
    r.traces.iter().map(|t| serde_json::to_string(t).unwrap()).collect()
}

const MIXED_QUERIES: &[&str] = &[
    "{}",
    r#"{ resource.service.name = "svc-1" && duration > 200ms }"#,
    "{ status = error }",
    r#"{ name = "op-2" }"#,
    "{ kind = client && duration < 3ms }",
    r#"{ resource.service.name = "svc-2" } && { status = error }"#,
    r#"{ name = "child-0" } || { resource.service.name = "svc-3" && duration > 400ms }"#,
    "{ span.attempt >= 1 }",
    r#"{ span.http.route = "op-1" }"#,
    r#"{ span.http.route = "op-0" && span.http.response.status_code = 200 && duration > 100ms }"#,
    r#"{ resource.host.name = "h1" && span.attempt = 2 }"#,
    r#"{ span.http.route != "op-1" } && { span.attempt = 0 }"#,
];

/// [`mixed_batches`] twice: all in the head of one engine, flushed batch by batch into blocks
/// (each with its search index) of the other.
async fn mixed_in_head_and_in_blocks()
-> ((tempfile::TempDir, tempfile::TempDir), QueryEngine, QueryEngine) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store_a, head_a, metrics_a) = store_and_head(a.path()).await;
    let (store_b, head_b, metrics_b) = store_and_head(b.path()).await;
    for (seq, batch) in mixed_batches().into_iter().enumerate() {
        let seq = seq as u64 + 1;
        head_a.apply(seq, T, &request(batch.clone())).unwrap();
        head_b.apply(seq, T, &request(batch)).unwrap();
        for f in head_b.freeze_due(1, std::time::Duration::from_secs(1), true).unwrap() {
            store_b.flush(&f, || head_b.release(&f)).await.unwrap();
        }
    }
    assert!(store_b.blocks(T).len() >= 5);
    assert!(store_b.blocks(T).iter().all(|b| b.meta.search_bytes.is_some()));
    let in_head = QueryEngine::new(store_a, head_a, metrics_a, 256 << 20).unwrap();
    let in_blocks = QueryEngine::new(store_b, head_b, metrics_b, 256 << 20).unwrap();
    ((a, b), in_head, in_blocks)
}

#[tokio::test]
async fn search_through_block_indexes_answers_as_a_scan_of_the_same_spans() {
    // The same spans twice: all in the head (scanned), and flushed batch by batch into blocks
    // (read through their search indexes).
    let (_dirs, scanned, indexed) = mixed_in_head_and_in_blocks().await;
    let window = Some((BASE as i64 + 2_000_000_000, BASE as i64 + 6_000_000_000));
    for q in MIXED_QUERIES {
        for (limit, range) in [(20, None), (3, None), (20, window), (1000, None)] {
            let want = answers(&scanned, q, limit, range).await;
            assert!(!want.is_empty(), "{q}: no traces, the comparison would prove nothing");
            assert_eq!(
                answers(&indexed, q, limit, range).await,
                want,
                "{q} limit {limit} {range:?}"
            );
        }
    }
}

#[tokio::test]
async fn trace_level_filters_from_summaries_answer_as_the_planned_join() {
    // A filter on trace-level fields only is answered from the trace summaries (split traces
    // merged over blocks); the same filter with an always-true span condition goes through the
    // planned join of spans and summaries. Both must agree, over blocks and over the head.
    let (_dirs, in_head, in_blocks) = mixed_in_head_and_in_blocks().await;
    let window = Some((BASE as i64 + 2_000_000_000, BASE as i64 + 6_000_000_000));
    for cond in [
        r#"rootServiceName = "svc-1" && traceDuration > 200ms"#,
        "traceDuration > 300ms",
        r#"rootName = "op-2" || traceDuration < 50ms"#,
    ] {
        let fast = format!("{{ {cond} }}");
        let planned = format!("{{ ({cond}) && duration >= 0ms }}");
        for (limit, range) in [(20, None), (3, None), (20, window), (1000, window)] {
            let want = whole_answers(&in_blocks, &planned, limit, range).await;
            assert!(!want.is_empty(), "{cond}: no traces, the comparison would prove nothing");
            for (engine, what) in [(&in_blocks, "blocks"), (&in_head, "head")] {
                assert_eq!(
                    whole_answers(engine, &fast, limit, range).await,
                    want,
                    "{cond} limit {limit} {range:?} over {what}"
                );
            }
        }
    }
}

#[tokio::test]
async fn blocks_written_before_search_indexes_still_load_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, head, metrics) = store_and_head(dir.path()).await;
    for (seq, batch) in mixed_batches().into_iter().enumerate() {
        let seq = seq as u64 + 1;
        head.apply(seq, T, &request(batch)).unwrap();
        for f in head.freeze_due(1, std::time::Duration::from_secs(1), true).unwrap() {
            store.flush(&f, || head.release(&f)).await.unwrap();
        }
    }
    let blocks = store.blocks(T).len();
    let e = QueryEngine::new(store, head, metrics, 256 << 20).unwrap();
    let mut want = Vec::new();
    for q in MIXED_QUERIES {
        want.push(answers(&e, q, 20, None).await);
    }
    drop(e);
    // Turn every block into one of the old format: no search.parquet, no search_bytes.
    let mut stripped = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "search.parquet") {
                std::fs::remove_file(&p).unwrap();
                let meta = p.with_file_name("meta.json");
                let mut json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
                json.as_object_mut().unwrap().remove("search_bytes").unwrap();
                std::fs::write(&meta, serde_json::to_vec(&json).unwrap()).unwrap();
                stripped += 1;
            }
        }
    }
    assert_eq!(stripped, blocks);
    let (store, head, metrics) = store_and_head(dir.path()).await;
    assert_eq!(store.blocks(T).len(), blocks, "old blocks are loaded, none quarantined");
    assert!(store.blocks(T).iter().all(|b| b.meta.search_bytes.is_none()));
    let e = QueryEngine::new(store, head, metrics, 256 << 20).unwrap();
    for (q, want) in MIXED_QUERIES.iter().zip(want) {
        assert_eq!(answers(&e, q, 20, None).await, want, "{q}");
    }
}
