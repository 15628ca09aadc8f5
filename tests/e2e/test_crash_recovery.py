"""Sustained ingest by retrying OTLP clients (gRPC, HTTP protobuf, HTTP JSON) while the collector is
`kill -9`ed at random moments, at least 20 times: after the last restart every acknowledged span
is answered exactly once, by trace id and by search.

Each client sends exports of unique spans and retries the very same export until it is
acknowledged (a timeout, a refused connection, a 5xx: all retried), so an export whose ack was
lost to a kill is sent again; some acks are also dropped on purpose (the client acts as if the
answer never arrived), so retried copies of stored spans are guaranteed. Spans with the same
trace id and span id must then be answered once. The run is seeded: SKEIN_CRASH_SEED=<n>
repeats it; the seed is printed (and in the failure message).
"""

from __future__ import annotations

import os
import random
import threading
import time

import grpc
import pytest
import requests

from support import client, otlp
from support.poll import wait_until

pytestmark = pytest.mark.slow

KILLS = 22
SPANS_PER_EXPORT = 3
LOST_ACK_RATE = 0.08  # share of acks the client ignores and retries anyway
ATTEMPT_TIMEOUT = 2.0  # seconds per attempt; then the client retries


class RetryingExporter(threading.Thread):
    """Exports new traces one after another; each one is retried until acknowledged."""

    def __init__(self, sk, via: str, seed: int, stop: threading.Event):
        super().__init__(name=f"exporter-{via}", daemon=True)
        self.sk, self.via, self.stop = sk, via, stop
        self.rng = random.Random(seed)
        self.service = f"crash-{via}"
        self.acked: dict[bytes, list[bytes]] = {}
        self.attempts = self.failures = self.dropped_acks = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.session = requests.Session()
        self.channel = client.new_grpc_channel(sk.grpc_addr, reconnect_ms=50) if via == "grpc" else None

    def _request(self):
        tid = self.rng.randbytes(16)
        t0 = otlp.now_ns() - otlp.SEC
        root = otlp.make_span(tid, f"{self.service}-root", span_id=self.rng.randbytes(8), kind=otlp.SERVER,
                              start=t0, duration=50 * otlp.MS)
        spans = [root] + [
            otlp.make_span(tid, f"{self.service}-child-{i}", span_id=self.rng.randbytes(8), parent=root.span_id,
                           kind=otlp.CLIENT, start=t0 + (i + 1) * otlp.MS, duration=otlp.MS)
            for i in range(SPANS_PER_EXPORT - 1)
        ]
        req = otlp.export_request(otlp.resource_spans({"service.name": self.service}, spans))
        return req, tid, [s.span_id for s in spans]

    def _send(self, req) -> bool:
        try:
            if self.via == "grpc":
                r = client.grpc_export(self.sk, req, timeout=ATTEMPT_TIMEOUT, channel=self.channel)
                return r.code == grpc.StatusCode.OK and r.response.partial_success.rejected_spans == 0
            post = client.post_proto if self.via == "proto" else client.post_json
            r = post(self.sk, req, timeout=ATTEMPT_TIMEOUT, session=self.session)
            return r.status_code == 200 and client.export_response(r).partial_success.rejected_spans == 0
        except requests.RequestException:
            return False

    def run(self):
        try:
            while not self.stop.is_set():
                req, tid, sids = self._request()
                while True:
                    self.attempts += 1
                    if self._send(req):
                        if self.rng.random() < LOST_ACK_RATE:
                            self.dropped_acks += 1  # as if the answer had been lost: send it again
                            continue
                        break
                    self.failures += 1
                    threading.Event().wait(0.02)  # an exporter's backoff between retries
                with self.lock:
                    self.acked[tid] = sids
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.session.close()
            if self.channel is not None:
                self.channel.close()

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def test_every_acknowledged_span_survives_repeated_kill9_exactly_once(skein_factory):
    seed = int(os.environ.get("SKEIN_CRASH_SEED") or random.randrange(2**32))
    print(f"crash-recovery seed {seed} (rerun with SKEIN_CRASH_SEED={seed})")
    rng = random.Random(seed)
    # small heads so that kills also land in flushes, WAL truncation and compaction
    sk = skein_factory("--head-max-spans", "150", "--head-max-age", "2s", "--block-target-spans", "900")
    stop = threading.Event()
    exporters = [RetryingExporter(sk, via, rng.randrange(2**32), stop) for via in ("grpc", "proto", "json")]
    for e in exporters:
        e.start()
    total = lambda: sum(e.acked_count() for e in exporters)  # noqa: E731
    started = time.monotonic()
    try:
        for k in range(KILLS):
            target = total() + rng.randint(10, 150)
            wait_until(lambda: total() >= target or any(e.error for e in exporters), timeout=30,
                       what=f"kill {k}: {target} acked exports")
            # a random moment within the ingest flow: this delay is the randomised kill point
            threading.Event().wait(rng.uniform(0, 0.08))
            sk.kill9()
            sk.start()
        target = total() + 20
        wait_until(lambda: total() >= target or any(e.error for e in exporters), timeout=30,
                   what="acks after the last restart")
    finally:
        stop.set()
        for e in exporters:
            e.join(timeout=60)
    for e in exporters:
        assert e.error is None, f"{e.name} failed: {e.error!r} (seed {seed})"
        assert not e.is_alive(), f"{e.name} could not get its last export acknowledged (seed {seed})"
    elapsed = time.monotonic() - started
    acked = {tid: sids for e in exporters for tid, sids in e.acked.items()}
    stats = {e.via: (len(e.acked), e.attempts, e.failures, e.dropped_acks) for e in exporters}
    print(f"{KILLS} kills in {elapsed:.1f}s; per client (acked, attempts, failed attempts, dropped acks): {stats}")
    assert sum(e.dropped_acks for e in exporters) > 0, "no retried copy of a stored export was sent"

    # by trace id: each acknowledged span exactly once, nothing else
    wrong = {}
    for tid, sids in acked.items():
        rss = client.wait_trace(sk, tid, min_spans=len(sids), timeout=10)
        counts = otlp.span_id_counts(rss)
        if counts != {s.hex(): 1 for s in sids}:
            wrong[tid.hex()] = counts
    assert not wrong, (f"{len(wrong)} of {len(acked)} acked traces are not answered exactly once (seed {seed}), "
                       f"e.g. {list(wrong.items())[:3]}")

    # by search: every acked trace found once, with each of its spans matched once
    for e in exporters:
        resp, _ = client.search(sk, {"q": f'{{ resource.service.name = "{e.service}" }}',
                                     "limit": str(len(e.acked) + 100), "spss": "100"})
        found: dict[str, int] = {}
        for t in resp.traces:
            tid = t.traceID.rjust(32, "0")
            assert tid not in found, f"search returns trace {tid} twice (seed {seed})"
            found[tid] = max([t.spanSet.matched] + [s.matched for s in t.spanSets])
        want = {t.hex() for t in e.acked}
        assert set(found) == want, (
            f"{e.service}: search finds {len(found)} traces, {len(want)} acked; missing "
            f"{sorted(want - set(found))[:5]}, extra {sorted(set(found) - want)[:5]} (seed {seed})")
        doubled = {t: n for t, n in found.items() if n != SPANS_PER_EXPORT}
        assert not doubled, (f"{e.service}: matched span counts != {SPANS_PER_EXPORT}: "
                             f"{list(doubled.items())[:5]} (seed {seed})")
    client.assert_healthy(sk)
