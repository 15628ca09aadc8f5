"""TraceQL search, legacy tag search and the tag / tag-value endpoints over a known data set.

Data set (T0 = 30 minutes ago; W = [T0-10m, now+1m]; WIDE = [T0-3h, now+1m]):

  A  alpha  "GET /users"     SERVER  T0        250ms  http.status_code=200 span.region=us
            "db.query"       CLIENT  T0+10ms   150ms  x=10
  B  beta   "POST /checkout" SERVER  T0+1s      50ms  ERROR "boom" http.status_code=500   (resource region=eu)
     beta   "charge"         CLIENT  T0+1s+5ms  20ms  ERROR x=3
     gamma  "reserve"        CONSUMER T0+1s+30ms 5ms
  C  alpha  "GET /health"    SERVER  T0+2s       2ms  OK x=7 span.region=eu
  D  delta  "cron"           INTERNAL T0-2h   1500ms            (outside W)
     delta  "GET /inner"     CLIENT  T0-2h+100ms 1000ms
"""

from __future__ import annotations

import time

import pytest

from support import client, otlp

MS, SEC = otlp.MS, otlp.SEC


class DS:
    pass


@pytest.fixture(scope="module", params=["head", "blocks"])
def skein_module(request, skein_module_factory):
    """Every search test runs twice: data in the in-memory head, and data flushed to three blocks
    (one trace split across two of them)."""
    if request.param == "head":
        return skein_module_factory()
    sk = skein_module_factory("--head-max-spans", "1")
    sk.expect_blocks = True
    return sk


