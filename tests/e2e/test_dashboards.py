"""The bundled Grafana dashboards (dashboards/*.json):

(a) offline: valid against tests/schemas/dashboard.schema.json (Grafana's dashboard model, the
    subset we use, unknown keys rejected), unique panel ids, non-overlapping gridPos, only
    provisioned datasource uids, only defined variables, stable uids;
(b) every panel query runs: `skein demo` (shop traffic, span profiling) plus a real Prometheus
    scraping skein's /metrics; each target is sent the way Grafana's datasource for it sends it,
    after Grafana's variable substitution (support/grafana.py), and must get a non-error,
    non-empty, correctly shaped answer. The Grafana-managed alert rules' queries run the same way.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import jsonschema
import pytest
import requests

from support import grafana as gf
from support import pyroscope
from support.collector import free_port
from support.poll import wait_until
from support.protojson import parse_strict
from support.tempo_proto import tempo_pb2

SCHEMA = json.loads((gf.REPO / "tests" / "schemas" / "dashboard.schema.json").read_text())
EXPECTED_UIDS = {"skein-services-overview", "skein-service-detail", "skein-slow-spans", "skein-collector"}
SHOP = {"gateway", "orders", "inventory", "payment"}
SHOP_EDGES = {("gateway", "orders"), ("orders", "inventory"), ("orders", "payment")}
# What the variables are set to while the queries run (the demo's CPU-heavy, sometimes slow operation).
CHOICES = {"service": "payment", "operation": "shop.v1.Payment/Charge"}
DASHBOARDS = gf.load_dashboards()
DATASOURCES = gf.provisioned_datasources()


def validator():
    return jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


# ---- (a) offline -----------------------------------------------------------------------------------

def test_the_four_dashboards_exist_with_stable_uids():
    assert set(DASHBOARDS) == EXPECTED_UIDS, sorted(DASHBOARDS)
    assert len(gf.dashboard_files()) == len(EXPECTED_UIDS), "two files share a uid"


@pytest.mark.parametrize("path", gf.dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_valid_against_the_schema(path: pathlib.Path):
    d = json.loads(path.read_text())
    errors = sorted(validator().iter_errors(d), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:20])


def test_the_schema_rejects_what_grafana_would_not_load():
    d = copy.deepcopy(DASHBOARDS["skein-service-detail"])
    d.pop("__file")
    v = validator()
    assert v.is_valid(d)
    bad = []
    x = copy.deepcopy(d); x["schemaVersion"] = 41; bad.append(("schemaVersion", x))
    x = copy.deepcopy(d); x["panels"][1]["gridpos"] = x["panels"][1].pop("gridPos"); bad.append(("panel key typo", x))
    x = copy.deepcopy(d); x["panels"][1]["targets"][0]["exp"] = x["panels"][1]["targets"][0].pop("expr"); bad.append(("prom expr", x))
    x = copy.deepcopy(d); x["panels"][1]["gridPos"]["w"] = 25; bad.append(("width", x))
    x = copy.deepcopy(d); x["templating"]["list"][1]["query"] = "label_values(x, y)"; bad.append(("var query", x))
    x = copy.deepcopy(d); x["panels"][1]["datasource"] = "skein-prometheus"; bad.append(("string ds", x))
    for what, x in bad:
        assert not v.is_valid(x), f"schema accepted a dashboard with a broken {what}"


def _overlaps(a, b) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def structural_problems(d: dict) -> list[str]:
    """Unique panel ids, gridPos inside 24 columns and not overlapping, datasource uids that
    resolve to provisioned datasources for every tenant option, every `$var` defined, links to
    dashboards that exist."""
    problems = []
    ps = list(gf.panels(d))
    ids = [p["id"] for p in ps]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate panel ids {ids}")
    for i, a in enumerate(ps):
        g = a["gridPos"]
        if g["x"] + g["w"] > 24:
            problems.append(f"panel {a['id']} extends past column 24")
        for b in ps[i + 1:]:
            if _overlaps(g, b["gridPos"]):
                problems.append(f"panels {a['id']} and {b['id']} overlap")
    defined = {v["name"] for v in d["templating"]["list"]}
    for s in gf.strings_in(d):
        for name in gf.variables_used(s):
            if name not in defined and name not in gf.BUILTIN_VARS:
                problems.append(f"undefined variable ${name} in {s[:80]!r}")
    tenant = next((v for v in d["templating"]["list"] if v["name"] == "tenant"), None)
    tenant_values = [o["value"] for o in tenant["options"]] if tenant else ["-"]
    refs = []

    def collect(o):
        if isinstance(o, dict):
            if set(o) == {"type", "uid"} and isinstance(o.get("uid"), str):
                refs.append(o)
            for v in o.values():
                collect(v)
        elif isinstance(o, list):
            for v in o:
                collect(v)

    collect({k: v for k, v in d.items() if k != "__file"})
    for ref in refs:
        if ref["type"] == "grafana":
            continue
        for tv in tenant_values:
            ctx = gf.Context(d, {"tenant": tv}, 0, 1)
            try:
                gf.resolve_ds(ref, ctx, DATASOURCES)
            except AssertionError as e:
                problems.append(str(e))
    for p in ps:
        # Data links' ${__data.fields.x}: x is a label the panel's queries group by, not renamed away.
        grouped = {lbl.strip() for t in p.get("targets", []) for g in re.findall(r"by \(([^)]*)\)", t.get("expr", ""))
                   for lbl in g.split(",")}
        renamed = {k for t in p.get("transformations", []) if t["id"] == "organize"
                   for k in t["options"].get("renameByName", {})}
        for s in gf.strings_in(p):
            for f in re.findall(r"\$\{__data\.fields\.(\w+)", s):
                if f not in grouped or f in renamed:
                    problems.append(f"panel {p['id']}: data link field {f} is not a grouped label of its queries")
    for s in gf.strings_in(d):
        for uid in re.findall(r"/d/([A-Za-z0-9_-]+)", s):
            if uid not in EXPECTED_UIDS:
                problems.append(f"link to unknown dashboard {uid}")
    return problems


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_dashboard_structure(uid):
    d = DASHBOARDS[uid]
    assert not structural_problems(d), "\n".join(structural_problems(d))
    names = [v["name"] for v in d["templating"]["list"]]
    if uid != "skein-collector":
        assert names[:2] == ["tenant", "service"], names  # tenant first: the others' datasource depends on it
        if uid != "skein-services-overview":
            assert names[2] == "operation", names


def test_structure_check_finds_broken_dashboards():
    d = copy.deepcopy(DASHBOARDS["skein-slow-spans"])
    assert not structural_problems(d)
    x = copy.deepcopy(d); x["panels"][2]["id"] = x["panels"][1]["id"]
    assert any("duplicate" in p for p in structural_problems(x))
    x = copy.deepcopy(d); x["panels"][2]["gridPos"] = dict(x["panels"][1]["gridPos"])
    assert any("overlap" in p for p in structural_problems(x))
    x = copy.deepcopy(d); x["panels"][1]["title"] += " $nosuchvar"
    assert any("$nosuchvar" in p for p in structural_problems(x))
    x = copy.deepcopy(d); x["panels"][1]["datasource"]["uid"] = "${tenant}-jaeger"
    assert any("not provisioned" in p for p in structural_problems(x))


# ---- (b) every query runs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    base = pathlib.Path(tempfile.mkdtemp(prefix="skein-e2e-dashboards-"))
    s = gf.DemoSkein(base / "data", base / "logs", rps=10, extra_args=[
        "--metrics-scrape-interval", "2s", "--servicegraph-wait", "2s", "--head-max-age", "5s"])
    s.start()
    s.started_at = time.monotonic()
    yield s
    s.terminate_quietly()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def self_prometheus(demo):
    """A real Prometheus scraping skein's own /metrics (what the 'skein self-monitoring' datasource is)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (tests/setup-apt.sh installs it)")
    d = pathlib.Path(tempfile.mkdtemp(prefix="skein-e2e-selfprom-"))
    port = free_port()
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: skein\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{demo.http_port}']}}]\n")
    log = open(d / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, (d / "prometheus.log").read_text()
        try:
            return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, timeout=30, what="prometheus ready")
    # The collector dashboard's rate() panels need a few scrapes in their window.
    wait_until(lambda: requests.get(f"{url}/api/v1/query", params={"query": "count_over_time(up[1m]) >= 5"},
                                    timeout=5).json()["data"]["result"], timeout=60, interval=0.5, what="5 scrapes of skein")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def endpoints(demo, self_prometheus):
    # The provisioning's https + basic auth + CA against a secured skein is test_auth's
    # test_the_provisioned_grafana_datasources_reach_a_secured_skein; here the demo is plain.
    return gf.Endpoints({"https://skein:3200": demo.http_url, "http://prometheus:9090": self_prometheus})


