"""A real OTLP collector (rotel-agent) forwards SDK spans to skein (its OTLP exporter over gRPC with
gzip, and over HTTP/protobuf); the spans arrive intact."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess

import pytest
import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from support import client, otlp
from support.collector import free_port
from support.poll import wait_until


def rotel_binary() -> pathlib.Path:
    import rotel

    p = pathlib.Path(rotel.__file__).parent / "rotel-agent"
    if not p.exists():
        pytest.fail(f"rotel-agent not found at {p}; run tests/setup-venv.sh")
    return p


@pytest.fixture(params=["grpc", "http"], ids=["rotel-exports-grpc", "rotel-exports-http"])
def rotel(request, skein, tmp_path):
    """rotel-agent receiving OTLP on its own ports and exporting to skein with the given protocol."""
    protocol = request.param
    grpc_port, http_port = free_port(), free_port()
    target = f"http://{skein.grpc_addr}" if protocol == "grpc" else skein.otlp_http_url
    log = tmp_path / "rotel.log"
    argv = [
        str(rotel_binary()),
        "start",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--exporter", "otlp",
        "--otlp-exporter-endpoint", target,
        "--otlp-exporter-protocol", protocol,
        "--batch-timeout", "100ms",
        "--pid-file", str(tmp_path / "rotel.pid"),
        "--log-file", str(tmp_path / "rotel-agent.log"),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"rotel exited {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            # Any HTTP answer means the OTLP/HTTP receiver is listening.
            requests.get(f"http://127.0.0.1:{http_port}/", timeout=1)
            return True
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=30, what="rotel-agent listening")
    except (TimeoutError, AssertionError):
        proc.kill()
        raise
    yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"http://127.0.0.1:{http_port}", "proc": proc, "log": log}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _make_trace(exporter, service: str):
    provider = TracerProvider(resource=Resource.create({"service.name": service, "via": "rotel"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("skein.e2e.rotel", "0.1.0")
    with tracer.start_as_current_span("checkout", kind=SpanKind.SERVER, attributes={"n": 1, "s": "x"}) as root:
        root.add_event("ev", {"k": True})
        for i in range(3):
            with tracer.start_as_current_span(f"step-{i}", kind=SpanKind.CLIENT) as c:
                c.set_attribute("i", i)
                c.set_attribute("f", i + 0.5)
                if i == 2:
                    c.set_status(Status(StatusCode.ERROR, "nope"))
    provider.force_flush()
    provider.shutdown()
    spans = memory.get_finished_spans()
    return format(root.get_span_context().trace_id, "032x"), otlp.canon_spans(encode_spans(spans).resource_spans)


def _assert_arrives(skein, trace_id, expected, rotel):
    try:
        rss = client.wait_trace(skein, trace_id, min_spans=len(expected), timeout=30)
    except TimeoutError:
        raise AssertionError(f"trace never arrived via rotel; rotel log:\n{rotel['log'].read_text(errors='replace')}")
    got = otlp.canon_spans(rss)
    assert set(got) == set(expected), f"span ids differ: sent {sorted(expected)} got {sorted(got)}"
    for sid, e in expected.items():
        g = got[sid]
        # rotel may add resource attributes of its own; everything the SDK sent must be intact
        for k in e:
            if k == "resource":
                missing = {rk: rv for rk, rv in e["resource"].items() if g["resource"].get(rk) != rv}
                assert not missing, f"span {e['name']}: resource attributes lost/changed: {missing} got {g['resource']}"
            else:
                assert g[k] == e[k], f"span {e['name']} field {k}: sent {e[k]!r} got {g[k]!r}"


def test_sdk_to_rotel_grpc_to_skein(skein, rotel):
    exporter = GrpcSpanExporter(endpoint=rotel["grpc"], insecure=True)
    trace_id, expected = _make_trace(exporter, "via-rotel-grpc")
    _assert_arrives(skein, trace_id, expected, rotel)


def test_sdk_to_rotel_http_to_skein(skein, rotel):
    exporter = HttpSpanExporter(endpoint=rotel["http"] + "/v1/traces")
    trace_id, expected = _make_trace(exporter, "via-rotel-http")
    _assert_arrives(skein, trace_id, expected, rotel)
