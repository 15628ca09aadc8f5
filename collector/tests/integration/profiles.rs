//! Profile push and the Pyroscope-compatible query API over real HTTP: every push format,
//! span labels kept per sample, durability across restarts (from the WAL and from blocks),
//! tenant isolation, and the errors clients get for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::*;
use prost::Message;
use serde_json::{Value, json};
use skein_collector::api::pyroscope::proto::push::v1 as push;
use skein_collector::api::pyroscope::proto::querier::v1 as q;
use skein_collector::api::pyroscope::proto::types::v1 as t;
use skein_collector::profile::pprof::pb;

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const QUERIER: &str = "/pyroscope/querier.v1.QuerierService";

fn now_ms() -> i64 {
    (now_nanos() / 1_000_000) as i64
}

/// A sample: stack (root first), value, string labels.
type SampleSpec<'a> = (&'a [&'a str], i64, &'a [(&'a str, &'a str)]);

/// A CPU pprof (cpu/nanoseconds, 10 ms period).
fn pprof(samples: &[SampleSpec<'_>]) -> pb::Profile {
    let mut strings: Vec<String> = vec!["".into(), "cpu".into(), "nanoseconds".into()];
    let mut s = |v: &str| -> i64 {
        if let Some(i) = strings.iter().position(|x| x == v) {
            return i as i64;
        }
        strings.push(v.to_string());
        strings.len() as i64 - 1
    };
    let mut functions: Vec<pb::Function> = Vec::new();
    let mut out = Vec::new();
    for (stack, value, labels) in samples {
        let mut ids = Vec::new();
        for name in stack.iter().rev() {
            let n = s(name);
            let id = match functions.iter().find(|f| f.name == n) {
                Some(f) => f.id,
                None => {
                    let id = functions.len() as u64 + 1;
                    functions.push(pb::Function { id, name: n, ..Default::default() });
                    id
                }
            };
            ids.push(id);
        }
        let label = labels
            .iter()
            .map(|(k, v)| pb::Label { key: s(k), str: s(v), ..Default::default() })
            .collect();
        out.push(pb::Sample { location_id: ids, value: vec![*value], label });
    }
    // One location per function, with the same id.
    let location = functions
        .iter()
        .map(|f| pb::Location {
            id: f.id,
            line: vec![pb::Line { function_id: f.id, line: 1, column: 0 }],
            ..Default::default()
        })
        .collect();
    pb::Profile {
        sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
        sample: out,
        location,
        function: functions,
        string_table: strings,
        time_nanos: now_nanos() as i64,
        period_type: Some(pb::ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        ..Default::default()
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(c: &Collector) -> Api {
        Api { http: reqwest::Client::new(), base: c.http() }
    }

    async fn ingest(
        &self,
        query: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        tenant: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.http.post(format!("{}/ingest?{query}", self.base)).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        if let Some(t) = tenant {
            r = r.header("x-scope-orgid", t);
        }
        r.send().await.unwrap()
    }

    /// A Connect call in binary protobuf, as Grafana makes it.
    async fn call<R: Message + Default>(
        &self,
        method: &str,
        req: &impl Message,
        tenant: Option<&str>,
    ) -> R {
        let mut r = self
            .http
            .post(format!("{}{QUERIER}/{method}", self.base))
            .header("content-type", "application/proto")
            .header("connect-protocol-version", "1")
            .body(req.encode_to_vec());
        if let Some(t) = tenant {
            r = r.header("x-scope-orgid", t);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{method}: {:?}", resp.text().await);
        assert_eq!(resp.headers()["content-type"], "application/proto");
        R::decode(resp.bytes().await.unwrap()).unwrap()
    }

    /// A Connect call in JSON; returns the status and the body.
    async fn json(&self, method: &str, req: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{QUERIER}/{method}", self.base))
            .header("content-type", "application/json")
            .body(req.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap())
    }

    async fn merge(&self, selector: &str, spans: &[&str], tenant: Option<&str>) -> q::FlameGraph {
        let req = q::SelectMergeStacktracesRequest {
            profile_type_id: CPU.into(),
            label_selector: selector.into(),
            start: now_ms() - 600_000,
            end: now_ms() + 60_000,
            span_selector: spans.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let r: q::SelectMergeStacktracesResponse =
            self.call("SelectMergeStacktraces", &req, tenant).await;
        r.flamegraph.unwrap()
    }
}

/// (name, total) of every node of a flame graph.
fn nodes(fg: &q::FlameGraph) -> Vec<(String, i64)> {
    fg.levels
        .iter()
        .flat_map(|l| l.values.chunks(4).map(|v| (fg.names[v[3] as usize].clone(), v[1])))
        .collect()
}

fn total_of(fg: &q::FlameGraph, name: &str) -> i64 {
    nodes(fg).iter().filter(|(n, _)| n == name).map(|(_, t)| t).sum()
}

#[tokio::test]
async fn folded_push_answers_selectmergestacktraces_in_json_scaled_to_nanoseconds() {
    let c = Collector::start(|_| {}).await;
    let api = Api::new(&c);
    let from = now_nanos() / 1_000_000_000;
    let q = format!("name=shop.cpu%7Benv%3Dprod%7D&from={from}&until={from}&sampleRate=100");
    let r = api.ingest(&q, b"main;work;leaf 3\nmain;idle 1\n".to_vec(), None, None).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (status, body) = api
        .json(
            "SelectMergeStacktraces",
            json!({"profileTypeID": CPU, "labelSelector": "{service_name=\"shop\", env=\"prod\"}",
                   "start": (from as i64 - 60) * 1000, "end": (from as i64 + 60) * 1000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fg = &body["flamegraph"];
    assert_eq!(fg["names"], json!(["total", "main", "idle", "work", "leaf"]));
    assert_eq!(fg["total"], json!("40000000"), "4 samples at 100 Hz, as int64 strings");
    assert_eq!(
        fg["levels"][2]["values"],
        json!(["0", "10000000", "10000000", "2", "0", "30000000", "0", "3"])
    );
    let (_, types) = api.json("ProfileTypes", json!({})).await;
    assert_eq!(types["profileTypes"][0]["ID"], json!(CPU));
    c.stop().await;
}

#[tokio::test]
async fn pprof_plain_gzip_and_multipart_keep_span_labels_per_sample() {
    let c = Collector::start(|_| {}).await;
    let api = Api::new(&c);
    let prof = pprof(&[
        (
            &["main", "handle", "hot"],
            30,
            &[("span_id", "00000000000000a1"), ("span_name", "GET /a")],
        ),
        (
            &["main", "handle", "cold"],
            10,
            &[("span_id", "00000000000000b2"), ("span_name", "GET /b")],
        ),
        (&["main", "gc"], 5, &[]),
    ]);
    let raw = prof.encode_to_vec();
    let r = api.ingest("name=svc-plain&format=pprof", raw.clone(), None, None).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = api.ingest("name=svc-gzip&format=pprof", gzip(&raw), None, None).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let mut form = b"--XX\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    form.extend_from_slice(&gzip(&raw));
    form.extend_from_slice(b"\r\n--XX--\r\n");
    let r = api.ingest("name=svc-form", form, Some("multipart/form-data; boundary=XX"), None).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    for svc in ["svc-plain", "svc-gzip", "svc-form"] {
        let sel = format!("{{service_name=\"{svc}\"}}");
        let all = api.merge(&sel, &[], None).await;
        assert_eq!(all.total, 45, "{svc}");
        let span = api.merge(&sel, &["00000000000000a1"], None).await;
        assert_eq!(span.total, 30, "{svc}: only the span's samples");
        assert_eq!(total_of(&span, "hot"), 30);
        assert_eq!(total_of(&span, "cold"), 0);
    }
    // The span profile Grafana 11/12 asks for.
    let req = q::SelectMergeSpanProfileRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        span_selector: vec!["00000000000000b2".into()],
        start: now_ms() - 60_000,
        end: now_ms() + 60_000,
        max_nodes: Some(16384),
    };
    let r: q::SelectMergeSpanProfileResponse = api.call("SelectMergeSpanProfile", &req, None).await;
    let fg = r.flamegraph.unwrap();
    assert_eq!(fg.total, 30, "three services, 10 each");
    assert_eq!(total_of(&fg, "cold"), 30);
    let req = t::LabelValuesRequest {
        name: "span_name".into(),
        matchers: vec!["{service_name=\"svc-gzip\"}".into()],
        start: now_ms() - 60_000,
        end: now_ms() + 60_000,
    };
    let r: t::LabelValuesResponse = api.call("LabelValues", &req, None).await;
    assert_eq!(r.names, vec!["GET /a", "GET /b"]);
    let sel = api.merge("{span_name=~\"GET /(a|c)\"}", &[], None).await;
    assert_eq!(sel.total, 90);
    c.stop().await;
}

#[tokio::test]
async fn push_v1_connect_body_with_gzip_is_ingested_like_pyroscope_rs_sends_it() {
    let c = Collector::start(|_| {}).await;
    let api = Api::new(&c);
    let raw = pprof(&[(&["main", "py_work"], 20_000_000, &[])]).encode_to_vec();
    let req = push::PushRequest {
        series: vec![push::RawProfileSeries {
            labels: vec![
                t::LabelPair { name: "__name__".into(), value: "process_cpu".into() },
                t::LabelPair { name: "service_name".into(), value: "py".into() },
            ],
            samples: vec![push::RawSample { raw_profile: raw, id: "x".into() }],
        }],
    };
    let resp = api
        .http
        .post(format!("{}/push.v1.PusherService/Push", api.base))
        .header("content-type", "application/proto")
        .header("content-encoding", "gzip")
        .body(gzip(&req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let fg = api.merge("{service_name=\"py\"}", &[], None).await;
    assert_eq!(total_of(&fg, "py_work"), 20_000_000);
    c.stop().await;
}

#[tokio::test]
async fn acknowledged_pushes_survive_restarts_exactly_once_from_the_wal_and_from_blocks() {
    let mut c = Collector::start(|a| a.head_max_age = Some("200ms".into())).await;
    let first = pprof(&[(&["main", "a"], 7, &[])]).encode_to_vec();
    let r = Api::new(&c).ingest("name=dur&format=pprof", first, None, None).await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.r().profiles.blocks("single-tenant").is_empty() {
        assert!(Instant::now() < deadline, "profile head was not flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.restart().await;
    // Acknowledged, then the collector stops before any flush: only the WAL has it.
    let second = pprof(&[(&["main", "b"], 5, &[])]).encode_to_vec();
    let r = Api::new(&c).ingest("name=dur&format=pprof", second, None, None).await;
    assert_eq!(r.status(), 200);
    c.restart().await;
    let fg = Api::new(&c).merge("{service_name=\"dur\"}", &[], None).await;
    assert_eq!((total_of(&fg, "a"), total_of(&fg, "b"), fg.total), (7, 5, 12));
    c.stop().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_profiles() {
    let c = Collector::start(|_| {}).await;
    let api = Api::new(&c);
    let raw = pprof(&[(&["main", "secret"], 9, &[])]).encode_to_vec();
    assert_eq!(api.ingest("name=s&format=pprof", raw, None, Some("team-a")).await.status(), 200);
    assert_eq!(api.merge("{}", &[], Some("team-a")).await.total, 9);
    assert_eq!(api.merge("{}", &[], Some("team-b")).await.total, 0);
    assert_eq!(api.merge("{}", &[], None).await.total, 0);
    let req = q::ProfileTypesRequest { start: now_ms() - 60_000, end: now_ms() + 60_000 };
    let r: q::ProfileTypesResponse = api.call("ProfileTypes", &req, Some("team-b")).await;
    assert!(r.profile_types.is_empty());
    let r: t::LabelNamesResponse =
        api.call("LabelNames", &t::LabelNamesRequest::default(), Some("team-a")).await;
    assert!(r.names.contains(&"service_name".to_string()));
    let bad = api.ingest("name=s", b"a 1".to_vec(), None, Some("../x")).await;
    assert_eq!(bad.status(), 400);
    c.stop().await;
}

#[tokio::test]
async fn bad_pushes_are_rejected_whole_with_400_or_413() {
    let c = Collector::start(|a| a.max_body_bytes = Some(64 * 1024)).await;
    let api = Api::new(&c);
    let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        ("format=folded", b"a;b 1".to_vec(), None, "name"),
        ("name=shop", b"a;b 1\nno-count\n".to_vec(), None, "line 2"),
        ("name=shop&format=pprof", b"\x0a\xff\xff\xff".to_vec(), None, "pprof"),
        ("name=shop&format=jfr", b"x".to_vec(), None, "not supported"),
        ("name=shop&from=yesterday", b"a 1".to_vec(), None, "from"),
        ("name=shop", b"x".to_vec(), Some("multipart/form-data; boundary=b"), "multipart"),
        ("name=my.shop", b"a 1".to_vec(), None, "unknown profile type"),
    ];
    for (query, body, ct, why) in cases {
        let r = api.ingest(query, body, ct, None).await;
        assert_eq!(r.status(), 400, "{query}");
        let text = r.text().await.unwrap();
        assert!(text.contains(why), "{query}: {text}");
    }
    let big = format!("a;b 1\n{}", "x;y 1\n".repeat(20_000)).into_bytes();
    assert_eq!(api.ingest("name=shop", big, None, None).await.status(), 413);
    let bomb = gzip(&pprof(&[(&[&"f".repeat(200_000)], 1, &[])]).encode_to_vec());
    assert!(bomb.len() < 64 * 1024);
    assert_eq!(api.ingest("name=shop&format=pprof", bomb, None, None).await.status(), 413);
    let (_, types) = api.json("ProfileTypes", json!({})).await;
    assert_eq!(types, json!({"profileTypes": []}), "nothing half-stored");
    c.stop().await;
}

#[tokio::test]
async fn connect_errors_are_json_with_the_matching_http_status() {
    let c = Collector::start(|_| {}).await;
    let api = Api::new(&c);
    let (status, body) = api
        .json(
            "SelectMergeStacktraces",
            json!({"profileTypeID": CPU, "labelSelector": "{service_name=}"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_argument");
    assert!(body["message"].as_str().unwrap().contains("label selector"), "{body}");
    let (status, body) = api.json("SelectSeries", json!({"profileTypeID": "cpu"})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_argument")));
    let (status, body) = api.json("Diff", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (501, Some("unimplemented")));
    let (status, _) = api.json("ProfileTypes", json!({"start": "soon"})).await;
    assert_eq!(status, 400);
    let resp = api
        .http
        .post(format!("{}{QUERIER}/ProfileTypes", api.base))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = api
        .http
        .post(format!("{}{QUERIER}/ProfileTypes", api.base))
        .header("content-type", "application/proto")
        .body(vec![0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    c.stop().await;
}

#[tokio::test]
async fn select_series_sums_per_step_and_groups_by_label() {
    let c = Collector::start(|_| {}).await;
    let api = Api::new(&c);
    let t0 = (now_nanos() / 1_000_000_000) as i64 - 100;
    for (i, svc) in [(0, "a"), (0, "b"), (30, "a")] {
        let q = format!("name={svc}.cpu&from={}&sampleRate=100", t0 + i);
        assert_eq!(api.ingest(&q, b"main;x 2\n".to_vec(), None, None).await.status(), 200);
    }
    let req = q::SelectSeriesRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start: t0 * 1000,
        end: (t0 + 60) * 1000,
        group_by: vec!["service_name".into()],
        step: 15.0,
        ..Default::default()
    };
    let r: q::SelectSeriesResponse = api.call("SelectSeries", &req, None).await;
    assert_eq!(r.series.len(), 2);
    assert_eq!(
        r.series[0].labels,
        vec![t::LabelPair { name: "service_name".into(), value: "a".into() }]
    );
    let points: Vec<(i64, f64)> =
        r.series[0].points.iter().map(|p| (p.timestamp, p.value)).collect();
    assert_eq!(points, vec![(t0 * 1000, 20_000_000.0), ((t0 + 30) * 1000, 20_000_000.0)]);
    let req = q::SelectSeriesRequest { group_by: vec![], limit: Some(1), ..req };
    let r: q::SelectSeriesResponse = api.call("SelectSeries", &req, None).await;
    assert_eq!(r.series.len(), 1);
    assert!(r.series[0].labels.is_empty());
    assert_eq!(r.series[0].points[0].value, 40_000_000.0);
    c.stop().await;
}

#[tokio::test]
async fn merge_stacktraces_gives_other_surfaces_a_call_tree() {
    let c = Collector::start(|_| {}).await;
    let raw = pprof(&[
        (&["main", "handle", "hot"], 30, &[("span_id", "00000000000000a1")]),
        (&["main", "handle"], 4, &[("span_id", "00000000000000a1")]),
        (&["main", "gc"], 5, &[]),
    ])
    .encode_to_vec();
    assert_eq!(Api::new(&c).ingest("name=tree&format=pprof", raw, None, None).await.status(), 200);
    let now = now_nanos() as i64;
    let p = &c.r().profiles;
    let tree = p
        .merge_stacktraces(
            "single-tenant",
            CPU,
            "{service_name=\"tree\"}",
            None,
            now - 60_000_000_000,
            now,
        )
        .await
        .unwrap();
    assert_eq!(tree.root.total, 39);
    let main = &tree.root.children[0];
    assert_eq!(
        main.children.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["gc", "handle"]
    );
    assert_eq!((main.children[1].total, main.children[1].self_value), (34, 4));
    let spans = ["00000000000000a1".to_string()];
    let tree = p.merge_stacktraces("single-tenant", CPU, "", Some(&spans), 0, now).await.unwrap();
    assert_eq!(tree.root.total, 34);
    let err = p.merge_stacktraces("single-tenant", CPU, "", Some(&["xyz".into()]), 0, now).await;
    assert!(matches!(err, Err(skein_collector::profile::ProfileError::BadRequest(_))));
    c.stop().await;
}

async fn wait_blocks(c: &Collector, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.r().profiles.blocks("single-tenant").len() < n {
        assert!(Instant::now() < deadline, "profile head was not flushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn compaction_merges_blocks_without_changing_answers_and_survives_restart() {
    let mut c = Collector::start(|a| a.head_max_age = Some("50ms".into())).await;
    for (i, f) in ["one", "two", "three"].into_iter().enumerate() {
        let raw = pprof(&[(&["main", f], 10 + i as i64, &[("span_id", "00000000000000a1")])]);
        let r =
            Api::new(&c).ingest("name=compact&format=pprof", raw.encode_to_vec(), None, None).await;
        assert_eq!(r.status(), 200);
        wait_blocks(&c, i + 1).await;
    }
    let before = Api::new(&c).merge("{}", &[], None).await;
    assert_eq!(before.total, 33);
    assert_eq!(c.r().profiles.compact(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(c.r().profiles.blocks("single-tenant").len(), 1);
    let after = Api::new(&c).merge("{}", &[], None).await;
    assert_eq!(nodes(&after), nodes(&before));
    assert_eq!(Api::new(&c).merge("{}", &["00000000000000a1"], None).await.total, 33);
    c.restart().await;
    assert_eq!(c.r().profiles.blocks("single-tenant").len(), 1);
    assert_eq!(nodes(&Api::new(&c).merge("{}", &[], None).await), nodes(&before));
    c.stop().await;
}

#[tokio::test]
async fn retention_deletes_blocks_of_profiles_older_than_it() {
    let c = Collector::start(|a| {
        a.head_max_age = Some("50ms".into());
        a.retention = Some("1h".into());
    })
    .await;
    let old = (now_nanos() / 1_000_000_000) as i64 - 3 * 3600;
    let q = format!("name=old.cpu&from={old}");
    assert_eq!(Api::new(&c).ingest(&q, b"main 1\n".to_vec(), None, None).await.status(), 200);
    wait_blocks(&c, 1).await;
    assert_eq!(c.r().profiles.apply_retention().await.unwrap(), 1);
    assert!(c.r().profiles.blocks("single-tenant").is_empty());
    c.stop().await;
}
