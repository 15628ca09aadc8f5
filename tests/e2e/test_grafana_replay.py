"""Replay the exact requests Grafana's Tempo datasource sends, and decode the answers as strictly as Grafana.

Two generations (grafana/REQUESTS.md, "Tempo: endpoints"):
  * 11.x browser through the data-source proxy: browser Accept header, all five search params
    (encodeURIComponent-style query strings), v2 tags with v1 fallback, double-encoded tag path
    segments; trace by id from the Go backend (v1 protobuf; v2-then-v1 from 11.4).
  * 12.3+ Go backend: `Accept: application/json` search with Go `url.Values.Encode()` query strings
    (sorted keys, spaces as '+', limit/spss only when set), tags / tag values proxied with the
    browser's query string (incl. the extra `tag=` parameter) and headers, protobuf trace by id
    v2 then v1 on 404, health check requiring exactly 200.

JSON bodies are parsed with unknown fields rejected against tests/proto/tempo_api.proto and must
be exact protojson (64-bit ints as strings, lowerCamel names, zero values omitted); protobuf bodies
must carry no field the schema does not declare.
"""

from __future__ import annotations

import re
import time
import urllib.parse

import pytest

from support import client, otlp
from support.protojson import parse_strict
from support.tempo_proto import tempo_pb2
from support.unknown import assert_no_unknown_fields

BROWSER_HEADERS = {
    "Accept": "application/json, text/plain, */*",
    "X-Grafana-Org-Id": "1",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
    "X-Dashboard-Uid": "abc",
    "X-Panel-Id": "2",
}
BACKEND_JSON = {"Accept": "application/json", "User-Agent": "Grafana/12.3.0"}
BACKEND_PROTO = {"Accept": "application/protobuf", "User-Agent": "Grafana/12.3.0"}
MS, SEC = otlp.MS, otlp.SEC


def js_encode(s: str) -> str:
    """JavaScript encodeURIComponent."""
    return urllib.parse.quote(s, safe="-_.!~*'()")


def browser_query(params: list[tuple[str, object]]) -> str:
    """Grafana's urlUtil.serializeParams: insertion order, encodeURIComponent."""
    return "&".join(f"{js_encode(k)}={js_encode(str(v))}" for k, v in params)


def go_query(params: dict) -> str:
    """Go url.Values.Encode(): keys sorted, QueryEscape (space -> '+')."""
    return "&".join(f"{urllib.parse.quote_plus(k)}={urllib.parse.quote_plus(str(params[k]))}" for k in sorted(params))


@pytest.fixture(scope="module")
def shop(skein_module):
    sk = skein_module
    t0 = (time.time_ns() - 5 * 60 * SEC) // MS * MS
    tid = otlp.new_trace_id()
    root = otlp.make_span(tid, "GET /", kind=otlp.SERVER, start=t0, duration=120 * MS,
                          attrs={"http.request.method": "GET", "http.response.status_code": 200})
    orders = otlp.make_span(tid, "POST /orders", kind=otlp.CLIENT, parent=root.span_id, start=t0 + 5 * MS,
                            duration=100 * MS, status=otlp.STATUS_ERROR, status_message="payment declined",
                            attrs={"order.items": 3, "order.total": 12.5, "order.express": True})
    handler = otlp.make_span(tid, "orders.create", kind=otlp.SERVER, parent=orders.span_id, start=t0 + 6 * MS,
                             duration=90 * MS, status=otlp.STATUS_ERROR, attrs={"order.items": 3})
    # a trace whose id has 8 leading zero bytes: Grafana users paste 16-hex (64-bit) ids
    short_tid = b"\x00" * 8 + otlp.new_span_id()
    legacy = otlp.make_span(short_tid, "legacy-job", kind=otlp.INTERNAL, start=t0 + SEC, duration=3 * MS)
    client.export_ok(sk, otlp.export_request(
        otlp.resource_spans({"service.name": "shop-gateway", "k8s.namespace.name": "shop"}, [root]),
        otlp.resource_spans({"service.name": "shop-orders", "k8s.namespace.name": "shop"}, [orders, handler]),
    ), via="grpc")
    client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": "legacy"}, [legacy])))
    client.wait_trace(sk, tid, min_spans=3)
    client.wait_trace(sk, short_tid, min_spans=1)
    now = int(time.time())
    return {
        "tid": tid.hex(),
        "short_tid": short_tid.hex(),
        "spans": {s.span_id.hex(): s for s in (root, orders, handler)},
        "start": now - 3600,
        "end": now,
        "t0": t0,
    }


def _get(sk, path_and_query: str, headers: dict):
    return client.api_get_raw(sk, path_and_query, headers=headers)


