"""The web UI against a collector with --auth-file, in headless Chromium: it asks for a token on
the first 401, keeps it in the tab's sessionStorage (never localStorage, never a URL), sends it as
a header on every API call, opens API answers (a trace's JSON) from blob: URLs, shows a 403's
reason, and forgets the token on sign-out."""

from __future__ import annotations

import pytest

from support import otlp
from support.browser import Browser, missing
from support.client import post_proto, wait_trace
from support.poll import wait_until

why = missing()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")

READER = "ui-reader-token-acme-01"
WRITER = "ui-writer-token-acme-01"
ADMIN = "ui-admin-token-any-0001"
AUTH = f"""
[[token]]
token = "{READER}"
tenants = ["acme"]
role = "read"
[[token]]
token = "{WRITER}"
tenants = ["acme"]
role = "write"
[[token]]
token = "{ADMIN}"
tenants = ["*"]
role = "admin"
"""


@pytest.fixture(scope="module")
def secured(skein_module_factory, tmp_path_factory):
    auth = tmp_path_factory.mktemp("ui-auth") / "auth.toml"
    auth.write_text(AUTH)
    sk = skein_module_factory("--auth-file", str(auth), token=ADMIN)
    req, tid, sids = otlp.simple_request("ui-auth-svc", 3)
    r = post_proto(sk, req, headers={"Authorization": f"Bearer {WRITER}"})
    assert r.status_code == 200, r.text
    wait_trace(sk, tid, tenant="acme", min_spans=len(sids))
    sk.trace_id = tid.hex()
    return sk


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.quit()


def find(browser, css):
    from selenium.webdriver.common.by import By

    return browser.driver.find_elements(By.CSS_SELECTOR, css)


def wait_css(browser, css, what=None, timeout=20.0):
    return wait_until(lambda: find(browser, css) or None, timeout=timeout, interval=0.1, what=what or css)[0]


def sign_in(browser, token):
    dialog = wait_css(browser, "dialog#signin[open]", "the sign-in dialog")
    box = find(browser, "#token-input")[0]
    box.clear()
    box.send_keys(token)
    find(browser, "#signin-save")[0].click()
    return dialog


def urls_seen(browser) -> list[str]:
    d = browser.driver
    names = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [d.current_url, *names]


def test_the_ui_asks_for_a_token_keeps_it_in_the_session_and_never_in_a_url(secured, browser):
    d = browser.driver
    d.get(secured.http_url + "/")
    dialog = wait_css(browser, "dialog#signin[open]", "the sign-in dialog on the first 401")
    assert "needs a token" in find(browser, "#signin-msg")[0].text
    assert dialog.is_displayed()
    browser.screenshot("auth-01-sign-in")

    # A wrong token: asked again, saying it was not accepted.
    sign_in(browser, "not-the-right-token-0000")
    wait_until(lambda: find(browser, "dialog#signin[open]") and "not accepted" in find(browser, "#signin-msg")[0].text,
               timeout=10, interval=0.1, what="the dialog again, saying the token was not accepted")

    sign_in(browser, READER)
    wait_until(lambda: any("ui-auth-svc" in r.text for r in find(browser, "table.traces tbody tr")),
               timeout=20, interval=0.2, what="acme's trace in the search results")
    assert d.execute_script("return sessionStorage.getItem('skein.token')") == READER
    assert READER not in (d.execute_script("return JSON.stringify(localStorage)") or "")
    assert find(browser, "#signout-button")[0].is_displayed()
    browser.screenshot("auth-02-signed-in")

    # A reload keeps the tab's token: no dialog.
    d.refresh()
    wait_until(lambda: any("ui-auth-svc" in r.text for r in find(browser, "table.traces tbody tr")),
               timeout=20, interval=0.2, what="results after a reload")
    assert not find(browser, "dialog#signin[open]")

    # The trace view and its JSON, opened from a blob: URL.
    d.get(f"{secured.http_url}/trace/{secured.trace_id}")
    wait_css(browser, "#open-json", "the trace's JSON button")
    before = set(d.window_handles)
    find(browser, "#open-json")[0].click()
    wait_until(lambda: len(set(d.window_handles) - before) == 1, timeout=10, what="a new tab")
    main = d.current_window_handle
    d.switch_to.window((set(d.window_handles) - before).pop())
    wait_until(lambda: d.current_url.startswith("blob:"), timeout=10, what="the JSON in a blob: URL")
    assert secured.trace_id in d.page_source
    seen = [d.current_url]
    d.close()
    d.switch_to.window(main)

    seen += urls_seen(browser)
    leaked = [u for u in seen if READER in u or "not-the-right-token" in u]
    assert not leaked, f"a token in a URL: {leaked}"


def test_a_403_shows_the_servers_reason(secured, browser):
    d = browser.driver
    d.get(secured.http_url + "/")
    d.execute_script(f"sessionStorage.setItem('skein.token', '{READER}'); localStorage.setItem('skein.tenant', 'beta')")
    d.refresh()
    box = wait_css(browser, ".notice.error", "an error box for another tenant")
    assert "HTTP 403" in box.text and "beta" in box.text, box.text
    d.execute_script("localStorage.removeItem('skein.tenant')")


def test_sign_out_forgets_the_token(secured, browser):
    d = browser.driver
    d.get(secured.http_url + "/")
    d.execute_script(f"sessionStorage.setItem('skein.token', '{READER}')")
    d.refresh()
    wait_css(browser, "table.traces tbody tr", "results while signed in")
    find(browser, "#signout-button")[0].click()
    wait_css(browser, "dialog#signin[open]", "the sign-in dialog after signing out")
    assert d.execute_script("return sessionStorage.getItem('skein.token')") is None
