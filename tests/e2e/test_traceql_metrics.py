"""TraceQL metrics (`/api/metrics/query_range`, `/api/metrics/query`) replayed exactly as Grafana's
Tempo datasource sends them (grafana/REQUESTS.md, "Tempo: endpoints"), answers decoded as strictly as
Grafana and compared with a direct computation over the pushed spans.

  * 12.x backend: `Accept: application/json`, Go `url.Values.Encode()` query string (sorted keys),
    `q`, `start`/`end` in unix seconds, `step` and `exemplars` only when set on the query.
  * 11.0-11.3 browser: `?query=&start=&end=` through the data-source proxy, no step.
  * instant (11.6+): `/api/metrics/query` with the same parameters and no step.

Data set: 24 SERVER spans, one every 20 s from T0 (10 minutes ago, minute-aligned), services
alternating alpha/beta, names GET /r0..r2, durations (i+1)*7ms + i*111ns, span i%7==0 failing.
"""

from __future__ import annotations

import time
import urllib.parse

import pytest

from support import client, otlp
from support.protojson import parse_strict
from support.tempo_proto import tempo_pb2

MS, SEC = otlp.MS, otlp.SEC
BACKEND_JSON = {"Accept": "application/json", "User-Agent": "Grafana/12.3.0"}
BROWSER_HEADERS = {"Accept": "application/json, text/plain, */*", "X-Grafana-Org-Id": "1"}
N = 24


def go_query(params: dict) -> str:
    """Go url.Values.Encode(): keys sorted, QueryEscape (space -> '+')."""
    return "&".join(f"{urllib.parse.quote_plus(k)}={urllib.parse.quote_plus(str(params[k]))}" for k in sorted(params))


def js_query(params: list[tuple[str, object]]) -> str:
    """Grafana's urlUtil.serializeParams: insertion order, encodeURIComponent."""
    enc = lambda s: urllib.parse.quote(str(s), safe="-_.!~*'()")  # noqa: E731
    return "&".join(f"{enc(k)}={enc(v)}" for k, v in params)


@pytest.fixture(scope="module", params=["head", "blocks"])
def sk(request, skein_module_factory):
    if request.param == "head":
        return skein_module_factory()
    s = skein_module_factory("--head-max-spans", "1")
    s.expect_blocks = True
    return s


@pytest.fixture(scope="module")
def data(sk):
    t0 = (time.time_ns() - 10 * 60 * SEC) // (60 * SEC) * (60 * SEC)
    spans = []
    for i in range(N):
        svc = ("alpha", "beta")[i % 2]
        tid = otlp.new_trace_id()
        dur = (i + 1) * 7 * MS + i * 111
        err = i % 7 == 0
        s = otlp.make_span(tid, f"GET /r{i % 3}", kind=otlp.SERVER, start=t0 + i * 20 * SEC, duration=dur,
                           status=otlp.STATUS_ERROR if err else otlp.STATUS_UNSET)
        client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": svc}, [s])))
        spans.append({"trace": tid.hex(), "service": svc, "name": s.name, "start": s.start_time_unix_nano,
                      "duration": dur, "error": err})
    if getattr(sk, "expect_blocks", False):
        client.wait_flushed(sk, min_blocks=1)
    from support.poll import wait_until

    wait_until(lambda: _total(sk, t0) == N, timeout=15, what="all spans counted")
    return {"t0": t0, "spans": spans}


