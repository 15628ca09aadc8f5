//! Hostile queries against an in-process collector: SQL that would overflow the stack or
//! allocate outside the memory pool, sorts beyond the pool, queries that run too long or too
//! many at once, searches collecting too many trace ids, and a query flood next to ingest.
//! Every wait is bounded, so old code fails instead of hanging.

use std::time::{Duration, Instant};

use prost::Message;
use skein_collector::config::ServeArgs;
use skein_collector::tenant::DEFAULT_TENANT;

use crate::common::*;

/// Long enough for a debug build on a loaded machine, short against the old 30 s limit.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// A collector holding `traces` traces of 10 spans each (in the head).
async fn with_spans(traces: u64, extra: impl FnOnce(&mut ServeArgs)) -> Collector {
    let c = Collector::start(extra).await;
    let t0 = now_nanos() - 60_000_000_000;
    let rs: Vec<_> = (0..traces)
        .map(|n| trace(n, "shop", "GET /", t0 + n * 1_000_000, 5, 9, n % 7 == 0))
        .collect();
    c.r()
        .ingestor
        .export(DEFAULT_TENANT.into(), request(rs), None, skein_collector::ingest::Protocol::Grpc)
        .await
        .unwrap();
    c
}

/// Status, Retry-After and body of `POST /skein/api/sql`.
async fn sql(c: &Collector, query: &str) -> (u16, Option<String>, String) {
    let send = reqwest::Client::new()
        .post(format!("{}/skein/api/sql", c.http()))
        .body(query.to_string())
        .send();
    let resp = tokio::time::timeout(ANSWER_WITHIN, send)
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_WITHIN:?}: {:.80}", query))
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.text().await.unwrap())
}

