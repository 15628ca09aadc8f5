"""A real S3-compatible server (moto's standalone server, its own process) and a fault proxy in
front of it that answers chosen requests with S3 errors, stalls them or drops the connection.

    server = MotoS3(log_dir); server.create_bucket("b")
    proxy = FaultProxy(server.url)                 # skein talks to proxy.url
    proxy.fail(method="PUT", times=3, status=503, code="SlowDown")
    proxy.fail(method="PUT", latch=BLOCK_DIR, status=400, code="RequestTimeout")  # one block dir, until cleared
    proxy.fail(method="PUT", key=META, body=re.compile(rb'"min_time": 42\b'))    # one part, on every retry
    skein_factory("--storage", "s3://b/prefix", env=skein_env(proxy.url))

Everything the proxy forwards is forwarded unchanged (moto does not check signatures, and the
Host header is passed through, so a signature would still match); every request is recorded.
"""

from __future__ import annotations

import http.client
import pathlib
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from .collector import free_port
from .poll import wait_until

REGION = "us-east-1"
ACCESS_KEY = "skein-e2e"
SECRET_KEY = "skein-e2e-secret"

# `/<bucket>/[<prefix>/]<tenant>/<ULID>/`: the directory of one span block (path-style URLs).
BLOCK_DIR = re.compile(r"^/[^/?]+/(?:[^?]*/)?[^/?]+/[0-9A-HJKMNP-TV-Z]{26}/")

# the last file of a block written: a block exists iff its meta.json does
META = re.compile(r"/meta\.json$")

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def skein_env(endpoint: str) -> dict:
    """Environment for `skein serve --storage s3://…` against `endpoint` (object_store's AWS_* keys)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }


class MotoS3:
    """moto's S3 server on a free loopback port, in its own process (state lives in memory)."""

    def __init__(self, log_dir: pathlib.Path):
        self.port = free_port()
        log_dir = pathlib.Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "moto.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                return requests.get(self.url + "/moto-api/", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=30, what="moto S3 server answering")
        self._client = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.url,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
            )
        return self._client

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Fault:
    """Requests this fault answers: `method` (None = any), path regex `key`, body regex `body`
    (bytes; e.g. one block's meta.json by its contents, whatever its name on each retry); with
    `latch`, the first matching path's `latch` match (e.g. one block's directory) and only paths
    under it.
    `times` None means until cleared. Action: `status` + S3 error `code`, or `stall` seconds
    (then forwarded), or `reset` (connection closed without an answer)."""

    method: str | None = "PUT"
    key: re.Pattern | None = None
    body: re.Pattern | None = None
    latch: re.Pattern | None = None
    times: int | None = None
    status: int = 503
    code: str = "SlowDown"
    stall: float = 0.0
    reset: bool = False
    served: int = 0
    latched: str | None = None
    paths: list[str] = field(default_factory=list)

    def matches(self, method: str, path: str, body: bytes) -> bool:
        if self.times is not None and self.served >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.key is not None and not self.key.search(path):
            return False
        if self.body is not None and not self.body.search(body):
            return False
        if self.latch is not None:
            if self.latched is None:
                m = self.latch.search(path)
                if not m:
                    return False
                self.latched = m.group(0)
            elif not path.startswith(self.latched):
                return False
        return True


@dataclass
class Seen:
    method: str
    path: str
    status: int | None  # None: connection reset by the proxy
    injected: bool


class FaultProxy:
    """A threaded HTTP/1.1 proxy to `upstream` that injects the configured faults."""

    def __init__(self, upstream: str):
        u = urllib.parse.urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, name="s3-fault-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, **kw) -> Fault:
        f = Fault(**kw)
        with self.lock:
            self.faults.append(f)
        return f

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def requests(self, method: str | None = None, injected: bool | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method)
                    and (injected is None or s.injected == injected)]

    def committed_block_dirs(self) -> set[str]:
        """Block directories (`/bucket/…/<ULID>/`) whose meta.json PUT moto answered 200."""
        out = set()
        for s in self.requests("PUT", injected=False):
            m = BLOCK_DIR.search(s.path)
            if m and s.status == 200 and s.path.split("?")[0].endswith("/meta.json"):
                out.add(m.group(0))
        return out

    def _match(self, method: str, path: str, body: bytes) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path, body):
                    f.served += 1
                    f.paths.append(path)
                    return f
        return None

    def _record(self, s: Seen) -> None:
        with self.lock:
            self.seen.append(s)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error_xml(code: str, path: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by the skein e2e fault proxy</Message>"
        f"<Resource>{path}</Resource><RequestId>e2e-fault</RequestId></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the requests are recorded in FaultProxy.seen
        pass

    def do_GET(self):
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _proxy(self):
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        fault = proxy._match(self.command, self.path, body)
        if fault is not None and fault.reset:
            proxy._record(Seen(self.command, self.path, None, True))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None and not fault.stall:
            data = _error_xml(fault.code, self.path)
            proxy._record(Seen(self.command, self.path, fault.status, True))
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        if fault is not None:
            threading.Event().wait(fault.stall)  # the injected stall itself
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            headers = resp.getheaders()
        finally:
            conn.close()
        proxy._record(Seen(self.command, self.path, resp.status, fault is not None))
        self.send_response(resp.status, resp.reason)
        for k, v in headers:
            if k.lower() in _HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
