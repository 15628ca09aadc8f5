//! The Prometheus-compatible API over HTTP: span metrics and service-graph series computed at
//! ingest, queried with the requests Grafana sends (grafana/REQUESTS.md, "Prometheus datasource").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::*;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::Value;

async fn start() -> Collector {
    Collector::start(|a| {
        a.metrics_scrape_interval = Some("100ms".into());
        a.servicegraph_wait = Some("1s".into());
    })
    .await
}

/// Exports `rs` over OTLP/HTTP as `tenant` (None: no `X-Scope-OrgID`).
pub(crate) async fn send(c: &Collector, tenant: Option<&str>, rs: Vec<ResourceSpans>) {
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.otlp_http()))
        .header("content-type", "application/x-protobuf");
    if let Some(t) = tenant {
        r = r.header("x-scope-orgid", t);
    }
    let resp = r.body(request(rs).encode_to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

async fn get(c: &Collector, path: &str, tenant: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().get(format!("{}{path}", c.http()));
    if let Some(t) = tenant {
        r = r.header("x-scope-orgid", t);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn post_form(c: &Collector, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", c.http()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn enc(q: &str) -> String {
    url::form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

/// Instant query result as (labels, value) pairs, retried until `ok` accepts it.
async fn wait_vector(
    c: &Collector,
    q: &str,
    tenant: Option<&str>,
    ok: impl Fn(&[(Value, f64)]) -> bool,
) -> Vec<(Value, f64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            get(c, &format!("/prometheus/api/v1/query?query={}", enc(q)), tenant).await;
        assert_eq!(status, 200, "{body}");
        let v: Vec<(Value, f64)> = body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect();
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{q}: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// gateway (SERVER root, CLIENT → orders) and orders (SERVER); `fail` marks the call failed.
fn call(n: u64, fail: bool) -> Vec<ResourceSpans> {
    let start = now_nanos() - 50_000_000;
    let tid = trace_id(n);
    let span = |id: u64, parent: Option<u64>, name: &str, kind: i32, ms: u64| Span {
        trace_id: tid.clone(),
        span_id: span_id(n, id),
        parent_span_id: parent.map(|p| span_id(n, p)).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + ms * 1_000_000,
        status: fail.then(|| Status { code: 2, message: "x".into() }),
        ..Default::default()
    };
    let rs = |svc: &str, spans| ResourceSpans {
        resource: Some(Resource { attributes: vec![s("service.name", svc)], ..Default::default() }),
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..Default::default()
    };
    vec![
        rs(
            "gateway",
            vec![span(0, None, "POST /checkout", 2, 30), span(1, Some(0), "orders/Place", 3, 25)],
        ),
        rs("orders", vec![span(2, Some(1), "orders/Place", 2, if fail { 300 } else { 20 })]),
    ]
}

#[tokio::test]
async fn span_metrics_and_service_graph_answer_grafana_queries() {
    let c = start().await;
    for n in 0..10 {
        send(&c, None, call(n, n % 5 == 0)).await;
    }
    // Every acknowledged span is already counted; it shows once sampled.
    let v = wait_vector(
        &c,
        "sum by (service, status_code) (traces_spanmetrics_calls_total{span_kind=\"SPAN_KIND_SERVER\"})",
        None,
        // A sample taken while the calls were still arriving holds fewer: wait for all 20.
        |v| v.len() == 4 && v.iter().map(|x| x.1).sum::<f64>() == 20.0,
    )
    .await;
    let get_v = |svc: &str, st: &str| {
        v.iter().find(|(m, _)| m["service"] == svc && m["status_code"] == st).map(|x| x.1)
    };
    assert_eq!(get_v("orders", "STATUS_CODE_ERROR"), Some(2.0));
    assert_eq!(get_v("orders", "STATUS_CODE_UNSET"), Some(8.0));
    let edges = wait_vector(
        &c,
        "sum by (client, server, connection_type) (traces_service_graph_request_total)",
        None,
        |v| v.len() == 2,
    )
    .await;
    assert!(
        edges
            .iter()
            .any(|(m, v)| m["client"] == "gateway" && m["server"] == "orders" && *v == 10.0),
        "{edges:?}"
    );
    // The root server spans have no client: Tempo's virtual `user` node (after the 1 s wait).
    assert!(
        edges.iter().any(|(m, _)| m["client"] == "user"
            && m["server"] == "gateway"
            && m["connection_type"] == "virtual_node"),
        "{edges:?}"
    );
    let failed = wait_vector(
        &c,
        "traces_service_graph_request_failed_total{client=\"gateway\"}",
        None,
        |v| !v.is_empty(),
    )
    .await;
    assert_eq!(failed[0].1, 2.0);

    // Health check: `1+1` at time=4 is a scalar.
    let (status, body) = get(&c, "/prometheus/api/v1/query?query=1%2B1&time=4", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [4, "2"]}})
    );

    // POST-form range query with a Go duration, as Grafana's backend sends it.
    let now = now_nanos() / 1_000_000_000;
    let (start, end) = ((now - 60).to_string(), (now + 15).to_string());
    let (status, body) = post_form(
        &c,
        "/prometheus/api/v1/query_range",
        &[
            ("query", "sum(rate(traces_spanmetrics_calls_total{service=\"orders\"}[1m0s])) by (status_code)"),
            ("start", &start),
            ("end", &end),
            ("step", "15"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "matrix");
    let series = body["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{body}");
    let values = series[0]["values"].as_array().unwrap();
    assert!(values.iter().all(|p| p[0].is_number() && p[1].is_string()), "{body}");

    // APM table p90 and the service-graph edge link query.
    // The calls above may all predate the series' first sample (then every rate is 0 and the
    // quantile NaN): keep calls coming until the rate window sees some.
    let p90_query = "histogram_quantile(.9, sum(rate(traces_spanmetrics_latency_bucket{service=\"orders\", span_kind=\"SPAN_KIND_SERVER\", span_name=~\"orders/Place\"}[5m])) by (le))";
    let edge_query = "histogram_quantile(0.9, sum(rate(traces_service_graph_request_server_seconds_bucket{client=\"gateway\",server=\"orders\"}[1m0s])) by (le, client, server))";
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 100;
    let p90 = loop {
        send(&c, None, call(n, false)).await;
        n += 1;
        let p90 = wait_vector(&c, p90_query, None, |v| !v.is_empty()).await;
        let edge = wait_vector(&c, edge_query, None, |v| v.len() == 1).await;
        if p90[0].1.is_finite() && edge[0].1.is_finite() {
            break p90;
        }
        assert!(Instant::now() < deadline, "{p90:?} {edge:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(p90[0].1 > 0.016 && p90[0].1 <= 0.512, "{p90:?}");
    c.stop().await;
}

#[tokio::test]
async fn metadata_endpoints_and_errors_have_prometheus_shapes() {
    let c = start().await;
    send(&c, None, call(1, false)).await;
    wait_vector(&c, "traces_spanmetrics_calls_total", None, |v| !v.is_empty()).await;

    let (_, body) = get(&c, "/prometheus/api/v1/labels", None).await;
    let labels = body["data"].as_array().unwrap();
    for l in
        ["__name__", "service", "span_name", "span_kind", "status_code", "le", "client", "server"]
    {
        assert!(labels.iter().any(|x| x == l), "{l} missing from {body}");
    }
    let (_, body) = get(&c, "/prometheus/api/v1/label/__name__/values", None).await;
    assert!(
        body["data"].as_array().unwrap().iter().any(|x| x == "traces_spanmetrics_latency_bucket"),
        "{body}"
    );
    let (_, body) = get(
        &c,
        "/prometheus/api/v1/label/service/values?match[]=traces_spanmetrics_calls_total",
        None,
    )
    .await;
    assert_eq!(body["data"], serde_json::json!(["gateway", "orders"]));
    let (_, body) = get(
        &c,
        &format!(
            "/prometheus/api/v1/series?match[]={}&limit=1",
            enc("traces_service_graph_request_server_seconds")
        ),
        None,
    )
    .await;
    assert_eq!(body["data"], serde_json::json!([]), "no native histograms");
    let (_, body) = get(
        &c,
        &format!(
            "/prometheus/api/v1/series?match[]={}",
            enc("traces_spanmetrics_calls_total{service=\"orders\"}")
        ),
        None,
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = get(&c, "/prometheus/api/v1/metadata?limit=1000", None).await;
    assert_eq!(body["data"]["traces_spanmetrics_latency"][0]["type"], "histogram");
    let (_, body) = get(&c, "/prometheus/api/v1/status/buildinfo", None).await;
    assert!(body["data"]["version"].is_string() && body["data"].get("features").is_none());
    let (_, body) = get(&c, "/prometheus/api/v1/rules", None).await;
    assert_eq!(body, serde_json::json!({"status": "success", "data": {"groups": []}}));
    let (_, body) = get(&c, "/prometheus/api/v1/alerts", None).await;
    assert_eq!(body, serde_json::json!({"status": "success", "data": {"alerts": []}}));
    let (_, body) = get(
        &c,
        "/prometheus/api/v1/query_exemplars?query=test&start=1700000000000&end=1700000300000",
        None,
    )
    .await;
    assert_eq!(body, serde_json::json!({"status": "success", "data": []}));

    for bad in ["sum(", "rate(x[5m])[10m:1m]", "count_values(\"v\", x)"] {
        let (status, body) =
            get(&c, &format!("/prometheus/api/v1/query?query={}", enc(bad)), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["status"], "error");
        assert_eq!(body["errorType"], "bad_data");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    c.stop().await;
}

#[tokio::test]
async fn exemplars_link_slow_and_failed_calls_to_their_traces() {
    let c = start().await;
    send(&c, None, call(7, true)).await;
    let now = now_nanos() / 1_000_000_000;
    let q = enc(
        "traces_spanmetrics_calls_total{status_code=\"STATUS_CODE_ERROR\", service=\"orders\"}",
    );
    let (_, body) = get(
        &c,
        &format!(
            "/prometheus/api/v1/query_exemplars?query={q}&start={}&end={}",
            now - 60,
            now + 60
        ),
        None,
    )
    .await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{body}");
    let ex = &data[0]["exemplars"][0];
    assert_eq!(ex["labels"]["trace_id"], hex::encode(trace_id(7)));
    assert_eq!(ex["value"], "0.3");
    assert!(ex["timestamp"].is_number());
    c.stop().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_series_and_exposition() {
    let c = start().await;
    send(&c, Some("team-a"), call(1, false)).await;
    send(&c, Some("team-b"), call(2, false)).await;
    send(&c, Some("team-b"), call(3, false)).await;
    let a = wait_vector(
        &c,
        "sum(traces_spanmetrics_calls_total{service=\"orders\"})",
        Some("team-a"),
        |v| !v.is_empty(),
    )
    .await;
    let b = wait_vector(
        &c,
        "sum(traces_spanmetrics_calls_total{service=\"orders\"})",
        Some("team-b"),
        |v| !v.is_empty(),
    )
    .await;
    assert_eq!((a[0].1, b[0].1), (1.0, 2.0));
    let (_, body) = get(&c, "/prometheus/api/v1/label/service/values", None).await;
    assert_eq!(body["data"], serde_json::json!([]));

    let text = reqwest::Client::new()
        .get(format!("{}/prometheus/metrics", c.http()))
        .header("x-scope-orgid", "team-b")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("# TYPE traces_spanmetrics_latency histogram"), "{text}");
    assert!(text.contains("traces_spanmetrics_calls_total{service=\"orders\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"orders/Place\",status_code=\"STATUS_CODE_UNSET\"} 2\n"), "{text}");
    let by_param = reqwest::get(format!("{}/prometheus/metrics?tenant=team-a", c.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(by_param.contains("status_code=\"STATUS_CODE_UNSET\"} 1\n"), "{by_param}");
    c.stop().await;
}

#[tokio::test]
async fn history_survives_a_restart() {
    let mut c = start().await;
    send(&c, None, call(1, false)).await;
    wait_vector(&c, "traces_spanmetrics_calls_total{service=\"orders\"}", None, |v| !v.is_empty())
        .await;
    c.restart().await;
    // Nothing new was sent: the sample can only come from the snapshot written on stop.
    let v = wait_vector(
        &c,
        "max_over_time(traces_spanmetrics_calls_total{service=\"orders\"}[5m])",
        None,
        |v| !v.is_empty(),
    )
    .await;
    assert_eq!(v[0].1, 1.0);
    c.stop().await;
}