/// Polls until no query holds pool memory (a stopped query has dropped its plan).
async fn pool_released(c: &Collector) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.r().engine.memory_reserved() > 0 {
        assert!(Instant::now() < deadline, "a finished query still holds pool memory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs for minutes without holding much memory: an edit distance for each of 9M pairs (every
/// span has one service, so the equality join pairs them all; joins without an equality key
/// are refused outright).
const ENDLESS: &str = "SELECT count(*) FROM spans a JOIN spans b ON a.service_name = b.service_name \
                       WHERE levenshtein(a.name || b.name || a.name, b.name || a.name || b.name) > 1000";
/// Sorts 9M rows: holds pool memory for as long as it runs.
const BIG_SORT: &str = "SELECT max(r) FROM (SELECT row_number() OVER \
                        (ORDER BY a.start_time + b.duration, a.span_id) AS r \
                        FROM spans a JOIN spans b ON a.service_name = b.service_name)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_deep_expressions_are_refused_before_parsing() {
    let c = Collector::start(|_| {}).await;
    // 30k terms: parsing, planning or dropping this tree overflows a thread's stack.
    let sum = format!("SELECT 1{}", "+1".repeat(30_000));
    let (status, _, body) = sql(&c, &sum).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too complex"), "{body}");
    let nested = format!("SELECT {}1{}", "abs(".repeat(2_000), ")".repeat(2_000));
    let (status, _, body) = sql(&c, &nested).await;
    assert_eq!(status, 400, "{body}");
    let metrics =
        reqwest::get(format!("{}/metrics", c.http())).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"skein_queries_refused_total{reason="too_complex"} 2"#),
        "{metrics}"
    );
    // Up to the operator limit, the query threads' stacks hold the planner's recursion.
    let longest =
        format!("SELECT 1{} AS n", "+1".repeat(skein_collector::query::sql::MAX_OPERATORS));
    let (status, _, body) = sql(&c, &longest).await;
    assert_eq!(status, 200, "{body}");
    let ands = format!(
        "SELECT count(*) AS n FROM spans WHERE duration >= 0{}",
        " AND duration >= 0".repeat(skein_collector::query::sql::MAX_OPERATORS / 2 - 1)
    );
    let (status, _, body) = sql(&c, &ands).await;
    assert_eq!(status, 200, "{body}");
    // Ordinary arithmetic still works.
    let (status, _, body) = sql(&c, &format!("SELECT 1{} AS n", "+1".repeat(99))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("100"), "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_functions_allocating_outside_the_pool_are_refused() {
    let c = with_spans(10, |_| {}).await;
    for q in [
        "SELECT length(repeat('x', 100000000)) AS n",
        "SELECT length(lpad('x', 50000000)) AS n",
        "SELECT cardinality(array_repeat(1, 10000000)) AS n",
        "SELECT count(*) FROM generate_series(1, 100000000000)",
        "SELECT count(*) FROM range(100000000000)",
        "SELECT length(replace(name, '', name)) FROM spans",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) \
         SELECT count(*) FROM r",
    ] {
        let (status, _, body) = sql(&c, q).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
    let (status, _, body) = sql(&c, "SELECT upper(name) AS n FROM spans LIMIT 1").await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_sort_beyond_the_pool_is_422_without_spilling() {
    let c = with_spans(300, |a| a.query_memory_bytes = Some(16 << 20)).await;
    let started = Instant::now();
    let (status, _, body) = sql(&c, BIG_SORT).await;
    assert_eq!(status, 422, "{body}");
    assert!(!body.contains("longer than"), "failed by time, not by memory: {body}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    pool_released(&c).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_query_timeout_answers_503_and_stops_the_work() {
    let c = with_spans(300, |a| {
        a.query_timeout = Some("1s".into());
        a.max_concurrent_queries = Some(1);
    })
    .await;
    let started = Instant::now();
    let (status, _, body) = sql(&c, BIG_SORT).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--query-timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // The sort was dropped: its memory comes back, and its slot is free for the next query.
    pool_released(&c).await;
    let (status, _, body) = sql(&c, "SELECT count(*) AS n FROM spans").await;
    assert_eq!(status, 200, "{body}");
    // Tempo search goes through the same limit.
    let url = format!("{}/api/search?q=%7B%7D&limit=5", c.http());
    let resp = tokio::time::timeout(ANSWER_WITHIN, reqwest::get(url)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let metrics =
        reqwest::get(format!("{}/metrics", c.http())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"skein_queries_refused_total{reason="timeout"} 1"#), "{metrics}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_beyond_the_concurrency_limit_get_429() {
    let c = with_spans(300, |a| {
        a.query_timeout = Some("10s".into());
        a.max_concurrent_queries = Some(1);
    })
    .await;
    let busy = {
        let url = format!("{}/skein/api/sql", c.http());
        tokio::spawn(async move { reqwest::Client::new().post(url).body(ENDLESS).send().await })
    };
    // Poll until the endless query holds the only slot and a second one is turned away.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, retry, body) = sql(&c, "SELECT 1 AS one").await;
        if status == 429 {
            assert_eq!(retry.as_deref(), Some("1"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "no query was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    busy.abort();
    // The client went away: its query is stopped and the slot frees up.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, _, body) = sql(&c, "SELECT 1 AS one").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(Instant::now() < deadline, "the abandoned query kept its slot");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_search_collecting_too_many_trace_ids_is_422() {
    let c = with_spans(50, |a| a.max_search_trace_ids = Some(20)).await;
    let get = |q: &str| {
        let url = format!("{}/api/search", c.http());
        let q = q.to_string();
        async move {
            let resp = tokio::time::timeout(
                ANSWER_WITHIN,
                reqwest::get(
                    reqwest::Url::parse_with_params(&url, [("q", q.as_str()), ("limit", "5")])
                        .unwrap(),
                ),
            )
            .await
            .unwrap()
            .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = get(r#"{ kind = server } || { kind = client }"#).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("--max-search-trace-ids"), "{body}");
    // A single spanset is limited by `limit` and stays fine.
    let (status, body) = get(r#"{ kind = server }"#).await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}

/// 8 endless queries run while spans are exported over OTLP/HTTP: every export is acked
/// within the bound, because the queries run on the query runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_query_flood_does_not_starve_ingest() {
    const BOUND: Duration = Duration::from_millis(1500);
    let c = with_spans(300, |a| {
        a.query_timeout = Some("60s".into());
        a.max_concurrent_queries = Some(8);
    })
    .await;
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{}/skein/api/sql", c.http());
            tokio::spawn(async move { reqwest::Client::new().post(url).body(ENDLESS).send().await })
        })
        .collect();
    // Poll until all 8 hold a slot (a probe query here could take a free slot and then queue
    // behind the flood on the query runtime); then a ninth query is turned away.
    let deadline = Instant::now() + ANSWER_WITHIN;
    while c.r().engine.runner.running() < 8 {
        assert!(Instant::now() < deadline, "the flood did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sql(&c, "SELECT 1 AS one").await.0, 429);
    let http = reqwest::Client::new();
    let mut worst = Duration::ZERO;
    for n in 0..20u64 {
        let body = request(vec![trace(10_000 + n, "ingest", "POST /", now_nanos(), 1, 2, false)])
            .encode_to_vec();
        let sent = Instant::now();
        let resp = tokio::time::timeout(
            BOUND * 4,
            http.post(format!("{}/v1/traces", c.otlp_http()))
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("export {n} not acked within {:?}", BOUND * 4))
        .unwrap();
        assert_eq!(resp.status(), 200);
        worst = worst.max(sent.elapsed());
    }
    eprintln!("slowest export ack under a query flood: {worst:?}");
    assert!(worst < BOUND, "an export took {worst:?} to be acked under a query flood");
    for f in flood {
        f.abort();
    }
    c.stop().await;
}
