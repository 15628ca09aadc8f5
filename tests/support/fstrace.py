"""Run a process under `strace -f -y` (file-system syscalls only) and replay the trace as a model of
what is durable: which files' data and which directory entries were fsynced, and when.

Each syscall is an event at the line where it completed (strace's `<unfinished ...>` /
`<... resumed>` pairs are joined). An fsync covers the changes that happened before it *started*;
a check (e.g. "before this unlink") sees the fsyncs that *completed* before the unlink started.
Writes are not traced, so a file counts as synced once fsynced after it was created or renamed
into place. Only successful calls count.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

TRACED = ",".join([
    "open", "openat", "creat", "rename", "renameat", "renameat2", "link", "linkat",
    "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "fsync", "fdatasync", "sync", "syncfs",
])


def strace_argv(out_path: str) -> list[str]:
    return ["strace", "-f", "--seccomp-bpf", "-y", "-qq", "-s", "4096", "-o", str(out_path), "-e",
            f"trace={TRACED}", "-e", "signal=none"]


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^([a-z0-9_]+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. ([a-z0-9_]+) resumed>(.*)$")
_RET = re.compile(r"\)\s+=\s+(-?\d+)(?:<([^>]*)>)?(?:\s|$)")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD = re.compile(r"^-?\d+<(.*)>$")


@dataclass
class Call:
    name: str
    args: str  # raw argument text (everything between the parentheses)
    ret: int
    start: int  # line index where it started
    end: int  # line index where it completed
    pid: int

    def strings(self) -> list[str]:
        return [bytes(s, "utf-8").decode("unicode_escape") for s in _STR.findall(self.args)]

    def fd_paths(self) -> list[str]:
        """Paths of fd / dirfd arguments as `strace -y` prints them (`3</a/b>`, `AT_FDCWD</cwd>`)."""
        return re.findall(r"(?:\d+|AT_FDCWD)<([^>]*)>", _STR.sub('""', self.args))


def parse(text: str) -> list[Call]:
    calls: list[Call] = []
    pending: dict[tuple[int, str], tuple[str, int]] = {}
    for idx, raw in enumerate(text.splitlines()):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        r = _RESUMED.match(rest)
        if r:
            name = r.group(1)
            head, start = pending.pop((pid, name), ("", idx))
            body = head + r.group(2)
        else:
            c = _CALL.match(rest)
            if not c:
                continue  # signals, exits
            name, body, start = c.group(1), c.group(2), idx
            if body.endswith("<unfinished ...>"):
                pending[(pid, name)] = (body[: -len("<unfinished ...>")], idx)
                continue
        rets = list(_RET.finditer(body))
        if not rets:
            continue
        ret = rets[-1]  # the return value follows the last ") = "
        args = body[: ret.start()]
        calls.append(Call(name, args, int(ret.group(1)), start, idx, pid))
    calls.sort(key=lambda c: c.end)
    return calls


def _join(base: str, path: str) -> str:
    return os.path.normpath(path if path.startswith("/") else os.path.join(base, path))


@dataclass
class Change:
    """A directory entry change: `kind` create/rename-in/rename-out/unlink/mkdir of `path`."""

    kind: str
    path: str
    src: str | None = None


def changes(call: Call, cwd: str) -> list[Change]:
    """The directory-entry changes a successful call made (absolute paths)."""
    if call.ret < 0:
        return []
    s, fds = call.strings(), call.fd_paths()
    n = call.name
    if n in ("rename", "link") and len(s) >= 2:
        a, b = _join(cwd, s[0]), _join(cwd, s[1])
        return [Change("rename-out" if n == "rename" else "link", a), Change("rename-in", b, src=a)]
    if n in ("renameat", "renameat2", "linkat") and len(s) >= 2 and len(fds) >= 2:
        a, b = _join(fds[0], s[0]), _join(fds[1], s[1])
        return [Change("rename-out" if n != "linkat" else "link", a), Change("rename-in", b, src=a)]
    if n in ("unlink", "rmdir") and s:
        return [Change("unlink", _join(cwd, s[0]))]
    if n == "unlinkat" and s and fds:
        return [Change("unlink", _join(fds[0], s[0]))]
    if n == "mkdir" and s:
        return [Change("mkdir", _join(cwd, s[0]))]
    if n == "mkdirat" and s and fds:
        return [Change("mkdir", _join(fds[0], s[0]))]
    if (n == "creat" or (n in ("open", "openat") and "O_CREAT" in call.args)) and s:
        return [Change("create", _join(fds[0] if n == "openat" and fds else cwd, s[0]))]
    return []


@dataclass
class Durability:
    """Replays calls in order; answers which files/entries are durable at a point."""

    cwd: str
    data_dirty: dict[str, int] = field(default_factory=dict)  # path -> index its content last changed
    entry_dirty: dict[str, int] = field(default_factory=dict)  # path -> index its dir entry last changed
    exists: set[str] = field(default_factory=set)
    global_sync: int = -1

    def apply(self, call: Call) -> list[Change]:
        if call.ret < 0:
            return []
        if call.name in ("fsync", "fdatasync"):
            paths = call.fd_paths()
            if paths:
                p = paths[0].removesuffix(" (deleted)")
                self._synced(p, call.start)
            return []
        if call.name in ("sync", "syncfs"):
            self.global_sync = call.start
            return []
        out = changes(call, self.cwd)
        for ch in out:
            if ch.kind in ("create", "mkdir"):
                if ch.kind == "create" and ch.path in self.exists:
                    continue  # opening an existing file with O_CREAT changes no entry
                self.exists.add(ch.path)
                if not re.search(r"\bO_D?SYNC\b", call.args):  # synchronous writes need no fsync
                    self.data_dirty[ch.path] = call.end
                self.entry_dirty[ch.path] = call.end
            elif ch.kind == "rename-in":
                self.exists.add(ch.path)
                src_dirty = self.data_dirty.pop(ch.src, None) if ch.src else None
                if src_dirty is not None:
                    self.data_dirty[ch.path] = src_dirty
                else:
                    self.data_dirty.pop(ch.path, None)
                self.entry_dirty[ch.path] = call.end
            elif ch.kind in ("rename-out", "unlink"):
                self.exists.discard(ch.path)
                self.entry_dirty[ch.path] = call.end  # the parent must be synced for the removal too
        return out

    def _synced(self, path: str, start: int) -> None:
        # a file's fsync covers its data; a directory's fsync covers the entries in it
        if path in self.data_dirty and self.data_dirty[path] < start:
            del self.data_dirty[path]
        for p, i in list(self.entry_dirty.items()):
            if os.path.dirname(p) == path and i < start:
                del self.entry_dirty[p]

    def data_durable(self, path: str) -> bool:
        i = self.data_dirty.get(path)
        return i is None or i < self.global_sync

    def entry_durable(self, path: str) -> bool:
        i = self.entry_dirty.get(path)
        return i is None or i < self.global_sync
