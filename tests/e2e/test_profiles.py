"""Profiles end to end.

* The real pyroscope-io Python agent (pyroscope-rs inside, pushing `push.v1.PusherService/Push`
  over Connect, gzip) profiles a busy function in a child process with `server_address` = the
  collector; the function must show up through the query API.
* Replays of the Connect calls Grafana's Pyroscope datasource makes (grafana/
  REQUESTS.md, "Pyroscope datasource"): binary protobuf with `Content-Type: application/proto` and
  `Connect-Protocol-Version: 1`, answers decoded strictly against collector/proto: the health
  check (ProfileTypes 1000..4000), the query editor's resources, metrics and profile queries,
  traces-to-profiles (SelectMergeSpanProfile with the span id, span ±60 s) and the newest
  plugin's SelectMergeStacktraces `span_selector` (field 11), and a Connect error.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from support import pyroscope as pyro
from support.poll import wait_until

MS = 1_000_000
SERVICE = "shop-profiled"
SELECTOR = f'{{service_name="{SERVICE}"}}'

AGENT = r"""
import sys, time
import pyroscope

pyroscope.configure(application_name=sys.argv[2], server_address=sys.argv[1],
                    upload_interval=1, tags={"e2e": "agent"})

def skein_busy_loop():
    x = 0
    for i in range(100_000):
        x += i * i
    return x

deadline = time.time() + 3
while time.time() < deadline:
    skein_busy_loop()
