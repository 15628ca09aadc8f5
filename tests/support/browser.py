"""Headless Chromium for the web UI tests: Debian's `chromium` driven by its `chromedriver`
through Selenium (no browser download), with console-log collection and screenshots."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from .collector import REPO

CHROMIUM = os.environ.get("SKEIN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SKEIN_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--window-size=1440,900",
    "--lang=en-GB",
]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for p in (CHROMIUM, CHROMEDRIVER):
        if not pathlib.Path(p).exists():
            return f"{p} is missing (tests/setup-apt.sh installs chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (tests/setup-venv.sh)"
    return None


class Browser:
    """One headless Chromium session with a fresh profile."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        # Never let Selenium Manager look for (or download) a driver.
        os.environ.setdefault("SE_OFFLINE", "true")
        os.environ.setdefault("SE_AVOID_STATS", "true")
        self.profile = tempfile.mkdtemp(prefix="skein-chromium-")
        opts = Options()
        opts.binary_location = CHROMIUM
        for f in FLAGS:
            opts.add_argument(f)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
        self.driver.set_page_load_timeout(30)
        self.console: list[dict] = []

    def logs(self) -> list[dict]:
        """Console entries since the last call (also kept in `self.console`)."""
        new = self.driver.get_log("browser")
        self.console.extend(new)
        return new

    def severe(self) -> list[dict]:
        return [e for e in self.logs() if e.get("level") == "SEVERE"]

    def screenshot(self, name: str) -> pathlib.Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