def _get(sk, path, query, headers=BACKEND_JSON):
    r = client.api_get_raw(sk, f"{path}?{query}", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r


def _range(sk, params: dict, headers=BACKEND_JSON):
    r = _get(sk, "/api/metrics/query_range", go_query(params), headers)
    # Values are always written, zeros included (Grafana's 11.0 browser parser needs them).
    return parse_strict(r.content, tempo_pb2().QueryRangeResponse, zero_values=False)


def _total(sk, t0) -> int:
    r = _get(sk, "/api/metrics/query", go_query({"q": "{} | count_over_time()", "start": t0 // SEC,
                                                 "end": t0 // SEC + 600}))
    resp = parse_strict(r.content, tempo_pb2().QueryInstantResponse, zero_values=False)
    return int(sum(s.value for s in resp.series))


def _labels(series) -> dict:
    out = {}
    for kv in series.labels:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def _bucket(step_s, start_ns):
    """Buckets are aligned to multiples of the step (as Tempo aligns start and end), in ms."""
    return start_ns // (step_s * SEC) * step_s * SEC // MS


def test_rate_by_service_from_the_12x_backend(sk, data):
    t0 = data["t0"]
    resp = _range(sk, {"q": "{ kind = server } | rate() by(resource.service.name)", "start": t0 // SEC,
                       "end": t0 // SEC + 480, "step": "1m0s", "exemplars": 3})
    assert len(resp.series) == 2
    for s in resp.series:
        svc = _labels(s)["resource.service.name"]
        assert s.promLabels == f'{{resource.service.name="{svc}"}}'
        want = {(t0 + i * 60 * SEC) // MS: 0.0 for i in range(8)}
        for sp in data["spans"]:
            if sp["service"] == svc:
                want[_bucket(60, sp["start"])] += 1 / 60
        got = {x.timestampMs: x.value for x in s.samples}
        assert got.keys() == want.keys()
        for t, v in want.items():
            assert got[t] == pytest.approx(v, abs=1e-12)
        assert 0 < len(s.exemplars) <= 3
        ours = {sp["trace"] for sp in data["spans"] if sp["service"] == svc}
        for x in s.exemplars:
            assert x.labels[0].key == "trace:id" and x.labels[0].value.string_value in ours
            assert x.value > 0 and x.timestampMs > 0  # Grafana drops exemplars failing either


def test_quantiles_are_exact_per_step(sk, data):
    t0 = data["t0"]
    resp = _range(sk, {"q": "{ } | quantile_over_time(duration, 0.5, 0.9) by(name)", "start": t0 // SEC,
                       "end": t0 // SEC + 480, "step": "120"})
    assert len(resp.series) == 6
    for s in resp.series:
        lab = _labels(s)
        groups: dict[int, list[int]] = {}
        for sp in data["spans"]:
            if sp["name"] == lab["name"]:
                groups.setdefault(_bucket(120, sp["start"]), []).append(sp["duration"])
        want = {}
        for t, ds in groups.items():
            ds.sort()
            h = (len(ds) - 1) * lab["p"]
            lo, hi = int(h), min(int(h) + 1, len(ds) - 1)
            want[t] = (ds[lo] + (ds[hi] - ds[lo]) * (h - lo)) / 1e9
        got = {x.timestampMs: x.value for x in s.samples}
        assert got.keys() == want.keys()
        for t, v in want.items():
            assert got[t] == pytest.approx(v, rel=1e-12)


def test_histogram_and_count_from_the_11x_browser(sk, data):
    t0 = data["t0"]
    start, end = t0 // SEC, t0 // SEC + 480
    q = "{ status = error } | histogram_over_time(duration)"
    r = _get(sk, "/api/metrics/query_range", js_query([("query", q), ("start", start), ("end", end)]),
             BROWSER_HEADERS)
    resp = parse_strict(r.content, tempo_pb2().QueryRangeResponse, zero_values=False)
    errors = [sp for sp in data["spans"] if sp["error"]]
    got = {}
    for s in resp.series:
        b = _labels(s)["__bucket"]
        got[b] = got.get(b, 0) + sum(x.value for x in s.samples)
        assert all(isinstance(x.timestampMs, int) and x.timestampMs > 0 for x in s.samples)
    want = {}
    for sp in errors:
        b = (1 << (sp["duration"] - 1).bit_length()) / 1e9
        want[b] = want.get(b, 0) + 1
    assert got == want


def test_instant_query_counts_the_whole_range(sk, data):
    t0 = data["t0"]
    q = "{ } | count_over_time() by(status)"
    r = _get(sk, "/api/metrics/query", go_query({"q": q, "start": t0 // SEC, "end": t0 // SEC + 600}))
    resp = parse_strict(r.content, tempo_pb2().QueryInstantResponse, zero_values=False)
    got = {_labels(s)["status"]: s.value for s in resp.series}
    n_err = sum(sp["error"] for sp in data["spans"])
    assert got == {"error": n_err, "unset": N - n_err}


def test_nanosecond_bounds_and_since_are_accepted(sk, data):
    t0 = data["t0"]
    ns = _range(sk, {"q": "{} | count_over_time()", "start": t0, "end": t0 + 480 * SEC, "step": "60s"})
    s = _range(sk, {"q": "{} | count_over_time()", "start": t0 // SEC, "end": t0 // SEC + 480, "step": "60"})
    assert ns == s
    recent = _range(sk, {"q": "{} | count_over_time()", "since": "15m", "step": "1m"})
    assert sum(x.value for x in recent.series[0].samples) == N


@pytest.mark.parametrize("q,needle", [
    ("{ } | avg_over_time(duration)", "unsupported"),
    ("{ } | rate() | topk(3)", "second-stage"),
    ("{ status = error }", "needs a pipeline"),
    ("{ .a = 1 } && { .b = 2 } | rate()", "single { } filter"),
])
def test_unsupported_pipelines_are_400_with_a_message(sk, q, needle):
    r = client.api_get(sk, "/api/metrics/query_range", params={"q": q}, headers=BACKEND_JSON)
    assert r.status_code == 400 and needle in r.text, r.text


def test_bad_parameters_are_400(sk):
    for params in ({"q": "{} | rate()", "step": "soon"}, {"q": "{} | rate()", "start": "x"},
                   {"q": "{} | rate()", "start": "1700000100", "end": "1700000000"},
                   {"q": "{} | rate()", "start": "1600000000", "end": "1700000000", "step": "1"}):
        r = client.api_get(sk, "/api/metrics/query_range", params=params, headers=BACKEND_JSON)
        assert r.status_code == 400, (params, r.text)
