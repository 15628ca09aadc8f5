"""A real Alertmanager (Debian package `prometheus-alertmanager`) on free loopback ports, and a
tiny webhook receiver that records what is posted to it."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from .collector import free_port
from .poll import wait_until

BINARY = "/usr/bin/prometheus-alertmanager"


def binary() -> str | None:
    if pathlib.Path(BINARY).exists():
        return BINARY
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Receiver:
    """Records JSON bodies POSTed to any path, as (path, body)."""

    def __init__(self):
        self.posts: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {"unparsable": body.decode(errors="replace")}
                with receiver.lock:
                    receiver.posts.append((self.path, doc))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[object]:
        with self.lock:
            return [b for p, b in self.posts if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """Alertmanager routing every alert to `webhook_url` at once (1 s group wait/interval),
    resolved notifications included. Clustering is off (no gossip port)."""

    def __init__(self, workdir: pathlib.Path, webhook_url: str):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "alertmanager.yml").write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [alertname, service]\n"
            "  group_wait: 1s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url}\n"
            "        send_resolved: true\n"
        )
        self.log_path = self.dir / "alertmanager.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Alertmanager":
        exe = binary()
        assert exe, "prometheus-alertmanager is not installed"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [exe, f"--config.file={self.dir / 'alertmanager.yml'}", f"--storage.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def ready():
            assert self.proc.poll() is None, self.log()
            try:
                return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=30, what="alertmanager ready")
        return self

    def alerts(self, **filters) -> list[dict]:
        r = requests.get(f"{self.url}/api/v2/alerts", params=filters, timeout=5)
        r.raise_for_status()
        return r.json()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
