"""Blocks on a real S3-compatible server (moto's standalone server, `support/s3.py`): spans are read
back by id and by search once they have left the head, with and without a key prefix; flush,
compaction, retention and restarts work there; and with a fault proxy answering S3 errors (503
SlowDown, 500, 400 RequestTimeout for one block) no acknowledged span is lost or doubled across
restarts."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from support import client, otlp
from support.poll import wait_until
from support.s3 import BLOCK_DIR, META, FaultProxy, MotoS3, skein_env

pytestmark = pytest.mark.slow

_bucket_no = itertools.count()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def bucket(moto):
    name = f"skein-e2e-{next(_bucket_no)}"
    moto.create_bucket(name)
    return name


@pytest.fixture
def proxy(moto):
    p = FaultProxy(moto.url)
    yield p
    p.close()


def _skein(factory, endpoint: str, bucket: str, prefix: str, *flags: str):
    url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return factory("--storage", url, *flags, env=skein_env(endpoint))


def _export(sk, service: str, n_spans: int = 3, tenant: str | None = None, via: str = "grpc", start=None):
    req, tid, sids = otlp.simple_request(service, n_spans, start=start)
    client.export_ok(sk, req, via=via, tenant=tenant)
    return tid, sids


def _exactly_once(sk, expected: dict, tenant: str | None = None, timeout: float = 30):
    for tid, sids in expected.items():
        rss = client.wait_trace(sk, tid, tenant=tenant, min_spans=len(sids), timeout=timeout)
        counts = otlp.span_id_counts(rss)
        assert counts == {s.hex(): 1 for s in sids}, f"trace {tid.hex()}: span id counts {counts}"


def _search_ids(sk, service: str, tenant: str | None = None) -> set[str]:
    resp, _ = client.search(sk, {"q": f'{{ resource.service.name = "{service}" }}', "limit": "1000"}, tenant=tenant)
    return {t.traceID.rjust(32, "0") for t in resp.traces}


def _all_ids(sk, tenant: str) -> set[str]:
    resp, _ = client.search(sk, {"q": "{}", "limit": "1000"}, tenant=tenant)
    return {t.traceID.rjust(32, "0") for t in resp.traces}


def _wait_flushes(sk, n: int) -> None:
    """n flushes committed and the head empty (counting blocks would race compaction)."""
    wait_until(lambda: client.metric_total(sk, "skein_flushes_total") >= n
               and client.metric_total(sk, "skein_head_spans") == 0, timeout=30, what=f"{n} flushes")


def _meta_keys(moto, bucket, prefix=""):
    return [k for k in moto.keys(bucket, prefix) if k.endswith("/meta.json")]


def _tenant_meta_keys(moto, bucket, prefix: str, tenant: str):
    """Block metas of `tenant` in this replica's namespace (`[prefix/]nodes/<node-id>/<tenant>/`)."""
    return [k for k in _meta_keys(moto, bucket, f"{prefix}/nodes/" if prefix else "nodes/")
            if k.split("/")[-3] == tenant]


@pytest.mark.parametrize("prefix", ["skein", "deep/er/prefix"])
def test_blocks_under_a_prefix_are_read_back_by_id_and_search(skein_factory, moto, bucket, prefix):
    sk = _skein(skein_factory, moto.url, bucket, prefix, "--head-max-spans", "3")
    expected = dict(_export(sk, "s3-prefixed") for _ in range(4))
    client.wait_flushed(sk, min_blocks=1)
    keys = moto.keys(bucket)
    assert keys and all(k.startswith(prefix + "/") for k in keys), f"objects outside the prefix {prefix!r}: {keys}"
    assert len(_meta_keys(moto, bucket)) >= 1, keys
    # the head is empty: everything below is read from the blocks on S3
    _exactly_once(sk, expected, timeout=5)
    found = wait_until(lambda: _search_ids(sk, "s3-prefixed") or None, timeout=5, what="search over S3 blocks")
    assert found == {t.hex() for t in expected}, f"search over blocks under {prefix!r} found {found}"
    sk.kill9()
    sk.start()
    _exactly_once(sk, expected, timeout=5)
    assert _search_ids(sk, "s3-prefixed") == {t.hex() for t in expected}