def _prom(demo, query):
    r = requests.post(f"{demo.http_url}/prometheus/api/v1/query", data={"query": query}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


@pytest.fixture(scope="module")
def warm(demo, endpoints):
    """Wait until the demo's traffic has produced everything the panels show: all services, the
    service graph, errors, slow Charge spans, exemplars, span-labelled CPU samples, a block flush."""
    def ready():
        # Grafana aligns a range query's end down to the 15 s step; rate() needs two samples before it.
        if time.monotonic() - demo.started_at < 35:
            return None
        services = {s["metric"]["service"] for s in _prom(demo, "sum by (service) (traces_spanmetrics_calls_total)")}
        if not SHOP <= services:
            return None
        edges = {(s["metric"]["client"], s["metric"]["server"])
                 for s in _prom(demo, "sum by (client, server) (rate(traces_service_graph_request_total[1m]))")}
        if not SHOP_EDGES <= edges:
            return None
        if not _prom(demo, 'sum(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR"})'):
            return None
        now = int(time.time())
        r = requests.get(f"{demo.http_url}/api/search", params={
            "q": '{resource.service.name="payment" && name="shop.v1.Payment/Charge" && duration > 100ms}',
            "limit": 1, "start": now - 600, "end": now + 1}, timeout=10)
        if not r.json().get("traces"):
            return None
        if gf_metric(demo, "skein_flushes_total") < 1:
            return None
        fg = pyroscope.connect(demo, "SelectMergeStacktraces", pyroscope.msg("querier.v1.SelectMergeStacktracesRequest")(
            profile_typeID=pyroscope.CPU, label_selector='{service_name="payment", span_name="shop.v1.Payment/Charge"}',
            start=(now - 600) * 1000, end=(now + 1) * 1000, max_nodes=64), "querier.v1.SelectMergeStacktracesResponse")
        return fg.flamegraph.total > 0

    wait_until(ready, timeout=120, interval=1, what="demo data for every panel")
    return True


def gf_metric(demo, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{demo.http_url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def variable_values(d: dict, var: dict, ctx: gf.Context, endpoints) -> list[str]:
    """Run a query variable as Grafana's Prometheus datasource does for label_values(metric, label):
    GET /api/v1/label/<label>/values?match[]=<metric>&start&end (seconds)."""
    ds = gf.resolve_ds(var["datasource"], ctx, DATASOURCES)
    q = gf.interpolate(var["query"]["query"], ctx, gf.prometheus_interpolate)
    assert q == gf.interpolate(var["definition"], ctx, gf.prometheus_interpolate), "definition differs from query"
    m = re.fullmatch(r"label_values\((.+), *(\w+)\)", q)
    assert m, f"unsupported variable query {q!r}"
    base = endpoints.url(ds)
    r = requests.get(f"{base}/api/v1/label/{m.group(2)}/values", params={
        "match[]": m.group(1), "start": str(ctx.from_ms // 1000), "end": str(ctx.to_ms // 1000)},
        headers=gf.Endpoints.headers(ds), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def context_for(d: dict, endpoints) -> gf.Context:
    """Variables as a user would see them: defaults, query variables from their queries (in order,
    so `operation` sees `service`), the choices above where the variable offers them."""
    frm, to = gf.relative_range(d["time"])
    ctx = gf.Context(d, {}, frm, to)
    for var in d["templating"]["list"]:
        name = var["name"]
        if var["type"] == "query":
            values = variable_values(d, var, ctx, endpoints)
            assert values, f"{d['uid']}: variable {name} has no values"
            if name == "service":
                assert SHOP <= set(values), values
            if name == "operation":
                assert "shop.v1.Payment/Charge" in values and "POST /checkout" not in values, values
            ctx.scoped[f"options:{name}"] = values
            if var.get("includeAll") and var["current"].get("value") == ["$__all"]:
                ctx.values[name] = "$__all"  # the dashboard's default
                if name == "instance":  # one concrete instance, so Prometheus regex escaping is exercised
                    ctx.values[name] = values[0]
            else:
                ctx.values[name] = CHOICES[name] if CHOICES.get(name) in values else values[0]
        else:
            ctx.values[name] = var["current"]["value"]
    return ctx


def prom_target(panel, target, ctx, ds, endpoints, what) -> list:
    instant = target.get("instant", False)
    q = gf.prom_build(target["expr"], ctx, ds, instant=instant, max_data_points=int(panel["gridPos"]["w"] * 1600 / 24))
    base = endpoints.url(ds)
    headers = gf.Endpoints.headers(ds)
    data = gf.prom_call(base, "/api/v1/query" if instant else "/api/v1/query_range", q.form, ds, headers)
    result = gf.assert_prom_result(data, instant=instant, what=f"{what}: {q.expr}")
    if not instant:
        for s in result:
            ts = [t for t, _ in s["values"]]
            assert ts == sorted(ts) and all(round((t * 1000) % q.step_ms) == 0 for t in ts), \
                f"{what}: samples not on the {q.step_ms} ms step grid: {ts[:5]}"
    if target.get("exemplar"):
        ex = gf.prom_call(base, "/api/v1/query_exemplars",
                          {"query": q.expr, "start": q.form.get("start", q.form.get("time")), "end": q.form.get("end", q.form.get("time"))},
                          ds, headers)
        assert isinstance(ex, list), ex
        for series in ex:
            for e in series["exemplars"]:
                assert re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]), e
                float(e["value"])
        return [("exemplars", ex)]
    return []


def tempo_target(panel, target, ctx, ds, endpoints, demo, what):
    base = endpoints.url(ds)
    headers = gf.Endpoints.headers(ds)
    qt = target["queryType"]
    frm_s, to_s = ctx.from_ms // 1000, ctx.to_ms // 1000
    if qt == "serviceMap":
        # No Tempo call: the frontend asks the serviceMap Prometheus datasource (grafana/REQUESTS.md, "Tempo: which feature needs which endpoint").
        prom_ds = DATASOURCES[ds["jsonData"]["serviceMap"]["datasourceUid"]]
        metrics = ["traces_service_graph_request_server_seconds_sum", "traces_service_graph_request_total",
                   "traces_service_graph_request_failed_total", "traces_service_graph_request_server_seconds_bucket"]
        queries = [f"sum by (client, server) (rate({m}[$__range]))" for m in metrics]
        queries.append("group by (client, connection_type, server) (traces_service_graph_request_total)")
        for q in queries:
            b = gf.prom_build(q, ctx, prom_ds, instant=True, max_data_points=1000)
            data = gf.prom_call(endpoints.url(prom_ds), "/api/v1/query", b.form, prom_ds, gf.Endpoints.headers(prom_ds))
            assert data["resultType"] == "vector", data
            if "failed" in q:
                continue  # no failed calls is a valid graph
            edges = {(s["metric"]["client"], s["metric"]["server"]) for s in data["result"]}
            assert SHOP_EDGES <= edges, f"{what}: {b.expr} -> {edges}"
        return
    query = gf.interpolate(target["query"], ctx, gf.plain_interpolate)
    assert "$" not in query, query
    if "|" in query:  # TraceQL metrics (12.x backend: q, start, end, step only when set)
        params = {"q": query, "start": frm_s, "end": to_s}
        if target.get("step"):
            params["step"] = target["step"]
        r = requests.get(f"{base}/api/metrics/query_range", params=params,
                         headers={**headers, "Accept": "application/json"}, timeout=30)
        assert r.status_code == 200, f"{what}: {query}: HTTP {r.status_code} {r.text[:300]}"
        resp = parse_strict(r.content, tempo_pb2().QueryRangeResponse, zero_values=False)
        assert resp.series, f"{what}: {query}: no series"
        assert any(s.value > 0 for ts in resp.series for s in ts.samples), f"{what}: {query}: all samples zero"
        for ts in resp.series:
            # Samples lie in the requested range (start aligned down to the step, at most a minute).
            assert ts.samples and all((frm_s - 60) * 1000 <= s.timestampMs <= (to_s + 60) * 1000 for s in ts.samples), what
        labels = {kv.key for ts in resp.series for kv in ts.labels}
        if "quantile_over_time" in query:
            assert labels == {"p"} and len(resp.series) == 3, f"{what}: {labels}, {len(resp.series)} series"
        if "histogram_over_time" in query:
            assert labels == {"__bucket"}, labels
        if " by (name)" in query:
            assert labels == {"name"}, labels
        return
    # TraceQL search, as the ≤12.2 browser sends it: all five parameters.
    params = {"q": query, "limit": target.get("limit", 20), "spss": target.get("spss", 3), "start": frm_s, "end": to_s}
    r = requests.get(f"{base}/api/search", params=params, headers=headers, timeout=30)
    assert r.status_code == 200, f"{what}: {query}: HTTP {r.status_code} {r.text[:300]}"
    resp = parse_strict(r.content, tempo_pb2().SearchResponse)
    assert resp.traces, f"{what}: {query}: no traces"
    assert len(resp.traces) <= params["limit"]
    m = re.search(r"duration > (\d+)ms", query)
    for t in resp.traces:
        assert re.fullmatch(r"[0-9a-f]{1,32}", t.traceID) and t.startTimeUnixNano > 0, t
        spans = [s for ss in t.spanSets for s in ss.spans]
        assert spans and len(spans) <= max(len(t.spanSets), 1) * params["spss"], t
        if m:
            assert all(s.durationNanos > int(m.group(1)) * 1_000_000 for s in spans), f"{what}: span under the threshold"


def pyroscope_target(panel, target, ctx, ds, endpoints, what):
    sel = gf.interpolate(target["labelSelector"], ctx, gf.plain_interpolate)
    assert "$" not in sel, sel
    base = endpoints.url(ds)
    url = base + "/querier.v1.QuerierService/"
    headers = {**gf.CONNECT_HEADERS, **gf.Endpoints.headers(ds)}
    if target["queryType"] in ("profile", "both"):
        req = pyroscope.msg("querier.v1.SelectMergeStacktracesRequest")(
            profile_typeID=target["profileTypeId"], label_selector=sel, start=ctx.from_ms, end=ctx.to_ms,
            max_nodes=target.get("maxNodes", 16384))
        r = requests.post(url + "SelectMergeStacktraces", data=req.SerializeToString(), headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/proto", (r.status_code, r.text[:300])
        fg = pyroscope.msg("querier.v1.SelectMergeStacktracesResponse").FromString(r.content).flamegraph
        assert fg.total > 0 and len(fg.names) > 1 and fg.levels, f"{what}: empty flame graph for {sel}"
        assert all(len(level.values) % 4 == 0 for level in fg.levels), what
    if target["queryType"] in ("metrics", "both"):
        min_step = gf.parse_duration_ms((ds.get("jsonData") or {}).get("minStep", "15s")) / 1000
        interval = gf.round_interval_ms((ctx.to_ms - ctx.from_ms) / (panel["gridPos"]["w"] * 1600 / 24)) / 1000
        req = pyroscope.msg("querier.v1.SelectSeriesRequest")(
            profile_typeID=target["profileTypeId"], label_selector=sel, start=ctx.from_ms, end=ctx.to_ms,
            group_by=target["groupBy"], step=max(interval, min_step))
        r = requests.post(url + "SelectSeries", data=req.SerializeToString(), headers=headers, timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        series = pyroscope.msg("querier.v1.SelectSeriesResponse").FromString(r.content).series
        assert series and all(s.points for s in series), f"{what}: no series for {sel}"
        for s in series:
            assert {lbl.name for lbl in s.labels} <= set(target["groupBy"]), s.labels
        assert any(lbl.name == "span_name" and lbl.value == CHOICES["operation"] for s in series for lbl in s.labels), what


def skein_links(texts: list[str], ctx: gf.Context, demo, what: str) -> int:
    """Links into skein's native API (flame graphs): substituted, pointed at the test's skein, fetched."""
    n = 0
    for text in texts:
        for url in re.findall(r'\$\{skein_url\}[^"\s<]*', text):
            u = gf.interpolate(url, ctx, gf.plain_interpolate).replace("&amp;", "&")
            assert "$" not in u, u
            assert u.startswith("http://localhost:3200/"), u
            path = u[len("http://localhost:3200"):]
            if not path.startswith("/skein/api/"):
                continue  # web UI pages (/flamegraph, /compare) are served by the UI, not checked here
            r = requests.get(demo.http_url + path, timeout=30)
            assert r.status_code == 200, f"{what}: {path}: HTTP {r.status_code} {r.text[:300]}"
            assert r.headers["content-type"].startswith("image/svg+xml") and "<svg" in r.text, what
            n += 1
    return n


@pytest.mark.parametrize("uid", ["skein-services-overview", "skein-service-detail", "skein-slow-spans", "skein-collector"])
def test_every_panel_query_runs(uid, demo, endpoints, warm):
    d = DASHBOARDS[uid]
    if uid == "skein-collector":
        # The query-latency panels show queries made in the minute before each 15 s-aligned step:
        # make some, then wait until a step point after them has been scraped.
        prom = endpoints.hosts["http://prometheus:9090"]

        def scraped_searches() -> float:
            r = requests.get(f"{prom}/api/v1/query", timeout=5,
                             params={"query": 'sum(skein_query_duration_seconds_count{endpoint="search"})'}).json()
            return float(r["data"]["result"][0]["value"][1]) if r["data"]["result"] else 0.0

        requests.get(f"{demo.http_url}/api/search", params={"q": "{}", "limit": 5}, timeout=10)
        wait_until(scraped_searches, timeout=20, interval=0.5, what="Prometheus scraping the search counter")
        before = scraped_searches()
        for _ in range(3):
            requests.get(f"{demo.http_url}/api/search", params={"q": "{}", "limit": 5}, timeout=10)
        wait_until(lambda: scraped_searches() > before, timeout=20, interval=0.5, what="the searches scraped")
        wait_until(lambda: requests.get(f"{prom}/api/v1/query", timeout=5, params={
            "query": "sum(increase(skein_query_duration_seconds_count[1m])) > 0",
            "time": str(int(time.time()) // 15 * 15)}).json()["data"]["result"],
            timeout=40, interval=0.5, what="queries counted at a 15 s step point")
    ctx = context_for(d, endpoints)
    ran, exemplars, links = 0, [], 0
    for panel in gf.panels(d):
        what = f"{uid} panel {panel['id']} {panel['title']!r}"
        for target in panel.get("targets", []):
            ds = gf.resolve_ds(target.get("datasource") or panel["datasource"], ctx, DATASOURCES)
            if ds["type"] == "prometheus":
                exemplars += prom_target(panel, target, ctx, ds, endpoints, what)
            elif ds["type"] == "tempo":
                tempo_target(panel, target, ctx, ds, endpoints, demo, what)
            elif ds["type"] == "grafana-pyroscope-datasource":
                pyroscope_target(panel, target, ctx, ds, endpoints, what)
            else:
                raise AssertionError(f"{what}: unexpected datasource type {ds['type']}")
            ran += 1
        texts = [panel.get("options", {}).get("content", "")] + [l["url"] for l in panel.get("links", [])]
        links += skein_links(texts, ctx, demo, what)
        # Field data links (tables): substitute a row of the panel's data.
        for o in panel.get("fieldConfig", {}).get("overrides", []):
            for prop in o["properties"]:
                if prop["id"] == "links":
                    for link in prop["value"]:
                        ctx.scoped["__data.fields"] = {"span_name": CHOICES["operation"], "service": CHOICES["service"]}
                        links += skein_links([link["url"]], ctx, demo, what)
                        if link["url"].startswith("/d/"):
                            u = gf.interpolate(link["url"], ctx, gf.plain_interpolate)
                            assert "$" not in u and "var-service=payment" in u and "var-operation=shop.v1.Payment%2FCharge" in u, u
    assert ran >= 5, f"{uid}: only {ran} targets"
    if exemplars:
        found = [e for _, ex in exemplars for series in ex for e in series["exemplars"]]
        assert found, f"{uid}: no panel with exemplars on returned any exemplar"
        tid = found[-1]["labels"]["trace_id"]
        r = requests.get(f"{demo.http_url}/api/v2/traces/{tid}", headers={"Accept": "application/json"}, timeout=10)
        assert r.status_code == 200, f"exemplar trace {tid} not found: {r.status_code}"
    if uid in ("skein-service-detail", "skein-slow-spans"):
        assert links, f"{uid}: no skein flame graph link was checked"


def test_collector_dashboard_uses_only_metrics_skein_exposes(demo, warm):
    """Every metric the 'skein / Collector' dashboard reads is on skein's /metrics (so its panels
    show the collector, not Prometheus' defaults)."""
    text = requests.get(f"{demo.http_url}/metrics", timeout=10).text
    exposed = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    exprs = [t["expr"] for p in gf.panels(DASHBOARDS["skein-collector"]) for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:skein|process)_[a-z_]+?)(?:_bucket|_count|_sum)?\b\{", e)}
    assert used, exprs
    # Labelled counters appear on /metrics with their first event (e.g. the first rejected span);
    # those must at least be registered by collector/src/telemetry.rs.
    registered = set(re.findall(r'"((?:skein|process)_[a-z_]+)"', (gf.REPO / "collector/src/telemetry.rs").read_text()))
    assert used <= exposed | registered, f"not exposed nor registered: {sorted(used - exposed - registered)}"
    assert len(used & exposed) >= len(used) - 2, f"only {sorted(used & exposed)} of {sorted(used)} exposed"
    assert "process_resident_memory_bytes" in exposed
    assert gf_metric(demo, "process_resident_memory_bytes") > 10 * 2**20


# ---- Grafana-managed alert rules ------------------------------------------------------------------

def alert_rules():
    for f in gf.alert_rule_files():
        for g in gf.load_yaml(f).get("groups", []):
            for rule in g["rules"]:
                yield rule


@pytest.mark.parametrize("rule", list(alert_rules()), ids=lambda r: r["uid"])
def test_alert_rule_queries_run(rule, demo, endpoints, warm):
    """Each rule's datasource query, as the alert evaluator sends it (instant query at the end of
    relativeTimeRange, POST form), returns a vector with a series per service."""
    now_ms = int(time.time() * 1000)
    ran = 0
    for q in rule["data"]:
        if q["datasourceUid"] == "__expr__":
            continue
        ds = DATASOURCES[q["datasourceUid"]]
        m = q["model"]
        rtr = q["relativeTimeRange"]
        ctx = gf.Context({"templating": {"list": []}}, {}, now_ms - rtr["from"] * 1000, now_ms - rtr["to"] * 1000)
        b = gf.prom_build(m["expr"], ctx, ds, instant=m.get("instant", False), max_data_points=m.get("maxDataPoints", 43200))
        data = gf.prom_call(endpoints.url(ds), "/api/v1/query" if m.get("instant") else "/api/v1/query_range",
                            b.form, ds, gf.Endpoints.headers(ds))
        result = gf.assert_prom_result(data, instant=m.get("instant", False), what=f"{rule['uid']}: {b.expr}")
        services = {s["metric"].get("service") for s in result}
        assert SHOP <= services, f"{rule['uid']}: one series per service expected, got {services}"
        ran += 1
    assert ran == 1, rule["uid"]


def test_traces_to_metrics_queries_run(demo, endpoints, warm):
    """The Tempo datasource's traces-to-metrics links: after provisioning turns $$ into $ and the
    trace view replaces $__tags with the span's mapped tags, each query answers for that service."""
    tempo = DATASOURCES["skein-tempo"]["jsonData"]["tracesToMetrics"]
    ds = DATASOURCES[tempo["datasourceUid"]]
    tags = ", ".join(f'{t["value"]}="{CHOICES["service"]}"' for t in tempo["tags"])
    now = time.time()
    for q in tempo["queries"]:
        expr = q["query"].replace("$$", "$").replace("$__tags", tags)
        data = gf.prom_call(endpoints.url(ds), "/api/v1/query", {"query": expr, "time": gf.go_float(round(now, 3))}, ds)
        if "STATUS_CODE_ERROR" in expr and not data["result"]:
            continue  # a service without errors has no error series
        gf.assert_prom_result(data, instant=True, what=f"traces-to-metrics {q['name']}: {expr}")


def tenant_datasources(tenant: str) -> tuple[dict[str, dict], str]:
    """The recipe of grafana/provisioning/datasources/skein.yaml for another tenant: copies of the
    skein-* datasources with uids skein-<tenant>-*, cross-links moved along, X-Scope-OrgID header.
    Returns (datasources, the tenant variable's value)."""
    prefix = f"skein-{tenant}"
    text = json.dumps({u: d for u, d in DATASOURCES.items() if u in ("skein-tempo", "skein-prometheus", "skein-pyroscope")})
    out = json.loads(text.replace('"skein-', f'"{prefix}-'))
    for d in out.values():
        d.setdefault("jsonData", {})["httpHeaderName1"] = "X-Scope-OrgID"
        d.setdefault("secureJsonData", {})["httpHeaderValue1"] = tenant
    return out, prefix


def test_tenant_variable_selects_a_tenants_datasources(demo, endpoints, warm):
    """A second tenant set up as the provisioning file describes: with `tenant` pointing at it,
    the overview's queries go out with its X-Scope-OrgID and see only its services."""
    from support import otlp

    extra, value = tenant_datasources("acme")
    for _ in range(3):
        spans = []
        for _ in range(10):
            tid = otlp.new_trace_id()
            spans.append(otlp.make_span(tid, "GET /acme", kind=otlp.SERVER, start=otlp.now_ns() - 20_000_000, duration=10_000_000))
        req = otlp.export_request(otlp.resource_spans({"service.name": "acme-web"}, spans))
        r = requests.post(f"{demo.otlp_http_url}/v1/traces", data=req.SerializeToString(),
                          headers={"content-type": "application/x-protobuf", "X-Scope-OrgID": "acme"}, timeout=10)
        assert r.status_code == 200, r.text
        time.sleep(2.5)  # two span-metric samples (--metrics-scrape-interval 2s) apart
    d = copy.deepcopy(DASHBOARDS["skein-services-overview"])
    tenant = d["templating"]["list"][0]
    tenant["options"].append({"selected": False, "text": "acme", "value": value})
    all_ds = {**DATASOURCES, **extra}
    (panel,) = [p for p in d["panels"] if p["title"] == "Request rate"]
    frm, to = gf.relative_range({"from": "now-5m", "to": "now"})

    def services(tenant_value: str) -> set[str]:
        ctx = gf.Context(d, {"tenant": tenant_value, "service": "$__all"}, frm, int(time.time() * 1000))
        ds = gf.resolve_ds(panel["datasource"], ctx, all_ds)
        q = gf.prom_build(panel["targets"][0]["expr"], ctx, ds, instant=True, max_data_points=500)
        data = gf.prom_call(endpoints.url(ds), "/api/v1/query", q.form, ds, gf.Endpoints.headers(ds))
        return {s["metric"]["service"] for s in data["result"]}

    acme = wait_until(lambda: services(value), timeout=30, interval=1, what="acme's span metrics")
    assert acme == {"acme-web"}, acme
    default = services("skein")
    assert SHOP <= default and "acme-web" not in default, default