def _strict(r, cls_name: str, exact: bool = False):
    """Decode as Grafana does: unknown fields fail, 64-bit ints must be strings. exact=True also
    requires zero values / empty arrays to be omitted (protojson output rules)."""
    assert r.status_code == 200, f"HTTP {r.status_code}: {r.text[:300]!r}"
    assert "html" not in r.headers.get("Content-Type", ""), r.headers.get("Content-Type")
    return parse_strict(r.content, getattr(tempo_pb2(), cls_name), zero_values=exact)


def _check_search(resp, shop, expect_found=True):
    ids = {t.traceID.lower().rjust(32, "0"): t for t in resp.traces}
    if not expect_found:
        return
    assert shop["tid"] in ids, f"trace {shop['tid']} not in {sorted(ids)}"
    t = ids[shop["tid"]]
    assert t.rootServiceName == "shop-gateway"
    assert t.rootTraceName == "GET /"
    assert t.startTimeUnixNano == shop["t0"]
    assert t.durationMs == 120
    sets = list(t.spanSets) or ([t.spanSet] if t.HasField("spanSet") else [])
    assert sets and sets[0].spans, "Grafana shows matched spans from spanSets; none returned"
    for s in sets[0].spans:
        sid = s.spanID.lower().rjust(16, "0")
        assert sid in shop["spans"], f"unknown span id {s.spanID}"
        want = shop["spans"][sid]
        assert s.startTimeUnixNano == want.start_time_unix_nano
        assert s.durationNanos == want.end_time_unix_nano - want.start_time_unix_nano


# ============================ Grafana 11.x (browser via proxy) ============================
def test_g11_health_check_echo(skein_module):
    r = _get(skein_module, "/api/echo", BROWSER_HEADERS)
    assert 200 <= r.status_code < 300
    assert r.text.strip() == "echo"


def test_g11_buildinfo(skein_module):
    r = _get(skein_module, "/api/status/buildinfo", BROWSER_HEADERS)
    assert r.status_code == 200, r.text
    info = r.json()
    for k in ("version", "revision", "branch", "buildDate", "buildUser", "goVersion"):
        assert isinstance(info.get(k), str), f"buildinfo.{k} missing or not a string: {info}"
    assert re.match(r"^v?\d+\.\d+\.\d+", info["version"]), f"version must be semver for Grafana: {info['version']!r}"


@pytest.mark.parametrize("q", ['{ resource.service.name = "shop-gateway" }', "{}",
                               '{ span.order.items = 3 && status = error }'])
def test_g11_search_with_all_five_params(skein_module, shop, q):
    query = browser_query([("q", q), ("limit", 20), ("spss", 3), ("start", shop["start"]), ("end", shop["end"])])
    resp = _strict(_get(skein_module, "/api/search?" + query, BROWSER_HEADERS), "SearchResponse")
    _check_search(resp, shop)


def test_g11_search_no_match_is_valid_json(skein_module, shop):
    query = browser_query([("q", '{ resource.service.name = "no-such-service" }'), ("limit", 20), ("spss", 3),
                           ("start", shop["start"]), ("end", shop["end"])])
    resp = _strict(_get(skein_module, "/api/search?" + query, BROWSER_HEADERS), "SearchResponse")
    assert len(resp.traces) == 0


@pytest.mark.parametrize("query", ["", "?limit=5000"], ids=["grafana-11.0-no-params", "tagLimit"])
def test_g11_v2_tags(skein_module, shop, query):
    resp = _strict(_get(skein_module, "/api/v2/search/tags" + query, BROWSER_HEADERS), "SearchTagsV2Response")
    scopes = {s.name: set(s.tags) for s in resp.scopes}
    assert "service.name" in scopes.get("resource", set()), scopes
    assert "order.items" in scopes.get("span", set()), scopes
    assert {"name", "status", "duration", "kind"} <= scopes.get("intrinsic", set()), scopes


def test_g11_v1_tags_fallback(skein_module, shop):
    resp = _strict(_get(skein_module, "/api/search/tags", BROWSER_HEADERS), "SearchTagsResponse")
    assert {"service.name", "order.items"} <= set(resp.tagNames)


def _double_encoded(tag: str) -> str:
    return js_encode(js_encode(tag))


@pytest.mark.parametrize("tag,expected", [
    ("resource.service.name", {"shop-gateway", "shop-orders", "legacy"}),
    ("span.order.items", {"3"}),
    ("status", {"error"}),
])
def test_g11_v2_tag_values(skein_module, shop, tag, expected):
    path = f"/api/v2/search/tag/{_double_encoded(tag)}/values?" + browser_query([("limit", 5000)])
    resp = _strict(_get(skein_module, path, BROWSER_HEADERS), "SearchTagValuesV2Response")
    got = {v.value for v in resp.tagValues}
    assert expected <= got, got
    assert all(v.type for v in resp.tagValues), "every tag value needs a type"