pyroscope.shutdown()
"""


def test_pyroscope_io_agent_profiles_are_queryable(skein_module):
    sk, app = skein_module, "e2e-agent-py"
    done = subprocess.run([sys.executable, "-c", AGENT, sk.http_url, app], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    start, end = pyro.now_ms() - 600_000, pyro.now_ms() + 60_000

    def busy_loop_profiled():
        req = pyro.msg("querier.v1.SelectMergeStacktracesRequest")(
            profile_typeID=pyro.CPU, label_selector=f'{{service_name="{app}"}}', start=start, end=end,
            max_nodes=16384)
        fg = pyro.connect(sk, "SelectMergeStacktraces", req, "querier.v1.SelectMergeStacktracesResponse").flamegraph
        return fg if "skein_busy_loop" in fg.names else None

    fg = wait_until(busy_loop_profiled, timeout=15, what="skein_busy_loop in the agent's flame graph")
    busy = [t for name, t, _ in pyro.flamegraph_nodes(fg) if name == "skein_busy_loop"]
    assert busy and busy[0] > 0.5 * fg.total, "the busy loop is most of the CPU time"

    types = pyro.connect(sk, "ProfileTypes", pyro.msg("querier.v1.ProfileTypesRequest")(start=start, end=end),
                         "querier.v1.ProfileTypesResponse")
    assert pyro.CPU in [t.ID for t in types.profile_types]
    names = pyro.connect(sk, "LabelNames", pyro.msg("types.v1.LabelNamesRequest")(
        matchers=[f'{{service_name="{app}"}}'], start=start, end=end), "types.v1.LabelNamesResponse").names
    assert {"service_name", "e2e", "__name__"} <= set(names), names
    values = pyro.connect(sk, "LabelValues", pyro.msg("types.v1.LabelValuesRequest")(
        name="service_name", start=start, end=end), "types.v1.LabelValuesResponse").names
    assert app in values


@pytest.fixture(scope="module")
def spans(skein_module):
    """A pprof pushed the way skein-instrument pushes: samples labelled with the span they ran in."""
    span_start = (time.time_ns() - 120 * 1_000_000_000) // MS * MS
    a, b, trace = "0af7651916cd43dd", "b7ad6b7169203331", "0af7651916cd43dd8448eb211c80319c"
    samples = [
        (["main", "serve", "checkout", "checkout_hot"], 70 * 10 * MS,
         {"span_id": a, "span_name": "GET /checkout", "trace_id": trace, "thread": "worker-1"}),
        (["main", "serve", "checkout"], 10 * 10 * MS, {"span_id": a, "span_name": "GET /checkout"}),
        (["main", "serve", "pay", "pay_hot"], 15 * 10 * MS, {"span_id": b, "span_name": "POST /pay"}),
        (["main", "gc"], 5 * 10 * MS, {}),
    ]
    body = pyro.pprof(samples, time_ns=span_start + 100 * MS)
    r = pyro.ingest(skein_module, {"name": SERVICE, "format": "pprof", "spyName": "skein",
                                   "from": span_start // 1_000_000_000}, body)
    assert r.status_code == 200, r.text
    return {"a": a, "b": b, "start_ms": span_start // MS, "end_ms": span_start // MS + 250}


def test_health_check_profile_types(skein_module):
    req = pyro.msg("querier.v1.ProfileTypesRequest")(start=1000, end=4000)
    pyro.connect(skein_module, "ProfileTypes", req, "querier.v1.ProfileTypesResponse")


def test_query_editor_resources(skein_module, spans):
    sk, start, end = skein_module, pyro.now_ms() - 3_600_000, pyro.now_ms() + 3_600_000
    types = pyro.connect(sk, "ProfileTypes", pyro.msg("querier.v1.ProfileTypesRequest")(start=start, end=end),
                         "querier.v1.ProfileTypesResponse")
    cpu = next(t for t in types.profile_types if t.ID == pyro.CPU)
    assert (cpu.name, cpu.sample_type, cpu.sample_unit, cpu.period_type, cpu.period_unit) == (
        "process_cpu", "cpu", "nanoseconds", "cpu", "nanoseconds")
    names = pyro.connect(sk, "LabelNames", pyro.msg("types.v1.LabelNamesRequest")(
        matchers=[SELECTOR], start=start, end=end), "types.v1.LabelNamesResponse").names
    assert {"service_name", "span_name", "span_id", "trace_id", "thread", "pyroscope_spy"} <= set(names), names
    values = pyro.connect(sk, "LabelValues", pyro.msg("types.v1.LabelValuesRequest")(
        name="span_name", matchers=[SELECTOR], start=start, end=end), "types.v1.LabelValuesResponse").names
    assert list(values) == ["GET /checkout", "POST /pay"]


def test_metrics_query_select_series(skein_module, spans):
    req = pyro.msg("querier.v1.SelectSeriesRequest")(
        profile_typeID=pyro.CPU, label_selector=SELECTOR, start=spans["start_ms"] - 3_600_000,
        end=spans["end_ms"] + 60_000, group_by=["span_name"], step=15.0, limit=10)
    series = pyro.connect(skein_module, "SelectSeries", req, "querier.v1.SelectSeriesResponse").series
    by_span = {tuple((l.name, l.value) for l in s.labels): s.points for s in series}
    assert set(by_span) == {(), (("span_name", "GET /checkout"),), (("span_name", "POST /pay"),)}
    checkout = by_span[(("span_name", "GET /checkout"),)]
    assert [p.value for p in checkout] == [800 * MS]
    assert abs(checkout[0].timestamp - spans["start_ms"]) <= 15_000, "the point is in the span's step"


def test_profile_query_select_merge_stacktraces(skein_module, spans):
    req = pyro.msg("querier.v1.SelectMergeStacktracesRequest")(
        profile_typeID=pyro.CPU, label_selector=SELECTOR, start=spans["start_ms"] - 3_600_000,
        end=spans["end_ms"] + 60_000, max_nodes=16384)
    fg = pyro.connect(skein_module, "SelectMergeStacktraces", req, "querier.v1.SelectMergeStacktracesResponse").flamegraph
    assert fg.total == 1000 * MS
    assert fg.names[0] == "total" and list(fg.levels[0].values) == [0, 1000 * MS, 0, 0]
    nodes = {name: (total, self_) for name, total, self_ in pyro.flamegraph_nodes(fg)}
    assert nodes["checkout"] == (800 * MS, 100 * MS)
    assert nodes["checkout_hot"] == (700 * MS, 700 * MS)
    assert fg.max_self == 700 * MS


def test_traces_to_profiles_select_merge_span_profile(skein_module, spans):
    # Grafana's link: profileTypeId from tracesToProfiles, '{${__tags}}' with service.name
    # mapped to service_name, spanSelector [pyroscope.profile.id], span start - 60 s .. end + 60 s.
    req = pyro.msg("querier.v1.SelectMergeSpanProfileRequest")(
        profile_typeID=pyro.CPU, label_selector=SELECTOR, span_selector=[spans["a"]],
        start=spans["start_ms"] - 60_000, end=spans["end_ms"] + 60_000, max_nodes=16384)
    fg = pyro.connect(skein_module, "SelectMergeSpanProfile", req, "querier.v1.SelectMergeSpanProfileResponse").flamegraph
    assert fg.total == 800 * MS
    assert "checkout_hot" in fg.names and "pay_hot" not in fg.names and "gc" not in fg.names


def test_newest_plugin_span_selector_on_select_merge_stacktraces(skein_module, spans):
    req = pyro.msg("querier.v1.SelectMergeStacktracesRequest")(
        profile_typeID=pyro.CPU, label_selector="{}", span_selector=[spans["b"]],
        start=spans["start_ms"] - 60_000, end=spans["end_ms"] + 60_000, max_nodes=16384)
    fg = pyro.connect(skein_module, "SelectMergeStacktraces", req, "querier.v1.SelectMergeStacktracesResponse").flamegraph
    assert fg.total == 150 * MS
    assert "pay_hot" in fg.names and "checkout" not in fg.names


def test_tenant_of_the_request_scopes_the_profiles(skein_module, spans):
    req = pyro.msg("querier.v1.SelectMergeStacktracesRequest")(
        profile_typeID=pyro.CPU, label_selector=SELECTOR, start=spans["start_ms"] - 60_000,
        end=spans["end_ms"] + 60_000)
    r = pyro.connect_raw(skein_module, "SelectMergeStacktraces", req, tenant="someone-else")
    assert r.status_code == 200
    assert pyro.msg("querier.v1.SelectMergeStacktracesResponse").FromString(r.content).flamegraph.total == 0


def test_connect_error_is_a_json_body_with_the_code_status(skein_module):
    req = pyro.msg("querier.v1.SelectMergeStacktracesRequest")(
        profile_typeID=pyro.CPU, label_selector='{service_name="shop"', start=1000, end=4000)
    r = pyro.connect_raw(skein_module, "SelectMergeStacktraces", req)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["code"] == "invalid_argument" and "label selector" in body["message"], body
