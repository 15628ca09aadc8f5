"""Build OTLP requests by hand, convert to/from OTLP/JSON, and canonicalise traces for comparison."""

from __future__ import annotations

import base64
import copy
import os
import time
from typing import Any, Iterable

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
INTERNAL = Span.SPAN_KIND_INTERNAL
PRODUCER = Span.SPAN_KIND_PRODUCER
CONSUMER = Span.SPAN_KIND_CONSUMER
STATUS_UNSET = Status.STATUS_CODE_UNSET
STATUS_OK = Status.STATUS_CODE_OK
STATUS_ERROR = Status.STATUS_CODE_ERROR

MS = 1_000_000  # nanoseconds
SEC = 1_000_000_000

ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def new_trace_id() -> bytes:
    while True:
        b = os.urandom(16)
        if any(b):
            return b


def new_span_id() -> bytes:
    while True:
        b = os.urandom(8)
        if any(b):
            return b


def now_ns() -> int:
    return time.time_ns()


# ---- AnyValue / attributes --------------------------------------------------------------
def any_value(v: Any) -> AnyValue:
    if isinstance(v, AnyValue):
        return v
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kvs(v)))
    if isinstance(v, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    raise TypeError(f"no AnyValue for {v!r}")


def kvs(attrs: dict | None) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in (attrs or {}).items()]


def make_span(
    trace_id: bytes,
    name: str,
    *,
    span_id: bytes | None = None,
    parent: bytes | None = None,
    kind: int = INTERNAL,
    start: int,
    duration: int,
    attrs: dict | None = None,
    status: int = STATUS_UNSET,
    status_message: str = "",
    events: Iterable[tuple[str, int, dict]] = (),
    links: Iterable[tuple[bytes, bytes, dict]] = (),
) -> Span:
    s = Span(
        trace_id=trace_id,
        span_id=span_id or new_span_id(),
        parent_span_id=parent or b"",
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration,
        attributes=kvs(attrs),
    )
    if status != STATUS_UNSET or status_message:
        s.status.CopyFrom(Status(code=status, message=status_message))
    for ename, etime, eattrs in events:
        s.events.add(name=ename, time_unix_nano=etime, attributes=kvs(eattrs))
    for ltid, lsid, lattrs in links:
        s.links.add(trace_id=ltid, span_id=lsid, attributes=kvs(lattrs))
    return s


def resource_spans(
    resource: dict,
    spans: list[Span],
    scope: tuple[str, str] = ("skein-e2e", "1.0.0"),
) -> ResourceSpans:
    return ResourceSpans(
        resource=Resource(attributes=kvs(resource)),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope[0], version=scope[1]), spans=spans)],
    )


def export_request(*rss: ResourceSpans) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=list(rss))


def simple_request(
    service: str, n_spans: int = 3, trace_id: bytes | None = None, start: int | None = None, **span_kw
) -> tuple[ExportTraceServiceRequest, bytes, list[bytes]]:
    """One trace of `n_spans` spans (a root and children) of service `service`."""
    tid = trace_id or new_trace_id()
    t0 = start if start is not None else now_ns() - 5 * SEC
    root = make_span(tid, f"{service}-root", kind=SERVER, start=t0, duration=100 * MS, **span_kw)
    spans = [root]
    for i in range(n_spans - 1):
        spans.append(
            make_span(tid, f"{service}-child-{i}", parent=root.span_id, kind=CLIENT, start=t0 + (i + 1) * MS,
                      duration=10 * MS)
        )
    return export_request(resource_spans({"service.name": service}, spans)), tid, [s.span_id for s in spans]


# ---- OTLP/JSON ------------------------------------------------------------------------
def _map_ids(obj: Any, fn) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ID_FIELDS and isinstance(v, str):
                out[k] = fn(v)
            else:
                out[k] = _map_ids(v, fn)
        return out
    if isinstance(obj, list):
        return [_map_ids(x, fn) for x in obj]
    return obj


