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
