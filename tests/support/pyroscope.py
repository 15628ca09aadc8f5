"""Pyroscope API client for the tests: messages compiled at test time from the collector's own
collector/proto files (grpcio-tools' protoc into a FileDescriptorSet, classes built from the
descriptor pool: the generated modules' `types.v1` package would collide with Python's stdlib
`types`), Connect unary calls made the way Grafana's Go backend makes them, and pprof pushes.
"""

from __future__ import annotations

import pathlib
import tempfile
import time
from functools import lru_cache

import requests
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .unknown import assert_no_unknown_fields

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "collector" / "proto"
PROTO_FILES = ["querier/v1/querier.proto", "push/v1/push.proto", "perftools/profiles/profile.proto"]
QUERIER = "/pyroscope/querier.v1.QuerierService"
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"

# What connect-go (Grafana's querierv1connect client, no options) sends on a unary call.
GRAFANA_HEADERS = {
    "Content-Type": "application/proto",
    "Connect-Protocol-Version": "1",
    "Connect-Timeout-Ms": "30000",
    "Accept-Encoding": "gzip",
    "User-Agent": "connect-go/1.18.1 (go1.24.4)",
}


@lru_cache(maxsize=1)
def _pool() -> descriptor_pool.DescriptorPool:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="skein-e2e-pyroscope-") as tmp:
        out = pathlib.Path(tmp) / "pyroscope.pb"
        rc = protoc.main(["protoc", f"--proto_path={PROTO_DIR}", "--include_imports",
                          f"--descriptor_set_out={out}", *PROTO_FILES])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) compiling {PROTO_FILES} in {PROTO_DIR}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool


def msg(full_name: str):
    """The message class of e.g. `querier.v1.SelectMergeStacktracesRequest`."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def connect_raw(sk, method: str, req, tenant: str | None = None, headers: dict | None = None) -> requests.Response:
    h = dict(GRAFANA_HEADERS if headers is None else headers)
    if tenant is not None:
        h["X-Scope-OrgID"] = tenant
    body = req if isinstance(req, (bytes, bytearray)) else req.SerializeToString()
    return sk.session.post(f"{sk.http_url}{QUERIER}/{method}", data=bytes(body), headers=h, timeout=30)


def connect(sk, method: str, req, response: str, tenant: str | None = None):
    """A binary Connect call; the answer is decoded strictly (no undeclared fields)."""
    r = connect_raw(sk, method, req, tenant)
    assert r.status_code == 200, f"{method}: HTTP {r.status_code}: {r.text[:500]!r}"
    assert r.headers.get("Content-Type") == "application/proto", r.headers.get("Content-Type")
    out = msg(response).FromString(r.content)
    assert_no_unknown_fields(out)
    return out


def pprof(samples, time_ns: int | None = None) -> bytes:
    """A CPU pprof (cpu/nanoseconds, 10 ms period) of (frames root first, value, {label: value})."""
    P = msg("perftools.profiles.Profile")
    p = P(time_nanos=time_ns or time.time_ns(), period=10_000_000)
    strings = [""]

    def s(v: str) -> int:
        if v not in strings:
            strings.append(v)
        return strings.index(v)

    p.sample_type.add(type=s("cpu"), unit=s("nanoseconds"))
    p.period_type.type, p.period_type.unit = s("cpu"), s("nanoseconds")
    funcs: dict[str, int] = {}
    for frames, value, labels in samples:
        ids = []
        for name in reversed(frames):  # pprof stacks are leaf first
            if name not in funcs:
                fid = funcs[name] = len(funcs) + 1
                p.function.add(id=fid, name=s(name))
                p.location.add(id=fid).line.add(function_id=fid, line=1)
            ids.append(funcs[name])
        sample = p.sample.add(location_id=ids, value=[value])
        for k, v in labels.items():
            sample.label.add(key=s(k), str=s(v))
    p.string_table.extend(strings)
    return p.SerializeToString()


def ingest(sk, params: dict, body: bytes, tenant: str | None = None, content_type: str | None = None) -> requests.Response:
    h = {"Content-Type": content_type or "application/octet-stream"}
    if tenant is not None:
        h["X-Scope-OrgID"] = tenant
    return sk.session.post(f"{sk.http_url}/ingest", params=params, data=body, headers=h, timeout=30)


def flamegraph_nodes(fg) -> list[tuple[str, int, int]]:
    """(name, total, self) of every node of a FlameGraph message, level by level."""
    return [(fg.names[lvl.values[i + 3]], lvl.values[i + 1], lvl.values[i + 2])
            for lvl in fg.levels for i in range(0, len(lvl.values), 4)]