def b64_to_hex(s: str) -> str:
    return base64.b64decode(s).hex()


def hex_to_b64(s: str) -> str:
    return base64.b64encode(bytes.fromhex(s)).decode()


def message_to_otlp_json(msg) -> dict:
    """protobuf message -> OTLP/JSON dict (lowerCamel names, hex ids, enums as integers)."""
    d = json_format.MessageToDict(msg, use_integers_for_enums=True)
    return _map_ids(d, b64_to_hex)


def otlp_json_to_message(obj: dict, cls, strict: bool = True):
    """OTLP/JSON dict (hex ids) -> protobuf message; unknown fields fail when strict."""
    d = _map_ids(copy.deepcopy(obj), hex_to_b64)
    return json_format.ParseDict(d, cls(), ignore_unknown_fields=not strict)


def parse_export_response_json(body: bytes) -> ExportTraceServiceResponse:
    if not body.strip():
        return ExportTraceServiceResponse()
    return json_format.Parse(body, ExportTraceServiceResponse(), ignore_unknown_fields=False)


def parse_export_response_proto(body: bytes) -> ExportTraceServiceResponse:
    r = ExportTraceServiceResponse()
    r.ParseFromString(body)
    return r


# ---- canonical form for comparison -------------------------------------------------------
def canon_value(v: AnyValue):
    which = v.WhichOneof("value")
    if which is None:
        return ("empty",)
    if which == "string_value":
        return ("str", v.string_value)
    if which == "bool_value":
        return ("bool", v.bool_value)
    if which == "int_value":
        return ("int", v.int_value)
    if which == "double_value":
        return ("double", v.double_value)
    if which == "bytes_value":
        return ("bytes", v.bytes_value)
    if which == "array_value":
        return ("array", tuple(canon_value(x) for x in v.array_value.values))
    if which == "kvlist_value":
        return ("kvlist", tuple(sorted((kv.key, canon_value(kv.value)) for kv in v.kvlist_value.values)))
    raise AssertionError(which)


def canon_attrs(attrs) -> dict:
    out = {}
    for kv in attrs:
        assert kv.key not in out, f"duplicate attribute key {kv.key!r}"
        out[kv.key] = canon_value(kv.value)
    return out


def canon_span(s: Span, resource: Resource, scope: InstrumentationScope) -> dict:
    return {
        "trace_id": s.trace_id.hex(),
        "span_id": s.span_id.hex(),
        "parent_span_id": s.parent_span_id.hex(),
        "name": s.name,
        "kind": s.kind,
        "start": s.start_time_unix_nano,
        "end": s.end_time_unix_nano,
        "status_code": s.status.code,
        "status_message": s.status.message,
        "attributes": canon_attrs(s.attributes),
        "events": [(e.name, e.time_unix_nano, canon_attrs(e.attributes)) for e in s.events],
        "links": [(l.trace_id.hex(), l.span_id.hex(), canon_attrs(l.attributes)) for l in s.links],
        "scope": (scope.name, scope.version),
        "resource": canon_attrs(resource.attributes),
    }


def canon_spans(resource_spans_list) -> dict[str, dict]:
    """span id hex -> canonical span; fails if a span id occurs twice."""
    out: dict[str, dict] = {}
    for rs in resource_spans_list:
        for ss in rs.scope_spans:
            for s in ss.spans:
                c = canon_span(s, rs.resource, ss.scope)
                assert c["span_id"] not in out, f"span {c['span_id']} returned more than once"
                out[c["span_id"]] = c
    return out


def span_id_counts(resource_spans_list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rs in resource_spans_list:
        for ss in rs.scope_spans:
            for s in ss.spans:
                counts[s.span_id.hex()] = counts.get(s.span_id.hex(), 0) + 1
    return counts


def all_spans(resource_spans_list) -> list[Span]:
    return [s for rs in resource_spans_list for ss in rs.scope_spans for s in ss.spans]


__all__ = [name for name in dir() if not name.startswith("_")] + ["TracesData"]
