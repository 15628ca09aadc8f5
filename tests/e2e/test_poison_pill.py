"""The poison pill: 130 exports of one span carrying a 16 MiB attribute (over 2 GiB of strings,
more than an Arrow string column's 32-bit offsets can hold in one builder). The collector stays
up, keeps acknowledging normal exports during and after, `/ready` stays 200, the attribute is
stored truncated to `--max-attribute-bytes` (default 64 KiB, cut on a UTF-8 character boundary)
and counted, and both a `kill -9` and a graceful restart come back and serve everything."""

from __future__ import annotations

import time

import grpc
import pytest

from support import client, otlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PILLS = 130
PILL_BYTES = 16 << 20
MAX_ATTRIBUTE_BYTES = 64 << 10  # the default
CHAR = "€"  # 3 bytes in UTF-8: 64 KiB is not a multiple of it, so a byte cut would split a character
VALUE = CHAR * (PILL_BYTES // len(CHAR.encode()))


def _pill(i: int):
    tid = otlp.new_trace_id()
    span = otlp.make_span(tid, f"pill-{i}", kind=otlp.SERVER, start=otlp.now_ns() - otlp.SEC, duration=otlp.MS,
                          attrs={"pill.payload": VALUE, "pill.no": i})
    return otlp.export_request(otlp.resource_spans({"service.name": "poison"}, [span])), tid


def _normal(sk, i: int, expected: dict):
    req, tid, sids = otlp.simple_request(f"beside-pills-{i}", 3)
    res = client.grpc_export(sk, req)
    assert res.code == grpc.StatusCode.OK, (
        f"normal export {i} refused beside the pills: {res.code.name} {res.details!r}")
    expected[tid] = sids


def _check(sk, pills: list[bytes], normal: dict):
    for tid, sids in normal.items():
        counts = otlp.span_id_counts(client.wait_trace(sk, tid, min_spans=len(sids)))
        assert counts == {s.hex(): 1 for s in sids}, f"trace {tid.hex()}: {counts}"
    for tid in (pills[0], pills[len(pills) // 2], pills[-1]):
        spans = otlp.all_spans(client.wait_trace(sk, tid))
        assert len(spans) == 1, f"pill trace {tid.hex()} has {len(spans)} spans"
        attrs = {kv.key: kv.value for kv in spans[0].attributes}
        value = attrs["pill.payload"].string_value
        n = len(value.encode())
        assert 0 < n <= MAX_ATTRIBUTE_BYTES, f"pill attribute is {n} bytes, want at most {MAX_ATTRIBUTE_BYTES}"
        assert n > MAX_ATTRIBUTE_BYTES - len(CHAR.encode()), f"pill attribute cut to {n} bytes, far below the limit"
        assert VALUE.startswith(value), "the truncated attribute is not a prefix of the original"
        assert attrs["pill.no"].int_value >= 0, "other attributes of the span are kept"


def test_poison_pill_exports_are_truncated_and_the_collector_stays_up(skein_factory):
    # no flush by age while the pills arrive: they all meet in one head builder, as under steady load
    sk = skein_factory("--max-body-bytes", str(PILL_BYTES + (4 << 20)), "--head-max-age", "10m")
    pills: list[bytes] = []
    normal: dict = {}
    started = time.monotonic()
    for i in range(PILLS):
        req, tid = _pill(i)
        r = client.post_proto(sk, req, timeout=120)
        assert r.status_code == 200, (f"pill {i} of {PILLS} refused: HTTP {r.status_code} {r.text[:300]!r}"
                                      f" (process {'up' if sk.running() else 'exited'})")
        pills.append(tid)
        if i % 10 == 9:
            _normal(sk, i, normal)
            ready = client.api_get(sk, "/ready", timeout=10)
            assert ready.status_code == 200, f"/ready {ready.status_code} after pill {i}: {ready.text[:200]!r}"
    ingest_s = time.monotonic() - started
    _normal(sk, PILLS, normal)
    client.assert_healthy(sk)
    print(f"{PILLS} x {PILL_BYTES >> 20} MiB pills ingested in {ingest_s:.1f}s; "
          f"peak RSS {sk.proc_status('VmHWM') >> 20} MiB")
    assert client.metric_total(sk, "skein_attributes_truncated_total") >= PILLS
    _check(sk, pills, normal)

    started = time.monotonic()
    sk.kill9()
    sk.start()  # replay meets the same pills and must not crash-loop
    print(f"restart after kill -9 ready in {time.monotonic() - started:.1f}s")
    client.assert_healthy(sk)
    _check(sk, pills, normal)
    _normal(sk, PILLS + 1, normal)
    assert sk.stop() == 0, f"graceful stop failed\n{sk.log_tail()}"
    sk.start()
    client.assert_healthy(sk)
    _check(sk, pills, normal)
