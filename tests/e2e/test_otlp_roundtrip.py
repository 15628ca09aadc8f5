"""Spans made by the real OpenTelemetry Python SDK survive export -> store -> read-back, field by field.

Exported over OTLP/gRPC (with and without gzip), OTLP/HTTP protobuf (with and without gzip) and
OTLP/HTTP JSON (body built from the SDK's own encoder), then read back by trace id in all four
forms (v2 JSON, v2 protobuf, v1 JSON, v1 protobuf) and compared with what the SDK encoded.
"""

from __future__ import annotations

import dataclasses
import json

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from support import client, otlp

ALL_TYPES = {
    "attr.str": "hello wörld",
    "attr.empty_str": "",
    "attr.bool": True,
    "attr.bool_false": False,
    "attr.int": -42,
    "attr.int_big": 2**62 + 1,  # not representable as a double: catches int64 -> f64 lossy paths
    "attr.int_zero": 0,
    "attr.float": 3.25,
    "attr.float_neg": -1e-300,
    "attr.bytes": b"\x00\x01\xfe\xff",
    "attr.str_array": ["a", "b", ""],
    "attr.bool_array": [True, False],
    "attr.int_array": [1, -2, 2**40],
    "attr.float_array": [1.5, -0.25],
    "attr.bytes_array": [b"\x01", b"\xff\x00"],
    "attr.mixed_array": ["a", 1, True, 2.5],
    "attr.kvlist": {"k1": "v1", "k2": 7, "nested": {"deep": [True, "x"]}},
}

TRANSPORTS = ["grpc", "grpc-gzip", "http-proto", "http-proto-gzip", "http-json", "http-json-gzip"]
READBACKS = ["v2-json", "v2-proto", "v1-json", "v1-proto"]


