"""skein's span metrics and service graph through its Prometheus-compatible API:

(a) a real Prometheus 2.42 (Debian package, installed by tests/setup-apt.sh) scrapes
    `/prometheus/metrics` every second while spans are fed; the same PromQL asked of both
    agrees within the tolerances below;
(b) replays of the Prometheus requests Grafana sends (grafana/REQUESTS.md, "Prometheus datasource") and
    the service-graph / APM-table queries ("Tempo: which feature needs which endpoint") over the demo shop's traffic.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import time

import pytest
import requests

from support import otlp
from support.collector import free_port
from support.poll import wait_until
from support.shop import Shop

# Both sides sample once a second, at different instants: rates over the whole feed differ by
# at most about one sample interval of extrapolation out of ~15 s of feed (measured: ≤ 4 %).
RATE_TOLERANCE = 0.10
RATIO_TOLERANCE = 0.06
FEED_SECONDS = 12
OPS = {"GET /": 5, "POST /checkout": 20, "GET /item": 60}


@pytest.fixture(scope="module")
def collector(skein_module_factory):
    return skein_module_factory("--metrics-scrape-interval", "1s", "--servicegraph-wait", "2s")


@pytest.fixture(scope="module")
def prometheus(collector, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (tests/setup-apt.sh installs it)")
    d = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: skein\n"
        "    metrics_path: /prometheus/metrics\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{collector.http_port}']}}]\n"
    )
    log = open(d / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, (d / "prometheus.log").read_text()
        try:
            return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, timeout=30, what="prometheus ready")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def feed(collector, seconds: float) -> int:
    """Steady gateway → orders traffic; some calls fail, some are slow. Returns spans sent."""
    rnd = random.Random(5)
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gw, orders = [], []
        for _ in range(10):
            tid = otlp.new_trace_id()
            op = rnd.choices(list(OPS), weights=[6, 3, 1])[0]  # distinct rates: a stable topk
            ms = OPS[op] * (10 if rnd.random() < 0.05 else 1) * rnd.uniform(0.5, 1.5)
            failed = rnd.random() < 0.1
            status = 2 if failed else 0
            t0 = otlp.now_ns() - int((ms + 5) * 1e6)
            root = otlp.make_span(tid, op, kind=otlp.SERVER, start=t0, duration=int((ms + 4) * 1e6), status=status)
            client = otlp.make_span(tid, "orders/Place", parent=root.span_id, kind=otlp.CLIENT,
                                    start=t0 + 1_000_000, duration=int((ms + 2) * 1e6), status=status)
            server = otlp.make_span(tid, "orders/Place", parent=client.span_id, kind=otlp.SERVER,
                                    start=t0 + 2_000_000, duration=int(ms * 1e6), status=status)
            gw += [root, client]
            orders.append(server)
        req = otlp.export_request(otlp.resource_spans({"service.name": "gateway"}, gw),
                                  otlp.resource_spans({"service.name": "orders"}, orders))
        r = requests.post(f"{collector.otlp_http_url}/v1/traces", data=req.SerializeToString(),
                          headers={"content-type": "application/x-protobuf"}, timeout=10)
        assert r.status_code == 200, r.text
        sent += len(gw) + len(orders)
        time.sleep(0.1)
    return sent


def instant(base: str, query: str, t: float) -> dict[tuple, float]:
    r = requests.post(f"{base}/api/v1/query", data={"query": query, "time": f"{t:.3f}"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "vector", body
    out = {}
    for s in body["data"]["result"]:
        key = tuple(sorted((k, v) for k, v in s["metric"].items() if k not in ("job", "instance")))
        out[key] = float(s["value"][1])
    return out


def close(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-9)


def test_promql_answers_agree_with_a_real_prometheus_scraping_skein(collector, prometheus):
    # Prometheus' first scrape comes seconds after it starts: create the series and wait until
    # it has scraped them twice, so both sides see the whole feed.
    feed(collector, 1.0)
    wait_until(lambda: instant(prometheus, "count_over_time(traces_spanmetrics_calls_total[1m]) >= 2", time.time()),
               timeout=20, what="prometheus scraping skein")
    # Both now sample the pre-feed counters a few times, so a window starting here begins at
    # equal values on both sides (the first sample in a window otherwise depends on when each
    # side happened to sample the series' creation, which moves quantiles within a bucket).
    time.sleep(3.0)
    feed(collector, FEED_SECONDS)
    # Let both take two more samples of the final counters, then ask both about one instant.
    time.sleep(2.5)
    t = time.time() - 0.5
    skein = f"{collector.http_url}/prometheus"
    w = f"{int(FEED_SECONDS + 4)}s"
    queries = {
        # The counters themselves: both hold the final values by now.
        "sum by (service, span_name, status_code) (traces_spanmetrics_calls_total)": 0.0,
        f"sum by (service, span_name) (count_over_time(traces_spanmetrics_calls_total[{w}]))": 1.0,
        f"sum by (service, span_name) (rate(traces_spanmetrics_calls_total[{w}]))": RATE_TOLERANCE,
        f"sum by (service) (increase(traces_spanmetrics_calls_total{{span_kind=\"SPAN_KIND_SERVER\"}}[{w}]))": RATE_TOLERANCE,
        f"sum by (service) (rate(traces_spanmetrics_calls_total{{status_code=\"STATUS_CODE_ERROR\"}}[{w}]))"
        f" / sum by (service) (rate(traces_spanmetrics_calls_total[{w}]))": RATIO_TOLERANCE,
        f"histogram_quantile(0.9, sum by (le, span_name) (rate(traces_spanmetrics_latency_bucket{{service=\"gateway\"}}[{w}])))": RATIO_TOLERANCE,
        f"histogram_quantile(0.5, sum by (le, client, server) (rate(traces_service_graph_request_server_seconds_bucket[{w}])))": RATIO_TOLERANCE,
        f"sum by (client, server) (rate(traces_service_graph_request_total[{w}]))": RATE_TOLERANCE,
        f"topk(2, sum by (span_name) (rate(traces_spanmetrics_calls_total{{service=\"gateway\", span_kind=\"SPAN_KIND_SERVER\"}}[{w}])))": RATE_TOLERANCE,
    }
    for q, tol in queries.items():
        ours, theirs = instant(skein, q, t), instant(prometheus, q, t)
        assert ours, f"skein returned nothing for {q}"
        assert set(ours) == set(theirs), f"{q}\nskein: {ours}\nprometheus: {theirs}"
        for k, v in ours.items():
            assert close(v, theirs[k], tol), f"{q} {k}: skein {v} vs prometheus {theirs[k]} (tolerance {tol:.0%})"


# ---- Grafana's Prometheus datasource, replayed ----------------------------------------------

ORDER = {"customer": "ada", "items": [{"sku": "moka-pot", "quantity": 1}]}


@pytest.fixture(scope="module")
def shop(collector, tmp_path_factory):
    s = Shop(tmp_path_factory.mktemp("shop"), collector).start()
    for _ in range(20):
        assert requests.post(f"{s.gateway.url}/checkout", json=ORDER, timeout=30).status_code == 200
    yield s
    s.stop()


def grafana_post(collector, path: str, form: dict) -> dict:
    """As Grafana's backend sends it by default: a form body on the path, no query string."""
    r = requests.post(f"{collector.http_url}/prometheus{path}", data=form, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def grafana_get(collector, path: str, **params) -> object:
    r = requests.get(f"{collector.http_url}/prometheus{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def edges(collector, query: str) -> set[tuple[str, str]]:
    data = grafana_post(collector, "/api/v1/query", {"query": query, "time": f"{time.time():.3f}"})
    assert data["resultType"] == "vector", data
    return {(s["metric"]["client"], s["metric"]["server"]) for s in data["result"]}


SHOP_EDGES = {("gateway", "orders"), ("orders", "inventory"), ("orders", "payment")}


def test_service_graph_queries_return_the_shops_edges(collector, shop):
    q = "sum by (client, server) (rate(traces_service_graph_request_total[3600s]))"
    found = wait_until(lambda: SHOP_EDGES <= edges(collector, q) and edges(collector, q), timeout=20,
                       what="service graph edges")
    assert SHOP_EDGES <= found
    for m in ["traces_service_graph_request_server_seconds_sum", "traces_service_graph_request_failed_total",
              "traces_service_graph_request_server_seconds_bucket"]:
        grafana_post(collector, "/api/v1/query", {"query": f"sum by (client, server) (rate({m}[3600s]))",
                                                  "time": f"{time.time():.3f}"})
    grouped = edges(collector, "group by (client, connection_type, server) (traces_service_graph_request_total)"
                               " OR group by (client, connection_type, server) (traces_service_graph_request_failed_total)")
    assert SHOP_EDGES <= grouped
    data = grafana_get(collector, "/api/v1/series", **{"match[]": "traces_service_graph_request_server_seconds",
                                                       "limit": "1", "start": str(int(time.time()) - 3600),
                                                       "end": str(int(time.time()))})
    assert data == [], "classic histograms only"
    def edge_p90():
        # The fixture's checkouts may all predate the series' first sample (then every rate is
        # 0 and the quantile NaN); a checkout per poll makes the counters move.
        requests.post(f"{shop.gateway.url}/checkout", json=ORDER, timeout=30)
        link = grafana_post(collector, "/api/v1/query", {
            "query": 'histogram_quantile(0.9, sum(rate(traces_service_graph_request_server_seconds_bucket'
                     '{client="gateway",server="orders"}[1m0s])) by (le, client, server))',
            "time": f"{time.time():.3f}"})
        return len(link["result"]) == 1 and float(link["result"][0]["value"][1]) > 0

    wait_until(edge_p90, timeout=20, interval=0.5, what="a positive p90 on the gateway→orders edge")


def test_apm_table_queries(collector, shop):
    def top_ops():
        data = grafana_post(collector, "/api/v1/query", {
            "query": 'topk(5, sum(rate(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER"}[3600s])) by (span_name))',
            "time": f"{time.time():.3f}"})
        return [s["metric"]["span_name"] for s in data["result"]]

    ops = wait_until(lambda: len(top_ops()) >= 3 and top_ops(), timeout=20, what="server operations")
    assert 3 <= len(ops) <= 5
    errors = grafana_post(collector, "/api/v1/query", {
        "query": 'topk(5, sum(rate(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER",'
                 'status_code="STATUS_CODE_ERROR"}[3600s])) by (span_name))', "time": f"{time.time():.3f}"})
    assert errors["resultType"] == "vector"
    def p90_positive():
        requests.post(f"{shop.gateway.url}/checkout", json=ORDER, timeout=30)  # see edge_p90
        p90 = grafana_post(collector, "/api/v1/query", {
            "query": 'histogram_quantile(.9, sum(rate(traces_spanmetrics_latency_bucket{span_kind="SPAN_KIND_SERVER",'
                     f'span_name=~"{ops[0]}"}}[3600s])) by (le))', "time": f"{time.time():.3f}"})
        return len(p90["result"]) == 1 and float(p90["result"][0]["value"][1]) > 0

    wait_until(p90_positive, timeout=20, interval=0.5, what="a positive p90 of the top operation")


def test_grafana_health_check_and_datasource_init(collector):
    data = grafana_post(collector, "/api/v1/query", {"query": "1+1", "time": "4"})
    assert data == {"resultType": "scalar", "result": [4, "2"]}
    info = grafana_get(collector, "/api/v1/status/buildinfo")
    assert "version" in info and "features" not in info
    assert grafana_get(collector, "/api/v1/rules") == {"groups": []}
    assert grafana_get(collector, "/api/v1/alerts") == {"alerts": []}
    now_ms = int(time.time() * 1000)
    assert grafana_get(collector, "/api/v1/query_exemplars", query="test", start=str(now_ms - 3_600_000),
                       end=str(now_ms)) == []


def test_grafana_range_query_metadata_and_exemplars(collector, shop):
    step = 15
    end = int(time.time()) // step * step + step
    start = end - 600
    data = grafana_post(collector, "/api/v1/query_range", {
        "query": 'sum(rate(traces_spanmetrics_calls_total{service="gateway"}[1m0s])) by (span_name)',
        "start": str(start), "end": str(end), "step": str(step)})
    assert data["resultType"] == "matrix" and data["result"], data
    for s in data["result"]:
        for t, v in s["values"]:
            assert isinstance(t, (int, float)) and (t - start) % step == 0 and float(v) >= 0
    names = grafana_get(collector, "/api/v1/label/__name__/values", start=str(start), end=str(end))
    assert {"traces_spanmetrics_calls_total", "traces_spanmetrics_latency_bucket",
            "traces_service_graph_request_total"} <= set(names)
    labels = grafana_post(collector, "/api/v1/labels", {"start": str(start), "end": str(end)})
    assert {"service", "span_name", "span_kind", "status_code", "client", "server", "connection_type"} <= set(labels)
    services = grafana_get(collector, "/api/v1/label/service/values",
                           **{"match[]": "traces_spanmetrics_calls_total", "start": str(start), "end": str(end)})
    assert {"gateway", "orders", "inventory", "payment"} <= set(services)
    series = grafana_post(collector, "/api/v1/series", {"match[]": '{__name__="traces_spanmetrics_calls_total",service="orders"}',
                                                        "start": str(start), "end": str(end)})
    assert series and all(s["service"] == "orders" for s in series)
    meta = grafana_get(collector, "/api/v1/metadata", limit="10000")
    assert meta["traces_spanmetrics_calls_total"][0]["type"] == "counter"
    ex = grafana_post(collector, "/api/v1/query_exemplars", {
        "query": 'histogram_quantile(0.95, sum(rate(traces_spanmetrics_latency_bucket{service="gateway"}[1m0s])) by (le))',
        "start": str(start), "end": str(end)})
    assert ex, "latency buckets carry exemplars"
    tid = ex[0]["exemplars"][0]["labels"]["trace_id"]
    r = requests.get(f"{collector.http_url}/api/v2/traces/{tid}", timeout=10)
    assert r.status_code == 200, "exemplar trace ids resolve to stored traces"


def test_unsupported_promql_is_a_bad_data_error(collector):
    r = requests.post(f"{collector.http_url}/prometheus/api/v1/query",
                      data={"query": "rate(traces_spanmetrics_calls_total[5m])[30m:1m]"}, timeout=10)
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error" and body["errorType"] == "bad_data" and "subquer" in body["error"]
