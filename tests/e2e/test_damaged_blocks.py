"""A damaged block on `file://` storage (what a power loss or a bad disk leaves: an empty or torn
`meta.json`, a missing `bloom.bin`, garbage in `spans.parquet`) does not stop start-up: the block
is moved under `quarantine/` in the storage directory, counted in
`skein_blocks_quarantined_total`, and everything else (other blocks, the WAL) is served."""

from __future__ import annotations

import os
import pathlib

import pytest

from support import client, otlp

VICTIM, INTACT = "victim", "intact"


def _empty_meta(d: pathlib.Path) -> None:
    (d / "meta.json").write_bytes(b"")


def _torn_meta(d: pathlib.Path) -> None:
    meta = d / "meta.json"
    data = meta.read_bytes()
    meta.write_bytes(data[: len(data) // 2])


def _missing_bloom(d: pathlib.Path) -> None:
    (d / "bloom.bin").unlink()


def _garbage_spans(d: pathlib.Path) -> None:
    spans = d / "spans.parquet"
    spans.write_bytes(os.urandom(spans.stat().st_size))


DAMAGE = {
    "meta-0-bytes": _empty_meta,
    "meta-truncated": _torn_meta,
    "bloom-missing": _missing_bloom,
    "spans-garbage": _garbage_spans,
}


def _export(sk, service, n, tenant):
    req, tid, sids = otlp.simple_request(service, n)
    client.export_ok(sk, req, tenant=tenant)
    return tid, sids


def _exactly_once(sk, expected, tenant):
    for tid, sids in expected.items():
        counts = otlp.span_id_counts(client.wait_trace(sk, tid, tenant=tenant, min_spans=len(sids)))
        assert counts == {s.hex(): 1 for s in sids}, f"{tenant} trace {tid.hex()}: {counts}"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_block_is_quarantined_and_the_rest_is_served(skein_factory, damage):
    sk = skein_factory("--head-max-spans", "3")
    victim_tid, _ = _export(sk, "damaged", 3, VICTIM)
    intact = dict([_export(sk, "intact", 3, INTACT)])
    client.wait_flushed(sk, min_blocks=2)
    intact.update([_export(sk, "intact-wal", 1, INTACT)])  # below --head-max-spans: only in the head and WAL
    # this replica's namespace of the storage root (nodes/<node-id>/)
    storage = next((sk.data_dir / "blocks" / "nodes").iterdir())
    metas = list((storage / VICTIM).glob("*/meta.json"))
    assert len(metas) == 1, f"expected one block of tenant {VICTIM}: {metas}"
    block = metas[0].parent
    assert sk.stop() == 0

    DAMAGE[damage](block)
    sk.start()  # must come up: a damaged block is set aside, not fatal

    _exactly_once(sk, intact, INTACT)
    resp, _ = client.search(sk, {"q": "{}", "limit": "100"}, tenant=INTACT)
    assert {t.traceID.rjust(32, "0") for t in resp.traces} == {t.hex() for t in intact}
    quarantine = storage / "quarantine"
    moved = [p for p in quarantine.rglob("*") if block.name in str(p.relative_to(quarantine))] \
        if quarantine.is_dir() else []
    assert moved, f"block {block.name} ({damage}) not moved under {quarantine}"
    assert not block.exists(), f"damaged block {block} still in place"
    assert client.metric_total(sk, "skein_blocks_quarantined_total") == 1
    assert client.metric_total(sk, "skein_blocks") == 1, "only the intact block is in the catalog"
    # the victim's trace lived only in the damaged block: not found, and asking is no error
    assert client.trace_v2_json(sk, victim_tid.hex(), VICTIM).status_code == 404
    client.search(sk, {"q": "{}", "limit": "100"}, tenant=VICTIM)
    client.assert_healthy(sk)
    # new writes go on as usual, and the next start finds nothing more to quarantine
    intact.update([_export(sk, "intact-after", 2, INTACT)])
    sk.kill9()
    sk.start()
    _exactly_once(sk, intact, INTACT)
    assert client.metric_total(sk, "skein_blocks_quarantined_total") == 0
    assert moved[0].exists(), "the quarantined copy must be kept for inspection"