@pytest.mark.parametrize("prefix", ["", "skein/blocks"], ids=["no-prefix", "prefix"])
def test_flush_compaction_retention_and_restart_on_s3(skein_factory, moto, bucket, prefix):
    sk = _skein(skein_factory, moto.url, bucket, prefix, "--head-max-spans", "2", "--block-target-spans", "16",
                "--retention", "1h")
    cmp, ret = "s3-compact", "s3-retain"
    compacted: dict = {}
    for wave in range(5):
        compacted.update([_export(sk, f"s3-cmp-{wave}", 2, tenant=cmp)])
        wait_until(lambda: client.metric_total(sk, "skein_head_spans") == 0, timeout=20, what=f"wave {wave} flushed")
    # one block of spans that ended three hours ago (beyond --retention) and one of fresh spans
    old_tid, old_sids = _export(sk, "s3-old", 2, tenant=ret, start=otlp.now_ns() - 3 * 3600 * otlp.SEC)
    _wait_flushes(sk, 6)
    fresh = dict([_export(sk, "s3-fresh", 2, tenant=ret)])
    _wait_flushes(sk, 7)

    wait_until(lambda: client.metric_total(sk, "skein_compactions_total") >= 1, timeout=40,
               what="a compaction on S3 (runs every 10 s)")
    _exactly_once(sk, compacted, tenant=cmp)
    wait_until(lambda: len(_tenant_meta_keys(moto, bucket, prefix, cmp)) < 5, timeout=20,
               what="compaction inputs deleted from the bucket")
    assert _all_ids(sk, cmp) == {t.hex() for t in compacted}, "search after compaction on S3"

    # retention runs at start (and every minute): the expired block goes, the rest is served exactly once
    deleted = client.metric_total(sk, "skein_retention_deleted_blocks_total")
    sk.restart(graceful=True)
    wait_until(lambda: deleted + client.metric_total(sk, "skein_retention_deleted_blocks_total") >= 1, timeout=20,
               what="retention deleting the expired block on S3")
    assert client.trace_v2_json(sk, old_tid.hex(), ret).status_code == 404, "expired trace still served"
    assert len(_tenant_meta_keys(moto, bucket, prefix, ret)) == 1, _tenant_meta_keys(moto, bucket, prefix, ret)
    _exactly_once(sk, fresh, tenant=ret)
    _exactly_once(sk, compacted, tenant=cmp)
    assert _search_ids(sk, "s3-fresh", tenant=ret) == {t.hex() for t in fresh}
    sk.kill9()
    sk.start()
    _exactly_once(sk, compacted, tenant=cmp)
    _exactly_once(sk, fresh, tenant=ret)


def test_transient_5xx_on_block_puts_are_retried_and_nothing_is_lost(skein_factory, proxy, bucket):
    sk = _skein(skein_factory, proxy.url, bucket, "", "--head-max-spans", "3")
    fault = proxy.fail(method="PUT", key=BLOCK_DIR, times=4, status=503, code="SlowDown")
    expected = dict(_export(sk, "s3-5xx", via=via) for via in ("grpc", "proto", "json", "grpc"))
    client.wait_flushed(sk, min_blocks=1, timeout=60)
    assert fault.served == 4, f"the proxy answered {fault.served} PUTs with 503, expected 4"
    _exactly_once(sk, expected, timeout=5)
    client.assert_healthy(sk)
    sk.kill9()
    sk.start()
    _exactly_once(sk, expected)


def test_dropped_connections_on_block_puts_lose_nothing(skein_factory, proxy, bucket):
    sk = _skein(skein_factory, proxy.url, bucket, "", "--head-max-spans", "3")
    reset = proxy.fail(method="PUT", key=BLOCK_DIR, times=3, reset=True)
    expected = dict(_export(sk, "s3-reset", via=via) for via in ("grpc", "proto"))
    client.wait_flushed(sk, min_blocks=1, timeout=60)
    assert reset.served == 3, f"the proxy dropped {reset.served} PUT connections, expected 3"
    sk.kill9()
    sk.start()
    _exactly_once(sk, expected)


