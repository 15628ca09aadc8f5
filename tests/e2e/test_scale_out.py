"""Three `skein serve` replicas sharing one prefix of a real S3-compatible server (moto's
standalone server, `support/s3.py`), each with `--node-id` and the other two as `--peers`:

- traces sent to different replicas, and one trace split across two, are found by id, by search
  and in TraceQL metrics from every replica, before and after their heads flush, and after all
  three compacted their own namespaces at once (each span exactly once);
- span metrics of all replicas come back in one PromQL answer (one series per `skein_node`), and
  `sum by (service)` equals what was sent;
- `kill -9` of one replica: the others answer, flagged partial (`x-skein-partial`) for its
  unflushed spans; after its restart every answer is whole again and nothing acknowledged is lost;
- rules on every replica read every replica's span metrics: a threshold only the sum over all
  three crosses fires the same alert on each, and recorded series hold the whole sum.
"""

from __future__ import annotations

import itertools

import pytest

from support import client, otlp
from support.collector import Skein
from support.poll import wait_until
from support.s3 import MotoS3, skein_env

pytestmark = pytest.mark.slow

_bucket_no = itertools.count()
NODES = ("r0", "r1", "r2")
HEAD_MAX_SPANS = 200


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


RULES = """
groups:
  - name: scale
    interval: 1s
    rules:
      - record: scale:calls:sum
        expr: sum by (service) (traces_spanmetrics_calls_total{service="alerted"})
      - alert: ClusterCallsHigh
        expr: scale:calls:sum >= 6
        labels:
          severity: page
"""


@pytest.fixture
def cluster(moto, tmp_path):
    bucket = f"skein-scale-{next(_bucket_no)}"
    moto.create_bucket(bucket)
    rules = tmp_path / "scale.rules.yml"
    rules.write_text(RULES)
    replicas = [Skein(tmp_path / f"data-{n}", tmp_path / f"logs-{n}", env=skein_env(moto.url)) for n in NODES]
    for node, r in zip(NODES, replicas):
        peers = ",".join(p.http_url for p in replicas if p is not r)
        r.extra_args = [
            "--storage", f"s3://{bucket}/shared", "--node-id", node, "--peers", peers,
            "--peer-timeout", "2s", "--peer-poll-interval", "1s", "--head-max-spans", str(HEAD_MAX_SPANS),
            "--block-target-spans", "800", "--metrics-scrape-interval", "1s", "--rules", str(rules),
        ]
    try:
        for r in replicas:
            r.start()
        yield replicas
    finally:
        for r in replicas:
            r.terminate_quietly()


def _send(sk, service: str, n: int = 3, trace_id: bytes | None = None):
    req, tid, sids = otlp.simple_request(service, n, trace_id=trace_id)
    client.export_ok(sk, req, via="grpc")
    return tid, sids


def _split_trace(a, b):
    """One trace whose root went to `a` and whose two children went to `b`."""
    req, tid, sids = otlp.simple_request("split", 3)
    rs = req.resource_spans[0]
    spans = list(rs.scope_spans[0].spans)
    for sk, part in ((a, spans[:1]), (b, spans[1:])):
        one = otlp.export_request(otlp.resource_spans({"service.name": "split"}, part))
        client.export_ok(sk, one, via="proto")
    return tid, sids


def _exactly_once(sk, expected: dict):
    for tid, sids in expected.items():
        r = client.trace_v2_json(sk, tid.hex())
        assert r.status_code == 200, f"{sk.http_url}: trace {tid.hex()} -> {r.status_code}"
        counts = otlp.span_id_counts(client.decode_trace_v2_json(r))
        assert counts == {s.hex(): 1 for s in sids}, f"{sk.http_url}: trace {tid.hex()} span counts {counts}"


def _search_traces(sk, q: str, limit: int = 1000) -> tuple[list[dict], dict]:
    r = client.api_get(sk, "/api/search", params={"q": q, "limit": str(limit)})
    assert r.status_code == 200, r.text
    return r.json().get("traces", []), r.headers


def _search(sk, q: str) -> tuple[set[str], dict]:
    traces, headers = _search_traces(sk, q)
    return {t["traceID"].rjust(32, "0") for t in traces}, headers


def _metrics_count(sk, q: str) -> float:
    r = client.api_get(sk, "/api/metrics/query", params={"q": q, "since": "1h"})
    assert r.status_code == 200, r.text
    return sum(float(s.get("value", 0)) for s in r.json().get("series", []))


