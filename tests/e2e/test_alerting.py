"""skein's alerting against a real Alertmanager 0.25 (Debian package, tests/setup-apt.sh):

- a latency rule with a short `for` goes pending → firing in /prometheus/api/v1/alerts while
  payment's calls are slow; Alertmanager's /api/v2/alerts shows it with the slow trace ids
  (which resolve in /api/v2/traces/{id}) and the flamegraph links; Alertmanager's webhook and
  skein's own webhook get it; when latency recovers, the resolution arrives;
- the shipped rules (deploy/rules/) pass `promtool check rules`, `promtool test rules` and
  `skein rules check`; a bad file fails `skein rules check` with one line per problem;
- per-tenant rules (`--rules DIR` with a sub-directory per tenant): a tenant's rule fires on
  that tenant's spans only, reaches Alertmanager with `tenant="<id>"`, and the other tenant's
  /prometheus/api/v1/alerts stays empty.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from support import otlp
from support.alertmanager import Alertmanager, Receiver, binary
from support.collector import REPO, skein_bin
from support.poll import wait_until

RULES_DIR = REPO / "deploy" / "rules"

# Short windows and intervals so a run takes seconds: rate over 5 s, evaluated every second.
RULE = """
groups:
  - name: e2e-latency
    interval: 1s
    rules:
      - alert: PaymentP99High
        expr: >-
          histogram_quantile(0.99, sum by (le, service)
          (rate(traces_spanmetrics_latency_bucket{service="payment", span_kind="SPAN_KIND_SERVER"}[5s]))) > 0.5
        for: 3s
        labels:
          severity: page
        annotations:
          summary: "p99 of {{ $labels.service }} is {{ $value | humanizeDuration }}"
"""


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def alertmanager(tmp_path, receiver):
    if binary() is None:
        pytest.skip("prometheus-alertmanager is not installed (tests/setup-apt.sh installs it)")
    am = Alertmanager(tmp_path / "alertmanager", f"{receiver.url}/am").start()
    yield am
    am.stop()


def send(collector, ms: float, n: int = 10, tenant: str | None = None) -> list[str]:
    """`n` payment SERVER calls of `ms` milliseconds (one trace each) as `tenant` (None: the
    default tenant); returns their trace ids."""
    spans, ids = [], []
    end = otlp.now_ns()
    for _ in range(n):
        tid = otlp.new_trace_id()
        ids.append(tid.hex())
        spans.append(otlp.make_span(tid, "charge", kind=otlp.SERVER, start=end - int(ms * 1e6),
                                    duration=int(ms * 1e6)))
    req = otlp.export_request(otlp.resource_spans({"service.name": "payment"}, spans))
    headers = {"content-type": "application/x-protobuf"}
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    r = requests.post(f"{collector.otlp_http_url}/v1/traces", data=req.SerializeToString(),
                      headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return ids


def skein_alerts(collector) -> list[dict]:
    r = requests.get(f"{collector.http_url}/prometheus/api/v1/alerts", timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return [a for a in body["data"]["alerts"] if a["labels"].get("alertname") == "PaymentP99High"]


def am_notifications(receiver, status: str) -> list[dict]:
    """Alerts in Alertmanager's webhook notifications with the given group status."""
    return [a for b in receiver.bodies("/am") if isinstance(b, dict) and b.get("status") == status
            for a in b.get("alerts", []) if a["labels"].get("alertname") == "PaymentP99High"]