def test_stalled_block_puts_neither_delay_acks_nor_lose_spans_across_kill9(skein_factory, proxy, bucket):
    """PUTs hang for seconds (a slow S3): exports are still acknowledged at WAL speed, and a kill -9
    in the middle of a stalled flush loses nothing."""
    sk = _skein(skein_factory, proxy.url, bucket, "", "--head-max-spans", "3")
    stall = proxy.fail(method="PUT", key=BLOCK_DIR, times=None, stall=3.0)
    expected = dict([_export(sk, "s3-stall")])
    wait_until(lambda: stall.served >= 1, timeout=20, what="a flush stalled in a PUT")
    for i in range(5):
        t = time.monotonic()
        expected.update([_export(sk, f"s3-stall-{i}", via="proto")])
        took = time.monotonic() - t
        assert took < 1.5, f"export {i} took {took:.1f}s while a block PUT was stalled"
    sk.kill9()  # with a PUT hanging
    proxy.clear()
    sk.start()
    _exactly_once(sk, expected)
    client.wait_flushed(sk, min_blocks=1, timeout=30)
    sk.restart(graceful=True)
    _exactly_once(sk, expected)


def test_storage_outage_then_recovery_loses_no_acknowledged_span(skein_factory, proxy, bucket):
    """Every PUT answers 500 for a while (across a kill -9); acked spans stay readable from the head
    and the WAL, and are flushed once S3 is back."""
    sk = _skein(skein_factory, proxy.url, bucket, "", "--head-max-spans", "3")
    outage = proxy.fail(method="PUT", times=None, status=500, code="InternalError")
    expected = dict(_export(sk, "s3-outage", via=via) for via in ("grpc", "proto"))
    wait_until(lambda: outage.served >= 2, timeout=20, what="flush attempts during the outage")
    _exactly_once(sk, expected, timeout=5)  # still served from the head
    sk.kill9()
    sk.start()
    expected.update(dict(_export(sk, "s3-outage-2", via=via) for via in ("json", "grpc")))
    seen = outage.served
    wait_until(lambda: outage.served > seen, timeout=20, what="flush attempts after the restart")
    _exactly_once(sk, expected, timeout=5)
    proxy.clear()
    client.wait_flushed(sk, min_blocks=1, timeout=60)
    assert client.metric_total(sk, "skein_blocks") >= 1
    _exactly_once(sk, expected, timeout=5)
    sk.restart(graceful=True)
    _exactly_once(sk, expected)
    sk.kill9()
    sk.start()
    _exactly_once(sk, expected)


def test_older_part_failing_while_newer_ones_succeed_loses_nothing_on_restart(skein_factory, proxy, bucket):
    """Replay must skip exactly what blocks hold: every attempt to write one frozen part (found by
    its meta.json's min_time, since each retry names a new block) is answered 400 RequestTimeout
    (what S3 says when it gives up reading a request, not retried by the client), newer parts are
    written, then kill -9."""
    sk = _skein(skein_factory, proxy.url, bucket, "", "--head-max-spans", "3")
    t0 = otlp.now_ns() - 60 * otlp.SEC  # earlier than every other span: this part's min_time
    stuck = proxy.fail(method="PUT", key=META, body=re.compile(rb'"min_time":\s*%d\b' % t0), times=None,
                       status=400, code="RequestTimeout")
    expected = dict([_export(sk, "s3-stuck", start=t0)])
    wait_until(lambda: stuck.served >= 2, timeout=20, what="the older part refused, and refused again on retry")
    for i in range(3):
        expected.update([_export(sk, f"s3-after-{i}", via="proto")])
    wait_until(lambda: proxy.committed_block_dirs(), timeout=30,
               what="a newer part committed while the older one still fails")
    wait_until(lambda: client.metric_total(sk, "skein_blocks") >= 1, timeout=10, what="skein_blocks >= 1")
    _exactly_once(sk, expected, timeout=5)
    sk.kill9()
    proxy.clear()
    sk.start()
    _exactly_once(sk, expected)
    client.wait_flushed(sk, min_blocks=2, timeout=30)
    sk.restart(graceful=True)
    _exactly_once(sk, expected)