@pytest.fixture(scope="module")
def ds(skein_module) -> DS:
    d = DS()
    now = time.time_ns()
    t0 = (now - 30 * 60 * SEC) // MS * MS
    d.t0 = t0
    mk = otlp.make_span
    alpha_res = {"service.name": "alpha", "deployment.environment": "prod"}

    a = otlp.new_trace_id()
    a_root = mk(a, "GET /users", kind=otlp.SERVER, start=t0, duration=250 * MS,
                attrs={"http.status_code": 200, "region": "us"})
    a_db = mk(a, "db.query", kind=otlp.CLIENT, parent=a_root.span_id, start=t0 + 10 * MS, duration=150 * MS,
              attrs={"x": 10})

    b = otlp.new_trace_id()
    b_root = mk(b, "POST /checkout", kind=otlp.SERVER, start=t0 + SEC, duration=50 * MS,
                status=otlp.STATUS_ERROR, status_message="boom", attrs={"http.status_code": 500})
    b_charge = mk(b, "charge", kind=otlp.CLIENT, parent=b_root.span_id, start=t0 + SEC + 5 * MS, duration=20 * MS,
                  status=otlp.STATUS_ERROR, attrs={"x": 3})
    b_reserve = mk(b, "reserve", kind=otlp.CONSUMER, parent=b_root.span_id, start=t0 + SEC + 30 * MS,
                   duration=5 * MS)

    c = otlp.new_trace_id()
    c_root = mk(c, "GET /health", kind=otlp.SERVER, start=t0 + 2 * SEC, duration=2 * MS, status=otlp.STATUS_OK,
                attrs={"x": 7, "region": "eu"})

    dd = otlp.new_trace_id()
    d_start = t0 - 2 * 3600 * SEC
    d_root = mk(dd, "cron", kind=otlp.INTERNAL, start=d_start, duration=1500 * MS)
    d_inner = mk(dd, "GET /inner", kind=otlp.CLIENT, parent=d_root.span_id, start=d_start + 100 * MS,
                 duration=1000 * MS)

    sk = skein_module
    blocks = getattr(sk, "expect_blocks", False)
    # spread over transports and requests; B's two services arrive in one request, D in two.
    # In the blocks variant: block 1 = A+B, block 2 = C + D's root, block 3 = D's child (D is split).
    client.export_ok(sk, otlp.export_request(otlp.resource_spans(alpha_res, [a_root, a_db])), via="grpc")
    client.export_ok(sk, otlp.export_request(
        otlp.resource_spans({"service.name": "beta", "region": "eu"}, [b_root, b_charge]),
        otlp.resource_spans({"service.name": "gamma"}, [b_reserve]),
    ), via="proto")
    if blocks:
        client.wait_flushed(sk, min_blocks=1)
    client.export_ok(sk, otlp.export_request(otlp.resource_spans(alpha_res, [c_root])), via="json")
    client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": "delta"}, [d_root])), via="proto")
    if blocks:
        client.wait_flushed(sk, min_blocks=2)
    client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": "delta"}, [d_inner])), via="grpc")
    if blocks:
        client.wait_flushed(sk, min_blocks=3)

    d.ids = {"A": a.hex(), "B": b.hex(), "C": c.hex(), "D": dd.hex()}
    d.names = {v: k for k, v in d.ids.items()}
    d.spans = {"a_root": a_root, "a_db": a_db, "b_root": b_root, "b_charge": b_charge, "b_reserve": b_reserve,
               "c_root": c_root, "d_root": d_root, "d_inner": d_inner}
    now_s = now // SEC
    d.W = {"start": str((t0 - 10 * 60 * SEC) // SEC), "end": str(now_s + 60)}
    d.WIDE = {"start": str((t0 - 3 * 3600 * SEC) // SEC), "end": str(now_s + 60)}
    d.DWIN = {"start": str(d_start // SEC - 60), "end": str(d_start // SEC + 60)}

    for tid, n in ((a, 2), (b, 3), (c, 1), (dd, 2)):
        client.wait_trace(sk, tid, min_spans=n)
    # and searchable (search may lag trace-by-id)
    from support.poll import wait_until

    wait_until(lambda: len(_run(sk, d, "{}", d.WIDE)[0]) == 4, timeout=15, what="all 4 traces searchable")
    return d


def _run(sk, d, q, window, **extra):
    params = {"q": q, **window, **{k: str(v) for k, v in extra.items()}}
    resp, raw = client.search(sk, params)
    names = []
    for t in resp.traces:
        tid = t.traceID.lower().rjust(32, "0")
        names.append(d.names.get(tid, f"unknown:{tid}"))
    return names, resp


def _set(sk, d, q, window=None, **extra):
    names, _ = _run(sk, d, q, window if window is not None else d.W, **extra)
    assert len(names) == len(set(names)), f"{q}: a trace is listed twice: {names}"
    return set(names)


# ---- TraceQL ----------------------------------------------------------------------------
CASES = [
    ("{}", "W", {"A", "B", "C"}),
    ("{}", "WIDE", {"A", "B", "C", "D"}),
    ("{}", "DWIN", {"D"}),
    ('{ resource.service.name = "alpha" }', "W", {"A", "C"}),
    ('{ resource.service.name = "gamma" }', "W", {"B"}),
    ('{ resource.service.name != "alpha" }', "W", {"B"}),
    ("{ span.x > 5 }", "W", {"A", "C"}),
    ("{ span.x = 3 }", "W", {"B"}),
    ("{ span.x >= 3 && span.x < 8 }", "W", {"B", "C"}),
    ("{ duration > 100ms }", "W", {"A"}),
    ("{ duration < 3ms }", "W", {"C"}),
    ("{ duration > 1s }", "WIDE", {"D"}),
    ("{ status = error }", "W", {"B"}),
    ("{ status = ok }", "W", {"C"}),
    ("{ status != error }", "W", {"A", "B", "C"}),  # B's gamma span is unset
    ("{ kind = server }", "W", {"A", "B", "C"}),
    ("{ kind = consumer }", "W", {"B"}),
    ("{ kind = internal }", "WIDE", {"D"}),
    ('{ name =~ "GET.*" }', "W", {"A", "C"}),
    ('{ name =~ "GET.*" }', "WIDE", {"A", "C", "D"}),
    ('{ name = "charge" }', "W", {"B"}),
    ('{ name !~ "GET.*|POST.*|db.*|charge|reserve" }', "W", set()),
    ('{ .region = "eu" }', "W", {"B", "C"}),  # unscoped: resource attr (B) or span attr (C)
    ('{ span.region = "eu" }', "W", {"C"}),
    ('{ resource.region = "eu" }', "W", {"B"}),
    ('{ .region = "us" }', "W", {"A"}),
    ('{ resource.service.name = "alpha" && span.x > 8 }', "W", {"A"}),
    ('{ resource.service.name = "alpha" && span.x > 100 }', "W", set()),
    ('{ name = "cron" || status = error }', "WIDE", {"B", "D"}),
    ('{ resource.service.name = "beta" } && { resource.service.name = "gamma" }', "W", {"B"}),
    ('{ resource.service.name = "alpha" } && { status = error }', "W", set()),
    ('{ name = "GET /health" } || { status = error }', "W", {"B", "C"}),
    ('{ rootServiceName = "beta" }', "W", {"B"}),
    ('{ rootServiceName = "gamma" }', "W", set()),
    ('{ rootName = "GET /users" }', "W", {"A"}),
    ("{ traceDuration > 200ms }", "W", {"A"}),
    ("{ traceDuration > 200ms }", "WIDE", {"A", "D"}),
    ("{ traceDuration < 10ms }", "W", {"C"}),
    ('{ span.http.status_code = 500 }', "W", {"B"}),
    ('{ span.http.status_code >= 200 && span.http.status_code < 300 }', "W", {"A"}),
    ('{ resource.deployment.environment = "prod" && kind = server }', "W", {"A", "C"}),
]


@pytest.mark.parametrize("q,window,expected", CASES, ids=[f"{q} [{w}]" for q, w, _ in CASES])
def test_traceql_selects_the_right_traces(skein_module, ds, q, window, expected):
    got = _set(skein_module, ds, q, getattr(ds, window))
    assert got == expected, f"{q} over {window}: got {sorted(got)}, want {sorted(expected)}"


def test_matched_spans_are_returned_in_span_sets(skein_module, ds):
    names, resp = _run(skein_module, ds, "{ status = error }", ds.W)
    assert names == ["B"]
    t = resp.traces[0]
    sets = list(t.spanSets) or ([t.spanSet] if t.HasField("spanSet") else [])
    assert sets, "no spanSets in the result"
    ss = sets[0]
    assert ss.matched == 2
    want = {ds.spans["b_root"].span_id.hex(): ds.spans["b_root"], ds.spans["b_charge"].span_id.hex(): ds.spans["b_charge"]}
    got = {s.spanID.lower().rjust(16, "0"): s for s in ss.spans}
    assert set(got) == set(want), f"span ids {sorted(got)} want {sorted(want)}"
    for sid, s in got.items():
        w = want[sid]
        assert s.startTimeUnixNano == w.start_time_unix_nano
        assert s.durationNanos == w.end_time_unix_nano - w.start_time_unix_nano
        if s.name:
            assert s.name == w.name


def test_duration_filter_matches_each_span(skein_module, ds):
    _, resp = _run(skein_module, ds, "{ duration > 100ms }", ds.W)
    ss = (list(resp.traces[0].spanSets) or [resp.traces[0].spanSet])[0]
    assert ss.matched == 2
    assert {s.spanID.lower().rjust(16, "0") for s in ss.spans} == {
        ds.spans["a_root"].span_id.hex(), ds.spans["a_db"].span_id.hex()}


def test_trace_metadata_is_correct(skein_module, ds):
    _, resp = _run(skein_module, ds, "{}", ds.W)
    by = {ds.names[t.traceID.lower().rjust(32, "0")]: t for t in resp.traces}
    want = {
        "A": ("alpha", "GET /users", ds.t0, 250),
        "B": ("beta", "POST /checkout", ds.t0 + SEC, 50),
        "C": ("alpha", "GET /health", ds.t0 + 2 * SEC, 2),
    }
    for k, (svc, root, start, dur_ms) in want.items():
        t = by[k]
        assert (t.rootServiceName, t.rootTraceName, t.startTimeUnixNano, t.durationMs) == (svc, root, start, dur_ms), (
            f"trace {k}: got {(t.rootServiceName, t.rootTraceName, t.startTimeUnixNano, t.durationMs)}")
    stats = {name: (s.spanCount, s.errorCount) for name, s in by["B"].serviceStats.items()}
    assert stats == {"beta": (2, 2), "gamma": (1, 0)}, stats


def test_results_are_most_recent_first(skein_module, ds):
    names, _ = _run(skein_module, ds, "{}", ds.WIDE)
    assert names == ["C", "B", "A", "D"], names


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_limit_caps_the_number_of_traces(skein_module, ds, limit):
    names, _ = _run(skein_module, ds, "{}", ds.WIDE, limit=limit)
    assert len(names) == limit, names
    assert set(names) <= {"A", "B", "C", "D"}


def test_spss_caps_spans_per_span_set(skein_module, ds):
    _, resp = _run(skein_module, ds, '{ resource.service.name = "beta" }', ds.W, spss=1)
    ss = (list(resp.traces[0].spanSets) or [resp.traces[0].spanSet])[0]
    assert len(ss.spans) == 1, ss
    assert ss.matched == 2, f"matched must count all matching spans, got {ss.matched}"
    _, resp = _run(skein_module, ds, '{ resource.service.name = "beta" }', ds.W, spss=3)
    ss = (list(resp.traces[0].spanSets) or [resp.traces[0].spanSet])[0]
    assert len(ss.spans) == 2


def test_time_window_without_query_defaults_to_everything_in_range(skein_module, ds):
    resp, _ = client.search(skein_module, dict(ds.W))
    assert {ds.names.get(t.traceID.lower().rjust(32, "0")) for t in resp.traces} == {"A", "B", "C"}


# ---- legacy tag search ---------------------------------------------------------------------
LEGACY = [
    ({"tags": "service.name=alpha"}, {"A", "C"}),
    ({"tags": "service.name=beta http.status_code=500"}, {"B"}),
    ({"tags": 'region="eu"'}, {"B", "C"}),
    ({"tags": "service.name=alpha", "minDuration": "100ms"}, {"A"}),
    ({"maxDuration": "10ms"}, {"C"}),  # trace duration: B's 5ms gamma span must not make B match
    ({"minDuration": "40ms", "maxDuration": "60ms"}, {"B"}),
    ({"minDuration": "1m0s"}, set()),
    ({"tags": "service.name=nope"}, set()),
]


@pytest.mark.parametrize("params,expected", LEGACY, ids=[str(p) for p, _ in LEGACY])
def test_legacy_tag_search(skein_module, ds, params, expected):
    resp, _ = client.search(skein_module, {**params, **ds.W})
    got = {ds.names.get(t.traceID.lower().rjust(32, "0"), t.traceID) for t in resp.traces}
    assert got == expected, f"{params}: got {sorted(got)} want {sorted(expected)}"


# ---- tags and tag values ------------------------------------------------------------------
def _scopes(r):
    assert r.status_code == 200, r.text[:300]
    return {s["name"]: set(s.get("tags", [])) for s in r.json().get("scopes", [])}


def test_v2_tags_are_grouped_by_scope(skein_module, ds):
    sc = _scopes(client.api_get(skein_module, "/api/v2/search/tags"))
    assert {"service.name", "deployment.environment", "region"} <= sc.get("resource", set()), sc
    assert {"http.status_code", "x", "region"} <= sc.get("span", set()), sc
    assert {"duration", "kind", "name", "status"} <= sc.get("intrinsic", set()), sc
    assert "x" not in sc.get("resource", set()) and "service.name" not in sc.get("span", set()), sc


@pytest.mark.parametrize("scope", ["resource", "span", "intrinsic"])
def test_v2_tags_scope_parameter_limits_scopes(skein_module, ds, scope):
    sc = _scopes(client.api_get(skein_module, "/api/v2/search/tags", params={"scope": scope}))
    assert {k for k, v in sc.items() if v} == {scope}, sc


def test_v1_tags_list_all_attribute_names(skein_module, ds):
    r = client.api_get(skein_module, "/api/search/tags")
    assert r.status_code == 200, r.text
    names = set(r.json()["tagNames"])
    assert {"service.name", "deployment.environment", "region", "http.status_code", "x"} <= names, names


def _values(sk, tag, **params):
    r = client.api_get(sk, f"/api/v2/search/tag/{tag}/values", params=params or None)
    assert r.status_code == 200, f"{tag} {params}: {r.status_code} {r.text[:300]}"
    vals = r.json().get("tagValues", [])
    return {(v.get("type"), v.get("value")) for v in vals}


TAG_VALUES = [
    ("resource.service.name", {}, {("string", "alpha"), ("string", "beta"), ("string", "gamma"), ("string", "delta")}),
    ("resource.region", {}, {("string", "eu")}),
    ("span.region", {}, {("string", "us"), ("string", "eu")}),
    ("span.x", {}, {("int", "10"), ("int", "3"), ("int", "7")}),
    ("span.http.status_code", {}, {("int", "200"), ("int", "500")}),
    ("span.x", {"q": '{ resource.service.name = "alpha" }'}, {("int", "10"), ("int", "7")}),
    ("span.x", {"q": '{ resource.service.name = "alpha" && span.region = "eu" }'}, {("int", "7")}),
    ("resource.service.name", {"q": "{ status = error }"}, {("string", "beta")}),
    ("resource.service.name", {"q": "{ span.x > 5 }"}, {("string", "alpha")}),
    ("span.region", {"q": '{ resource.service.name = "nope" }'}, set()),
]


@pytest.mark.parametrize("tag,params,expected", TAG_VALUES, ids=[f"{t} {p}" for t, p, _ in TAG_VALUES])
def test_v2_tag_values(skein_module, ds, tag, params, expected):
    got = _values(skein_module, tag, **params)
    assert got == expected, f"{tag} {params}: got {sorted(got)} want {sorted(expected)}"


def test_v2_tag_values_for_intrinsic_name_with_query(skein_module, ds):
    got = {v for _, v in _values(skein_module, "name", q='{ resource.service.name = "beta" }')}
    assert got == {"POST /checkout", "charge"}, got


def test_v2_tag_values_for_intrinsic_status(skein_module, ds):
    got = {v for _, v in _values(skein_module, "status")}
    assert "error" in got, got


def test_v2_tag_values_respect_time_window(skein_module, ds):
    got = {v for _, v in _values(skein_module, "resource.service.name", **ds.W)}
    assert got == {"alpha", "beta", "gamma"}, got


@pytest.mark.parametrize("tag,expected", [("service.name", {"alpha", "beta", "gamma", "delta"}),
                                          ("region", {"us", "eu"})])
def test_v1_tag_values(skein_module, ds, tag, expected):
    r = client.api_get(skein_module, f"/api/search/tag/{tag}/values")
    assert r.status_code == 200, r.text
    assert set(r.json()["tagValues"]) == expected
