"""A full data filesystem only refuses writes: HTTP 503 with Retry-After / gRPC UNAVAILABLE with
RetryInfo, the process stays up and says why on /ready, and ingest resumes without a restart once
the filesystem has room again. Start-up on a full filesystem succeeds: queries are served, writes
refused until space returns. Nothing acknowledged is lost.

The data dir is a tmpfs of a few MiB that the test mounts (root only) and grows with
`mount -o remount,size=...`: real ENOSPC from a real filesystem, against the real binary."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from support import client, otlp
from support.poll import wait_until

SMALL = 2 << 20
LARGE = 16 << 20
BLOB = 40_000  # bytes of attribute per export: the small filesystem is full after ~50 exports
# Nothing leaves the head during a test, so the WAL is the only thing growing on the filesystem.
ARGS = ("--head-max-spans", "1000000", "--head-max-age", "3600s")


class TinyFs:
    def __init__(self, path: pathlib.Path):
        self.path = path

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self) -> pathlib.Path:
        """Takes whatever space is left with a filler file."""
        filler = self.path / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
        return filler


@pytest.fixture
def tinyfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "data"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield TinyFs(path)
    subprocess.run(["umount", "-l", str(path)], check=False)


def _request(i: int):
    req, tid, sids = otlp.simple_request(f"disk-full-{i}", 1, attrs={"blob": "z" * BLOB})
    return req, tid, sids


def _grpc_export(sk, req):
    """(code, details, RetryInfo delay in seconds or None)."""
    call = client.grpc_channel(sk).unary_unary(
        client.EXPORT_METHOD,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=ExportTraceServiceResponse.FromString,
    )
    try:
        call(req, timeout=30)
        return grpc.StatusCode.OK, "", None
    except grpc.RpcError as e:
        delay = None
        for key, value in e.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                st = status_pb2.Status.FromString(value)
                for d in st.details:
                    info = error_details_pb2.RetryInfo()
                    if d.Unpack(info):
                        delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        return e.code(), e.details() or "", delay


def _export(sk, i: int):
    """Exports one trace, alternating HTTP protobuf and gRPC: (acked, tid, sids, answer)."""
    req, tid, sids = _request(i)
    if i % 2:
        r = client.post_proto(sk, req)
        return r.status_code == 200, tid, sids, ("http", r.status_code, r.headers.get("Retry-After"), r.text)
    code, details, delay = _grpc_export(sk, req)
    return code == grpc.StatusCode.OK, tid, sids, ("grpc", code, delay, details)


def _assert_refused_retryably(answer) -> None:
    via, status, retry, text = answer
    if via == "http":
        assert status == 503, f"a full disk must answer 503, got {status}: {text[:300]!r}"
        assert (retry or "").strip().isdigit(), f"503 without Retry-After: {retry!r}"
    else:
        assert status == grpc.StatusCode.UNAVAILABLE, f"a full disk must answer UNAVAILABLE, got {status}: {text}"
        assert retry is not None and retry > 0, "UNAVAILABLE without a RetryInfo detail"
    assert "space" in text.lower(), f"the refusal should say the disk is full: {text[:300]!r}"


def _ingest_until_refused(sk, acked: dict, start: int, limit: int = 400) -> int:
    for i in range(start, start + limit):
        ok, tid, sids, answer = _export(sk, i)
        if ok:
            acked[tid] = sids
            continue
        _assert_refused_retryably(answer)
        return i + 1
    raise AssertionError(f"{limit} exports of {BLOB} bytes were all accepted on a {SMALL}-byte filesystem")


def _ready_text(sk) -> tuple[int, str]:
    r = client.api_get(sk, "/ready", timeout=5)
    return r.status_code, r.text


def _ready_naming_disk(sk) -> tuple[int, str]:
    """Polls /ready until its body names the disk (the writer reports what it saw)."""
    def naming():
        status, text = _ready_text(sk)
        return (status, text) if "disk" in text else None

    return wait_until(naming, timeout=10, what="/ready naming the full disk")


def _assert_all_acked_readable_once(sk, acked: dict) -> None:
    for tid, sids in acked.items():
        rss = client.wait_trace(sk, tid, min_spans=len(sids), timeout=30)
        counts = otlp.span_id_counts(rss)
        assert counts == {s.hex(): 1 for s in sids}, f"trace {tid.hex()}: {counts}"


def _export_when_possible(sk, i: int, acked: dict) -> None:
    """The next export is accepted (polling: the writer may take a moment to notice the space)."""
    def accepted():
        ok, tid, sids, answer = _export(sk, i)
        if ok:
            acked[tid] = sids
        return ok

    wait_until(accepted, timeout=15, interval=0.2, what="an export accepted after the filesystem grew")


def test_full_disk_refuses_writes_until_it_grows_then_ingest_resumes_without_restart(tinyfs, skein_factory):
    sk = skein_factory(*ARGS, data_dir=tinyfs.path)
    acked: dict[bytes, list[bytes]] = {}
    n = _ingest_until_refused(sk, acked, 0)
    assert len(acked) >= 5, f"only {len(acked)} exports fitted before the disk was full"

    # Both protocols are refused the same retryable way, again and again, and the process stays up.
    for i in range(n, n + 4):
        ok, _, _, answer = _export(sk, i)
        assert not ok, "an export was accepted on a full disk"
        _assert_refused_retryably(answer)
    n += 4
    assert sk.running(), f"skein exited on a full disk\n{sk.log_tail()}"
    # Still ready (queries are served), and it says why writes are refused.
    status, text = _ready_naming_disk(sk)
    assert status == 200 and "degraded" in text, (status, text)
    assert client.metric_total(sk, "skein_wal_failures_total") >= 1
    # Acknowledged data is readable while the disk is full.
    _assert_all_acked_readable_once(sk, acked)

    tinyfs.resize(LARGE)
    _export_when_possible(sk, n, acked)
    for i in range(n + 1, n + 11):
        ok, tid, sids, answer = _export(sk, i)
        assert ok, f"export refused after the filesystem grew: {answer}"
        acked[tid] = sids
    wait_until(lambda: "disk" not in _ready_text(sk)[1], timeout=10, what="/ready no longer naming the disk")
    assert sk.running()
    assert sk.starts == 1, "ingest must resume without a restart"
    _assert_all_acked_readable_once(sk, acked)

    # And all of it is durable: after a restart every acknowledged span is there, once.
    sk.restart(graceful=False)
    _assert_all_acked_readable_once(sk, acked)


def test_start_up_on_a_full_disk_serves_queries_refuses_writes_and_resumes_when_it_grows(tinyfs, skein_factory):
    sk = skein_factory(*ARGS, data_dir=tinyfs.path)
    acked: dict[bytes, list[bytes]] = {}
    for i in range(5):
        ok, tid, sids, answer = _export(sk, i)
        assert ok, answer
        acked[tid] = sids
    sk.stop()
    filler = tinyfs.fill()

    sk.start()  # waits for /ready == 200: a full disk degrades, it does not stop start-up
    assert sk.running()
    _assert_all_acked_readable_once(sk, acked)
    for i in range(5, 9):
        ok, _, _, answer = _export(sk, i)
        assert not ok, "an export was accepted on a full disk"
        _assert_refused_retryably(answer)
    status, text = _ready_naming_disk(sk)
    assert status == 200, (status, text)

    tinyfs.resize(LARGE)
    assert filler.exists()
    _export_when_possible(sk, 9, acked)
    for i in range(10, 15):
        ok, tid, sids, answer = _export(sk, i)
        assert ok, f"export refused after the filesystem grew: {answer}"
        acked[tid] = sids
    assert sk.starts == 2
    _assert_all_acked_readable_once(sk, acked)
    sk.restart(graceful=True)
    _assert_all_acked_readable_once(sk, acked)
