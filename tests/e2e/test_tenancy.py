"""Tenants (X-Scope-OrgID / gRPC metadata x-scope-orgid) see only their own data, on every read path."""

from __future__ import annotations

import time

import pytest

from support import client, otlp

A, B, C = "tenant-a", "tenant-b", "tenant-c"


@pytest.fixture(scope="module")
def data(skein_module):
    sk = skein_module
    out = {}
    # tenant A over HTTP/protobuf, tenant C over gRPC metadata, default tenant over HTTP/JSON
    for tenant, service, via in ((A, "svc-only-in-a", "proto"), (C, "svc-only-in-c", "grpc"),
                                 (None, "svc-only-in-default", "json")):
        tag_key = f"only_in_{(tenant or 'default').replace('-', '_')}"
        req, tid, sids = otlp.simple_request(service, 2, attrs={tag_key: f"value-{tenant}"})
        client.export_ok(sk, req, via=via, tenant=tenant)
        out[tenant] = {"tid": tid, "service": service, "tag": tag_key, "value": f"value-{tenant}", "n": len(sids)}
    for tenant, d in out.items():
        client.wait_trace(sk, d["tid"], tenant=tenant, min_spans=d["n"])
    return out


def _window():
    now = int(time.time())
    return {"start": str(now - 3600), "end": str(now + 60)}


def _search_ids(sk, tenant, q):
    resp, _ = client.search(sk, {"q": q, **_window()}, tenant=tenant)
    return {t.traceID.rjust(32, "0") for t in resp.traces}


def _tags(sk, tenant):
    r = client.api_get(sk, "/api/v2/search/tags", tenant=tenant)
    assert r.status_code == 200, r.text
    v2 = {t for s in r.json().get("scopes", []) for t in s.get("tags", [])}
    r1 = client.api_get(sk, "/api/search/tags", tenant=tenant)
    assert r1.status_code == 200, r1.text
    return v2, set(r1.json().get("tagNames", []))


def _service_values(sk, tenant):
    r = client.api_get(sk, "/api/v2/search/tag/resource.service.name/values", tenant=tenant)
    assert r.status_code == 200, r.text
    v2 = {v.get("value") for v in r.json().get("tagValues", [])}
    r1 = client.api_get(sk, "/api/search/tag/service.name/values", tenant=tenant)
    assert r1.status_code == 200, r1.text
    return v2, set(r1.json().get("tagValues", []))


@pytest.mark.parametrize("owner", [A, C, None], ids=["a", "c-via-grpc", "default"])
def test_owner_sees_its_trace_everywhere(skein_module, data, owner):
    sk, d = skein_module, data[owner]
    tid = d["tid"].hex()
    for fn in (client.trace_v2_json, client.trace_v2_proto, client.trace_v1_json, client.trace_v1_proto):
        r = fn(sk, tid, owner)
        assert r.status_code == 200, f"{fn.__name__} as {owner}: {r.status_code}"
    assert tid in _search_ids(sk, owner, f'{{ resource.service.name = "{d["service"]}" }}')
    assert tid in _search_ids(sk, owner, "{}")
    v2, v1 = _tags(sk, owner)
    assert d["tag"] in v2 and d["tag"] in v1
    v2, v1 = _service_values(sk, owner)
    assert d["service"] in v2 and d["service"] in v1
    r = client.api_get(sk, f"/api/v2/search/tag/span.{d['tag']}/values", tenant=owner)
    assert d["value"] in {v.get("value") for v in r.json().get("tagValues", [])}


@pytest.mark.parametrize(
    "owner,reader",
    [(A, B), (A, C), (A, None), (C, A), (None, A), (None, B), (A, "TENANT-A")],
    ids=["a-by-b", "a-by-c", "a-by-default", "c-by-a", "default-by-a", "default-by-b", "a-by-uppercase"],
)
def test_other_tenants_cannot_see_it(skein_module, data, owner, reader):
    sk, d = skein_module, data[owner]
    tid = d["tid"].hex()
    for fn in (client.trace_v2_json, client.trace_v2_proto, client.trace_v1_json, client.trace_v1_proto):
        r = fn(sk, tid, reader)
        assert r.status_code == 404, f"{fn.__name__}: {reader} read {owner}'s trace: {r.status_code}"
    assert tid not in _search_ids(sk, reader, "{}")
    assert tid not in _search_ids(sk, reader, f'{{ resource.service.name = "{d["service"]}" }}')
    assert not _search_ids(sk, reader, f'{{ span.{d["tag"]} = "{d["value"]}" }}')
    legacy = client.api_get(sk, "/api/search", params={"tags": f"service.name={d['service']}"}, tenant=reader)
    assert legacy.status_code == 200 and not legacy.json().get("traces"), legacy.text[:300]
    v2, v1 = _tags(sk, reader)
    assert d["tag"] not in v2 and d["tag"] not in v1, f"{reader} sees {owner}'s tag name"
    v2, v1 = _service_values(sk, reader)
    assert d["service"] not in v2 and d["service"] not in v1, f"{reader} sees {owner}'s service name"
    r = client.api_get(sk, f"/api/v2/search/tag/span.{d['tag']}/values", tenant=reader)
    assert r.status_code == 200
    assert not r.json().get("tagValues"), f"{reader} sees {owner}'s tag values: {r.text[:300]}"


def test_empty_tenant_header_is_the_default_tenant_or_rejected(skein_module, data):
    """An empty X-Scope-OrgID must never widen access: it reads as the default tenant or is refused."""
    sk = skein_module
    r = client.trace_v2_json(sk, data[A]["tid"].hex(), "")
    assert r.status_code in (400, 401, 404), r.status_code


def test_same_trace_id_in_two_tenants_stays_separate(skein_module):
    sk = skein_module
    tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - 30 * otlp.SEC
    spans = {}
    for tenant in ("shared-id-x", "shared-id-y"):
        s = otlp.make_span(tid, f"root-of-{tenant}", kind=otlp.SERVER, start=t0, duration=otlp.MS,
                           attrs={"owner": tenant})
        spans[tenant] = s
        client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": tenant}, [s])), tenant=tenant)
    for tenant, s in spans.items():
        rss = client.wait_trace(sk, tid, tenant=tenant, min_spans=1)
        assert otlp.span_id_counts(rss) == {s.span_id.hex(): 1}, f"{tenant} sees spans of the other tenant"
        resp, _ = client.search(sk, {"q": "{}", **_window()}, tenant=tenant)
        hit = [t for t in resp.traces if t.traceID.rjust(32, "0") == tid.hex()]
        assert len(hit) == 1 and hit[0].rootServiceName == tenant, [(t.traceID, t.rootServiceName) for t in hit]
