"""An acknowledged export survives `kill -9` and graceful restarts, and replay stores it exactly once."""

from __future__ import annotations

import pytest

from support import client, otlp
from support.poll import wait_until


def _export(skein, via: str, service: str, n_spans: int):
    req, tid, sids = otlp.simple_request(service, n_spans)
    client.export_ok(skein, req, via=via)
    return tid, sids


def _assert_exactly_once(skein, expected: dict[bytes, list[bytes]]):
    """Every trace is readable and holds each sent span exactly once (and nothing else)."""
    for tid, sids in expected.items():
        rss = client.wait_trace(skein, tid, min_spans=len(sids), timeout=30)
        counts = otlp.span_id_counts(rss)
        want = {s.hex(): 1 for s in sids}
        assert counts == want, f"trace {tid.hex()}: span id counts {counts}, want each of {sorted(want)} once"


def test_acknowledged_export_survives_kill9(skein):
    tid, sids = _export(skein, "grpc", "durable-kill9", 5)
    skein.kill9()  # immediately after the ack: nothing may still be only in memory
    skein.start()
    _assert_exactly_once(skein, {tid: sids})


@pytest.mark.parametrize("via", ["grpc", "proto", "json"])
def test_several_exports_survive_repeated_kill9_exactly_once(skein, via):
    expected: dict[bytes, list[bytes]] = {}
    for round_no in range(3):
        for i in range(3):
            tid, sids = _export(skein, via, f"durable-{via}-r{round_no}-{i}", 2 + i)
            expected[tid] = sids
        skein.kill9()
        skein.start()
        # replay must be idempotent: earlier rounds are replayed again (or read from blocks) without duplicates
        _assert_exactly_once(skein, expected)


def test_spans_split_across_exports_of_one_trace_survive_kill9(skein):
    tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - 10 * otlp.SEC
    root = otlp.make_span(tid, "root", kind=otlp.SERVER, start=t0, duration=50 * otlp.MS)
    sids = [root.span_id]
    client.export_ok(skein, otlp.export_request(otlp.resource_spans({"service.name": "split"}, [root])), via="grpc")
    for i in range(4):
        child = otlp.make_span(tid, f"child-{i}", parent=root.span_id, start=t0 + i * otlp.MS, duration=otlp.MS)
        sids.append(child.span_id)
        client.export_ok(skein, otlp.export_request(otlp.resource_spans({"service.name": "split"}, [child])),
                         via="proto")
    skein.kill9()
    skein.start()
    _assert_exactly_once(skein, {tid: sids})


def test_graceful_stop_and_restart_keeps_spans_exactly_once(skein):
    expected = {}
    for i in range(3):
        tid, sids = _export(skein, "proto", f"durable-graceful-{i}", 3)
        expected[tid] = sids
    code = skein.stop()
    assert code == 0, f"graceful stop exited with {code}\n{skein.log_tail()}"
    skein.start()
    _assert_exactly_once(skein, expected)
    # and once more, after new writes on top of the recovered state
    tid, sids = _export(skein, "json", "durable-graceful-after", 2)
    expected[tid] = sids
    skein.restart(graceful=True)
    _assert_exactly_once(skein, expected)


def test_kill9_then_graceful_restart_keeps_spans_exactly_once(skein):
    tid1, s1 = _export(skein, "grpc", "durable-mixed-1", 3)
    skein.kill9()
    skein.start()
    tid2, s2 = _export(skein, "grpc", "durable-mixed-2", 3)
    skein.restart(graceful=True)
    tid3, s3 = _export(skein, "proto", "durable-mixed-3", 3)
    skein.kill9()
    skein.start()
    _assert_exactly_once(skein, {tid1: s1, tid2: s2, tid3: s3})


def test_replayed_spans_are_searchable(skein):
    tid, sids = _export(skein, "grpc", "durable-search", 2)
    skein.kill9()
    skein.start()

    def found():
        resp, _ = client.search(skein, {"q": '{ resource.service.name = "durable-search" }'})
        return [t.traceID for t in resp.traces]

    ids = wait_until(found, timeout=15, what="replayed trace in search")
    assert [i.lstrip("0") for i in ids] == [tid.hex().lstrip("0")], ids


@pytest.mark.parametrize("graceful", [False, True], ids=["kill9", "graceful"])
def test_restart_after_flush_to_blocks_keeps_spans_exactly_once(skein_factory, graceful):
    """Spans already flushed to blocks must not come back a second time from WAL replay."""
    sk = skein_factory("--head-max-spans", "4")
    expected = {}
    for i in range(4):
        tid, sids = _export(sk, "grpc", f"durable-blocks-{i}", 3)
        expected[tid] = sids
    client.wait_flushed(sk, min_blocks=1)
    # some spans in blocks, some still only in the head/WAL
    tid, sids = _export(sk, "proto", "durable-blocks-tail", 1)
    expected[tid] = sids
    _assert_exactly_once(sk, expected)
    sk.restart(graceful=graceful)
    _assert_exactly_once(sk, expected)
    # a second restart must not duplicate anything either
    sk.restart(graceful=not graceful)
    _assert_exactly_once(sk, expected)
