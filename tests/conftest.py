"""Fixtures for the skein end-to-end tests.

`skein`            a fresh collector per test (own data dir and ports)
`skein_module`     one collector shared by a test module
`skein_factory`    start collectors with extra flags, e.g. skein_factory("--max-body-bytes", "1048576"),
                   optionally with extra environment: skein_factory(..., env={"AWS_REGION": "us-east-1"})
`skein_module_factory`  the same, module-scoped

The binary is $SKEIN_BIN, default <repo>/target/debug/skein. Module collectors' data dirs are
removed after the module unless $SKEIN_KEEP_DATA is set; per-test ones live in pytest's tmp_path. Each collector waits for
`GET /ready` == 200 (polling, with a deadline). On a failing test the collectors' logs are
attached to the report.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import weakref

import pytest

from support.client import close_channels
from support.collector import Skein

_live: "weakref.WeakSet[Skein]" = weakref.WeakSet()
LOG_TAIL = int(os.environ.get("SKEIN_LOG_TAIL", "12000"))


class _Factory:
    def __init__(self, base: pathlib.Path):
        self.base = base
        self.instances: list[Skein] = []

    def __call__(self, *extra_args: str, data_dir: pathlib.Path | None = None, env: dict | None = None,
                 **security) -> Skein:
        """`security`: tls_ca / token / client_cert for the collector's session (see Skein)."""
        n = len(self.instances)
        d = pathlib.Path(data_dir) if data_dir else self.base / f"data-{n}"
        s = Skein(d, self.base / f"logs-{n}", extra_args, env=env, **security)
        self.instances.append(s)
        _live.add(s)
        s.start()
        return s

    def close(self) -> None:
        for s in self.instances:
            s.terminate_quietly()
        close_channels()


def _base_dir(prefix: str) -> pathlib.Path:
    root = os.environ.get("SKEIN_TEST_TMP")
    if root:
        pathlib.Path(root).mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=root))


@pytest.fixture
def skein_factory(tmp_path):
    f = _Factory(tmp_path)
    yield f
    f.close()


@pytest.fixture
def skein(skein_factory) -> Skein:
    return skein_factory()


@pytest.fixture(scope="module")
def skein_module_factory():
    base = _base_dir("skein-e2e-mod-")
    f = _Factory(base)
    yield f
    f.close()
    if not os.environ.get("SKEIN_KEEP_DATA"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def skein_module(skein_module_factory) -> Skein:
    return skein_module_factory()


_marks = pytest.StashKey[dict]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    # log positions at the start of the test body, so a module-scoped collector's report shows this test only
    item.stash[_marks] = {id(s): s.log_mark() for s in list(_live) if s.starts}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed:
        marks = item.stash.get(_marks, {})
        for s in list(_live):
            crashed = s.proc is not None and s.proc.returncode not in (None, 0, -9, -15)
            if not s.starts or not (s.running() or crashed):
                continue
            mark = marks.get(id(s))
            text = s.log_since(mark) if mark else s.log_text()
            if mark and not text.split("===\n", 1)[-1].strip():
                continue  # nothing logged by this collector during the test
            if len(text) > LOG_TAIL:
                text = "...\n" + text[-LOG_TAIL:]
            rep.sections.append((f"skein log (data dir {s.data_dir})", text or "(empty)"))
    return rep
