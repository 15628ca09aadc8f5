//! Hostile queries against the query APIs: each is refused with a 4xx quickly (a hang or a
//! stack overflow fails the test through its timeout or the crash), and a normal query still
//! works afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::*;
use prost::Message;
use serde_json::Value;

/// Each hostile request must be answered within this.
const FAST: Duration = Duration::from_secs(10);

async fn get(c: &Collector, path_and_query: &str) -> (u16, String) {
    // Built by hand: parentheses stay unencoded, as the URL spec allows in a query.
    let url = reqwest::Url::parse(&format!("{}{path_and_query}", c.http())).unwrap();
    let fut = async {
        let resp = reqwest::Client::new().get(url).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    tokio::time::timeout(FAST, fut).await.unwrap_or_else(|_| panic!("no answer in {FAST:?}"))
}

async fn post_form(c: &Collector, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let fut = async {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", c.http()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    tokio::time::timeout(FAST, fut).await.unwrap_or_else(|_| panic!("no answer in {FAST:?}"))
}

fn enc(q: &str) -> String {
    url::form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

async fn still_answers(c: &Collector) {
    let (status, body) = get(c, "/prometheus/api/v1/query?query=1%2B1&time=100").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"2\""), "{body}");
}

async fn refused_total(c: &Collector, reason: &str) -> f64 {
    let (_, text) = get(c, "/metrics").await;
    let prefix = format!("skein_queries_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn hostile_time_ranges_are_refused_with_400_not_looped_over() {
    let c = Collector::start(|_| {}).await;
    for q in [
        "query=1&start=-1e300&end=1e300&step=1",
        "query=1&start=0&end=1e300&step=1",
        "query=1&start=-9.2e15&end=9.2e15&step=1e-3",
        "query=1&start=0&end=100000&step=1e-300",
        "query=1&start=0&end=100000&step=2562047788015215y",
        // More than 11,000 points.
        "query=1&start=0&end=11000&step=1",
    ] {
        let (status, body) = get(&c, &format!("/prometheus/api/v1/query_range?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
    for q in [
        "rate(traces_spanmetrics_calls_total[1e300])",
        "rate(traces_spanmetrics_calls_total[99999999y])",
        "traces_spanmetrics_calls_total offset 99999999y",
        "traces_spanmetrics_calls_total @ 1e300",
    ] {
        let (status, body) = get(&c, &format!("/prometheus/api/v1/query?query={}", enc(q))).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
    let (status, body) = get(&c, "/prometheus/api/v1/query?query=1&time=1e300").await;
    assert_eq!(status, 400, "{body}");
    // TraceQL metrics and the native RED series take the same checks.
    for q in [
        "start=-1e300&end=1e300&step=1",
        "start=1&end=9223372036854775807&step=1",
        "start=-9223372036854775808&end=9223372036854775807&step=9223372036854775807",
        "start=1&end=2&step=1e300",
        "end=1700000000&since=100000000d",
    ] {
        let (status, body) =
            get(&c, &format!("/api/metrics/query_range?q={}&{q}", enc("{ } | rate()"))).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
    let (status, body) = get(&c, "/skein/api/red?service=a&start=0&end=1e300&step=1ms").await;
    assert_eq!(status, 400, "{body}");
    assert!(refused_total(&c, "time_range").await >= 10.0);
    still_answers(&c).await;
    let (status, body) =
        get(&c, "/prometheus/api/v1/query_range?query=1&start=0&end=60&step=15").await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}

#[tokio::test]
async fn deeply_nested_queries_are_refused_before_they_overflow_the_stack() {
    let c = Collector::start(|_| {}).await;
    let nest = |n: usize, open: &str, inner: &str, close: &str| {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    };
    let deep = |open: &str, inner: &str, close: &str| nest(50_000, open, inner, close);
    let started = Instant::now();
    for q in [
        deep("(", "1", ")"),
        deep("sum(", "up", ")"),
        deep("-", "1", ""),
        vec!["1"; 50_000].join("+"),
        vec!["up"; 5_000].join(" or "),
    ] {
        let (status, body) = post_form(&c, "/prometheus/api/v1/query", &[("query", &q)]).await;
        assert_eq!(status, 400, "{}: {body}", &q[..20]);
        assert!(body.contains("too complex"), "{body}");
    }
    // TraceQL search and metrics: their own parser's bounds. GET only: 20,000 levels is as deep
    // as a URI may be (the http crate caps it at 64 KiB).
    let filter = format!("{{ {} }}", nest(20_000, "(", ".a = 1", ")"));
    let spansets = nest(20_000, "(", "{ }", ")");
    for q in [&filter, &spansets] {
        let (status, body) = get(&c, &format!("/api/search?q={q}")).await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = get(&c, &format!("/api/metrics/query_range?q={q} | rate()")).await;
        assert_eq!(status, 400, "{body}");
    }
    assert!(started.elapsed() < FAST, "refusals took {:?}", started.elapsed());
    assert!(refused_total(&c, "depth").await >= 5.0);
    still_answers(&c).await;
    let (status, body) = post_form(
        &c,
        "/prometheus/api/v1/query",
        &[("query", "sum by (service) (rate(traces_spanmetrics_calls_total[5m])) / 2")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}

#[tokio::test]
async fn legacy_tags_with_thousands_of_pairs_are_refused() {
    let c = Collector::start(|_| {}).await;
    let tags = |n: usize| (0..n).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join(" ");
    let (status, body) = get(&c, &format!("/api/search?tags={}", enc(&tags(3_000)))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 64"), "{body}");
    let (status, body) = get(&c, &format!("/api/search?tags={}", enc(&tags(64)))).await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}

/// `n` traces, each with its own service and root span name.
async fn send_services(c: &Collector, n: u64) {
    let start = now_nanos() - 1_000_000_000;
    let rs =
        (0..n).map(|i| trace(i + 1, &format!("svc-{i}"), &format!("op-{i}"), start, 5, 0, false));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.otlp_http()))
        .header("content-type", "application/x-protobuf")
        .body(request(rs.collect()).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn answers_wider_than_the_series_and_sample_caps_are_refused_with_422() {
    let c = Collector::start(|a| {
        a.max_query_series = Some(3);
        a.max_query_samples = Some(100);
        a.metrics_scrape_interval = Some("100ms".into());
    })
    .await;
    send_services(&c, 5).await;
    // PromQL: the raw selector has a series per service; the sum has one.
    let all = enc("traces_spanmetrics_calls_total{span_kind=\"SPAN_KIND_SERVER\"}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(&c, &format!("/prometheus/api/v1/query?query={all}")).await;
        if status == 422 {
            assert!(body.contains("--max-query-series"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "never refused: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sum = enc("sum(traces_spanmetrics_calls_total{span_kind=\"SPAN_KIND_SERVER\"})");
    let (status, body) = get(&c, &format!("/prometheus/api/v1/query?query={sum}")).await;
    assert_eq!(status, 200, "{body}");
    // 101 steps of one series: over 100 samples.
    let (status, body) =
        get(&c, "/prometheus/api/v1/query_range?query=1&start=0&end=100&step=1").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) =
        get(&c, "/prometheus/api/v1/query_range?query=1&start=0&end=99&step=1").await;
    assert_eq!(status, 200, "{body}");
    // TraceQL metrics: by(name) over 5 names is 5 series; 1 series of 60 points is fine.
    let now = now_nanos() / 1_000_000_000;
    let range = format!("start={}&end={}&step=60", now - 3600, now + 60);
    let by_name = enc("{ } | count_over_time() by (name)");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            get(&c, &format!("/api/metrics/query_range?q={by_name}&{range}")).await;
        if status == 422 {
            assert!(body.contains("--max-query-series"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "never refused: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) =
        get(&c, &format!("/api/metrics/query_range?q={}&{range}", enc("{ } | rate()"))).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["series"].as_array().map(Vec::len), Some(1), "{body}");
    // 2 series of 62 points: over 100 samples.
    let (status, body) = get(
        &c,
        &format!(
            "/api/metrics/query_range?q={}&{range}",
            enc("{ } | quantile_over_time(duration, 0.5, 0.9)")
        ),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(refused_total(&c, "series").await >= 2.0);
    assert!(refused_total(&c, "samples").await >= 2.0);
    still_answers(&c).await;
    c.stop().await;
}
