//! skein's own API under `/skein/api/` (the web UI's): slow-vs-normal comparison on a data set
//! whose answer is known, critical path, services and edges, operations, RED series and
//! read-only SQL, each over HTTP against an in-process collector.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value;
use skein_collector::tenant::DEFAULT_TENANT;

use crate::common::*;

const MS: u64 = 1_000_000;

async fn export(c: &Collector, tenant: &str, rs: Vec<ResourceSpans>) {
    c.r()
        .ingestor
        .export(tenant.into(), request(rs), None, skein_collector::ingest::Protocol::Grpc)
        .await
        .unwrap();
}

async fn get(c: &Collector, path: &str, tenant: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().get(format!("{}{path}", c.http()));
    if let Some(t) = tenant {
        r = r.header("x-scope-orgid", t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn post(c: &Collector, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", c.http()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// `GET path` until `ok` accepts the (200) answer.
async fn wait_for(c: &Collector, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(c, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        if ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn resource(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![s("service.name", service), s("host.name", "h1")],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..Default::default()
    }
}

/// A span of trace `n`: id `id`, under `parent`, from `from` to `to` ms after `t0`.
#[allow(clippy::too_many_arguments)]
fn span(
    n: u64,
    id: u64,
    parent: Option<u64>,
    name: &str,
    kind: i32,
    t0: u64,
    from: u64,
    to: u64,
) -> Span {
    Span {
        trace_id: trace_id(n),
        span_id: span_id(n, id),
        parent_span_id: parent.map(|p| span_id(n, p)).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: t0 + from * MS,
        end_time_unix_nano: t0 + to * MS,
        ..Default::default()
    }
}

/// 40 calls of orders' `orders/Place`, one trace each. The 4 slow ones (i % 10 == 3, ~200 ms)
/// all carry `db.system=postgres` and spend 180 ms in a child `SELECT orders`; the normal ones
/// (20–26 ms) have neither. Noise on both sides alike: a unique `request.id`, a `user.tier`
/// split evenly, the same `http.route`, a 2 ms `validate` child and a 5 ms call to inventory.
fn known_answer(t0: u64) -> Vec<ResourceSpans> {
    let mut out = Vec::new();
    for i in 0..40u64 {
        let n = 1000 + i;
        let start = t0 + i * 100 * MS;
        let slow = i % 10 == 3;
        let dur = if slow { 200 + i % 3 } else { 20 + i % 7 };
        let mut call = span(n, 0, None, "orders/Place", 2, start, 0, dur);
        call.attributes = vec![
            s("http.route", "/orders"),
            s("request.id", &format!("req-{i:04}")),
            s("user.tier", if (i / 10) % 2 == 0 { "gold" } else { "silver" }),
        ];
        if slow {
            call.attributes.push(s("db.system", "postgres"));
        }
        let mut orders = vec![call, span(n, 1, Some(0), "validate", 1, start, 0, 2)];
        orders.push(span(n, 2, Some(0), "inventory/Check", 3, start, 3, 8));
        if slow {
            orders.push(span(n, 3, Some(0), "SELECT orders", 3, start, 10, 190));
        }
        out.push(resource("orders", orders));
        out.push(resource(
            "inventory",
            vec![span(n, 4, Some(2), "inventory/Check", 2, start, 3, 8)],
        ));
    }
    out
}

#[tokio::test]
async fn compare_ranks_the_known_cause_first_and_is_per_tenant() {
    // Flushed to blocks: the comparison reads whole traces back from Parquet.
    let c = Collector::start(|a| a.head_max_age = Some("100ms".into())).await;
    let t0 = now_nanos() - 120_000 * MS;
    export(&c, "team-a", known_answer(t0)).await;
    c.wait_flushed("team-a").await;

    let path = "/skein/api/compare?service=orders&span_name=orders%2FPlace";
    let (status, body) = get(&c, path, Some("team-a")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["slow"]["count"].as_u64(), body["normal"]["count"].as_u64()),
        (Some(4), Some(36))
    );
    // Default threshold: the p90, between the slowest normal call and the fastest slow one.
    let threshold = body["threshold_ns"].as_i64().unwrap();
    assert!(threshold > 26_000_000 && threshold <= 200_000_000, "{threshold}");

    let attrs = body["attributes"].as_array().unwrap();
    assert_eq!(attrs[0]["key"], "span.db.system", "{body:#}");
    assert_eq!(attrs[0]["value"], "postgres");
    assert_eq!(
        (attrs[0]["slow_share"].as_f64(), attrs[0]["normal_share"].as_f64()),
        (Some(1.0), Some(0.0))
    );
    for noise in
        ["span.request.id", "span.user.tier", "span.http.route", "resource.host.name", "status"]
    {
        assert!(attrs.iter().all(|a| a["key"] != noise), "{noise} ranked: {attrs:?}");
    }
    let children = body["children"].as_array().unwrap();
    assert_eq!(children[0]["span_name"], "SELECT orders", "{body:#}");
    assert_eq!(children[0]["score"], 1.0);
    assert_eq!(children[0]["slow_mean_ns"], 180_000_000);
    assert!(
        children
            .iter()
            .all(|c| c["span_name"] != "validate" && c["span_name"] != "inventory/Check")
    );
    let services = body["services"].as_array().unwrap();
    assert_eq!(services[0]["service"], "orders");
    assert!(services.iter().all(|s| s["service"] != "inventory"), "{services:?}");
    assert_eq!(body["examples"]["slow"].as_array().unwrap().len(), 4);
    insta::assert_json_snapshot!("compare_known_answer", body);

    // An explicit threshold: only the calls of at least 201 ms are slow.
    let (_, b) = get(&c, &format!("{path}&threshold=201ms"), Some("team-a")).await;
    assert_eq!(
        (b["threshold_ns"].as_i64(), b["slow"]["count"].as_u64()),
        (Some(201_000_000), Some(2))
    );

    // Other tenants see nothing: counts of 0 and empty lists.
    for tenant in [None, Some("team-b")] {
        let (status, b) = get(&c, path, tenant).await;
        assert_eq!(status, 200);
        assert_eq!(
            (b["slow"]["count"].as_u64(), b["normal"]["count"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(
            b["attributes"].as_array().unwrap().is_empty()
                && b["children"].as_array().unwrap().is_empty()
        );
    }
    for bad in [
        "/skein/api/compare?service=orders",
        "/skein/api/compare?service=orders&span_name=x&threshold=soon",
        "/skein/api/compare?service=o&span_name=x&start=abc",
    ] {
        let (status, b) = get(&c, bad, None).await;
        assert_eq!(status, 400, "{bad}");
        assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{b}");
    }
    c.stop().await;
}

/// gateway `POST /checkout` (SERVER) → CLIENT `orders/Place` → orders `orders/Place` (SERVER);
/// every 5th call fails in orders. A worker service has only INTERNAL spans.
fn shop_call(n: u64, t0: u64) -> Vec<ResourceSpans> {
    let fail = n.is_multiple_of(5);
    let mut server = span(n, 2, Some(1), "orders/Place", 2, t0, 2, 20);
    if fail {
        server.status = Some(Status { code: 2, message: "x".into() });
    }
    vec![
        resource(
            "gateway",
            vec![
                span(n, 0, None, "POST /checkout", 2, t0, 0, 30),
                span(n, 1, Some(0), "orders/Place", 3, t0, 1, 25),
            ],
        ),
        resource("orders", vec![server]),
        resource("worker", vec![span(n + 500, 0, None, "sweep", 1, t0, 0, 3)]),
    ]
}

#[tokio::test]
async fn services_edges_operations_and_red_series_from_span_metrics() {
    let c = Collector::start(|a| {
        a.metrics_scrape_interval = Some("100ms".into());
        a.servicegraph_wait = Some("1s".into());
    })
    .await;
    let now_s = now_nanos() / 1_000_000_000;
    for n in 0..10 {
        export(&c, DEFAULT_TENANT, shop_call(n, now_nanos() - 100 * MS)).await;
    }
    let (start, end) = (now_s - 60, now_s + 30);
    let window = (end - start) as f64;
    let calls = |v: &Value| v["rate"].as_f64().unwrap_or(0.0) * window;
    let body = wait_for(&c, &format!("/skein/api/services?start={start}&end={end}"), |b| {
        let svcs = b["services"].as_array().unwrap();
        let edges = b["edges"].as_array().unwrap();
        svcs.len() == 3
            && svcs.iter().all(|s| (calls(s) - 10.0).abs() < 1e-6)
            && edges.iter().any(|e| {
                e["client"] == "gateway"
                    && e["server"] == "orders"
                    && (calls(e) - 10.0).abs() < 1e-6
            })
    })
    .await;
    let svc = |name: &str| {
        body["services"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
    };
    assert_eq!(svc("orders")["error_ratio"], 0.2);
    assert_eq!(svc("gateway")["error_ratio"], 0.0);
    // SERVER latency of orders (18 ms) is in the 16–32 ms bucket.
    let p90 = svc("orders")["p90_ns"].as_i64().unwrap();
    assert!(p90 > 16_000_000 && p90 <= 32_000_000, "{p90}");
    assert!(
        svc("worker")["p50_ns"].as_i64().unwrap() <= 4_000_000,
        "INTERNAL-only services count all spans"
    );
    let edge = body["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["client"] == "gateway")
        .unwrap()
        .clone();
    assert_eq!(edge["error_ratio"], 0.2);
    assert_eq!(edge["connection_type"], "");
    assert!(edge["p90_ns"].as_i64().unwrap() > 0);

    let (status, ops) =
        get(&c, &format!("/skein/api/operations?service=gateway&start={start}&end={end}"), None)
            .await;
    assert_eq!(status, 200);
    let kinds: Vec<(String, String)> = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["span_name"].as_str().unwrap().into(), o["span_kind"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("POST /checkout".into(), "SPAN_KIND_SERVER".into()),
            ("orders/Place".into(), "SPAN_KIND_CLIENT".into())
        ]
    );
    let (status, _) = get(&c, "/skein/api/operations", None).await;
    assert_eq!(status, 400);

    let red = wait_for(
        &c,
        &format!("/skein/api/red?service=orders&start={start}&end={end}&step=15s"),
        |b| {
            let total: f64 = b["series"]["rate"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_f64().unwrap() * 15.0)
                .sum();
            (total - 10.0).abs() < 1e-6
        },
    )
    .await;
    assert_eq!(red["step_ms"], 15_000);
    let rate = red["series"]["rate"].as_array().unwrap();
    assert_eq!(rate.len(), 6, "90 s in 15 s steps");
    let ts: Vec<i64> = rate.iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert_eq!(ts[0], (start as i64) * 1000 + 15_000);
    assert!(ts.windows(2).all(|w| w[1] - w[0] == 15_000));
    for name in ["error_ratio", "p50_ns", "p90_ns", "p99_ns"] {
        let pts = red["series"][name].as_array().unwrap();
        assert_eq!(pts.len(), 1, "{name}: only the step with calls has a value: {red}");
    }
    assert_eq!(red["series"]["error_ratio"][0][1], 0.2);
    let (status, _) = get(&c, "/skein/api/red?service=orders&step=0s", None).await;
    assert_eq!(status, 400);
    c.stop().await;
}

#[tokio::test]
async fn critical_path_of_a_skewed_trace_with_overlapping_children() {
    let c = Collector::start(|_| {}).await;
    let t0 = now_nanos() - 10_000 * MS;
    // root 0–100; a 5–30 and b 10–90 overlap (b ends last); b's server on a host whose clock is
    // ahead ends at 95, after b; c 92–98 follows b.
    let n = 7;
    let skewed = span(n, 3, Some(2), "orders/Place", 2, t0, 20, 95);
    export(
        &c,
        DEFAULT_TENANT,
        vec![
            resource(
                "gateway",
                vec![
                    span(n, 0, None, "POST /checkout", 2, t0, 0, 100),
                    span(n, 1, Some(0), "a", 3, t0, 5, 30),
                    span(n, 2, Some(0), "b", 3, t0, 10, 90),
                    span(n, 4, Some(0), "c", 1, t0, 92, 98),
                ],
            ),
            resource("orders", vec![skewed]),
        ],
    )
    .await;
    let id = hex::encode(trace_id(n));
    let (status, body) = get(&c, &format!("/skein/api/critical-path/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["trace_id"], id.as_str());
    assert_eq!(body["duration_ns"], 100 * MS);
    let path: Vec<(String, String, u64, u64, u64)> = body["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ms = |k: &str| (s[k].as_u64().unwrap() - if k == "self_ns" { 0 } else { t0 }) / MS;
            (
                s["service"].as_str().unwrap().into(),
                s["span_name"].as_str().unwrap().into(),
                ms("start_ns"),
                ms("end_ns"),
                ms("self_ns"),
            )
        })
        .collect();
    let e = |svc: &str, name: &str, a, b, own| (svc.to_string(), name.to_string(), a, b, own);
    assert_eq!(
        path,
        vec![
            e("gateway", "POST /checkout", 0, 100, 14),
            e("gateway", "b", 10, 90, 10),
            e("orders", "orders/Place", 20, 90, 70),
            e("gateway", "c", 92, 98, 6)
        ]
    );
    assert_eq!(body["spans"][0]["span_id"], hex::encode(span_id(n, 0)).as_str());
    let (status, body) =
        get(&c, "/skein/api/critical-path/0123456789abcdef0123456789abcdef", None).await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    let (status, _) = get(&c, "/skein/api/critical-path/not-hex", None).await;
    assert_eq!(status, 400);

    c.stop().await;
}

#[tokio::test]
async fn sql_is_read_only_and_answers_selects() {
    let c = Collector::start(|_| {}).await;
    let t0 = now_nanos() - 10_000 * MS;
    let n = 8;
    let mut tagged = span(n, 1, Some(0), "b", 3, t0, 10, 90);
    tagged.attributes = vec![s("k", "v")];
    export(
        &c,
        DEFAULT_TENANT,
        vec![
            resource("gateway", vec![span(n, 0, None, "POST /checkout", 2, t0, 0, 100), tagged]),
            resource("orders", vec![span(n, 2, Some(1), "orders/Place", 2, t0, 20, 95)]),
        ],
    )
    .await;
    // One read-only query; anything else is refused before it is planned.; anything else is refused before it is planned.
    for bad in [
        "DELETE FROM spans",
        "CREATE TABLE t (a INT)",
        "SELECT 1; SELECT 2",
        "DROP TABLE spans",
        "SELEC 1",
    ] {
        let (status, body) = post(&c, "/skein/api/sql", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = post(
        &c,
        "/skein/api/sql",
        "SELECT service_name, count(*) AS spans, max(duration) AS longest FROM spans GROUP BY service_name ORDER BY service_name",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    insta::assert_json_snapshot!("sql_select", body);
    let q = serde_json::json!({"query": "SELECT span_id, attr_str(span_attrs, 'k') AS k FROM spans WHERE attr_str(span_attrs, 'k') IS NOT NULL"});
    let (status, body) = post(&c, "/skein/api/sql", &q.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], serde_json::json!([[hex::encode(span_id(n, 1)), "v"]]));
    c.stop().await;
}
