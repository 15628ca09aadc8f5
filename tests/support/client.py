"""Talk to a running skein: OTLP export (gRPC, HTTP protobuf/JSON) and the Tempo-compatible query API."""

from __future__ import annotations

import gzip as gzip_mod
import json
from dataclasses import dataclass
from typing import Any

import grpc
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from . import otlp
from .poll import wait_until

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TENANT_HEADER = "X-Scope-OrgID"
HTTP_TIMEOUT = 30


class UnexpectedStatus(Exception):
    """An HTTP status that no amount of polling will fix (not an AssertionError, so polls stop)."""


def expect_200(r: requests.Response, what: str) -> None:
    if r.status_code != 200:
        raise UnexpectedStatus(f"{what}: HTTP {r.status_code}: {r.text[:500]!r}")


def _tenant_headers(tenant: str | None, headers: dict | None = None) -> dict:
    h = dict(headers or {})
    if tenant is not None:
        h[TENANT_HEADER] = tenant
    return h


# ---- OTLP/HTTP ------------------------------------------------------------------------
def post_traces(
    skein,
    body: bytes,
    content_type: str,
    *,
    tenant: str | None = None,
    gzip: bool = False,
    headers: dict | None = None,
    timeout: float = HTTP_TIMEOUT,
    session: requests.Session | None = None,
) -> requests.Response:
    """`session`: a thread's own session (requests.Session is not thread-safe); default the collector's."""
    h = _tenant_headers(tenant, headers)
    h["Content-Type"] = content_type
    if gzip:
        body = gzip_mod.compress(body)
        h["Content-Encoding"] = "gzip"
    return (session or skein.session).post(skein.otlp_http_url + "/v1/traces", data=body, headers=h, timeout=timeout)


def post_proto(skein, req: ExportTraceServiceRequest | bytes, **kw) -> requests.Response:
    body = req if isinstance(req, (bytes, bytearray)) else req.SerializeToString()
    return post_traces(skein, bytes(body), "application/x-protobuf", **kw)


def post_json(skein, req: ExportTraceServiceRequest | dict | bytes | str, **kw) -> requests.Response:
    if isinstance(req, ExportTraceServiceRequest):
        body = json.dumps(otlp.message_to_otlp_json(req)).encode()
    elif isinstance(req, dict):
        body = json.dumps(req).encode()
    elif isinstance(req, str):
        body = req.encode()
    else:
        body = bytes(req)
    return post_traces(skein, body, "application/json", **kw)


def export_response(resp: requests.Response) -> ExportTraceServiceResponse:
    """Decode a 200 OTLP/HTTP response according to its Content-Type."""
    assert resp.status_code == 200, f"export failed: HTTP {resp.status_code} {resp.text[:500]!r}"
    ctype = resp.headers.get("Content-Type", "")
    if "json" in ctype:
        return otlp.parse_export_response_json(resp.content)
    assert "protobuf" in ctype or not resp.content, f"unexpected export response Content-Type {ctype!r}"
    return otlp.parse_export_response_proto(resp.content)


def export_ok(skein, req: ExportTraceServiceRequest, *, via: str = "proto", **kw) -> ExportTraceServiceResponse:
    """Export and assert full acceptance (200, no rejected spans)."""
    if via == "proto":
        r = post_proto(skein, req, **kw)
    elif via == "json":
        r = post_json(skein, req, **kw)
    elif via == "grpc":
        res = grpc_export(skein, req, **kw)
        assert res.code == grpc.StatusCode.OK, f"gRPC export failed: {res.code} {res.details}"
        assert res.response.partial_success.rejected_spans == 0, res.response
        return res.response
    else:
        raise ValueError(via)
    out = export_response(r)
    assert out.partial_success.rejected_spans == 0, f"unexpected partial success: {out}"
    return out


# ---- OTLP/gRPC ------------------------------------------------------------------------
@dataclass
class GrpcResult:
    code: grpc.StatusCode
    details: str
    response: ExportTraceServiceResponse | None


_channels: dict[str, grpc.Channel] = {}


