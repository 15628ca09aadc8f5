//! Tenant isolation on every read path, with and without an auth file.
//!
//! Three tenants: A and B each hold traces, span metrics, a firing alert and a CPU profile,
//! every one marked with the tenant's own strings (service, span name, attribute, profile app,
//! frame, alert name, trace and span ids); C holds nothing. For each row of [`rows`] (one per
//! read endpoint), A's answer must show A's data and none of B's, B's the reverse, and C's
//! neither — each tenant also asking with the *other* tenant's ids and names in the request.
//!
//! The rows are checked against the router: every `.route(…)` in the collector's sources, every
//! Pyroscope querier method and every API path the web UI calls needs a row here, or an entry
//! in [`NOT_TENANT_DATA`] saying why it holds no tenant's data. A new endpoint without one fails
//! `every_route_has_a_tenancy_row`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use skein_collector::config::ServeArgs;

use crate::common::{self, Collector, now_nanos, s};

const TENANTS: [&str; 3] = ["tenant-a", "tenant-b", "tenant-c"];
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const QUERIER: &str = "/pyroscope/querier.v1.QuerierService";

/// Routes that hold no tenant's data, and why.
const NOT_TENANT_DATA: &[(&str, &str)] = &[
    ("/healthz", "liveness, no data"),
    ("/ready", "readiness, no data"),
    ("/metrics", "the collector's own metrics, admin only (tested in tenant_labels_on_metrics)"),
    ("/api/echo", "Grafana's connection check, a constant"),
    ("/api/status/buildinfo", "a constant"),
    ("/prometheus/api/v1/status/buildinfo", "a constant"),
    ("/prometheus/api/v1/metadata", "the fixed list of span-metric families skein defines"),
    ("/ui/assets/{*name}", "the web UI's static files"),
    ("/favicon.ico", "a static file"),
    ("/v1/traces", "write path (OTLP/HTTP): the tenant comes from the gate"),
    ("/ingest", "write path (Pyroscope ingest)"),
    ("/pyroscope/ingest", "write path (Pyroscope ingest)"),
    ("/push.v1.PusherService/Push", "write path (Pyroscope push)"),
    ("/pyroscope/push.v1.PusherService/Push", "write path (Pyroscope push)"),
    (
        "/internal/v1/metrics-part",
        "a peer's share of a metrics query: it reads only blocks it names by id, looked up among \
         the gate's tenant's blocks (another tenant's id is not found), and no head; these rows \
         hold their data in the head (test_scale_out covers it)",
    ),
    (
        "/internal/v1/search-part",
        "a peer's share of a search: like metrics-part, only blocks it names by id among the \
         gate's tenant's blocks, and no head (test_scale_out covers it)",
    ),
];

