"""`/ready` tells the truth about start-up: while a big WAL from a previous run is replayed the
HTTP port already answers, `/ready` is 503 naming the replay (and `skein_ready` is 0), and once
replay is done it is 200 and everything replayed is queryable. `/healthz` stays 200 meanwhile:
replaying is progress, not a wedged process."""

from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import requests

from support import client, otlp

SPANS_PER_EXPORT = 1000
EXPORTS = 150  # enough WAL for a replay that lasts well beyond one poll interval
# Nothing leaves the head, so all of it is replayed from the WAL at the next start.
ARGS = ("--head-max-spans", "100000000", "--head-max-age", "3600s")


def _big_request(i: int):
    tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - 10 * otlp.SEC
    spans = [
        otlp.make_span(tid, f"replay-{i}-{j}", kind=otlp.INTERNAL, start=t0 + j * otlp.MS, duration=otlp.MS,
                       attrs={"http.route": f"/r/{j % 17}", "n": j})
        for j in range(SPANS_PER_EXPORT)
    ]
    return otlp.export_request(otlp.resource_spans({"service.name": "replay-load"}, spans))


def _answer(sk, path: str):
    try:
        r = sk.session.get(sk.http_url + path, timeout=5)
        return r.status_code, r.text
    except requests.RequestException as e:
        return None, type(e).__name__


def test_ready_is_503_during_a_long_replay_and_200_after(skein_factory, monkeypatch):
    sk = skein_factory(*ARGS)
    with cf.ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda i: client.grpc_export(sk, _big_request(i)), range(EXPORTS)))
    refused = [(r.code, r.details) for r in results if r.code != grpc.StatusCode.OK]
    assert not refused, f"{len(refused)} exports refused: {refused[:3]}"
    marker, marker_tid, marker_sids = otlp.simple_request("replay-marker", 3)
    client.export_ok(sk, marker, via="grpc")
    sk.kill9()

    # Start without waiting for readiness: the point is what /ready says before it.
    monkeypatch.setattr(sk, "wait_ready", lambda timeout=None: None)
    started = time.monotonic()
    sk.start()
    seen: list[tuple[float, int | None, str]] = []
    replay_metrics: list[str] = []
    live_during_replay: list[int | None] = []

    def ready():
        assert sk.running(), f"skein exited during replay\n{sk.log_tail()}"
        status, text = _answer(sk, "/ready")
        seen.append((time.monotonic() - started, status, text.strip()))
        if status == 503 and not replay_metrics:
            m = _answer(sk, "/metrics")
            replay_metrics.append(m[1] if m[0] == 200 else f"HTTP {m[0]}")
            live_during_replay.append(_answer(sk, "/healthz")[0])
        return status == 200

    # A steady 20 ms poll (wait_until backs off, and could step over a short replay).
    deadline = started + 120
    while not ready():
        assert time.monotonic() < deadline, f"/ready not 200 within 120 s: {seen[-3:]}"
        time.sleep(0.02)
    summary = [(round(t, 2), s, x[:80]) for t, s, x in seen]
    not_ready = [x for _, s, x in seen if s == 503]
    assert not_ready, f"/ready was never 503 before replay finished (answers: {summary[:5]} ... {summary[-3:]})"
    assert any("replay" in x for x in not_ready), f"503 without naming the replay: {not_ready[:3]}"
    first_503 = next(i for i, (_, s, _) in enumerate(seen) if s == 503)
    assert all(s != 200 for _, s, _ in seen[:first_503]), f"ready before replay: {summary[:first_503 + 1]}"
    samples = [line for line in replay_metrics[0].splitlines() if line.startswith("skein_ready")]
    assert samples and samples[0].split()[-1] in ("0", "0.0"), f"skein_ready during replay: {samples}"
    assert live_during_replay == [200], f"/healthz during replay: {live_during_replay}"

    # After replay: ready, and what was replayed is served.
    rss = client.wait_trace(sk, marker_tid, min_spans=len(marker_sids), timeout=30)
    assert otlp.span_id_counts(rss) == {s.hex(): 1 for s in marker_sids}
    assert client.metric_total(sk, "skein_ready") == 1
    assert client.metric_total(sk, "skein_head_spans") >= EXPORTS * SPANS_PER_EXPORT