def test_g11_v2_tag_values_with_filter_query(skein_module, shop):
    q = '{ resource.service.name = "shop-orders" }'
    path = "/api/v2/search/tag/name/values?" + browser_query([("q", q), ("limit", 5000)])
    resp = _strict(_get(skein_module, path, BROWSER_HEADERS), "SearchTagValuesV2Response")
    assert {v.value for v in resp.tagValues} == {"POST /orders", "orders.create"}


def test_g11_percent_encoded_tag_path_segment(skein_module, shop):
    path = "/api/v2/search/tag/resource%2Eservice%2Ename/values?limit=5000"
    resp = _strict(_get(skein_module, path, BROWSER_HEADERS), "SearchTagValuesV2Response")
    assert {"shop-gateway", "shop-orders"} <= {v.value for v in resp.tagValues}


def test_g11_v1_tag_values_fallback(skein_module, shop):
    resp = _strict(_get(skein_module, "/api/search/tag/service.name/values", BROWSER_HEADERS),
                   "SearchTagValuesResponse")
    assert {"shop-gateway", "shop-orders", "legacy"} <= set(resp.tagValues)


def test_g11_trace_by_id_v1_protobuf(skein_module, shop):
    """Grafana < 11.4: the backend calls only v1, Accept: application/protobuf, parses tempopb.Trace."""
    r = _get(skein_module, f"/api/traces/{shop['tid']}", BACKEND_PROTO)
    assert r.status_code == 200, r.text[:300]
    m = tempo_pb2().Trace()
    m.ParseFromString(r.content)
    assert_no_unknown_fields(m)
    got = {s.span_id.hex() for rs in m.resourceSpans for ss in rs.scope_spans for s in ss.spans}
    assert got == set(shop["spans"])


EXACT_CASES = [
    ("/api/search?" + browser_query([("q", "{}"), ("limit", 20), ("spss", 3)]), "SearchResponse"),
    ("/api/search?" + browser_query([("q", '{ resource.service.name = "no-such-service" }')]), "SearchResponse"),
    ("/api/v2/search/tags", "SearchTagsV2Response"),
    ("/api/v2/search/tag/resource.service.name/values", "SearchTagValuesV2Response"),
    ("/api/v2/search/tag/resource.service.name/values?q=" + js_encode('{ resource.service.name = "none" }'),
     "SearchTagValuesV2Response"),
    ("/api/search/tags", "SearchTagsResponse"),
    ("/api/search/tag/service.name/values", "SearchTagValuesResponse"),
]


@pytest.mark.parametrize("path,cls_name", EXACT_CASES, ids=[p for p, _ in EXACT_CASES])
def test_json_responses_are_exact_protojson(skein_module, shop, path, cls_name):
    """Contract: emit exactly protojson (zero values and empty arrays omitted, int64 as strings)."""
    _strict(_get(skein_module, path, BACKEND_JSON), cls_name, exact=True)


# ============================ Grafana 12.3+ (Go backend) ==================================
def test_g12_health_check_echo_exactly_200(skein_module):
    r = _get(skein_module, "/api/echo", {"User-Agent": "Grafana/12.3.0"})
    assert r.status_code == 200


@pytest.mark.parametrize("with_limits", [False, True], ids=["limits-unset", "limits-set"])
def test_g12_backend_search(skein_module, shop, with_limits):
    params = {"q": '{ resource.service.name = "shop-gateway" }', "start": shop["start"], "end": shop["end"]}
    if with_limits:
        params.update(limit=20, spss=3)
    resp = _strict(_get(skein_module, "/api/search?" + go_query(params), BACKEND_JSON), "SearchResponse")
    _check_search(resp, shop)


def test_g12_backend_search_without_time_range(skein_module, shop):
    resp = _strict(_get(skein_module, "/api/search?" + go_query({"q": "{ status = error }"}), BACKEND_JSON),
                   "SearchResponse")
    assert shop["tid"] in {t.traceID.lower().rjust(32, "0") for t in resp.traces}


@pytest.mark.parametrize("query", ["?limit=5000", "?end={end}&limit=5000&start={start}"],
                         ids=["default-range", "timeRangeForTags"])
def test_g12_tags_resource(skein_module, shop, query):
    q = query.format(**shop)
    resp = _strict(_get(skein_module, "/api/v2/search/tags" + q, BROWSER_HEADERS), "SearchTagsV2Response")
    names = {s.name for s in resp.scopes}
    assert {"resource", "span", "intrinsic"} <= names, names