/// What a row expects of a tenant holding data.
#[derive(Clone, Copy)]
enum Shows {
    /// That tenant's own markers (and not another tenant's).
    Own,
    /// This string, present for every tenant with data (label names, profile types), and not
    /// for a tenant without any.
    Fixed(&'static str),
    /// Numbers only: data when the JSON answer passes this test (never for another tenant).
    Numbers(fn(&serde_json::Value) -> bool),
}

/// A RED answer with any call in it.
fn has_calls(v: &serde_json::Value) -> bool {
    v["series"]["rate"].as_array().is_some_and(|r| r.iter().any(|p| p[1].as_f64() > Some(0.0)))
}

/// Does `body` show the data of `d` for this row?
fn shows(row: &Row, d: &Data, body: &str) -> bool {
    match row.shows {
        Shows::Own => d.markers().iter().any(|m| body.contains(m.as_str())),
        Shows::Fixed(s) => body.contains(s),
        Shows::Numbers(f) => serde_json::from_str(body).is_ok_and(|v| f(&v)),
    }
}

struct Row {
    /// The route as the router spells it (or `QUERIER/<method>`).
    route: &'static str,
    method: &'static str,
    /// Path and query; `{tid}`, `{sid}`, `{svc}`, `{op}`, `{app}` are filled in with the
    /// values of the tenant whose data is asked for.
    path: &'static str,
    /// A JSON body (Connect and SQL calls), with the same placeholders.
    body: Option<&'static str>,
    shows: Shows,
}

const fn get(route: &'static str, path: &'static str, shows: Shows) -> Row {
    Row { route, method: "GET", path, body: None, shows }
}

const fn connect(route: &'static str, body: &'static str, shows: Shows) -> Row {
    Row { route, method: "POST", path: route, body: Some(body), shows }
}

fn rows() -> Vec<Row> {
    use Shows::*;
    vec![
        // Tempo
        get("/api/traces/{id}", "/api/traces/{tid}", Own),
        get("/api/v2/traces/{id}", "/api/v2/traces/{tid}", Own),
        get("/api/search", "/api/search?q=%7B%7D&start={start}&end={end}", Own),
        get("/api/search", "/api/search?tags=service.name%3D{svc}&start={start}&end={end}", Own),
        get("/api/search/tags", "/api/search/tags", Own),
        get("/api/v2/search/tags", "/api/v2/search/tags", Own),
        get("/api/search/tag/{tag}/values", "/api/search/tag/service.name/values", Own),
        get(
            "/api/v2/search/tag/{tag}/values",
            "/api/v2/search/tag/resource.service.name/values",
            Own,
        ),
        get(
            "/api/metrics/query_range",
            "/api/metrics/query_range?q=%7B%7D%20%7C%20rate()%20by%20(resource.service.name)&start={start}&end={end}&step=15",
            Own,
        ),
        get(
            "/api/metrics/query",
            "/api/metrics/query?q=%7B%7D%20%7C%20rate()%20by%20(resource.service.name)&start={start}&end={end}",
            Own,
        ),
        // Prometheus
        get(
            "/prometheus/api/v1/query",
            "/prometheus/api/v1/query?query=traces_spanmetrics_calls_total",
            Own,
        ),
        get(
            "/prometheus/api/v1/query_range",
            "/prometheus/api/v1/query_range?query=traces_spanmetrics_calls_total&start={start}&end={end}&step=15",
            Own,
        ),
        get("/prometheus/api/v1/labels", "/prometheus/api/v1/labels", Fixed("span_name")),
        get(
            "/prometheus/api/v1/label/{name}/values",
            "/prometheus/api/v1/label/service/values",
            Own,
        ),
        get(
            "/prometheus/api/v1/series",
            "/prometheus/api/v1/series?match%5B%5D=traces_spanmetrics_calls_total",
            Own,
        ),
        get(
            "/prometheus/api/v1/query_exemplars",
            "/prometheus/api/v1/query_exemplars?query=traces_spanmetrics_latency_bucket&start={start}&end={end}",
            Own,
        ),
        get("/prometheus/api/v1/rules", "/prometheus/api/v1/rules", Own),
        get("/prometheus/api/v1/alerts", "/prometheus/api/v1/alerts", Own),
        get("/prometheus/metrics", "/prometheus/metrics", Own),
        // Pyroscope
        connect("/pyroscope/querier.v1.QuerierService/ProfileTypes", "{}", Fixed("process_cpu")),
        connect(
            "/pyroscope/querier.v1.QuerierService/LabelNames",
            r#"{"start": {start_ms}, "end": {end_ms}}"#,
            Fixed("service_name"),
        ),
        connect(
            "/pyroscope/querier.v1.QuerierService/LabelValues",
            r#"{"name": "service_name", "start": {start_ms}, "end": {end_ms}}"#,
            Own,
        ),
        connect(
            "/pyroscope/querier.v1.QuerierService/SelectSeries",
            r#"{"profileTypeID": "{cpu}", "labelSelector": "{}", "groupBy": ["service_name"], "step": 15, "start": {start_ms}, "end": {end_ms}}"#,
            Own,
        ),
        connect(
            "/pyroscope/querier.v1.QuerierService/SelectMergeStacktraces",
            r#"{"profileTypeID": "{cpu}", "labelSelector": "{}", "start": {start_ms}, "end": {end_ms}}"#,
            Own,
        ),
        connect(
            "/pyroscope/querier.v1.QuerierService/SelectMergeSpanProfile",
            r#"{"profileTypeID": "{cpu}", "labelSelector": "{}", "spanSelector": ["{sid}"], "start": {start_ms}, "end": {end_ms}}"#,
            Own,
        ),
        // skein's own API (the web UI's)
        get("/skein/api/flamegraph", "/skein/api/flamegraph?span_id={sid}&format=json", Own),
        get(
            "/skein/api/flamegraph",
            "/skein/api/flamegraph?service={svc}&span_name={op}&format=json",
            Own,
        ),
        get(
            "/skein/api/flamegraph/diff",
            "/skein/api/flamegraph/diff?service={svc}&span_name={op}&threshold=1ms&format=json",
            Own,
        ),
        get(
            "/skein/api/compare",
            "/skein/api/compare?service={svc}&span_name={op}&threshold=1ms",
            Own,
        ),
        get("/skein/api/critical-path/{trace_id}", "/skein/api/critical-path/{tid}", Own),
        get("/skein/api/services", "/skein/api/services", Own),
        get("/skein/api/operations", "/skein/api/operations?service={svc}", Own),
        get("/skein/api/red", "/skein/api/red?service={svc}&step=15s", Numbers(has_calls)),
        // The internal API peers ask each other (the same read gate).
        Row {
            route: "/internal/v1/spans",
            method: "POST",
            path: "/internal/v1/spans",
            body: Some(r#"{"trace_ids": ["{tid}"]}"#),
            shows: Own,
        },
        Row {
            route: "/internal/v1/tags",
            method: "POST",
            path: "/internal/v1/tags",
            body: Some("{}"),
            shows: Own,
        },
        Row {
            route: "/internal/v1/series",
            method: "POST",
            path: "/internal/v1/series",
            body: Some(r#"{"selectors": [], "start": {start_ms}, "end": {end_ms}}"#),
            shows: Own,
        },
        Row {
            route: "/internal/v1/profiles/types",
            method: "POST",
            path: "/internal/v1/profiles/types",
            body: Some(r#"{"start_ns": {start}000000000, "end_ns": {end}000000000}"#),
            shows: Fixed("process_cpu"),
        },
        Row {
            route: "/internal/v1/profiles/label-names",
            method: "POST",
            path: "/internal/v1/profiles/label-names",
            body: Some(r#"{"start_ns": {start}000000000, "end_ns": {end}000000000}"#),
            shows: Fixed("service_name"),
        },
        Row {
            route: "/internal/v1/profiles/label-values",
            method: "POST",
            path: "/internal/v1/profiles/label-values",
            body: Some(
                r#"{"name": "service_name", "start_ns": {start}000000000, "end_ns": {end}000000000}"#,
            ),
            shows: Own,
        },
        Row {
            route: "/internal/v1/profiles/stacks",
            method: "POST",
            path: "/internal/v1/profiles/stacks",
            body: Some(
                r#"{"profile_type": "{cpu}", "selector": "{}", "span_ids": null, "call_site": [], "start_ns": {start}000000000, "end_ns": {end}000000000}"#,
            ),
            shows: Own,
        },
        Row {
            route: "/internal/v1/profiles/series",
            method: "POST",
            path: "/internal/v1/profiles/series",
            body: Some(
                r#"{"profile_type": "{cpu}", "selector": "{}", "group_by": ["service_name"], "step_ns": 15000000000, "average": false, "limit": null, "start_ns": {start}000000000, "end_ns": {end}000000000}"#,
            ),
            shows: Own,
        },
        Row {
            route: "/skein/api/sql",
            method: "POST",
            path: "/skein/api/sql",
            body: Some(r#"{"query": "SELECT service_name, name, trace_id FROM spans LIMIT 50"}"#),
            shows: Own,
        },
    ]
}

/// One tenant's data and the strings that mark it.
struct Data {
    tenant: &'static str,
    tid: String,
    sid: String,
    svc: String,
    op: String,
    app: String,
}

impl Data {
    fn of(tenant: &'static str, n: u64) -> Data {
        Data {
            tenant,
            tid: hex::encode(common::trace_id(n)),
            sid: hex::encode(common::span_id(n, 0)),
            svc: format!("svc-{tenant}"),
            op: format!("op-{tenant}"),
            // The profile's service_name: the flame graph of an operation selects by service.
            app: format!("svc-{tenant}"),
        }
    }

    /// Strings only this tenant's data contains (its service is also its profiles' app).
    fn markers(&self) -> Vec<String> {
        let t = self.tenant.replace('-', "_");
        vec![
            self.tid.clone(),
            self.sid.clone(),
            self.svc.clone(),
            self.op.clone(),
            format!("key_{t}"),
            format!("frame_{t}"),
            format!("Alert_{t}"),
        ]
    }

    fn fill(&self, template: &str, now_s: u64) -> String {
        let (start, end) = (now_s.saturating_sub(3600), now_s + 60);
        template
            .replace("{tid}", &self.tid)
            .replace("{sid}", &self.sid)
            .replace("{svc}", &self.svc)
            .replace("{op}", &self.op)
            .replace("{app}", &self.app)
            .replace("{cpu}", CPU)
            .replace("{start_ms}", &(start * 1000).to_string())
            .replace("{end_ms}", &(end * 1000).to_string())
            .replace("{start}", &start.to_string())
            .replace("{end}", &end.to_string())
    }
}

const AUTH: &str = r#"
[[token]]
token = "writer-tenant-a-000000"
tenants = ["tenant-a"]
role = "write"
[[token]]
token = "writer-tenant-b-000000"
tenants = ["tenant-b"]
role = "write"
[[token]]
token = "reader-tenant-a-000000"
tenants = ["tenant-a"]
role = "read"
[[token]]
token = "reader-tenant-b-000000"
tenants = ["tenant-b"]
role = "read"
[[token]]
token = "reader-tenant-c-000000"
tenants = ["tenant-c"]
role = "read"
[[token]]
token = "admin-any-tenant-000000"
tenants = ["*"]
role = "admin"
"#;

/// How a tenant's requests are made: by header alone, or by its own token alone.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Header,
    Token,
}

struct Client {
    http: reqwest::Client,
    base: String,
    otlp: String,
    mode: Mode,
}

impl Client {
    fn request(
        &self,
        method: &str,
        url: String,
        tenant: &str,
        role: &str,
    ) -> reqwest::RequestBuilder {
        let r = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        };
        match self.mode {
            Mode::Header => r.header("x-scope-orgid", tenant),
            Mode::Token => r.bearer_auth(format!("{role}-{tenant}-000000")),
        }
    }

    async fn call(&self, row: &Row, asker: &str, about: &Data, now_s: u64) -> (u16, String) {
        let url = format!("{}{}", self.base, about.fill(row.path, now_s));
        let mut r = self.request(row.method, url, asker, "reader");
        if let Some(body) = row.body {
            r = r.header("content-type", "application/json").body(about.fill(body, now_s));
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

fn rules(dir: &Path) -> PathBuf {
    let root = dir.join("rules");
    for tenant in &TENANTS[..2] {
        let t = tenant.replace('-', "_");
        let text = format!(
            r#"groups:
  - name: calls
    interval: 200ms
    rules:
      - alert: Alert_{t}
        expr: sum(traces_spanmetrics_calls_total{{service="svc-{tenant}"}}) > 0
"#
        );
        std::fs::create_dir_all(root.join(tenant)).unwrap();
        std::fs::write(root.join(tenant).join("calls.yml"), text).unwrap();
    }
    root
}

async fn start(mode: Mode) -> (Collector, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(dir.path());
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, AUTH).unwrap();
    let c = Collector::start(|a: &mut ServeArgs| {
        a.rules = Some(rules);
        if mode == Mode::Token {
            a.auth_file = Some(auth);
        }
    })
    .await;
    let client = Client { http: reqwest::Client::new(), base: c.http(), otlp: c.otlp_http(), mode };
    (c, client, dir)
}

/// A's and B's traces (OTLP/HTTP) and CPU profiles (folded `/ingest`), written as each tenant.
async fn write(client: &Client, data: &[Data]) {
    for (n, d) in data.iter().enumerate() {
        let n = n as u64 + 1;
        let mut rs = common::trace(n, &d.svc, &d.op, now_nanos() - 5_000_000_000, 50, 1, false);
        let t = d.tenant.replace('-', "_");
        rs.scope_spans[0].spans[0].attributes.push(s(&format!("key_{t}"), "v"));
        let body = common::request(vec![rs]).encode_to_vec();
        let url = format!("{}/v1/traces", client.otlp);
        let resp = client
            .request("POST", url, d.tenant, "writer")
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        let from = now_nanos() / 1_000_000_000 - 5;
        let url = format!(
            "{}/ingest?name={}.cpu%7Bspan_id%3D{}%7D&from={from}&until={}&sampleRate=100",
            client.base,
            d.app,
            d.sid,
            from + 1
        );
        let resp = client
            .request("POST", url, d.tenant, "writer")
            .body(format!("main_{t};frame_{t} 5\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
}

async fn check_isolation(mode: Mode) {
    let (c, client, _dir) = start(mode).await;
    let data = [Data::of(TENANTS[0], 1), Data::of(TENANTS[1], 2), Data::of(TENANTS[2], 3)];
    write(&client, &data[..2]).await;
    let now_s = now_nanos() / 1_000_000_000;
    let rows = rows();
    // Each tenant with data sees it on every row (polled: span metrics, alerts and profiles
    // become visible after ingest).
    for row in &rows {
        for d in &data[..2] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, body) = client.call(row, d.tenant, d, now_s).await;
                if status == 200 && shows(row, d, &body) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} as {} never showed its own data: {status} {}",
                    row.path,
                    d.tenant,
                    &body[..body.len().min(400)]
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Nobody sees anyone else's: asked about the other's ids and names, or about its own.
    for row in &rows {
        for asker in &data {
            for about in &data {
                let (status, body) = client.call(row, asker.tenant, about, now_s).await;
                assert!(
                    status == 200 || status == 404,
                    "{} as {} about {}: {status} {body}",
                    row.path,
                    asker.tenant,
                    about.tenant
                );
                // What the request itself names may be echoed back (`compare` repeats its
                // service and span name); anything else of another tenant is a leak.
                let asked = format!(
                    "{}{}",
                    about.fill(row.path, now_s),
                    row.body.map(|b| about.fill(b, now_s)).unwrap_or_default()
                );
                let others = data.iter().filter(|o| o.tenant != asker.tenant);
                for other in others {
                    for m in other.markers().into_iter().filter(|m| !asked.contains(m.as_str())) {
                        assert!(
                            !body.contains(&m),
                            "{} {} as {} (about {}) shows {}'s {m:?}: {}",
                            row.method,
                            row.path,
                            asker.tenant,
                            about.tenant,
                            other.tenant,
                            &body[..body.len().min(600)]
                        );
                    }
                }
                if let (Shows::Fixed(s), true) = (row.shows, asker.tenant == TENANTS[2]) {
                    assert!(
                        !body.contains(s),
                        "{} as the empty tenant shows {s:?}: {body}",
                        row.path
                    );
                }
            }
        }
    }
    if mode == Mode::Token {
        // A token of A naming B, and a writer's token on a read path, are refused.
        for row in &rows {
            let url = format!("{}{}", client.base, data[1].fill(row.path, now_s));
            let mut r = match row.method {
                "POST" => client.http.post(&url),
                _ => client.http.get(&url),
            };
            if let Some(body) = row.body {
                r = r.header("content-type", "application/json").body(data[1].fill(body, now_s));
            }
            let cross = r
                .try_clone()
                .unwrap()
                .bearer_auth("reader-tenant-a-000000")
                .header("x-scope-orgid", "tenant-b")
                .send()
                .await
                .unwrap();
            assert_eq!(cross.status(), 403, "{}: A's token acting for B", row.path);
            let writer = r.bearer_auth("writer-tenant-b-000000").send().await.unwrap();
            assert_eq!(writer.status(), 403, "{}: a write token reading", row.path);
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_data_on_every_read_path_by_header() {
    check_isolation(Mode::Header).await;
}

#[tokio::test]
async fn tenants_see_only_their_own_data_on_every_read_path_by_token() {
    check_isolation(Mode::Token).await;
}

/// The collector's sources outside `#[cfg(test)]` code.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_string();
                out.push((p, code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// Every `"…"` literal following `marker` in `code`.
fn literals_after<'a>(code: &'a str, marker: &str) -> Vec<&'a str> {
    code.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = code.get(i + marker.len()..)?;
            let end = rest.find('"')?;
            rest.get(..end)
        })
        .collect()
}

#[test]
fn every_route_has_a_tenancy_row() {
    let covered: BTreeSet<&str> = rows().iter().map(|r| r.route).collect();
    let exempt: BTreeSet<&str> = NOT_TENANT_DATA.iter().map(|(r, _)| *r).collect();
    let mut routes = BTreeSet::new();
    for (path, code) in sources() {
        for route in literals_after(&code, ".route(\"") {
            if route == "/pyroscope/querier.v1.QuerierService/{method}" {
                continue;
            }
            routes.insert(route.to_string());
        }
        if path.ends_with("api/pyroscope/mod.rs") {
            // The querier's methods, one match arm each: `"SelectSeries" => {`.
            for line in code.lines() {
                let l = line.trim();
                if let Some(name) = l.strip_prefix('"').and_then(|r| r.strip_suffix("\" => {"))
                    && name.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    routes.insert(format!("{QUERIER}/{name}"));
                }
            }
        }
    }
    assert!(routes.len() > 40, "the route scan found too little: {routes:?}");
    assert!(routes.contains(&format!("{QUERIER}/SelectMergeSpanProfile")), "{routes:?}");
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !covered.contains(r.as_str()) && !exempt.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a tenancy row or a NOT_TENANT_DATA entry: {missing:?}"
    );
    let stale: Vec<&&str> =
        covered.iter().chain(exempt.iter()).filter(|r| !routes.contains(**r)).collect();
    assert!(stale.is_empty(), "rows for routes that no longer exist: {stale:?}");
}

#[test]
fn every_api_path_the_web_ui_calls_has_a_tenancy_row() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    // Route templates with their parameters blanked: `/api/traces/{}`.
    let blank = |s: &str| {
        let mut out = String::new();
        let mut depth = 0;
        for ch in s.chars() {
            match ch {
                '{' => {
                    depth += 1;
                    if depth == 1 {
                        out.push_str("{}");
                    }
                }
                '}' => depth -= 1,
                _ if depth > 0 => {}
                _ => out.push(ch),
            }
        }
        out.replace("${}", "{}")
    };
    let covered: BTreeSet<String> = rows().iter().map(|r| blank(r.route)).collect();
    let mut calls = BTreeSet::new();
    for e in std::fs::read_dir(&ui).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "js") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for quote in ['"', '\'', '`'] {
            for prefix in ["/api/", "/skein/api/", "/prometheus/api/", "/pyroscope/"] {
                let marker = format!("{quote}{prefix}");
                for (i, _) in text.match_indices(&marker) {
                    let rest = &text[i + 1..];
                    let end = rest.find([quote, '?']).unwrap_or(rest.len());
                    let path = &rest[..end];
                    if !path.ends_with('/') {
                        calls.insert(blank(path));
                    }
                }
            }
        }
    }
    assert!(calls.len() >= 8, "the UI scan found too little: {calls:?}");
    let missing: Vec<&String> = calls.iter().filter(|c| !covered.contains(*c)).collect();
    assert!(missing.is_empty(), "UI API calls without a tenancy row: {missing:?}");
}

/// `/metrics` names tenants that exist; a refused request with an invented tenant id adds
/// no label value.
#[tokio::test]
async fn tenant_labels_on_metrics_are_only_for_tenants_that_exist() {
    let (c, client, _dir) = start(Mode::Token).await;
    write(&client, &[Data::of(TENANTS[0], 1)]).await;
    for t in ["invented-1", "invented-2"] {
        let r = client
            .http
            .post(format!("{}/v1/traces", client.otlp))
            .bearer_auth("nobody-knows-this-token")
            .header("x-scope-orgid", t)
            .header("content-type", "application/x-protobuf")
            .body(vec![0xff, 0xff])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client
            .http
            .post(format!("{}/v1/traces", client.otlp))
            .bearer_auth("writer-tenant-a-000000")
            .header("x-scope-orgid", t)
            .body(vec![0xff, 0xff])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let r = client.http.get(format!("{}/metrics", client.base)).send().await.unwrap();
    assert_eq!(r.status(), 401, "/metrics needs a token");
    let r = client
        .http
        .get(format!("{}/metrics", client.base))
        .bearer_auth("reader-tenant-a-000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "/metrics needs the admin role");
    let text = client
        .http
        .get(format!("{}/metrics", client.base))
        .bearer_auth("admin-any-tenant-000000")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("tenant=\"tenant-a\""), "{text}");
    assert!(!text.contains("invented"), "refused requests named tenants on /metrics");
    c.stop().await;
}
