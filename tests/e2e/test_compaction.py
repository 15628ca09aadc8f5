"""Head flushes and block compaction neither lose, duplicate nor mix data (across traces split over
blocks, tenants, restarts). Uses tiny flush thresholds so a few spans make several blocks."""

from __future__ import annotations

import pytest

from support import client, otlp
from support.poll import wait_until

A, B = "compact-a", "compact-b"


@pytest.fixture(scope="module")
def compacted(skein_module_factory):
    # Target 16: each tenant's small blocks (2-3 spans each, 8-13 in all) add up to half a target.
    sk = skein_module_factory("--head-max-spans", "2", "--block-target-spans", "16")
    split_tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - 60 * otlp.SEC
    root = otlp.make_span(split_tid, "split-root", kind=otlp.SERVER, start=t0, duration=900 * otlp.MS)
    expected = {A: {split_tid: [root.span_id]}, B: {}}
    client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": "split-svc"}, [root])), tenant=A)
    for wave in range(4):
        # one more span of the split trace per wave, so it ends up spread over every block
        child = otlp.make_span(split_tid, f"split-child-{wave}", parent=root.span_id, start=t0 + (wave + 1) * otlp.MS,
                               duration=otlp.MS)
        expected[A][split_tid].append(child.span_id)
        client.export_ok(sk, otlp.export_request(otlp.resource_spans({"service.name": "split-svc"}, [child])),
                         tenant=A)
        for tenant in (A, B):
            req, tid, sids = otlp.simple_request(f"{tenant}-svc-{wave}", 2, attrs={f"{tenant.replace('-', '_')}_attr": wave})
            client.export_ok(sk, req, tenant=tenant, via="grpc")
            expected[tenant][tid] = sids
        # wait for this wave to be flushed (head empty) so each wave becomes its own block per tenant
        wait_until(lambda: client.metric_total(sk, "skein_head_spans") == 0, timeout=15,
                   what=f"wave {wave} flushed (skein_head_spans == 0)")
    blocks_before = client.metric_total(sk, "skein_blocks")
    assert blocks_before >= 8, f"expected >= 4 small blocks per tenant before compaction, have {blocks_before}"
    wait_until(lambda: client.metric_total(sk, "skein_compactions_total") >= 1, timeout=40,
               what="a compaction (runs every ~10 s)")
    return sk, expected


def _exactly_once(sk, expected):
    for tenant, traces in expected.items():
        for tid, sids in traces.items():
            rss = client.wait_trace(sk, tid, tenant=tenant, min_spans=len(sids))
            counts = otlp.span_id_counts(rss)
            assert counts == {s.hex(): 1 for s in sids}, f"{tenant} trace {tid.hex()}: {counts}"


def test_compaction_keeps_every_span_exactly_once(compacted):
    sk, expected = compacted
    _exactly_once(sk, expected)


def test_compaction_does_not_mix_tenants(compacted):
    sk, expected = compacted
    for owner, other in ((A, B), (B, A)):
        for tid in expected[owner]:
            assert client.trace_v2_json(sk, tid.hex(), other).status_code == 404, f"{other} reads {owner}'s trace"
        resp, _ = client.search(sk, {"q": "{}", "limit": "100"}, tenant=other)
        leaked = {t.traceID.rjust(32, "0") for t in resp.traces} & {t.hex() for t in expected[owner]}
        assert not leaked, f"{other} finds {owner}'s traces after compaction: {leaked}"
        r = client.api_get(sk, "/api/search/tags", tenant=other)
        assert f"{owner.replace('-', '_')}_attr" not in r.json().get("tagNames", []), r.text


def test_search_after_compaction_sees_split_trace_once_with_its_root(compacted):
    sk, expected = compacted
    resp, _ = client.search(sk, {"q": '{ resource.service.name = "split-svc" }', "limit": "100"}, tenant=A)
    split = [t for t in resp.traces if t.traceID.rjust(32, "0") in {x.hex() for x in expected[A]}]
    assert len(split) == 1, [t.traceID for t in resp.traces]
    assert split[0].rootTraceName == "split-root" and split[0].rootServiceName == "split-svc"
    assert split[0].durationMs == 900


@pytest.mark.parametrize("graceful", [False, True], ids=["kill9", "graceful"])
def test_restart_after_compaction_keeps_spans_exactly_once(compacted, graceful):
    sk, expected = compacted
    sk.restart(graceful=graceful)
    _exactly_once(sk, expected)
