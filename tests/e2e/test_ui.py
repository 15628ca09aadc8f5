"""The built-in web UI in headless Chromium (Debian's chromium + chromedriver, via Selenium)
against `skein demo`: search → a slow trace → a span → its flamegraph → the slow-vs-normal
comparison; the service map; the tenant setting; a 12k-span trace. Every page is screenshotted
to tests/artifacts/ui/, and the browser console must stay free of errors.
"""

from __future__ import annotations

import time
import urllib.parse

import pytest

from support import otlp
from support.browser import Browser, missing
from support.client import post_proto, wait_trace
from support.collector import Skein
from support.poll import wait_until

why = missing()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")

DEMO_SERVICES = {"gateway", "orders", "inventory", "payment"}
CHARGE = "shop.v1.Payment/Charge"
SLOW = "300ms"


class Demo(Skein):
    """`skein demo` (collector + shop + traffic + span profiling) on free loopback ports."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[1] = "demo"
        return [*argv, "--insecure", "--gateway-addr", "127.0.0.1:0", "--rps", "12"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-demo")
    d = Demo(base / "data", base / "logs")
    d.start()
    yield d
    d.terminate_quietly()


def get_json(demo, path, **params):
    r = demo.session.get(demo.http_url + path, params=params, timeout=30)
    return r.json() if r.status_code == 200 else None


@pytest.fixture(scope="module")
def data(demo):
    """Waits until the demo has slow checkouts and CPU samples of payment's Charge spans."""
    q = '{ resource.service.name = "payment" && name = "%s" && duration >= %s }' % (CHARGE, SLOW)

    def slow_traces():
        r = get_json(demo, "/api/search", q=q, limit=5)
        return r and len(r.get("traces", [])) >= 1

    wait_until(slow_traces, timeout=60, interval=0.5, what="a slow Charge span")

    def samples():
        r = get_json(demo, "/skein/api/flamegraph", service="payment", span_name=CHARGE, format="json")
        return r and r["tree"]["root"]["total"] > 0

    wait_until(samples, timeout=60, interval=0.5, what="CPU samples of Charge spans")
    return demo


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.quit()


@pytest.fixture(autouse=True)
def no_console_errors(browser):
    """Fails a test whose pages logged console errors; a test may list the failed requests
    it provokes on purpose (substrings of the message) in the yielded list."""
    browser.logs()  # drop what earlier tests left
    expected: list[str] = []
    yield expected
    severe = [e for e in browser.severe() if not any(x in e["message"] for x in expected)]
    assert not severe, "browser console errors:\n" + "\n".join(e["message"] for e in severe)


# ---- helpers -------------------------------------------------------------------------------
def until(fn, timeout=10.0, what="condition"):
    """wait_until, where an element re-rendered under the check (stale) means "not yet"."""
    from selenium.common.exceptions import StaleElementReferenceException

    def check():
        try:
            return fn()
        except StaleElementReferenceException:
            return False

    return wait_until(check, timeout=timeout, interval=0.1, what=what)


def wait_for(browser, css, timeout=20.0, what=None, count=1):
    from selenium.webdriver.common.by import By

    def find():
        els = browser.driver.find_elements(By.CSS_SELECTOR, css)
        return els if len(els) >= count else None

    return wait_until(find, timeout=timeout, interval=0.1, what=what or css)


def one(browser, css, timeout=20.0):
    return wait_for(browser, css, timeout)[0]


def click(browser, css, timeout=20.0):
    """Clicks the first match, again if the page redrew it under the click (stale)."""
    until(lambda: one(browser, css, timeout).click() or True, timeout=timeout, what=f"a click on {css}")


def no_error_box(browser):
    from selenium.webdriver.common.by import By

    errs = [e.text for e in browser.driver.find_elements(By.CSS_SELECTOR, ".notice.error")]
    assert not errs, f"the page shows an error: {errs}"


def path_and_query(browser):
    u = urllib.parse.urlsplit(browser.driver.current_url)
    return u.path, urllib.parse.parse_qs(u.query)


