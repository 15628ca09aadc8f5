"""Malformed, oversized, hostile and partially invalid input is rejected precisely, and the collector stays healthy.

After every rejection: `/ready` is 200, a good export right after is stored, and a rejected
request's valid-looking spans are not stored (nothing half-written).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
import zlib

import grpc
import pytest

from support import client, otlp

LIMIT = 1024 * 1024  # --max-body-bytes for the module's collector
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def sk(skein_module_factory):
    return skein_module_factory("--max-body-bytes", str(LIMIT))


def _good_export_still_works(skein) -> None:
    client.assert_healthy(skein)
    req, tid, sids = otlp.simple_request("after-bad-input", 2)
    client.export_ok(skein, req, via="proto")
    rss = client.wait_trace(skein, tid, min_spans=2)
    assert sorted(otlp.span_id_counts(rss)) == sorted(s.hex() for s in sids)


def _assert_not_stored(skein, trace_id: bytes) -> None:
    """Call only after a later good export became visible (so the rejected one had its chance)."""
    for fn in (client.trace_v2_json, client.trace_v1_json):
        r = fn(skein, trace_id.hex())
        assert r.status_code == 404, (
            f"spans of a rejected request were stored: {fn.__name__} -> {r.status_code} {r.text[:300]!r}"
        )


def _big_request(approx_bytes: int, service="oversize"):
    """A valid request whose encoding is about `approx_bytes` (one span with a large, compressible attribute)."""
    tid = otlp.new_trace_id()
    span = otlp.make_span(tid, "big", kind=otlp.SERVER, start=otlp.now_ns() - otlp.SEC, duration=otlp.MS,
                          attrs={"blob": "x" * approx_bytes})
    return otlp.export_request(otlp.resource_spans({"service.name": service}, [span])), tid


# ---- malformed bodies ------------------------------------------------------------------
GARBAGE_PROTO = {
    "truncated-length": b"\x0a\x10\x01",
    "invalid-wire-type": b"\x0f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    "text": b"this is definitely not protobuf",
}


@pytest.mark.parametrize("name", sorted(GARBAGE_PROTO))
def test_garbage_protobuf_is_400(sk, name):
    r = client.post_proto(sk, GARBAGE_PROTO[name])
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)


def test_valid_protobuf_with_trailing_garbage_is_400_and_not_stored(sk):
    req, tid, _ = otlp.simple_request("trailing-garbage", 3)
    body = req.SerializeToString() + b"\x0a\x05\x01"  # a field that claims 5 bytes and has 1
    r = client.post_proto(sk, body)
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)
    _assert_not_stored(sk, tid)


GARBAGE_JSON = {
    "not-json": b"{not json",
    "wrong-type": b'{"resourceSpans": "nope"}',
    "array-top-level": b"[1, 2, 3]",
    "int-too-big": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"99999999999999999999999"}]}]}]}',
}


@pytest.mark.parametrize("name", sorted(GARBAGE_JSON))
def test_garbage_json_is_400(sk, name):
    r = client.post_json(sk, GARBAGE_JSON[name])
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)


def test_truncated_json_is_400_and_not_stored(sk):
    req, tid, _ = otlp.simple_request("truncated-json", 3)
    body = json.dumps(otlp.message_to_otlp_json(req)).encode()
    r = client.post_json(sk, body[: len(body) - 3])
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)
    _assert_not_stored(sk, tid)


def test_json_unknown_fields_are_ignored(sk):
    """OTLP/JSON receivers must ignore unknown fields (forward compatibility)."""
    req, tid, sids = otlp.simple_request("json-unknown-fields", 2)
    body = otlp.message_to_otlp_json(req)
    body["someFutureField"] = {"x": 1}
    body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["futureSpanField"] = "y"
    r = client.post_json(sk, body)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    client.wait_trace(sk, tid, min_spans=2)


def test_empty_export_is_accepted(sk):
    for r in (client.post_proto(sk, b""), client.post_json(sk, b"{}")):
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    res = client.grpc_export(sk, b"")
    assert res.code == grpc.StatusCode.OK, res


def test_invalid_gzip_is_400(sk):
    req, tid, _ = otlp.simple_request("bad-gzip", 1)
    r = sk.session.post(
        sk.otlp_http_url + "/v1/traces",
        data=req.SerializeToString(),  # claims gzip, is not
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)
    _assert_not_stored(sk, tid)


def test_unsupported_content_type_is_415(sk):
    req, _, _ = otlp.simple_request("bad-ctype", 1)
    r = client.post_traces(sk, req.SerializeToString(), "text/plain")
    assert r.status_code == 415, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)


def test_garbage_grpc_message_is_invalid_argument(sk):
    for body in GARBAGE_PROTO.values():
        res = client.grpc_export(sk, body)
        assert res.code == grpc.StatusCode.INVALID_ARGUMENT, f"{body!r}: {res.code} {res.details!r}"
    _good_export_still_works(sk)


# ---- invalid ids: rejected span by span ----------------------------------------------------
BAD_IDS = {
    "zero-span-id": dict(span_id=b"\x00" * 8),
    "short-span-id": dict(span_id=b"\x01\x02\x03\x04"),
    "long-span-id": dict(span_id=b"\x01" * 9),
    "empty-span-id": dict(span_id=b""),
    "zero-trace-id": dict(trace_id=b"\x00" * 16),
    "short-trace-id": dict(trace_id=b"\x01" * 8),
    "long-trace-id": dict(trace_id=b"\x02" * 17),
    "empty-trace-id": dict(trace_id=b""),
}


def _request_with_one_bad_span(variant: str):
    tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - 2 * otlp.SEC
    good1 = otlp.make_span(tid, "good-1", kind=otlp.SERVER, start=t0, duration=5 * otlp.MS)
    good2 = otlp.make_span(tid, "good-2", parent=good1.span_id, start=t0 + otlp.MS, duration=otlp.MS)
    bad = otlp.make_span(tid, "bad", parent=good1.span_id, start=t0 + otlp.MS, duration=otlp.MS)
    for k, v in BAD_IDS[variant].items():
        setattr(bad, k, v)
    # the bad span sits between the good ones, and a second resource holds more good spans
    tid2 = otlp.new_trace_id()
    good3 = otlp.make_span(tid2, "good-3", kind=otlp.SERVER, start=t0, duration=otlp.MS)
    req = otlp.export_request(
        otlp.resource_spans({"service.name": f"bad-ids-{variant}"}, [good1, bad, good2]),
        otlp.resource_spans({"service.name": f"bad-ids-{variant}-other"}, [good3]),
    )
    return req, {tid: [good1.span_id, good2.span_id], tid2: [good3.span_id]}


def _post_json_with_bad_span(sk, req):
    body = otlp.message_to_otlp_json(req)
    # message_to_otlp_json omits empty ids; an explicit empty string must be handled the same
    return client.post_json(sk, body)


@pytest.mark.parametrize("via", ["proto", "json", "grpc"])
@pytest.mark.parametrize("variant", sorted(BAD_IDS))
def test_span_with_invalid_id_is_rejected_alone(sk, variant, via):
    req, good = _request_with_one_bad_span(variant)
    if via == "grpc":
        res = client.grpc_export(sk, req)
        assert res.code == grpc.StatusCode.OK, f"{res.code} {res.details!r}"
        out = res.response
    else:
        r = client.post_proto(sk, req) if via == "proto" else _post_json_with_bad_span(sk, req)
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
        out = client.export_response(r)
    assert out.HasField("partial_success"), f"no partial_success in {out}"
    assert out.partial_success.rejected_spans == 1, out
    assert out.partial_success.error_message, "partial_success.error_message must say why"
    for tid, sids in good.items():
        rss = client.wait_trace(sk, tid, min_spans=len(sids))
        assert otlp.span_id_counts(rss) == {s.hex(): 1 for s in sids}, (
            f"good spans of trace {tid.hex()} not stored exactly (or the bad one leaked in)"
        )
    client.assert_healthy(sk)


def test_rejected_spans_counted_across_several_bad_spans(sk):
    tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - otlp.SEC
    spans = [otlp.make_span(tid, f"s{i}", start=t0, duration=otlp.MS) for i in range(5)]
    spans[1].span_id = b"\x00" * 8
    spans[3].trace_id = b"\x00" * 16
    r = client.post_proto(sk, otlp.export_request(otlp.resource_spans({"service.name": "multi-bad"}, spans)))
    out = client.export_response(r)
    assert out.partial_success.rejected_spans == 2, out
    rss = client.wait_trace(sk, tid, min_spans=3)
    assert len(otlp.all_spans(rss)) == 3


# ---- size limits -------------------------------------------------------------------------
def test_body_just_under_limit_is_accepted(sk):
    req, tid = _big_request(LIMIT - 64 * 1024)
    assert len(req.SerializeToString()) < LIMIT
    client.export_ok(sk, req, via="proto")
    client.wait_trace(sk, tid)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_oversize_http_body_is_413_and_not_stored(sk, compressed):
    req, tid = _big_request(2 * LIMIT)
    r = client.post_proto(sk, req, gzip=compressed)
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)
    _assert_not_stored(sk, tid)


def test_oversize_json_body_is_413(sk):
    req, tid = _big_request(2 * LIMIT)
    r = client.post_json(sk, req, gzip=True)
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]!r}"
    _good_export_still_works(sk)
    _assert_not_stored(sk, tid)


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_oversize_grpc_message_is_resource_exhausted(sk, compression):
    req, tid = _big_request(2 * LIMIT)
    res = client.grpc_export(sk, req, compression=compression)
    assert res.code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{res.code} {res.details!r}"
    _good_export_still_works(sk)
    _assert_not_stored(sk, tid)


# ---- gzip bomb ---------------------------------------------------------------------------
BOMB_INFLATED = 1024 * MiB


@pytest.fixture(scope="session")
def gzip_bomb(tmp_path_factory) -> bytes:
    """1 GiB of zeros, gzip-compressed (~1 MB). Built once per session, streamed from memory."""
    path: pathlib.Path = tmp_path_factory.mktemp("bomb") / "bomb.gz"
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31 = gzip container
    chunk = b"\x00" * MiB
    with open(path, "wb") as f:
        for _ in range(BOMB_INFLATED // MiB):
            f.write(comp.compress(chunk))
        f.write(comp.flush())
    data = path.read_bytes()
    assert len(data) < 2 * MiB
    return data


def _post_bomb(skein, bomb: bytes, content_type: str):
    return skein.session.post(
        skein.otlp_http_url + "/v1/traces",
        data=bomb,
        headers={"Content-Type": content_type, "Content-Encoding": "gzip"},
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_gzip_bomb_is_rejected_without_inflating_memory(skein_factory, gzip_bomb, content_type):
    sk = skein_factory()  # default limit (16 MiB)
    client.assert_healthy(sk)
    hwm_before = sk.proc_status("VmHWM")
    r = _post_bomb(sk, gzip_bomb, content_type)
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]!r}"
    client.assert_healthy(sk)
    grown = sk.proc_status("VmHWM") - hwm_before
    assert grown < 200 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB while rejecting a 1 GiB gzip bomb"
    _good_export_still_works(sk)


def test_gzip_bomb_against_small_limit(sk, gzip_bomb):
    hwm_before = sk.proc_status("VmHWM")
    r = _post_bomb(sk, gzip_bomb, "application/x-protobuf")
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]!r}"
    grown = sk.proc_status("VmHWM") - hwm_before
    assert grown < 200 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
    _good_export_still_works(sk)


# ---- invalid TraceQL -----------------------------------------------------------------------
BAD_TRACEQL = [
    "{ .x = }",
    '{ span.x > 5',
    '{ resource.service.name = "a" } &&',
    "not traceql at all",
    '{ name =~ "unterminated }',
    "{ duration > 5parsecs }",
]


@pytest.mark.parametrize("q", BAD_TRACEQL)
def test_invalid_traceql_is_400_with_position(sk, q):
    r = client.api_get(sk, "/api/search", params={"q": q})
    assert r.status_code == 400, f"{q!r}: {r.status_code} {r.text[:300]!r}"
    m = re.search(r"line (\d+), col (\d+)", r.text)
    assert m, f"{q!r}: error message has no 'line 1, col N' position: {r.text[:300]!r}"
    assert m.group(1) == "1"
    assert 1 <= int(m.group(2)) <= len(q) + 1, f"{q!r}: column {m.group(2)} is outside the query"
    client.assert_healthy(sk)


def test_invalid_search_params_are_400(sk):
    for params in ({"q": "{}", "limit": "abc"}, {"q": "{}", "start": "yesterday"},
                   {"tags": "service.name=a", "minDuration": "fast"}):
        r = client.api_get(sk, "/api/search", params=params)
        assert r.status_code == 400, f"{params}: {r.status_code} {r.text[:300]!r}"
    client.assert_healthy(sk)


def test_invalid_trace_id_is_400(sk):
    for bad in ("not-hex-at-all", "zz" * 16, "0" * 33 + "1"):
        r = client.api_get(sk, f"/api/v2/traces/{bad}")
        assert r.status_code == 400, f"{bad}: {r.status_code} {r.text[:300]!r}"
    client.assert_healthy(sk)
