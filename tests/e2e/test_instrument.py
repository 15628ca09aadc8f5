"""skein-instrument in real services: the demo shop's four processes exporting to the
collector, interop with the Python OpenTelemetry SDK on both sides of an HTTP hop, log
correlation and error status.
"""

from __future__ import annotations

import http.server
import threading

import pytest
import requests
from opentelemetry import baggage, context, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from support import otlp
from support.client import decode_trace_v2_json, trace_v2_json
from support.poll import wait_until
from support.shop import Shop

ORDER = {"customer": "ada", "items": [{"sku": "moka-pot", "quantity": 1}]}
PROPAGATORS = {
    "tracecontext,baggage": CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]),
    "b3": B3SingleFormat(),
    "b3multi": B3MultiFormat(),
}
TRACER = TracerProvider().get_tracer("e2e")


@pytest.fixture(scope="module")
def collector(skein_module_factory):
    return skein_module_factory()


@pytest.fixture(scope="module")
def shop(collector, tmp_path_factory):
    s = Shop(tmp_path_factory.mktemp("shop"), collector).start()
    yield s
    s.stop()


def traced_post(url: str, body: dict, fmt: str = "tracecontext,baggage", bag: dict | None = None):
    """POST as a Python-SDK-instrumented client: returns (response, client span context)."""
    ctx = context.get_current()
    for k, v in (bag or {}).items():
        ctx = baggage.set_baggage(k, v, ctx)
    with TRACER.start_as_current_span("python-client", context=ctx) as span:
        headers: dict[str, str] = {}
        PROPAGATORS[fmt].inject(headers, context=trace.set_span_in_context(span, ctx))
        r = requests.post(url, json=body, headers=headers, timeout=30)
        return r, span.get_span_context()


def wait_services(collector, tid: str, services: set[str], min_spans: int):
    """The trace once every named service's spans (and `min_spans` in all) have arrived."""

    def get():
        r = trace_v2_json(collector, tid)
        if r.status_code == 404:
            return None
        rss = decode_trace_v2_json(r)
        by_svc = spans_by_service(rss)
        n = sum(len(v) for v in by_svc.values())
        assert services <= set(by_svc) and n >= min_spans, {k: [s.name for s in v] for k, v in by_svc.items()}
        return rss

    return wait_until(get, timeout=20, what=f"trace {tid} from {sorted(services)}")


def spans_by_service(rss) -> dict[str, list]:
    out: dict[str, list] = {}
    for rs in rss:
        svc = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
        for ss in rs.scope_spans:
            out.setdefault(svc, []).extend(ss.spans)
    return out


def attrs(span) -> dict:
    """Attribute values without their OTLP type tags."""
    return {k: v[1] for k, v in otlp.canon_attrs(span.attributes).items()}


KIND_SERVER, KIND_CLIENT = 2, 3
STATUS_ERROR = 2


def test_one_checkout_is_one_trace_across_four_services(collector, shop):
    r, client = traced_post(shop.gateway.url + "/checkout", ORDER)
    assert r.status_code == 200, r.text
    tid = f"{client.trace_id:032x}"
    rss = wait_services(collector, tid, {"gateway", "orders", "inventory", "payment"}, 7)
    by_svc = spans_by_service(rss)
    everything = {s.span_id: s for spans in by_svc.values() for s in spans}
    service_of = {s.span_id: svc for svc, spans in by_svc.items() for s in spans}

    (http_span,) = [s for s in by_svc["gateway"] if s.kind == KIND_SERVER]
    assert http_span.parent_span_id.hex() == f"{client.span_id:016x}", "continues the Python trace"
    a = attrs(http_span)
    assert http_span.name == "POST /checkout"
    assert a["http.route"] == "/checkout" and a["http.request.method"] == "POST"
    assert a["http.response.status_code"] == 200 and a["url.path"] == "/checkout"

    # Every server span of a gRPC service hangs under a CLIENT span of its caller's process.
    callers = {"orders": "gateway", "inventory": "orders", "payment": "orders"}
    rpc = {"orders": "PlaceOrder", "inventory": "Reserve", "payment": "Charge"}
    for svc, caller in callers.items():
        servers = [s for s in by_svc[svc] if s.kind == KIND_SERVER]
        assert servers, f"no server span in {svc}"
        for s in servers:
            parent = everything[s.parent_span_id]
            assert parent.kind == KIND_CLIENT and service_of[parent.span_id] == caller
            assert parent.name == s.name == f"shop.v1.{svc.capitalize()}/{rpc[svc]}"
            for span in (s, parent):
                a = attrs(span)
                assert a["rpc.system"] == "grpc"
                assert a["rpc.service"] == f"shop.v1.{svc.capitalize()}"
                assert a["rpc.method"] == rpc[svc]
                assert a["rpc.grpc.status_code"] == 0
    # The gateway's client call is a child of its HTTP server span (in-process nesting).
    (orders_client,) = [s for s in by_svc["gateway"] if s.kind == KIND_CLIENT]
    assert everything[orders_client.parent_span_id].span_id == http_span.span_id
    assert all(s.trace_id.hex() == tid for s in everything.values())