def grpc_channel(skein) -> grpc.Channel:
    key = f"{skein.grpc_addr}"
    ch = _channels.get(key)
    if ch is None:
        ch = grpc.insecure_channel(
            skein.grpc_addr,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        _channels[key] = ch
    return ch


def new_grpc_channel(addr: str, reconnect_ms: int | None = None) -> grpc.Channel:
    """A channel of its own (not cached); `reconnect_ms` caps the reconnect backoff (gRPC's default
    starts at 1 s), for clients that keep exporting across collector restarts."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    if reconnect_ms is not None:
        options += [("grpc.initial_reconnect_backoff_ms", reconnect_ms),
                    ("grpc.min_reconnect_backoff_ms", reconnect_ms),
                    ("grpc.max_reconnect_backoff_ms", reconnect_ms)]
    return grpc.insecure_channel(addr, options=options)


def close_channels() -> None:
    for ch in _channels.values():
        ch.close()
    _channels.clear()


def grpc_export(
    skein,
    req: ExportTraceServiceRequest | bytes,
    *,
    tenant: str | None = None,
    compression: grpc.Compression | None = None,
    timeout: float = 30,
    channel: grpc.Channel | None = None,
) -> GrpcResult:
    body = req if isinstance(req, (bytes, bytearray)) else req.SerializeToString()
    call = (channel or grpc_channel(skein)).unary_unary(
        EXPORT_METHOD,
        request_serializer=lambda b: bytes(b),
        response_deserializer=ExportTraceServiceResponse.FromString,
    )
    md = [("x-scope-orgid", tenant)] if tenant is not None else None
    try:
        resp, c = call.with_call(body, metadata=md, compression=compression, timeout=timeout)
        return GrpcResult(grpc.StatusCode.OK, "", resp)
    except grpc.RpcError as e:
        return GrpcResult(e.code(), e.details() or "", None)


# ---- query API -------------------------------------------------------------------------
def api_get(skein, path: str, *, params=None, tenant: str | None = None, headers=None, timeout=HTTP_TIMEOUT):
    return skein.session.get(skein.http_url + path, params=params, headers=_tenant_headers(tenant, headers),
                             timeout=timeout)


def api_get_raw(skein, path_and_query: str, *, tenant: str | None = None, headers=None, timeout=HTTP_TIMEOUT):
    """GET a pre-encoded path+query exactly as given (no re-encoding by requests)."""
    req = requests.Request("GET", skein.http_url + path_and_query, headers=_tenant_headers(tenant, headers))
    prepped = skein.session.prepare_request(req)
    prepped.url = skein.http_url + path_and_query
    return skein.session.send(prepped, timeout=timeout)


def trace_v2_json(skein, trace_id_hex: str, tenant: str | None = None) -> requests.Response:
    return api_get(skein, f"/api/v2/traces/{trace_id_hex}", tenant=tenant, headers={"Accept": "application/json"})


def trace_v2_proto(skein, trace_id_hex: str, tenant: str | None = None) -> requests.Response:
    return api_get(skein, f"/api/v2/traces/{trace_id_hex}", tenant=tenant,
                   headers={"Accept": "application/protobuf"})


def trace_v1_json(skein, trace_id_hex: str, tenant: str | None = None) -> requests.Response:
    return api_get(skein, f"/api/traces/{trace_id_hex}", tenant=tenant, headers={"Accept": "application/json"})


def trace_v1_proto(skein, trace_id_hex: str, tenant: str | None = None) -> requests.Response:
    return api_get(skein, f"/api/traces/{trace_id_hex}", tenant=tenant, headers={"Accept": "application/protobuf"})


def decode_trace_v2_json(resp: requests.Response):
    """`{"trace":{"resourceSpans":[...]}}` -> list of ResourceSpans (strict OTLP/JSON)."""
    from .protojson import violations

    expect_200(resp, "trace by id (v2 JSON)")
    obj = resp.json()
    assert set(obj) <= {"trace", "metrics", "status", "message"}, f"unexpected top-level keys {sorted(obj)}"
    trace = obj.get("trace", {})
    probs = violations(trace, TracesData.DESCRIPTOR, "$.trace", hex_ids=True, zero_values=False)
    assert not probs, "trace JSON is not OTLP/JSON:\n  " + "\n  ".join(probs[:30])
    return list(otlp.otlp_json_to_message(trace, TracesData).resource_spans)


def decode_trace_v1_json(resp: requests.Response):
    """Tempo v1 JSON `{"batches":[...]}` -> list of ResourceSpans."""
    from .protojson import violations

    expect_200(resp, "trace by id (v1 JSON)")
    obj = resp.json()
    assert set(obj) <= {"batches"}, f"unexpected top-level keys {sorted(obj)}"
    data = {"resourceSpans": obj.get("batches", [])}
    if not data["resourceSpans"]:
        data = {}
    probs = violations(data, TracesData.DESCRIPTOR, "$", hex_ids=True, zero_values=False)
    assert not probs, "v1 trace JSON is not OTLP/JSON:\n  " + "\n  ".join(probs[:30])
    return list(otlp.otlp_json_to_message(data, TracesData).resource_spans)


def decode_trace_v2_proto(resp: requests.Response):
    from .tempo_proto import tempo_pb2
    from .unknown import assert_no_unknown_fields

    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text[:500]!r}"
    m = tempo_pb2().TraceByIDResponse()
    m.ParseFromString(resp.content)
    assert_no_unknown_fields(m)
    return m


def decode_trace_v1_proto(resp: requests.Response):
    from .tempo_proto import tempo_pb2
    from .unknown import assert_no_unknown_fields

    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text[:500]!r}"
    m = tempo_pb2().Trace()
    m.ParseFromString(resp.content)
    assert_no_unknown_fields(m)
    return m


def wait_trace(skein, trace_id: bytes | str, *, tenant: str | None = None, min_spans: int = 1,
               timeout: float = 15.0):
    """Poll trace-by-id (v2 JSON) until it has at least `min_spans` spans; return its ResourceSpans."""
    tid = trace_id.hex() if isinstance(trace_id, bytes) else trace_id

    def get():
        r = trace_v2_json(skein, tid, tenant)
        if r.status_code == 404:
            return None
        rss = decode_trace_v2_json(r)
        return rss if len(otlp.all_spans(rss)) >= min_spans else None

    return wait_until(get, timeout=timeout, what=f"trace {tid} with >= {min_spans} spans")


def search(skein, params: dict, tenant: str | None = None, headers=None, exact: bool = False):
    """GET /api/search; returns (SearchResponse message, raw JSON).

    exact=False decodes leniently (semantics only); exact=True requires exact protojson
    (no unknown fields, 64-bit ints as strings, zero values omitted) as Grafana's strict decoder.
    """
    from google.protobuf import json_format

    from .protojson import parse_strict
    from .tempo_proto import tempo_pb2

    r = api_get(skein, "/api/search", params=params, tenant=tenant, headers=headers)
    expect_200(r, f"search {params}")
    cls = tempo_pb2().SearchResponse
    if exact:
        return parse_strict(r.content, cls), r.json()
    return json_format.Parse(r.content, cls(), ignore_unknown_fields=True), r.json()


def ready(skein) -> bool:
    try:
        return api_get(skein, "/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def assert_healthy(skein) -> None:
    assert skein.running(), f"skein exited ({skein.proc.returncode})\n{skein.log_tail()}"
    r = api_get(skein, "/ready", timeout=10)
    assert r.status_code == 200, f"/ready -> {r.status_code} {r.text[:200]!r}"


def json_dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def metric_total(skein, name: str) -> float:
    """Sum of all samples named `name` on /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = api_get(skein, "/metrics")
    expect_200(r, "/metrics")
    return sum(s.value for f in text_string_to_metric_families(r.text) for s in f.samples if s.name == name)


def wait_flushed(skein, min_blocks: int = 1, timeout: float = 30.0) -> None:
    """Wait until everything ingested so far is in blocks: skein_head_spans == 0 and at least
    `min_blocks` committed blocks (skein_blocks)."""
    wait_until(
        lambda: metric_total(skein, "skein_head_spans") == 0 and metric_total(skein, "skein_blocks") >= min_blocks,
        timeout=timeout,
        what=f"head flushed (skein_head_spans == 0, skein_blocks >= {min_blocks})",
    )
