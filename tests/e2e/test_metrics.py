"""`/metrics` is valid Prometheus text exposition, carries the documented series, and they move."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import client, otlp
from support.poll import wait_until

REQUIRED = {
    "skein_spans_received_total": "counter",
    "skein_spans_rejected_total": "counter",
    "skein_wal_bytes": "gauge",
    "skein_wal_fsync_seconds": "histogram",
    "skein_head_spans": "gauge",
    "skein_blocks": "gauge",
    # the contract fixes only the fsync histogram's type; these may be histograms or summaries
    "skein_flush_duration_seconds": ("histogram", "summary"),
    "skein_query_duration_seconds": ("histogram", "summary"),
}


def _kinds(kind):
    return kind if isinstance(kind, tuple) else (kind,)


def scrape(sk):
    r = client.api_get(sk, "/metrics")
    assert r.status_code == 200, r.status_code
    ctype = r.headers.get("Content-Type", "")
    assert ctype.startswith("text/plain") or "openmetrics" in ctype, ctype
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples.setdefault(s.name, []).append(s)
    return r.text, families, samples


def total(samples, name) -> float:
    return sum(s.value for s in samples.get(name, []))


def _family(families, name, kind):
    # the parser names counter families without the _total suffix
    key = name[: -len("_total")] if "counter" in _kinds(kind) and name.endswith("_total") else name
    return families.get(key) or families.get(name)


def _ingest_reject_and_query(skein):
    req, tid, _ = otlp.simple_request("metrics-warmup", 2)
    client.export_ok(skein, req, via="grpc")
    bad = otlp.make_span(otlp.new_trace_id(), "bad", start=otlp.now_ns() - otlp.SEC, duration=otlp.MS)
    bad.span_id = b"\x00" * 8
    r = client.post_proto(skein, otlp.export_request(otlp.resource_spans({"service.name": "metrics-warmup"}, [bad])))
    assert client.export_response(r).partial_success.rejected_spans == 1
    client.wait_trace(skein, tid, min_spans=2)
    client.search(skein, {"q": "{}"})


def test_metrics_parse_and_have_required_series(skein):
    """After an ingest, a rejected span and a query, every documented series is exposed with its type."""
    _ingest_reject_and_query(skein)
    text, families, samples = scrape(skein)
    missing, wrong = [], []
    for name, kind in REQUIRED.items():
        f = _family(families, name, kind)
        if f is None:
            missing.append(name)
        elif f.type not in _kinds(kind):
            wrong.append(f"{name}: TYPE {f.type}, want {kind}")
    assert not missing and not wrong, f"missing {missing}; wrong types {wrong}\n{text[:3000]}"


@pytest.mark.parametrize("name", [n for n, k in REQUIRED.items() if "histogram" in _kinds(k)])
def test_histograms_are_well_formed(skein, name):
    _ingest_reject_and_query(skein)
    _, families, samples = scrape(skein)
    f = _family(families, name, "histogram")
    assert f is not None, f"{name} missing"
    if f.type == "summary":
        assert any(s.name == name + "_count" for s in f.samples), f"{name} summary has no _count"
        return
    buckets = [s for s in f.samples if s.name == name + "_bucket"]
    assert buckets, f"{name} has no _bucket samples"
    assert any(s.labels.get("le") == "+Inf" for s in buckets), f"{name} has no le=+Inf bucket"
    assert any(s.name == name + "_sum" for s in f.samples) and any(s.name == name + "_count" for s in f.samples)


def test_counters_move_with_ingest_rejects_and_queries(skein):
    _, _, before = scrape(skein)
    n_spans = 7
    req, tid, _ = otlp.simple_request("metrics-svc", n_spans)
    client.export_ok(skein, req, via="grpc")
    # one good and one bad span over HTTP
    good = otlp.make_span(otlp.new_trace_id(), "ok", start=otlp.now_ns() - otlp.SEC, duration=otlp.MS)
    bad = otlp.make_span(otlp.new_trace_id(), "bad", start=otlp.now_ns() - otlp.SEC, duration=otlp.MS)
    bad.span_id = b"\x00" * 8
    r = client.post_proto(skein, otlp.export_request(otlp.resource_spans({"service.name": "metrics-svc"}, [good, bad])))
    assert client.export_response(r).partial_success.rejected_spans == 1
    client.wait_trace(skein, tid, min_spans=n_spans)
    client.search(skein, {"q": '{ resource.service.name = "metrics-svc" }'})

    def moved():
        _, _, after = scrape(skein)
        d = {
            "received": total(after, "skein_spans_received_total") - total(before, "skein_spans_received_total"),
            "rejected": total(after, "skein_spans_rejected_total") - total(before, "skein_spans_rejected_total"),
            "wal_bytes": total(after, "skein_wal_bytes"),
            "fsyncs": total(after, "skein_wal_fsync_seconds_count") - total(before, "skein_wal_fsync_seconds_count"),
            "head": total(after, "skein_head_spans"),
            "queries": total(after, "skein_query_duration_seconds_count")
            - total(before, "skein_query_duration_seconds_count"),
        }
        ok = (d["received"] >= n_spans + 1 and d["rejected"] >= 1 and d["wal_bytes"] > 0 and d["fsyncs"] >= 1
              and d["head"] >= n_spans + 1 and d["queries"] >= 1)
        assert ok, d
        return d

    d = wait_until(moved, timeout=10, what="metrics to reflect ingest")
    # received counts every span that arrived (accepted or not), or only accepted ones; never more
    assert d["received"] <= n_spans + 2, d
    assert d["rejected"] == 1, d


def test_metric_names_follow_prometheus_conventions(skein):
    text, families, _ = scrape(skein)
    skein_families = [f for f in families.values() if f.name.startswith("skein_")]
    assert skein_families
    for f in skein_families:
        assert f.documentation, f"{f.name} has no HELP text"
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name


@pytest.mark.parametrize("path", ["/ready", "/healthz"])
def test_ops_endpoints_answer_200(skein, path):
    r = client.api_get(skein, path)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]!r}"