def test_out_of_stock_inventory_calls_carry_error_status(collector, shop):
    body = {"customer": "bob", "items": [{"sku": "vintage-roaster", "quantity": 1}]}
    r, client = traced_post(shop.gateway.url + "/checkout", body)
    assert r.status_code == 409, r.text
    tid = f"{client.trace_id:032x}"
    rss = wait_services(collector, tid, {"gateway", "orders", "inventory"}, 5)
    by_svc = spans_by_service(rss)
    reserve_clients = [s for s in by_svc["orders"] if s.kind == KIND_CLIENT and s.name.endswith("/Reserve")]
    assert reserve_clients and all(s.status.code == STATUS_ERROR for s in reserve_clients)
    assert attrs(reserve_clients[0])["rpc.grpc.status_code"] == 9  # FAILED_PRECONDITION
    assert "out of stock" in reserve_clients[0].status.message
    (http_span,) = [s for s in by_svc["gateway"] if s.kind == KIND_SERVER]
    assert attrs(http_span)["http.response.status_code"] == 409
    # No payment was attempted.
    assert "payment" not in by_svc


def test_log_lines_in_handlers_carry_the_trace_id(collector, shop):
    r, client = traced_post(shop.gateway.url + "/checkout", ORDER)
    assert r.status_code == 200
    tid = f"{client.trace_id:032x}"
    wait_until(lambda: f"trace_id={tid}" in shop.orders.log(), timeout=10, what="orders log line with trace id")
    line = next(l for l in shop.orders.log().splitlines() if f"trace_id={tid}" in l)
    assert "span_id=" in line


class _Capture(http.server.BaseHTTPRequestHandler):
    """An HTTP service instrumented only by the Python SDK's propagators."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        _Capture.seen.append(headers)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"carrier":"python","cents":499}')

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def python_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize("fmt", ["tracecontext,baggage", "b3", "b3multi"])
def test_python_sdk_extracts_the_context_skein_instrument_injects(collector, shop, python_server, fmt):
    gw = shop.add_gateway(["--shipping-url", python_server + "/quote"], env={"OTEL_PROPAGATORS": fmt})
    _Capture.seen.clear()
    bag = {"tenant": "acme"} if "baggage" in fmt else None
    r, client = traced_post(gw.url + "/checkout", ORDER, fmt=fmt, bag=bag)
    assert r.status_code == 200, r.text
    assert _Capture.seen, "gateway did not call the shipping service"
    headers = _Capture.seen[-1]
    extracted = PROPAGATORS[fmt].extract(headers)
    got = trace.get_current_span(extracted).get_span_context()
    assert got.is_valid and got.is_remote
    assert got.trace_id == client.trace_id, "the Python server continues the same trace"
    assert got.trace_flags.sampled
    if bag:
        assert baggage.get_all(extracted) == bag, headers
    # The extracted parent is the gateway's CLIENT span for that call. (Only the gateway uses
    # `fmt`; the rest of the shop expects W3C, so with B3 its spans start a trace of their own.)
    rss = wait_services(collector, f"{client.trace_id:032x}", {"gateway"}, 3)
    gw_spans = spans_by_service(rss)["gateway"]
    parent = next(s for s in gw_spans if s.span_id.hex() == f"{got.span_id:016x}")
    assert parent.kind == KIND_CLIENT and attrs(parent)["http.request.method"] == "POST"
    assert attrs(parent)["url.full"].startswith(python_server)