def _promql(sk, q: str) -> list[dict]:
    r = client.api_get(sk, "/prometheus/api/v1/query", params={"query": q})
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def _check_everywhere(replicas, expected: dict, services: dict[str, int]):
    """Every replica finds every trace by id (each span once), by search, and counts the spans
    of each service in TraceQL metrics."""
    want_ids = {t.hex() for t in expected}
    q = '{ resource.service.name =~ "svc-.*|split" }'
    for sk in replicas:
        _exactly_once(sk, expected)
        traces, headers = _search_traces(sk, q)
        found = {t["traceID"].rjust(32, "0") for t in traces}
        assert found == want_ids, f"{sk.http_url}: search found {len(found)} of {len(want_ids)} traces"
        assert "x-skein-partial" not in headers, headers["x-skein-partial"]
        # every span of these traces matches, wherever its blocks are and whoever read them
        matched = {t["traceID"].rjust(32, "0"): t["spanSet"]["matched"] for t in traces}
        assert matched == {t.hex(): len(s) for t, s in expected.items()}, f"{sk.http_url}: {matched}"
        # a limit keeps the most recent traces of the whole answer, with their whole counts
        few, _ = _search_traces(sk, q, limit=2)
        assert [t["traceID"] for t in few] == [t["traceID"] for t in traces[:2]], sk.http_url
        assert [t["spanSet"]["matched"] for t in few] == [t["spanSet"]["matched"] for t in traces[:2]]
        for svc, n in services.items():
            got = _metrics_count(sk, f'{{ resource.service.name = "{svc}" }} | count_over_time()')
            assert got == n, f"{sk.http_url}: count_over_time of {svc} = {got}, sent {n}"


def _flush_all(replicas):
    """Fills every head past --head-max-spans with spans of a service no check looks at."""
    flushes = [client.metric_total(sk, "skein_flushes_total") for sk in replicas]
    for sk in replicas:
        _send(sk, "filler", HEAD_MAX_SPANS)
    for sk, before in zip(replicas, flushes):
        wait_until(lambda sk=sk, before=before: client.metric_total(sk, "skein_flushes_total") > before
                   and client.metric_total(sk, "skein_head_spans") == 0, timeout=30, what=f"{sk.http_url} flushed")


def test_every_replica_answers_for_every_replicas_spans_before_and_after_flush_and_compaction(cluster, moto):
    r0, r1, r2 = cluster
    expected = {}
    services = {}
    for i, sk in enumerate(cluster):
        for _ in range(2):
            tid, sids = _send(sk, f"svc-{i}")
            expected[tid] = sids
        services[f"svc-{i}"] = 6
    tid, sids = _split_trace(r0, r1)
    expected[tid] = sids
    services["split"] = 3

    _check_everywhere(cluster, expected, services)  # all of it in the three heads
    _flush_all(cluster)
    _check_everywhere(cluster, expected, services)  # all of it in blocks, in three namespaces

    # more blocks in every namespace, then all three compact their own at once
    for round_ in range(3):
        for i, sk in enumerate(cluster):
            tid, sids = _send(sk, f"svc-{i}")
            expected[tid] = sids
            services[f"svc-{i}"] += 3
        _flush_all(cluster)
    wait_until(lambda: all(client.metric_total(sk, "skein_compactions_total") >= 1 for sk in cluster),
               timeout=60, what="a compaction on every replica (small blocks are merged every 10 s once old enough)")
    _check_everywhere(cluster, expected, services)
    # TraceQL metrics over many blocks were shared out: every replica aggregated peers' shares
    shares = [_peer_calls(sk, "metrics-part") for sk in cluster]
    assert all(n > 0 for n in shares), f"metrics-part calls per replica: {shares}"
    # and so were searches (phase 1 of each spanset filter, by block)
    shares = [_peer_calls(sk, "search-part") for sk in cluster]
    assert all(n > 0 for n in shares), f"search-part calls per replica: {shares}"
    keys = moto.keys(moto_bucket(cluster[0]), "shared/")
    assert all(k.startswith(("shared/nodes/r0/", "shared/nodes/r1/", "shared/nodes/r2/")) for k in keys), keys


