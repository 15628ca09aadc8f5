"""Span profiles end to end: the demo shop's services sample their CPU with span attribution and
push pprof to the collector; flame graphs come back per span, per operation and as
slow-vs-normal diffs, and Grafana's traces-to-profiles query finds a span's samples.
"""

from __future__ import annotations

import time

import pytest

from support import pyroscope
from support.poll import wait_until
from support.shop import Shop
from test_instrument import ORDER, attrs, spans_by_service, traced_post, wait_services

CHARGE = "shop.v1.Payment/Charge"
BIG_ORDER = {"customer": "erin", "items": [{"sku": "moka-pot", "quantity": 40}, {"sku": "burr-grinder", "quantity": 2}]}


@pytest.fixture(scope="module")
def collector(skein_module_factory):
    return skein_module_factory()


@pytest.fixture(scope="module")
def shop(collector, tmp_path_factory):
    env = {
        "SKEIN_PROFILING": "true",
        "SKEIN_PROFILING_ENDPOINT": collector.http_url,
        "SKEIN_PROFILING_PUSH_INTERVAL": "1s",
    }
    s = Shop(tmp_path_factory.mktemp("shop"), collector, env=env).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def traffic(collector, shop):
    """Checkouts (some big, so fraud scoring burns more CPU); returns (start s, trace ids)."""
    start = time.time() - 1
    tids = []
    for i in range(30):
        r, client = traced_post(shop.gateway.url + "/checkout", BIG_ORDER if i % 3 == 0 else ORDER)
        assert r.status_code in (200, 402), r.text  # big orders may be declined by the score
        tids.append(f"{client.trace_id:032x}")
    return start, tids


def native(collector, path: str, **params):
    r = collector.session.get(f"{collector.http_url}/skein/api/{path}", params=params, timeout=30)
    assert r.status_code == 200, r.text[:500]
    return r


def fraud_share(tree: dict) -> tuple[int, int]:
    """(samples under any frame named like fraud_score, all samples) of a JSON tree."""

    def under(n) -> int:
        if "fraud_score" in n["name"]:
            return n["total"]
        return sum(under(c) for c in n["children"])

    return under(tree["root"]), tree["root"]["total"]


def charge_tree(collector, start: float, **extra):
    def get():
        t = native(collector, "flamegraph", service="payment", span_name=CHARGE, start=start,
                   end=time.time() + 1, format="json", **extra).json()
        return t if t["tree"]["root"]["total"] > 0 and t["spans"] > 0 else None

    return wait_until(get, timeout=30, what="payment Charge samples")


def test_charge_spans_samples_are_mostly_the_fraud_score(collector, traffic):
    start, _ = traffic
    fraud, total = wait_until(
        lambda: (lambda s: s if s[1] >= 20 else None)(fraud_share(charge_tree(collector, start)["tree"])),
        timeout=40, what="at least 20 samples of Charge spans")
    assert fraud >= 0.8 * total, f"fraud_score in {fraud} of {total} Charge samples"
    # Spans that never run it have none of it.
    for svc, name in [("orders", "shop.v1.Orders/PlaceOrder"), ("inventory", "shop.v1.Inventory/Reserve")]:
        t = native(collector, "flamegraph", service=svc, span_name=name, start=start,
                   end=time.time() + 1, format="json").json()
        f, n = fraud_share(t["tree"])
        assert f <= 0.02 * max(n, 1), (svc, f, n)


def test_grafana_traces_to_profiles_finds_one_spans_samples(collector, traffic):
    start, tids = traffic
    charge_tree(collector, start)  # profiles have arrived
    tid = tids[0]  # a big order: tens of ms of fraud scoring
    rss = wait_services(collector, tid, {"payment"}, 2)
    (span,) = [s for s in spans_by_service(rss)["payment"] if s.name == CHARGE]
    profile_id = attrs(span)["pyroscope.profile.id"]
    assert profile_id == span.span_id.hex(), "the Charge span is its process's local root"
    Req = pyroscope.msg("querier.v1.SelectMergeSpanProfileRequest")
    start_ms = span.start_time_unix_nano // 1_000_000 - 60_000
    end_ms = span.end_time_unix_nano // 1_000_000 + 60_000

    def fg():
        out = pyroscope.connect(collector, "SelectMergeSpanProfile", Req(
            profile_typeID=pyroscope.CPU, label_selector='{service_name="payment"}',
            span_selector=[profile_id], start=start_ms, end=end_ms, max_nodes=1024,
        ), "querier.v1.SelectMergeSpanProfileResponse")
        return out if out.flamegraph.total > 0 else None

    out = wait_until(fg, timeout=30, what="span profile of the Charge span")
    assert any("fraud_score" in n for n in out.flamegraph.names), list(out.flamegraph.names)[:40]


def test_native_flamegraphs_one_span_slow_spans_and_diff(collector, traffic):
    start, tids = traffic
    t = charge_tree(collector, start)
    # One span, as SVG: interactive inferno output naming the hot function.
    rss = wait_services(collector, tids[0], {"payment"}, 2)
    (span,) = [s for s in spans_by_service(rss)["payment"] if s.name == CHARGE]
    r = native(collector, "flamegraph", span_id=span.span_id.hex(), start=start, end=time.time() + 1)
    assert r.headers["content-type"] == "image/svg+xml"
    assert "fraud_score" in r.text and "<script" in r.text
    # Only spans slower than a threshold: a subset of all Charge spans.
    slow = native(collector, "flamegraph", service="payment", span_name=CHARGE, start=start,
                  end=time.time() + 1, min_duration="1h", format="json").json()
    assert slow["spans"] == 0 and slow["tree"]["root"]["total"] == 0
    # Slow (>= 1 ns, i.e. all) vs normal (none): every sample is in the comparison.
    d = native(collector, "flamegraph/diff", service="payment", span_name=CHARGE, start=start,
               end=time.time() + 1, threshold="1ns", format="json").json()
    assert d["comparison"]["spans"] == t["spans"] and d["baseline"]["spans"] == 0
    svg = native(collector, "flamegraph/diff", service="payment", span_name=CHARGE, start=start,
                 end=time.time() + 1, threshold="5ms")
    assert svg.headers["content-type"] == "image/svg+xml"


def test_native_flamegraph_rejects_bad_parameters(collector):
    for params in [{}, {"span_id": "nothex"}, {"service": "payment", "span_name": CHARGE, "format": "png"},
                   {"service": "payment", "span_name": CHARGE, "min_duration": "soon"}]:
        r = collector.session.get(f"{collector.http_url}/skein/api/flamegraph", params=params, timeout=10)
        assert r.status_code == 400, (params, r.status_code, r.text)
    r = collector.session.get(f"{collector.http_url}/skein/api/flamegraph/diff",
                              params={"service": "payment", "span_name": CHARGE}, timeout=10)
    assert r.status_code == 400 and "threshold" in r.text
