"""Compile tests/proto/tempo_api.proto with a real protoc (grpcio-tools) at test time.

The opentelemetry-proto wheel ships compiled ``*_pb2`` modules but no ``.proto`` sources, so
the OTLP files our schema imports are handed to protoc as a FileDescriptorSet built from
those compiled modules (``--descriptor_set_in``). The generated module then imports the
installed ``opentelemetry.proto.*_pb2`` modules, so OTLP messages are shared with the SDK.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import tempfile
from functools import lru_cache

from google.protobuf import descriptor_pb2

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "proto"
PROTO_FILE = "tempo_api.proto"


def _otlp_descriptor_set() -> bytes:
    from opentelemetry.proto.trace.v1 import trace_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:  # dependencies first, as protoc expects
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        fds.file.append(proto)

    add(trace_pb2.DESCRIPTOR)
    return fds.SerializeToString()


@lru_cache(maxsize=1)
def tempo_pb2():
    """Return the compiled module for tests/proto/tempo_api.proto (compiled once per run)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="skein-e2e-proto-") as tmp:
        return _compile_and_load(pathlib.Path(tmp), protoc)


def _compile_and_load(out: pathlib.Path, protoc):
    dset = out / "otlp.pb"
    dset.write_bytes(_otlp_descriptor_set())
    args = [
        "protoc",
        f"--descriptor_set_in={dset}",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out}",
        PROTO_FILE,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) compiling {PROTO_DIR / PROTO_FILE}")
    path = out / "tempo_api_pb2.py"
    spec = importlib.util.spec_from_file_location("tempo_api_pb2", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tempo_api_pb2"] = mod
    spec.loader.exec_module(mod)
    return mod