def test_latency_alert_reaches_alertmanager_and_resolves(skein_factory, alertmanager, receiver, tmp_path):
    rules = tmp_path / "e2e.rules.yml"
    rules.write_text(RULE)
    collector = skein_factory("--rules", str(rules), "--alertmanager-url", alertmanager.url,
                              "--alert-webhook-url", f"{receiver.url}/skein", "--alert-resend-delay", "2s",
                              "--metrics-scrape-interval", "1s")
    slow_ids: set[str] = set()
    seen_states: list[str] = []

    def feed_until(check, what: str, ms: float, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            ids = send(collector, ms)
            if ms > 500:
                slow_ids.update(ids)
            got = check()
            if got:
                return got
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{alertmanager.log()[-3000:]}"
            time.sleep(0.2)

    def firing():
        alerts = skein_alerts(collector)
        for a in alerts:
            if not seen_states or seen_states[-1] != a["state"]:
                seen_states.append(a["state"])
        return [a for a in alerts if a["state"] == "firing"]

    # Slow payment calls (800 ms against a 500 ms threshold): pending for 3 s, then firing.
    a = feed_until(firing, "the alert to fire", ms=800)[0]
    assert seen_states[:2] == ["pending", "firing"], seen_states
    assert a["labels"]["service"] == "payment" and a["labels"]["severity"] == "page", a
    assert a["annotations"]["summary"].startswith("p99 of payment is "), a
    assert float(a["value"]) > 0.5, a

    # Alertmanager has it, with the exemplar trace ids and the flamegraph links.
    def in_alertmanager():
        return [x for x in alertmanager.alerts(filter='alertname="PaymentP99High"')
                if x["status"]["state"] == "active"]

    am = feed_until(in_alertmanager, "the alert in Alertmanager", ms=800)[0]
    ann = am["annotations"]
    ids = ann["skein_slow_trace_ids"].split(",")
    assert 1 <= len(ids) <= 5, ann
    assert set(ids) <= slow_ids, (ids, "are not trace ids of the slow calls")
    assert ann["skein_flamegraph_url"].startswith(
        f"{collector.http_url}/skein/api/flamegraph?service=payment&span_name=charge&min_duration="), ann
    assert ann["skein_flamegraph_ui_url"].startswith(f"{collector.http_url}/flamegraph?service=payment"), ann
    assert am["generatorURL"].startswith(f"{collector.http_url}/prometheus/api/v1/query?query="), am
    for tid in ids:
        r = requests.get(f"{collector.http_url}/api/v2/traces/{tid}", timeout=10)
        assert r.status_code == 200, (tid, r.status_code, r.text[:200])
    fg = requests.get(ann["skein_flamegraph_url"], timeout=30)
    assert fg.status_code == 200, fg.text[:300]

    # Alertmanager's webhook notification, and skein's own webhook (the v2 alert array).
    wait_until(lambda: am_notifications(receiver, "firing"), timeout=30, what="Alertmanager's firing notification")
    direct = [x for b in receiver.bodies("/skein") for x in b if x["labels"]["alertname"] == "PaymentP99High"]
    assert direct and direct[0]["annotations"]["skein_slow_trace_ids"], direct
    assert {"labels", "annotations", "startsAt", "endsAt", "generatorURL"} <= set(direct[0]), direct[0]

    # Rules API: the rule and its firing alert.
    rules_api = requests.get(f"{collector.http_url}/prometheus/api/v1/rules", timeout=5).json()
    rule = rules_api["data"]["groups"][0]["rules"][0]
    assert (rule["type"], rule["name"], rule["state"], rule["health"]) == \
        ("alerting", "PaymentP99High", "firing", "ok"), rule
    assert rule["duration"] == 3 and rule["alerts"][0]["state"] == "firing", rule

    # Latency recovers: the 5 s window empties of slow calls, skein resolves the alert and
    # Alertmanager sends the resolution.
    feed_until(lambda: am_notifications(receiver, "resolved"), "the resolved notification", ms=10)
    assert skein_alerts(collector) == []
    resolved = am_notifications(receiver, "resolved")[0]
    assert resolved["status"] == "resolved" and resolved["labels"]["service"] == "payment", resolved


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_shipped_rules_pass_promtool_check_and_unit_tests():
    out = subprocess.run(["promtool", "check", "rules", "skein-latency.rules.yml"], cwd=RULES_DIR,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    out = subprocess.run(["promtool", "test", "rules", "skein-latency.test.yml"], cwd=RULES_DIR,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_skein_rules_check_on_good_and_bad_files(tmp_path):
    exe = str(skein_bin())
    out = subprocess.run([exe, "rules", "check", str(RULES_DIR / "skein-latency.rules.yml"), str(RULES_DIR)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("SUCCESS: 5 rules found") == 2, out.stdout

    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n"
        "  - name: g\n"
        "    rules:\n"
        "      - alert: Broken\n"
        "        expr: 'rate(traces_spanmetrics_calls_total[5m]'\n"
        "      - alert: NoDuration\n"
        "        expr: up\n"
        "        for: soon\n"
    )
    out = subprocess.run([exe, "rules", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr
    assert 'bad.yml: group "g", rule 1 (Broken): could not parse expression' in lines[0], lines
    assert 'rule 2 (NoDuration): field \'for\'' in lines[1], lines


DEMO_RULE = """
groups:
  - name: e2e-demo
    interval: 1s
    rules:
      - alert: PaymentLatencyHigh
        expr: >-
          histogram_quantile(0.99, sum by (le, service)
          (rate(traces_spanmetrics_latency_bucket{service="payment", span_kind="SPAN_KIND_SERVER"}[10s]))) > 1.2
        for: 2s
        annotations:
          summary: "p99 of {{ $labels.service }} is {{ $value | humanizeDuration }}"
"""

ORDER = {"customer": "ada", "items": [{"sku": "moka-pot", "quantity": 1}]}


def test_demo_shop_payment_slowness_fires_and_resolves_in_alertmanager(
        skein_factory, alertmanager, receiver, tmp_path):
    """The real shop (faults on: its usual 5 % of 0.3–0.9 s bank calls stay under the 1.2 s
    threshold); checkouts paying with the `tok_slow_bank` card turn payment's latency up (1.5–2.5 s
    bank calls) and stopping them turns it down."""
    import threading

    from support.shop import Shop

    rules = tmp_path / "demo.rules.yml"
    rules.write_text(DEMO_RULE)
    collector = skein_factory("--rules", str(rules), "--alertmanager-url", alertmanager.url,
                              "--alert-resend-delay", "2s", "--metrics-scrape-interval", "1s")
    shop = Shop(tmp_path / "shop", collector, faults=True).start()
    stop_normal, stop_slow = threading.Event(), threading.Event()

    def traffic(stop: threading.Event, card: str | None, pause: float):
        s = requests.Session()
        while not stop.is_set():
            body = dict(ORDER, card=card) if card else ORDER
            try:
                s.post(f"{shop.gateway.url}/checkout", json=body, timeout=10)
            except requests.RequestException:
                pass
            stop.wait(pause)

    def alerts_named(state: str) -> list[dict]:
        return [a for a in skein_alerts_all(collector) if a["labels"].get("alertname") == "PaymentLatencyHigh"
                and a["state"] == state]

    normal = threading.Thread(target=traffic, args=(stop_normal, None, 0.1), daemon=True)
    slow = [threading.Thread(target=traffic, args=(stop_slow, "tok_slow_bank", 0.0), daemon=True)
            for _ in range(3)]
    try:
        normal.start()
        # Normal traffic for longer than the rule's window and `for`: no alert.
        time.sleep(14)
        assert alerts_named("pending") + alerts_named("firing") == [], skein_alerts_all(collector)

        for t in slow:
            t.start()
        wait_until(lambda: alerts_named("firing"), timeout=60, what="the payment latency alert to fire")
        active = wait_until(
            lambda: [x for x in alertmanager.alerts(filter='alertname="PaymentLatencyHigh"')
                     if x["status"]["state"] == "active"],
            timeout=30, what="the alert in Alertmanager")
        ids = active[0]["annotations"]["skein_slow_trace_ids"].split(",")
        assert 1 <= len(ids) <= 5, active[0]
        # The exemplar traces are the slow checkouts: each has a payment span of at least 1.5 s.
        for tid in ids:
            r = requests.get(f"{collector.http_url}/api/traces/{tid}",
                             headers={"accept": "application/json"}, timeout=10)
            assert r.status_code == 200, (tid, r.status_code, r.text[:200])
            # v1 JSON: {"batches": [OTLP ResourceSpans...]}
            spans = [(rs, sp) for rs in r.json()["batches"]
                     for ss in rs.get("scopeSpans", []) for sp in ss.get("spans", [])]
            payment = [int(sp["endTimeUnixNano"]) - int(sp["startTimeUnixNano"]) for rs, sp in spans
                       if any(a["key"] == "service.name" and a["value"].get("stringValue") == "payment"
                              for a in rs["resource"]["attributes"])]
            assert payment and max(payment) >= 1.5e9, (tid, payment)

        stop_slow.set()
        wait_until(lambda: [a for b in receiver.bodies("/am") if isinstance(b, dict)
                            and b.get("status") == "resolved"
                            for a in b.get("alerts", []) if a["labels"].get("alertname") == "PaymentLatencyHigh"],
                   timeout=60, what="Alertmanager's resolved notification")
        assert alerts_named("firing") == []
    finally:
        stop_slow.set()
        stop_normal.set()
        for t in [normal, *slow]:
            if t.is_alive():
                t.join(timeout=15)
        shop.stop()


def skein_alerts_all(collector) -> list[dict]:
    r = requests.get(f"{collector.http_url}/prometheus/api/v1/alerts", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["data"]["alerts"]


def tenant_api(collector, path: str, tenant: str) -> dict:
    r = requests.get(f"{collector.http_url}{path}", headers={"X-Scope-OrgID": tenant}, timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def test_per_tenant_rule_fires_for_its_tenant_only_with_the_tenant_label(
        skein_factory, alertmanager, receiver, tmp_path):
    # The same rule (and alert name) for two tenants; the first also sets `tenant: other`,
    # which must not reach Alertmanager.
    rules = tmp_path / "rules"
    (rules / "e2e-alpha").mkdir(parents=True)
    (rules / "e2e-beta").mkdir()
    (rules / "e2e-alpha" / "latency.yml").write_text(
        RULE.replace("severity: page", "severity: page\n          tenant: e2e-beta"))
    (rules / "e2e-beta" / "latency.yml").write_text(RULE)
    out = subprocess.run([str(skein_bin()), "rules", "check", str(rules)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{rules}: tenant e2e-alpha: SUCCESS: 1 rules found" in out.stdout.splitlines(), out.stdout
    assert f"{rules}: tenant e2e-beta: SUCCESS: 1 rules found" in out.stdout.splitlines(), out.stdout

    collector = skein_factory("--rules", str(rules), "--alertmanager-url", alertmanager.url,
                              "--alert-resend-delay", "2s", "--metrics-scrape-interval", "1s")
    alpha_ids: set[str] = set()

    def in_alertmanager():
        return [x for x in alertmanager.alerts(filter='alertname="PaymentP99High"')
                if x["status"]["state"] == "active"]

    # Slow payment calls in e2e-alpha only (and slower ones in the default tenant, which has no
    # rules, so that the exemplars can be told apart), until Alertmanager has the alert.
    deadline = time.monotonic() + 60
    while not (active := in_alertmanager()):
        alpha_ids.update(send(collector, 800, tenant="e2e-alpha"))
        send(collector, 2000)
        assert time.monotonic() < deadline, f"no alert in Alertmanager\n{alertmanager.log()[-3000:]}"
        time.sleep(0.2)
    assert len(active) == 1, active
    am = active[0]
    assert am["labels"]["tenant"] == "e2e-alpha", am
    assert am["labels"]["service"] == "payment" and am["labels"]["severity"] == "page", am
    ids = am["annotations"]["skein_slow_trace_ids"].split(",")
    assert ids and set(ids) <= alpha_ids, (ids, "are not e2e-alpha's slow calls")
    assert am["annotations"]["skein_flamegraph_ui_url"].endswith("&tenant=e2e-alpha"), am
    assert "skein_flamegraph_url" not in am["annotations"], am
    # The trace ids resolve for their tenant, not for the default one.
    tid = ids[0]
    r = requests.get(f"{collector.http_url}/api/v2/traces/{tid}", headers={"X-Scope-OrgID": "e2e-alpha"},
                     timeout=10)
    assert r.status_code == 200, r.text[:200]
    assert requests.get(f"{collector.http_url}/api/v2/traces/{tid}", timeout=10).status_code == 404

    # e2e-alpha sees its firing alert; e2e-beta's rule is there, evaluated and inactive, and its
    # alerts are empty.
    alpha = tenant_api(collector, "/prometheus/api/v1/alerts", "e2e-alpha")["alerts"]
    assert [a["state"] for a in alpha if a["labels"]["alertname"] == "PaymentP99High"] == ["firing"], alpha
    assert tenant_api(collector, "/prometheus/api/v1/alerts", "e2e-beta") == {"alerts": []}
    beta_rules = tenant_api(collector, "/prometheus/api/v1/rules", "e2e-beta")["groups"]
    assert len(beta_rules) == 1 and beta_rules[0]["file"].endswith("e2e-beta/latency.yml"), beta_rules
    rule = beta_rules[0]["rules"][0]
    assert (rule["state"], rule["health"], rule["alerts"]) == ("inactive", "ok", []), rule
    assert requests.get(f"{collector.http_url}/prometheus/api/v1/alerts", timeout=5).json()["data"] == \
        {"alerts": []}, "the default tenant has no rules"
    # Nothing of e2e-beta's reached Alertmanager.
    assert all(a["labels"].get("tenant") == "e2e-alpha"
               for a in alertmanager.alerts(filter='alertname="PaymentP99High"')), alertmanager.alerts()
