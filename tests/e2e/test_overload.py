"""Overload: beyond --max-inflight-bytes the write path answers HTTP 429 with Retry-After (gRPC
UNAVAILABLE), rejects those requests whole, keeps every acknowledged one, and recovers."""

from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import pytest

from support import client, otlp

INFLIGHT = 300_000
REQUESTS = 64
BLOB = 200_000  # bytes per request, so two in flight already exceed the budget


def _request(i: int):
    tid = otlp.new_trace_id()
    span = otlp.make_span(tid, f"burst-{i}", kind=otlp.SERVER, start=otlp.now_ns() - otlp.SEC, duration=otlp.MS,
                          attrs={"blob": "y" * BLOB})
    return otlp.export_request(otlp.resource_spans({"service.name": "overload"}, [span])), tid


def _send(sk, i):
    req, tid = _request(i)
    if i % 2:
        r = client.post_proto(sk, req)
        return {"via": "http", "tid": tid, "req": req, "ok": r.status_code == 200,
                "overloaded": r.status_code == 429, "status": r.status_code,
                "retry_after": r.headers.get("Retry-After"), "body": r.text[:200]}
    g = client.grpc_export(sk, req)
    return {"via": "grpc", "tid": tid, "req": req, "ok": g.code == grpc.StatusCode.OK,
            "overloaded": g.code == grpc.StatusCode.UNAVAILABLE, "status": g.code.name, "body": g.details[:200]}


@pytest.fixture(scope="module")
def burst(skein_module_factory):
    sk = skein_module_factory("--max-inflight-bytes", str(INFLIGHT))
    results = []
    for _ in range(10):  # bursts until both protocols were refused; the first usually suffices
        with cf.ThreadPoolExecutor(32) as ex:
            results += list(ex.map(lambda i: _send(sk, i), range(REQUESTS)))
        if {r["via"] for r in results if r["overloaded"]} == {"http", "grpc"}:
            break
    return sk, results


def _overloaded(results, via=None):
    """The refused requests; the tests below are about refusals, so there must be some."""
    refused = [r for r in results if r["overloaded"] and via in (None, r["via"])]
    assert refused, f"no {via or 'request'} was refused as overloaded in {len(results)} concurrent requests"
    return refused


def test_overload_is_signalled_with_retryable_status(burst):
    sk, results = burst
    unexpected = [(r["via"], r["status"], r["body"]) for r in results if not (r["ok"] or r["overloaded"])]
    assert not unexpected, f"only success or overload answers are acceptable: {unexpected[:5]}"
    _overloaded(results, "http")
    _overloaded(results, "grpc")
    assert any(r["ok"] for r in results), "no request at all was admitted"


def test_429_carries_retry_after(burst):
    _, results = burst
    http429 = _overloaded(results, "http")
    bad = [r["retry_after"] for r in http429 if not (r["retry_after"] or "").strip().isdigit()]
    assert not bad, f"429 responses need Retry-After: <seconds>; got {bad[:5]}"


def test_acknowledged_requests_are_stored_and_rejected_ones_are_not(burst):
    sk, results = burst
    accepted = [r for r in results if r["ok"]]
    rejected = _overloaded(results)
    for r in accepted:
        client.wait_trace(sk, r["tid"], min_spans=1)
    for r in rejected:
        resp = client.trace_v2_json(sk, r["tid"].hex())
        assert resp.status_code == 404, f"an overloaded ({r['via']} {r['status']}) request was partly stored"


def test_collector_recovers_and_retries_succeed(burst):
    sk, results = burst
    client.assert_healthy(sk)
    rejected = _overloaded(results)[:4]
    for r in rejected:  # retried one at a time, as an exporter's backoff would
        deadline = time.monotonic() + 15
        while True:
            if r["via"] == "http":
                resp = client.post_proto(sk, r["req"])
                done = resp.status_code == 200
            else:
                done = client.grpc_export(sk, r["req"]).code == grpc.StatusCode.OK
            if done:
                break
            assert time.monotonic() < deadline, "a lone retry is still refused after 15 s"
            time.sleep(0.2)  # exporter-style backoff between retries, not synchronisation
        client.wait_trace(sk, r["tid"], min_spans=1)