def select_option(browser, css, value, timeout=20.0):
    from selenium.webdriver.support.ui import Select

    from selenium.common.exceptions import StaleElementReferenceException

    def choose():
        try:  # the options are replaced when their values arrive
            sel = Select(one(browser, css))
            if value in [o.get_attribute("value") for o in sel.options]:
                sel.select_by_value(value)
                return sel.first_selected_option.get_attribute("value") == value
        except StaleElementReferenceException:
            pass
        return False

    wait_until(choose, timeout=timeout, interval=0.2, what=f"option {value} in {css}")


# ---- the investigation flow ------------------------------------------------------------------
def test_search_trace_span_flamegraph_compare(data, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser.driver
    d.get(data.http_url + "/")
    select_option(browser, "select[name=service]", "payment")
    select_option(browser, "select[name=operation]", CHARGE)
    min_box = one(browser, "input[name=min]")
    min_box.send_keys(SLOW)
    min_box.send_keys(Keys.ENTER)  # Enter submits the form
    until(lambda: "service=payment" in d.current_url and "min=300ms" in d.current_url,
               timeout=5, what="the URL to reflect the form")
    wait_for(browser, "table.traces tbody tr", what="search results")
    assert "duration >= 300ms" in one(browser, ".result-count").text
    # Sort by duration (descending), then open the slowest trace.
    click(browser, "th[data-sort=duration] button")
    until(lambda: "sort=duration" in d.current_url, timeout=5, what="sort in the URL")
    durations = [r.find_element(By.CSS_SELECTOR, ".dur-val").text for r in d.find_elements(By.CSS_SELECTOR, "table.traces tbody tr")]
    assert durations and all(x.endswith("ms") or x.endswith(" s") for x in durations), durations
    matched = [e.text for e in d.find_elements(By.CSS_SELECTOR, "td.matched a.span-link")]
    assert matched and all(m == CHARGE for m in matched), matched
    no_error_box(browser)
    browser.screenshot("01-search")
    search_url = d.current_url
    click(browser, "table.traces tbody tr a.trace-link")

    # Trace view: the whole call chain, services in the legend, the slow Charge span.
    wait_for(browser, ".wf-row", what="waterfall rows")
    path, _ = path_and_query(browser)
    assert path.startswith("/trace/")
    legend = {e.text for e in d.find_elements(By.CSS_SELECTOR, ".legend .chip")}
    assert {"gateway", "orders", "payment"} <= legend, legend
    until(lambda: "loading" not in one(browser, ".cp-note").text, timeout=10, what="the critical path")
    assert "unavailable" not in one(browser, ".cp-note").text, one(browser, ".cp-note").text
    assert d.find_elements(By.CSS_SELECTOR, ".wf-row.on-cp"), "critical path highlighted"
    def click_charge():
        charge = [r for r in d.find_elements(By.CSS_SELECTOR, ".wf-row")
                  if r.find_element(By.CSS_SELECTOR, ".op").text == CHARGE and r.find_element(By.CSS_SELECTOR, ".svc").text == "payment"]
        assert charge, "payment's Charge span in the waterfall"
        charge[0].click()
        return True

    until(click_charge, timeout=10, what="a click on payment's Charge span")
    detail = one(browser, "aside.detail")
    assert CHARGE in detail.text and "Attributes" in detail.text and "Resource" in detail.text
    _, q = path_and_query(browser)
    assert "span" in q, "the selected span is in the URL"
    no_error_box(browser)
    browser.screenshot("02-trace")

    # Its flamegraph (the span's own samples, or a clear note that it had none).
    click(browser, "#span-flamegraph")
    until(lambda: d.find_elements(By.CSS_SELECTOR, ".fg-frame") or d.find_elements(By.CSS_SELECTOR, ".notice.empty")
               or d.find_elements(By.CSS_SELECTOR, ".notice.error"), timeout=20, what="the span's flamegraph")
    no_error_box(browser)
    path, q = path_and_query(browser)
    assert path == "/flamegraph" and q.get("span_id") and q.get("service") == ["payment"]
    assert d.find_elements(By.CSS_SELECTOR, "#to-trace") or d.find_elements(By.CSS_SELECTOR, ".notice.empty")
    browser.screenshot("03-flamegraph-span")

    # Back to the span (the URL kept it), then the comparison for its operation.
    d.back()
    one(browser, "aside.detail")
    until(lambda: "loading" not in one(browser, ".cp-note").text, timeout=10, what="the critical path")
    click(browser, "#span-compare")
    until(lambda: d.find_elements(By.CSS_SELECTOR, "#cmp-attributes") or d.find_elements(By.CSS_SELECTOR, ".notice"),
               timeout=30, what="the comparison")
    no_error_box(browser)
    path, q = path_and_query(browser)
    assert path == "/compare" and q["service"] == ["payment"] and q["span_name"] == [CHARGE] and q.get("threshold")
    summary = one(browser, ".compare-summary").text
    assert "Slow calls" in summary and "Normal calls" in summary
    browser.screenshot("04-compare")

    # The diff flamegraph of slow vs normal calls.
    click(browser, "#to-diff")
    until(lambda: d.find_elements(By.CSS_SELECTOR, ".fg-frame") or d.find_elements(By.CSS_SELECTOR, ".notice"),
               timeout=30, what="the diff flamegraph")
    no_error_box(browser)
    assert path_and_query(browser)[1].get("mode") == ["diff"]
    browser.screenshot("05-flamegraph-diff")

    # Back/forward through history restores the search.
    d.get(search_url)
    wait_for(browser, "table.traces tbody tr")
    assert one(browser, "select[name=service]").get_attribute("value") == "payment"
    assert one(browser, "select[name=operation]").get_attribute("value") == CHARGE
    assert one(browser, "input[name=min]").get_attribute("value") == SLOW


def test_operation_flamegraph_zoom_and_search(data, browser):
    from selenium.webdriver.common.by import By

    d = browser.driver
    d.get(data.http_url + "/flamegraph?" + urllib.parse.urlencode({"service": "payment", "span_name": CHARGE}))
    frames = wait_for(browser, ".fg-frame", count=3, what="flamegraph frames")
    no_error_box(browser)
    total = int(one(browser, ".fg-frames").get_attribute("data-frames"))
    assert total >= 3
    # Hover shows totals; click zooms; search highlights; reset restores.
    from selenium.webdriver import ActionChains

    frames = d.find_elements(By.CSS_SELECTOR, ".fg-frame:not(.trunk)")
    target = max([f for f in frames[1:] if f.text and f.size["width"] > 80] or frames[1:], key=lambda f: f.location["y"])
    name = target.text
    ActionChains(d).move_to_element(target).perform()
    tip = one(browser, ".fg-tip")
    until(lambda: not tip.get_attribute("hidden"), timeout=5, what="tooltip")
    assert "total:" in tip.text and "self:" in tip.text, tip.text
    target.click()
    reset = one(browser, ".flame-card .toolbar button")
    until(lambda: reset.get_attribute("disabled") is None, timeout=5, what="zoom")
    assert "zoomed" in one(browser, ".crumb").text
    search = one(browser, ".flame-card input[type=search]")
    search.send_keys(name.split("::")[-1][:10])
    until(lambda: d.find_elements(By.CSS_SELECTOR, ".fg-frame.hit"), timeout=5, what="search highlight")
    assert "matches" in one(browser, ".flame-card .toolbar .muted").text
    browser.screenshot("06-flamegraph-operation")
    reset.click()
    until(lambda: reset.get_attribute("disabled") is not None, timeout=5, what="zoom reset")
    assert int(one(browser, ".fg-frames").get_attribute("data-frames")) == total


def test_service_map(data, browser):
    from selenium.webdriver.common.by import By

    d = browser.driver

    def map_complete():
        d.get(data.http_url + "/services")
        try:
            wait_for(browser, ".svc-node", count=4, timeout=5)
        except TimeoutError:
            return False
        return DEMO_SERVICES <= {g.get_attribute("data-service") for g in d.find_elements(By.CSS_SELECTOR, ".svc-node")}

    until(map_complete, timeout=40, what="the four demo services on the map")
    edges = d.find_elements(By.CSS_SELECTOR, ".service-map path.edge")
    assert len(edges) >= 3, "gateway→orders, orders→inventory, orders→payment"
    labels = " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, ".edge-label"))
    assert "p90" in labels and "err" in labels, labels
    no_error_box(browser)
    browser.screenshot("07-services")
    [g for g in d.find_elements(By.CSS_SELECTOR, ".svc-node") if g.get_attribute("data-service") == "orders"][0].click()
    until(lambda: "service=orders" in d.current_url, timeout=5, what="the service in the URL")
    wait_for(browser, "table.ops tbody tr", what="operations of orders")
    wait_for(browser, ".chart", count=3, what="RED charts")
    until(lambda: d.find_elements(By.CSS_SELECTOR, ".chart-svg path") or d.find_elements(By.CSS_SELECTOR, ".notice.error"),
               timeout=10, what="chart lines")
    no_error_box(browser)
    browser.screenshot("08-service-orders")


def test_tenant_setting_is_sent_and_empty_states_explain(data, browser):
    from selenium.webdriver.common.keys import Keys

    d = browser.driver
    d.get(data.http_url + "/")
    wait_for(browser, "table.traces tbody tr", what="default tenant results")
    click(browser, "#tenant-button")
    box = one(browser, "#tenant-input")
    box.clear()
    box.send_keys("ui-nobody")
    box.send_keys(Keys.ENTER)
    until(lambda: "ui-nobody" in one(browser, "#tenant-button").text, timeout=5, what="tenant saved")
    empty = one(browser, ".notice.empty")
    assert "No traces in this window" in empty.text and "4317" in empty.text
    browser.screenshot("09-empty-tenant")
    # "/" focuses the query box; reset the tenant.
    d.find_element("tag name", "body").send_keys("/")
    assert d.switch_to.active_element.get_attribute("name") == "q"
    d.execute_script("localStorage.removeItem('skein.tenant')")


def test_a_link_naming_a_tenant_sets_the_tenant(data, browser):
    """Alert annotations of tenants other than the default link to the UI with `tenant=`."""
    d = browser.driver
    d.get(data.http_url + "/flamegraph?service=payment&span_name=charge&tenant=ui-linked")
    until(lambda: "ui-linked" in one(browser, "#tenant-button").text, timeout=5, what="linked tenant")
    assert d.execute_script("return localStorage.getItem('skein.tenant')") == "ui-linked"
    d.execute_script("localStorage.removeItem('skein.tenant')")


def test_errors_from_the_apis_are_shown(data, browser, no_console_errors):
    d = browser.driver
    missing = "0123456789abcdef0123456789abcdef"
    no_console_errors += [f"/api/traces/{missing}", "/skein/api/compare", "/skein/api/critical-path/" + missing]
    d.get(f"{data.http_url}/trace/{missing}")
    assert "Trace not found" in one(browser, ".notice.empty").text
    d.get(data.http_url + "/compare?" + urllib.parse.urlencode({"service": "payment", "span_name": CHARGE, "threshold": "soon"}))
    err = one(browser, ".notice.error").text
    assert "HTTP 400" in err and "threshold" in err and "soon" in err, err
    browser.screenshot("12-api-error")
    d.get(data.http_url + "/flamegraph?mode=diff&service=payment&span_name=x")
    assert "Choose a threshold" in one(browser, ".notice.empty").text


# ---- a big trace -------------------------------------------------------------------------------
def big_trace(n_batches=40, per_batch=300):
    """A gateway root → n_batches orders spans → per_batch inventory spans each (+1 skewed)."""
    tid = otlp.new_trace_id()
    t0 = otlp.now_ns() - 30 * otlp.SEC
    root = otlp.make_span(tid, "POST /bulk-import", kind=otlp.SERVER, start=t0, duration=20 * otlp.SEC)
    gw, orders, inv = [root], [], []
    for b in range(n_batches):
        bs = t0 + b * 480 * otlp.MS
        batch = otlp.make_span(tid, f"import batch {b}", parent=root.span_id, kind=otlp.SERVER, start=bs,
                               duration=470 * otlp.MS, attrs={"batch": b})
        orders.append(batch)
        for i in range(per_batch):
            err = i % 97 == 0
            inv.append(otlp.make_span(
                tid, "shop.v1.Inventory/Reserve", parent=batch.span_id, kind=otlp.SERVER,
                start=bs + i * 1_500_000, duration=1_200_000, attrs={"sku": f"sku-{i}"},
                status=otlp.STATUS_ERROR if err else otlp.STATUS_UNSET, status_message="out of stock" if err else ""))
    # A child whose clock runs 2 s behind its parent's.
    orders.append(otlp.make_span(tid, "skewed child", parent=root.span_id, kind=otlp.SERVER, start=t0 - 2 * otlp.SEC,
                                 duration=50 * otlp.MS))
    return tid, [("gateway", gw), ("orders", orders), ("inventory", inv)]


def test_a_trace_of_12k_spans_renders_quickly_and_scrolls(data, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tid, parts = big_trace()
    total = sum(len(s) for _, s in parts)
    assert total > 12_000
    for service, spans in parts:
        for i in range(0, len(spans), 2500):
            r = post_proto(data, otlp.export_request(otlp.resource_spans({"service.name": service}, spans[i:i + 2500])))
            assert r.status_code == 200, r.text
    wait_trace(data, tid, min_spans=total, timeout=60)
    d = browser.driver
    t = time.monotonic()
    d.get(f"{data.http_url}/trace/{tid.hex()}")
    wait_for(browser, ".wf-row", timeout=15, what="the first rows")
    until(lambda: str(total) in one(browser, ".trace-header .stats").text, timeout=15, what="the span count")
    took = time.monotonic() - t
    assert took < 5.0, f"the trace page took {took:.1f}s"
    rendered = len(d.find_elements(By.CSS_SELECTOR, ".wf-row"))
    assert 10 < rendered < 300, f"{rendered} rows in the DOM: not virtualised"
    browser.screenshot("10-big-trace")
    # Scroll to the middle and to the end: rows there are drawn, the DOM stays small.
    for frac in (0.5, 1.0):
        d.execute_script("const s = document.querySelector('.wf-scroll'); s.scrollTop = s.scrollHeight * arguments[0];", frac)
        want = int((total - 1) * frac * 0.9)
        until(lambda: d.execute_script(
            "return Math.max(...[...document.querySelectorAll('.wf-row')].map((r) => +r.dataset.i))") >= want,
              timeout=5, what=f"rows near {frac:.0%}")
        assert len(d.find_elements(By.CSS_SELECTOR, ".wf-row")) < 300
    assert d.find_elements(By.CSS_SELECTOR, ".wf-row.error .err-mark"), "error spans marked"
    browser.screenshot("11-big-trace-end")
    # Keyboard: select the first row, walk down, collapse a subtree.
    d.execute_script("document.querySelector('.wf-scroll').scrollTop = 0")
    until(lambda: d.execute_script("return !!document.querySelector('.wf-row[data-i=\"0\"]')"), timeout=5, what="the first row")
    until(lambda: one(browser, '.wf-row[data-i="0"] .op').click() or True, timeout=5, what="a click on the first row")
    scroller = one(browser, ".wf-scroll")
    scroller.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN)  # the skewed child sorts first
    until(lambda: "import batch 0" in one(browser, "aside.detail h2").text, timeout=5, what="arrow-down selection")
    scroller.send_keys(Keys.ARROW_LEFT)  # collapses batch 0's 300 children
    until(lambda: "+300" in one(browser, ".wf-row.selected").text, timeout=5, what="collapsed subtree")
    # The skewed child is drawn inside its parent and says so.
    one(browser, ".trace-header input[type=search]").send_keys("skewed child", Keys.ENTER)
    until(lambda: "Clock skew" in one(browser, "aside.detail").text, timeout=5, what="skew note")


# ---- the pages' pure functions, run in the browser -------------------------------------------
UNIT_JS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const search = await import("/ui/assets/search.js");
  const trace = await import("/ui/assets/trace.js");
  const services = await import("/ui/assets/services.js");
  const out = {};
  out.query = search.buildQuery({
    service: "shop", op: "GET /a", status: "error", min: "100ms", max: "2s",
    attrs: [{ key: "http.status_code", op: ">=", value: "500" }, { key: "span.peer", op: "=", value: 'say "hi"' },
            { key: "db.statement", op: "=~", value: "SELECT.*" }],
  });
  out.empty = search.buildQuery({ attrs: [] });
  const span = (id, parent, svc, s, e, extra) => ({ spanId: id, parentSpanId: parent, name: id,
    startTimeUnixNano: String(1700000000000000000n + BigInt(s)), endTimeUnixNano: String(1700000000000000000n + BigInt(e)), ...extra });
  const batch = (svc, spans) => ({ resource: { attributes: [{ key: "service.name", value: { stringValue: svc } }] },
    scopeSpans: [{ scope: { name: "t" }, spans }] });
  const t = trace.buildTrace({ batches: [
    batch("a", [span("00000000000000a1", "", "a", 1000, 9000), span("00000000000000a2", "00000000000000a1", "a", 2000, 3000)]),
    // b's clock is 5000 ns behind: its span starts before its parent a1 and is moved inside it
    batch("b", [span("00000000000000b1", "00000000000000a1", "b", 0, 2000, { status: { code: 2, message: "boom" } })]),
    // a parent cycle: both become roots instead of vanishing
    batch("c", [span("00000000000000c1", "00000000000000c2", "c", 100, 200), span("00000000000000c2", "00000000000000c1", "c", 150, 180)]),
  ] });
  const b1 = t.byId.get("00000000000000b1");
  out.trace = {
    spans: t.spans.length, roots: t.roots.length, depthB1: b1.depth, b1: [b1.ds, b1.de], skew: b1.skew,
    errorsBelowA1: t.byId.get("00000000000000a1").errorsBelow, services: t.services,
    order: t.order.map((s) => s.id.slice(-2)),
  };
  const l = services.layout(["gw", "orders", "inv", "pay", "loop"], [
    { client: "gw", server: "orders" }, { client: "orders", server: "inv" }, { client: "orders", server: "pay" },
    { client: "pay", server: "loop" }, { client: "loop", server: "orders" },
  ]);
  out.layout = Object.fromEntries([...l.pos].map(([k, v]) => [k, v.col]));
  return out;
})().then(done, (e) => done({ error: String(e && e.stack || e) }));
"""


def test_query_building_trace_layout_and_service_layers(data, browser):
    d = browser.driver
    d.get(data.http_url + "/services")
    d.set_script_timeout(20)
    r = d.execute_async_script(UNIT_JS)
    assert "error" not in r, r.get("error")
    assert r["query"] == ('{ resource.service.name = "shop" && name = "GET /a" && .http.status_code >= 500'
                          ' && span.peer = "say \\"hi\\"" && .db.statement =~ "SELECT.*"'
                          ' && duration >= 100ms && duration <= 2s && status = error }')
    assert r["empty"] == "{}"
    t = r["trace"]
    assert t["spans"] == 5 and t["roots"] == 2, t  # a1, and c1 where the cycle was cut
    assert t["depthB1"] == 1 and t["b1"] == [1000, 3000] and t["skew"] == 1000, t  # moved to start with a1
    assert t["errorsBelowA1"] == 1
    assert t["order"][:3] == ["a1", "b1", "a2"], t["order"]  # children by start
    assert set(t["services"]) == {"a", "b", "c"}
    assert r["layout"] == {"gw": 0, "orders": 1, "inv": 2, "pay": 2, "loop": 3}, r["layout"]
