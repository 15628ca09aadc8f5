"""Block files are durable before what they replace is deleted: the real binary runs under
`strace -f -y` (file-system calls only) through flushes, WAL truncation and a compaction, and the
trace is replayed (`support/fstrace.py`):

- when a block's `meta.json` appears (the block exists), its `spans.parquet`, `traces.parquet`,
  `search.parquet` and `bloom.bin` were fsynced;
- when a WAL segment is unlinked, every published block's five files, their entries in the block
  directory, the block directory's entry in the tenant directory (and the tenant's in the storage
  root) were fsynced — object_store's local store writes `<name>#<n>` and renames it, so the
  rename into place must be covered by a directory fsync too;
- when a block is deleted (a compaction input), every other published block is durable likewise.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

import pytest

from support import client, fstrace, otlp
from support.collector import Skein
from support.poll import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (tests/setup-apt.sh)"),
]

DATA_FILES = ("spans.parquet", "traces.parquet", "search.parquet", "bloom.bin")
BLOCK_FILES = DATA_FILES + ("meta.json",)


class StracedSkein(Skein):
    """`skein serve` started under strace; signals go to skein itself, not to strace."""

    def __init__(self, data_dir, log_dir, extra_args, trace_path: pathlib.Path):
        super().__init__(data_dir, log_dir, extra_args)
        self.trace_path = trace_path

    def argv(self) -> list[str]:
        return fstrace.strace_argv(str(self.trace_path)) + super().argv()

    def traced_pid(self) -> int:
        pid = self.proc.pid
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert children, "strace has no child process"
        return int(children[0])

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.traced_pid(), signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"skein under strace did not exit within {timeout}s of SIGTERM")


def _block_of(path: str, storage: str):
    m = re.match(rf"^{re.escape(storage)}/([^/]+)/([0-9A-HJKMNP-TV-Z]{{26}})/([^/]+)$", path)
    return (os.path.dirname(path), m.group(3)) if m and m.group(3) in BLOCK_FILES else None


def _undurable(d: fstrace.Durability, block: str, storage: str) -> list[str]:
    out = []
    for f in BLOCK_FILES:
        p = os.path.join(block, f)
        if p not in d.exists:
            out.append(f"{f} missing")
            continue
        if not d.data_durable(p):
            out.append(f"{f} not fsynced")
        if not d.entry_durable(p):
            out.append(f"{f}: block directory not fsynced after it was created/renamed")
    if not d.entry_durable(block):
        out.append("block directory's entry: tenant directory not fsynced after mkdir")
    tenant = os.path.dirname(block)
    if tenant != storage and not d.entry_durable(tenant):
        out.append("tenant directory's entry: storage root not fsynced after mkdir")
    return out


@dataclass
class Replay:
    calls: list
    published: int = 0
    wal_unlinks: int = 0
    block_deletes: int = 0
    bad_publish: list = field(default_factory=list)
    bad_wal: list = field(default_factory=list)
    bad_delete: list = field(default_factory=list)


def _replay(text: str, storage: str, wal_dir: str, cwd: str) -> Replay:
    """Replays a trace; records each block published before its data files were fsynced, and each
    WAL segment / block unlinked while a published block was not durable."""
    wal_seg = re.compile(rf"^{re.escape(wal_dir)}/\d{{20}}\.seg$")
    calls = fstrace.parse(text)
    r = Replay(calls)
    # checks happen where an unlink starts; effects where a call completes
    events = sorted([(c.start, 0, c) for c in calls if c.name in ("unlink", "unlinkat")]
                    + [(c.end, 1, c) for c in calls], key=lambda e: (e[0], e[1]))
    d = fstrace.Durability(cwd=cwd)
    live: dict[str, int] = {}
    for _, kind, c in events:
        if kind == 0:
            for ch in fstrace.changes(c, d.cwd):
                blk = _block_of(ch.path, storage)
                if wal_seg.match(ch.path):
                    r.wal_unlinks += bool(live)
                    for b in live:
                        if probs := _undurable(d, b, storage):
                            r.bad_wal.append((os.path.basename(ch.path), os.path.relpath(b, storage), probs))
                elif blk and blk[1] == "meta.json" and blk[0] in live:
                    r.block_deletes += 1
                    for b in live:
                        if b != blk[0] and (probs := _undurable(d, b, storage)):
                            r.bad_delete.append((os.path.relpath(blk[0], storage), os.path.relpath(b, storage), probs))
            continue
        for ch in d.apply(c):
            blk = _block_of(ch.path, storage)
            if not blk or blk[1] != "meta.json":
                continue
            if ch.kind in ("rename-in", "create") and blk[0] not in live:
                r.published += 1
                live[blk[0]] = c.end
                unsynced = [f for f in DATA_FILES if os.path.join(blk[0], f) not in d.exists
                            or not d.data_durable(os.path.join(blk[0], f))]
                if unsynced:
                    r.bad_publish.append((os.path.relpath(blk[0], storage), unsynced))
            elif ch.kind in ("unlink", "rename-out"):
                live.pop(blk[0], None)
    return r


def test_block_files_are_fsynced_before_the_wal_segments_and_inputs_they_replace_are_deleted(tmp_path):
    data = tmp_path / "data"
    trace = tmp_path / "strace.txt"
    sk = StracedSkein(data, tmp_path / "logs", ["--head-max-spans", "4", "--block-target-spans", "16",
                                                "--fsync", "always"], trace)
    try:
        sk.start()
        expected = {}
        for i in range(4):
            req, tid, sids = otlp.simple_request(f"fsync-order-{i}", 4)
            client.export_ok(sk, req, via="grpc")
            expected[tid] = sids
            wait_until(lambda: client.metric_total(sk, "skein_flushes_total") >= i + 1
                       and client.metric_total(sk, "skein_head_spans") == 0, timeout=20, what=f"flush {i + 1}")
        wait_until(lambda: client.metric_total(sk, "skein_compactions_total") >= 1, timeout=40,
                   what="a compaction (every 10 s)")
        for tid, sids in expected.items():
            assert otlp.span_id_counts(client.wait_trace(sk, tid, min_spans=len(sids))) == {s.hex(): 1 for s in sids}
        assert sk.stop() == 0, sk.log_tail()
    finally:
        sk.terminate_quietly()

    # this replica's namespace of the storage root (nodes/<node-id>/)
    storage = os.path.realpath(next((data / "blocks" / "nodes").iterdir()))
    r = _replay(trace.read_text(errors="replace"), storage, os.path.realpath(data / "wal"), os.getcwd())
    published, wal_unlinks, block_deletes = r.published, r.wal_unlinks, r.block_deletes
    bad_publish, bad_wal, bad_delete, calls = r.bad_publish, r.bad_wal, r.bad_delete, r.calls
    print(f"{len(calls)} traced calls; {published} blocks published, {wal_unlinks} WAL segment unlinks "
          f"with blocks live, {block_deletes} block deletions")
    assert published >= 4 and wal_unlinks >= 1 and block_deletes >= 1, (
        f"the run did not exercise the ordering: {published} blocks, {wal_unlinks} WAL unlinks, "
        f"{block_deletes} block deletions")
    assert not bad_publish, (f"{len(bad_publish)} of {published} blocks got meta.json before their data "
                             f"files were fsynced: {bad_publish[:3]}")
    n_files = sum(len(p) for _, _, p in bad_wal)
    assert not bad_wal, (f"WAL segments unlinked while published blocks were not durable ({n_files} problems), "
                         f"e.g. {bad_wal[:3]}")
    assert not bad_delete, f"blocks deleted while other blocks were not durable: {bad_delete[:3]}"


# ---- the checker itself, on hand-written traces ------------------------------------------------
_S, _W = "/d/blocks", "/d/wal"
_B = f"{_S}/t/01M8W5MMRZBEWPB5MAV0D48P23"


def _synthetic(skip: str | None = None, unfinished_fsync: bool = False) -> str:
    """strace -f -y lines of a flush done right (staged files fsynced, renamed, directories
    fsynced, then the WAL segment unlinked), minus the step named `skip`."""
    lines = [f'7 mkdir("{_S}/t", 0777) = 0', f'7 mkdir("{_B}", 0777) = 0']
    for f in BLOCK_FILES:
        lines.append(f'7 openat(AT_FDCWD</x>, "{_B}/{f}#1", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 9<{_B}/{f}#1>')
        if skip != f"fsync {f}":
            if unfinished_fsync and f == "spans.parquet":
                lines.append(f"7 fsync(9<{_B}/{f}#1> <unfinished ...>")
                lines.append(f'8 openat(AT_FDCWD</x>, "{_W}", O_RDONLY|O_CLOEXEC) = 10<{_W}>')
                lines.append("7 <... fsync resumed>) = 0")
            else:
                lines.append(f"7 fsync(9<{_B}/{f}#1>) = 0")
        lines.append(f'7 rename("{_B}/{f}#1", "{_B}/{f}") = 0')
    if skip != "fsync block dir":
        lines.append(f"7 fsync(11<{_B}>) = 0")
    if skip != "fsync tenant dir":
        lines.append(f"7 fsync(12<{_S}/t>) = 0")
    if skip != "fsync storage root":
        lines.append(f"7 fsync(13<{_S}>) = 0")
    lines.append(f'8 unlinkat(AT_FDCWD</x>, "{_W}/00000000000000000001.seg", 0) = 0')
    return "\n".join(lines) + "\n"


def test_fsync_order_checker_accepts_a_durable_flush():
    for unfinished in (False, True):
        r = _replay(_synthetic(unfinished_fsync=unfinished), _S, _W, "/x")
        assert (r.published, r.wal_unlinks) == (1, 1)
        assert not r.bad_publish and not r.bad_wal, (r.bad_publish, r.bad_wal)


@pytest.mark.parametrize("skip", [f"fsync {f}" for f in BLOCK_FILES]
                         + ["fsync block dir", "fsync tenant dir", "fsync storage root"])
def test_fsync_order_checker_rejects_a_missing_fsync(skip):
    r = _replay(_synthetic(skip=skip), _S, _W, "/x")
    assert r.bad_wal, f"a flush without `{skip}` passed"
    if skip in (f"fsync {f}" for f in DATA_FILES):
        assert r.bad_publish