class RecordingExporter(SpanExporter):
    """Delegates to a real exporter and records every result, so export failures fail the test."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans):
        r = self.inner.export(spans)
        self.results.append(r)
        return r

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class JsonExporter(SpanExporter):
    """OTLP/HTTP JSON: the SDK ships no JSON exporter, so encode with the SDK's own encoder,
    convert to OTLP/JSON (hex ids, lowerCamel, int64 as strings) and POST it."""

    def __init__(self, skein, gzip: bool):
        self.skein, self.gzip = skein, gzip
        self.responses = []

    def export(self, spans):
        body = otlp.message_to_otlp_json(encode_spans(spans))
        r = client.post_json(self.skein, body, gzip=self.gzip)
        self.responses.append(r)
        return SpanExportResult.SUCCESS if r.status_code == 200 else SpanExportResult.FAILURE

    def shutdown(self):
        pass


@dataclasses.dataclass
class Sent:
    transport: str
    trace_id: str
    link_target_trace_id: str
    expected: dict  # span id hex -> canonical span
    results: list


def _exporter(transport: str, skein):
    if transport == "grpc":
        return GrpcSpanExporter(endpoint=skein.grpc_addr, insecure=True)
    if transport == "grpc-gzip":
        return GrpcSpanExporter(endpoint=skein.grpc_addr, insecure=True, compression=grpc.Compression.Gzip)
    if transport == "http-proto":
        return HttpSpanExporter(endpoint=skein.otlp_http_url + "/v1/traces")
    if transport == "http-proto-gzip":
        return HttpSpanExporter(endpoint=skein.otlp_http_url + "/v1/traces", compression=HttpCompression.Gzip)
    if transport == "http-json":
        return JsonExporter(skein, gzip=False)
    if transport == "http-json-gzip":
        return JsonExporter(skein, gzip=True)
    raise ValueError(transport)


def _produce(transport: str, skein) -> Sent:
    resource = Resource.create(
        {
            "service.name": f"roundtrip-{transport}",
            "service.version": "1.2.3",
            "res.int": 7,
            "res.bool": True,
            "res.float": 0.5,
            "res.array": ["x", "y"],
            "res.kvlist": {"a": "b"},
        }
    )
    provider = TracerProvider(resource=resource)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    recorder = RecordingExporter(_exporter(transport, skein))
    provider.add_span_processor(BatchSpanProcessor(recorder, schedule_delay_millis=60_000))

    tracer = provider.get_tracer("skein.e2e.roundtrip", "2.3.4", attributes={"scope.attr": "s"})
    # A span in another trace, for a cross-trace link.
    with tracer.start_as_current_span("link-target", kind=SpanKind.INTERNAL) as target:
        pass
    with tracer.start_as_current_span("GET /roundtrip", kind=SpanKind.SERVER, attributes=ALL_TYPES) as root:
        root.add_event("cache.miss", attributes=ALL_TYPES)
        root.add_event("plain-event")
        for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(f"child-{kind.name.lower()}", kind=kind) as c:
                c.set_attribute("child.kind", kind.name)
        with tracer.start_as_current_span(
            "linked",
            links=[
                Link(target.get_span_context(), {"link.str": "x", "link.int": 3}),
                Link(root.get_span_context()),
            ],
        ):
            pass
        with tracer.start_as_current_span("failing", kind=SpanKind.CLIENT) as failing:
            failing.set_status(Status(StatusCode.ERROR, "upstream exploded: 503"))
            failing.record_exception(ValueError("bad value"))
            with tracer.start_as_current_span("grandchild") as g:
                g.set_attribute("depth", 2)
        root.set_status(Status(StatusCode.OK))

    assert provider.force_flush(30_000), "force_flush timed out"
    provider.shutdown()

    spans = memory.get_finished_spans()
    expected = otlp.canon_spans(encode_spans(spans).resource_spans)
    results = list(recorder.results)
    if isinstance(recorder.inner, JsonExporter):
        results += [f"HTTP {r.status_code} {r.text[:300]!r}" for r in recorder.inner.responses if r.status_code != 200]
    return Sent(
        transport=transport,
        trace_id=format(root.get_span_context().trace_id, "032x"),
        link_target_trace_id=format(target.get_span_context().trace_id, "032x"),
        expected=expected,
        results=results,
    )


@pytest.fixture(scope="module", params=["head", "blocks"])
def skein_module(request, skein_module_factory):
    """Read back from the in-memory head, and from Parquet blocks (--head-max-spans 4 flushes
    while the SDK exports, so every trace is read from blocks, possibly plus head)."""
    if request.param == "head":
        return skein_module_factory()
    sk = skein_module_factory("--head-max-spans", "4")
    sk.expect_blocks = True
    return sk


@pytest.fixture(scope="module")
def sent(skein_module) -> dict[str, Sent]:
    out = {t: _produce(t, skein_module) for t in TRANSPORTS}
    if getattr(skein_module, "expect_blocks", False):
        client.wait_flushed(skein_module, min_blocks=1)
    return out


def _expected_in(s: Sent, trace_id: str) -> dict:
    return {k: v for k, v in s.expected.items() if v["trace_id"] == trace_id}


def _read_back(skein, trace_id: str, form: str, n: int):
    client.wait_trace(skein, trace_id, min_spans=n)  # visible at all (polls v2 JSON)
    if form == "v2-json":
        return client.decode_trace_v2_json(client.trace_v2_json(skein, trace_id))
    if form == "v1-json":
        return client.decode_trace_v1_json(client.trace_v1_json(skein, trace_id))
    if form == "v2-proto":
        r = client.trace_v2_proto(skein, trace_id)
        assert "protobuf" in r.headers.get("Content-Type", ""), r.headers.get("Content-Type")
        m = client.decode_trace_v2_proto(r)
        assert m.status == 0, f"status {m.status} (PARTIAL) message {m.message!r}"
        return list(m.trace.resourceSpans)
    if form == "v1-proto":
        r = client.trace_v1_proto(skein, trace_id)
        assert "protobuf" in r.headers.get("Content-Type", ""), r.headers.get("Content-Type")
        return list(client.decode_trace_v1_proto(r).resourceSpans)
    raise ValueError(form)


def _diff(expected: dict, got: dict) -> str:
    lines = []
    for sid in sorted(set(expected) | set(got)):
        e, g = expected.get(sid), got.get(sid)
        if e is None:
            lines.append(f"span {sid}: not sent but returned ({g['name']})")
        elif g is None:
            lines.append(f"span {sid} ({e['name']}): sent but missing")
        else:
            for k in e:
                if e[k] == g.get(k):
                    continue
                if isinstance(e[k], dict) and isinstance(g.get(k), dict):
                    for ak in sorted(set(e[k]) | set(g[k])):
                        if e[k].get(ak) != g[k].get(ak):
                            lines.append(f"span {sid} ({e['name']}) {k}[{ak!r}]:\n    sent {e[k].get(ak)!r}\n"
                                         f"    got  {g[k].get(ak)!r}")
                else:
                    lines.append(f"span {sid} ({e['name']}) field {k}:\n    sent {e[k]!r}\n    got  {g.get(k)!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_export_is_acknowledged(sent, transport):
    s = sent[transport]
    assert s.results, "exporter was never called"
    assert all(r == SpanExportResult.SUCCESS for r in s.results), s.results


@pytest.mark.parametrize("form", READBACKS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_trace_reads_back_field_by_field(skein_module, sent, transport, form):
    s = sent[transport]
    expected = _expected_in(s, s.trace_id)
    assert len(expected) == 8
    rss = _read_back(skein_module, s.trace_id, form, len(expected))
    got = otlp.canon_spans(rss)
    diff = _diff(expected, got)
    assert not diff, f"{transport} -> {form} differs from what the SDK sent:\n{diff}"


@pytest.mark.parametrize("transport", ["grpc", "http-json"])
def test_link_target_trace_is_stored_separately(skein_module, sent, transport):
    s = sent[transport]
    expected = _expected_in(s, s.link_target_trace_id)
    assert len(expected) == 1
    got = otlp.canon_spans(client.wait_trace(skein_module, s.link_target_trace_id, min_spans=1))
    assert not _diff(expected, got), _diff(expected, got)


def test_unknown_trace_id_is_404_in_every_form(skein_module):
    tid = otlp.new_trace_id().hex()
    for fn in (client.trace_v2_json, client.trace_v2_proto, client.trace_v1_json, client.trace_v1_proto):
        r = fn(skein_module, tid)
        assert r.status_code == 404, f"{fn.__name__}: {r.status_code} {r.text[:200]!r}"


def test_http_export_response_matches_request_encoding(skein_module):
    req, _, _ = otlp.simple_request("resp-encoding", 1)
    rp = client.post_proto(skein_module, req)
    assert rp.status_code == 200, rp.text
    assert rp.headers.get("Content-Type", "").startswith("application/x-protobuf"), rp.headers
    otlp.parse_export_response_proto(rp.content)
    req, _, _ = otlp.simple_request("resp-encoding", 1)
    rj = client.post_json(skein_module, req)
    assert rj.status_code == 200, rj.text
    assert rj.headers.get("Content-Type", "").startswith("application/json"), rj.headers
    json.loads(rj.content or b"{}")


def test_optional_span_fields_survive(skein_module):
    """trace_state, flags, dropped counts, schema URLs and scope attributes are OTLP fields too."""
    tid = otlp.new_trace_id()
    span = otlp.make_span(tid, "optional-fields", kind=otlp.SERVER, start=otlp.now_ns() - otlp.SEC, duration=otlp.MS)
    span.trace_state = "vendor=abc,other=1"
    span.flags = 0x301
    span.dropped_attributes_count = 3
    span.dropped_events_count = 4
    span.dropped_links_count = 5
    link = span.links.add(trace_id=otlp.new_trace_id(), span_id=otlp.new_span_id(), trace_state="l=1")
    link.flags = 0x101
    rs = otlp.resource_spans({"service.name": "optional-fields"}, [span])
    rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    rs.scope_spans[0].schema_url = "https://opentelemetry.io/schemas/1.25.0"
    rs.scope_spans[0].scope.attributes.add(key="scope.k", value=otlp.any_value("v"))
    rs.resource.dropped_attributes_count = 2
    client.export_ok(skein_module, otlp.export_request(rs))

    rss = client.wait_trace(skein_module, tid, min_spans=1)
    got = otlp.all_spans(rss)[0]
    problems = []
    for field in ("trace_state", "flags", "dropped_attributes_count", "dropped_events_count", "dropped_links_count"):
        if getattr(got, field) != getattr(span, field):
            problems.append(f"span.{field}: sent {getattr(span, field)!r} got {getattr(got, field)!r}")
    if got.links[0].trace_state != "l=1" or got.links[0].flags != 0x101:
        problems.append(f"link trace_state/flags: got {got.links[0].trace_state!r}/{got.links[0].flags:#x}")
    if rss[0].schema_url != rs.schema_url:
        problems.append(f"resource schema_url: got {rss[0].schema_url!r}")
    if rss[0].scope_spans[0].schema_url != rs.scope_spans[0].schema_url:
        problems.append(f"scope schema_url: got {rss[0].scope_spans[0].schema_url!r}")
    if otlp.canon_attrs(rss[0].scope_spans[0].scope.attributes) != {"scope.k": ("str", "v")}:
        problems.append(f"scope attributes: got {rss[0].scope_spans[0].scope.attributes}")
    assert not problems, "\n".join(problems)


def test_json_export_accepts_int64_as_json_numbers(skein_module):
    """OTLP spec (JSON encoding): 64-bit integers are sent as strings, but either numbers or strings
    must be accepted when decoding."""
    tid, sid = otlp.new_trace_id(), otlp.new_span_id()
    start = otlp.now_ns() - otlp.SEC
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-numbers"}}]},
        "scopeSpans": [{"scope": {"name": "hand"}, "spans": [{
            "traceId": tid.hex(), "spanId": sid.hex(), "name": "numbers", "kind": 2,
            "startTimeUnixNano": start, "endTimeUnixNano": start + 5 * otlp.MS,
            "attributes": [{"key": "big", "value": {"intValue": 2**62 + 1}},
                           {"key": "neg", "value": {"intValue": "-7"}}],
            "status": {"code": 2, "message": "m"},
        }]}],
    }]}
    r = client.post_json(skein_module, body)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    span = otlp.all_spans(client.wait_trace(skein_module, tid))[0]
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (start, start + 5 * otlp.MS)
    assert span.kind == otlp.SERVER and span.status.code == otlp.STATUS_ERROR
    assert otlp.canon_attrs(span.attributes) == {"big": ("int", 2**62 + 1), "neg": ("int", -7)}