def _peer_calls(sk, endpoint: str) -> float:
    """Answered calls this replica made to peers' /internal/v1/<endpoint>."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.api_get(sk, "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "skein_peer_request_duration_seconds_count" and s.labels.get("endpoint") == endpoint)


def moto_bucket(sk) -> str:
    storage = sk.extra_args[sk.extra_args.index("--storage") + 1]
    return storage.removeprefix("s3://").split("/", 1)[0]


def test_span_metrics_of_all_replicas_come_back_in_one_promql_answer(cluster):
    sent = {}
    for i, sk in enumerate(cluster):
        for _ in range(i + 1):
            _send(sk, "promql-svc", 4)
        sent[NODES[i]] = 4 * (i + 1)
    q = 'sum by (skein_node) (traces_spanmetrics_calls_total{service="promql-svc"})'

    def per_node():
        res = _promql(cluster[0], q)
        got = {r["metric"].get("skein_node"): float(r["value"][1]) for r in res}
        return got if got == {n: float(v) for n, v in sent.items()} else None

    wait_until(per_node, timeout=30, what="calls of every replica, one series per skein_node")
    total = 'sum by (service) (traces_spanmetrics_calls_total{service="promql-svc"})'
    for sk in cluster:
        res = _promql(sk, total)
        assert len(res) == 1 and float(res[0]["value"][1]) == sum(sent.values()), (sk.http_url, res)


def test_a_killed_replica_makes_answers_partial_until_it_is_back_and_loses_nothing(cluster):
    r0, r1, r2 = cluster
    (on_r2, r2_sids), (on_r0, r0_sids) = _send(r2, "svc-2"), _send(r0, "svc-0")
    expected = {on_r2: r2_sids, on_r0: r0_sids}
    _check_everywhere(cluster, expected, {"svc-2": 3, "svc-0": 3})
    r2.kill9()  # its spans are acknowledged, in its WAL and head only
    found, headers = _search(r0, '{ resource.service.name =~ "svc-.*" }')
    assert "x-skein-partial" in headers, "an answer without a dead peer's head must say it is partial"
    assert found == {on_r0.hex()}, found
    assert client.metric_total(r0, "skein_partial_answers_total") >= 1
    assert client.metric_total(r0, "skein_peer_failures_total") >= 1
    r2.start()
    _check_everywhere(cluster, expected, {"svc-2": 3, "svc-0": 3})


def test_profiles_pushed_to_different_replicas_merge_in_one_answer_from_any_replica(cluster):
    from support import pyroscope as pyro

    ms = 1_000_000
    start = (otlp.now_ns() - 120 * otlp.SEC) // ms * ms
    # the same app on two replicas, one span's samples on each; a second app on the third
    for sk, frames, span in ((cluster[0], ["main", "a_hot"], "GET /a"), (cluster[1], ["main", "b_hot"], "GET /b"),
                             (cluster[2], ["main", "other"], "GET /c")):
        app = "scale-other" if span == "GET /c" else "scale-app"
        body = pyro.pprof([(frames, 40 * ms, {"span_name": span})], time_ns=start + 100 * ms)
        r = pyro.ingest(sk, {"name": app, "format": "pprof", "spyName": "skein", "from": start // otlp.SEC}, body)
        assert r.status_code == 200, r.text
    lo, hi = start // ms - 3_600_000, start // ms + 60_000
    selector = '{service_name="scale-app"}'
    for sk in cluster:
        req = pyro.msg("querier.v1.SelectMergeStacktracesRequest")(
            profile_typeID=pyro.CPU, label_selector=selector, start=lo, end=hi, max_nodes=1024)
        fg = pyro.connect(sk, "SelectMergeStacktraces", req, "querier.v1.SelectMergeStacktracesResponse").flamegraph
        nodes = {name for name, _, _ in pyro.flamegraph_nodes(fg)}
        assert fg.total == 80 * ms and {"a_hot", "b_hot"} <= nodes and "other" not in nodes, (sk.http_url, nodes)
        values = pyro.connect(sk, "LabelValues", pyro.msg("types.v1.LabelValuesRequest")(
            name="service_name", start=lo, end=hi), "types.v1.LabelValuesResponse").names
        assert set(values) == {"scale-app", "scale-other"}, (sk.http_url, values)
        series = pyro.connect(sk, "SelectSeries", pyro.msg("querier.v1.SelectSeriesRequest")(
            profile_typeID=pyro.CPU, label_selector=selector, start=lo, end=hi, group_by=["span_name"], step=15.0),
            "querier.v1.SelectSeriesResponse").series
        got = {tuple((l.name, l.value) for l in s.labels): sum(p.value for p in s.points) for s in series}
        assert got == {(("span_name", "GET /a"),): 40 * ms, (("span_name", "GET /b"),): 40 * ms}, (sk.http_url, got)


def test_rules_on_every_replica_read_every_replicas_series(cluster):
    for sk in cluster:
        _send(sk, "alerted", 2)  # 2 calls on each replica, 6 in all: only the sum crosses 6

    def firing_everywhere():
        labels = []
        for sk in cluster:
            r = client.api_get(sk, "/prometheus/api/v1/alerts")
            assert r.status_code == 200, r.text
            firing = [a for a in r.json()["data"]["alerts"]
                      if a["labels"].get("alertname") == "ClusterCallsHigh" and a["state"] == "firing"]
            if not firing:
                return None
            labels.append(firing[0]["labels"])
        return labels

    labels = wait_until(firing_everywhere, timeout=30, what="the cluster-wide alert firing on every replica")
    # the same alert from each replica, so Alertmanager deduplicates them
    assert all(l == labels[0] for l in labels), labels
    assert labels[0] == {"alertname": "ClusterCallsHigh", "service": "alerted", "severity": "page"}, labels[0]
    for sk in cluster:
        res = _promql(sk, "scale:calls:sum")
        assert [(r["metric"], float(r["value"][1])) for r in res] == [
            ({"__name__": "scale:calls:sum", "service": "alerted"}, 6.0)], (sk.http_url, res)