def test_g12_tag_values_resource_with_extra_tag_param(skein_module, shop):
    tag = "resource.service.name"
    q = '{ span.order.items = 3 }'
    # the backend keeps the browser's raw query string: encodeURIComponent values, tag= double-encoded
    raw = browser_query([("limit", 5000), ("q", q)]) + "&tag=" + js_encode(js_encode(tag))
    resp = _strict(_get(skein_module, f"/api/v2/search/tag/{tag}/values?{raw}", BROWSER_HEADERS),
                   "SearchTagValuesV2Response")
    assert {(v.type, v.value) for v in resp.tagValues} == {("string", "shop-orders")}


def test_g12_tag_values_intrinsic_with_extra_tag_param(skein_module, shop):
    raw = browser_query([("limit", 5000), ("start", shop["start"]), ("end", shop["end"]), ("tag", "status")])
    resp = _strict(_get(skein_module, f"/api/v2/search/tag/status/values?{raw}", BROWSER_HEADERS),
                   "SearchTagValuesV2Response")
    assert "error" in {v.value for v in resp.tagValues}


def _v2_proto(sk, tid: str):
    return _get(sk, f"/api/v2/traces/{tid}", BACKEND_PROTO)


def test_g12_trace_by_id_v2_protobuf(skein_module, shop):
    r = _v2_proto(skein_module, shop["tid"])
    assert r.status_code == 200, r.text[:300]
    m = tempo_pb2().TraceByIDResponse()
    m.ParseFromString(r.content)
    assert_no_unknown_fields(m)
    assert m.status == tempo_pb2().COMPLETE
    spans = [s for rs in m.trace.resourceSpans for ss in rs.scope_spans for s in ss.spans]
    assert {s.span_id.hex() for s in spans} == set(shop["spans"])
    for s in spans:
        want = shop["spans"][s.span_id.hex()]
        assert (s.name, s.parent_span_id, s.start_time_unix_nano, s.end_time_unix_nano, s.status.code) == (
            want.name, want.parent_span_id, want.start_time_unix_nano, want.end_time_unix_nano, want.status.code)
    services = {kv.value.string_value for rs in m.trace.resourceSpans for kv in rs.resource.attributes
                if kv.key == "service.name"}
    assert services == {"shop-gateway", "shop-orders"}


def test_g12_trace_by_id_with_time_shift_params(skein_module, shop):
    r = _get(skein_module, f"/api/v2/traces/{shop['tid']}?start={shop['start']}&end={shop['end']}", BACKEND_PROTO)
    assert r.status_code == 200, r.text[:300]


def test_g12_unknown_trace_v2_404_then_v1_404(skein_module, shop):
    tid = otlp.new_trace_id().hex()
    r2 = _v2_proto(skein_module, tid)
    assert r2.status_code == 404, r2.status_code
    assert "html" not in r2.headers.get("Content-Type", "")
    r1 = _get(skein_module, f"/api/traces/{tid}", BACKEND_PROTO)
    assert r1.status_code == 404, r1.status_code


def test_g12_uppercase_trace_id(skein_module, shop):
    r = _v2_proto(skein_module, shop["tid"].upper())
    assert r.status_code == 200, r.status_code


def test_g12_short_64bit_trace_id(skein_module, shop):
    short = shop["short_tid"][16:]
    assert len(short) == 16
    r = _v2_proto(skein_module, short)
    assert r.status_code == 200, f"16-hex trace id {short} (left-padded {shop['short_tid']}): {r.status_code}"
    m = tempo_pb2().TraceByIDResponse()
    m.ParseFromString(r.content)
    assert [s.name for rs in m.trace.resourceSpans for ss in rs.scope_spans for s in ss.spans] == ["legacy-job"]


def test_g12_search_int64_fields_are_json_strings(skein_module, shop):
    params = {"q": "{}", "start": shop["start"], "end": shop["end"], "spss": 3}
    r = _get(skein_module, "/api/search?" + go_query(params), BACKEND_JSON)
    assert r.status_code == 200
    body = r.json()
    for t in body.get("traces", []):
        assert isinstance(t["startTimeUnixNano"], str)
        for ss in t.get("spanSets", []):
            for s in ss.get("spans", []):
                assert isinstance(s["startTimeUnixNano"], str) and isinstance(s["durationNanos"], str)
    m = body.get("metrics", {})
    for k in ("inspectedBytes", "totalBlockBytes", "inspectedSpans"):
        if k in m:
            assert isinstance(m[k], str), f"metrics.{k} must be a string: {m[k]!r}"
    assert set(m) <= {"inspectedTraces", "inspectedBytes", "totalBlocks", "completedJobs", "totalJobs",
                      "totalBlockBytes", "inspectedSpans"}, sorted(m)
