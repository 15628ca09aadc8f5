"""Start, stop, restart and kill the `skein serve` binary under test."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import requests

from .poll import wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "skein"
READY_TIMEOUT = float(os.environ.get("SKEIN_READY_TIMEOUT", "60"))
STOP_TIMEOUT = 20.0


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def skein_bin() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SKEIN_BIN", str(DEFAULT_BIN)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SkeinNotReady(RuntimeError):
    pass


class Skein:
    """One `skein serve` process on loopback ports; ports and data dir survive restarts."""

    def __init__(self, data_dir: pathlib.Path, log_dir: pathlib.Path, extra_args=(), env: dict | None = None,
                 tls_ca: pathlib.Path | None = None, token: str | None = None,
                 client_cert: tuple[pathlib.Path, pathlib.Path] | None = None):
        """`tls_ca`: the listeners serve TLS (pass --tls-cert/--tls-key in `extra_args`) and the
        session trusts this CA; `token`: the session sends it as `Authorization: Bearer`;
        `client_cert`: (certificate, key) the session presents (for --tls-client-ca)."""
        self.bin = skein_bin()
        self.env = dict(env or {})  # extra environment (e.g. AWS_* for s3:// storage)
        self.data_dir = pathlib.Path(data_dir)
        self.log_dir = pathlib.Path(log_dir)
        self.extra_args = list(extra_args)
        self.grpc_port = free_port()
        self.otlp_http_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log_paths: list[pathlib.Path] = []
        self.session = requests.Session()
        self.scheme = "https" if tls_ca else "http"
        self.tls_ca = tls_ca
        if tls_ca:
            self.session.verify = str(tls_ca)
            # Otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment beat `verify`.
            self.session.trust_env = False
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if client_cert:
            self.session.cert = (str(client_cert[0]), str(client_cert[1]))

    # ---- addresses -------------------------------------------------------------------
    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def otlp_http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.otlp_http_port}"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        return [
            str(self.bin),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--otlp-grpc-addr",
            self.grpc_addr,
            "--otlp-http-addr",
            f"127.0.0.1:{self.otlp_http_port}",
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            *self.extra_args,
        ]

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "Skein":
        if not self.bin.exists():
            raise SkeinNotReady(f"collector binary {self.bin} does not exist (cargo build --bin skein)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log_path = self.log_dir / f"skein-{self.starts}.log"
        self._log_paths.append(log_path)
        log = open(log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        env.update(self.env)
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def ready():
            if self.proc is None or self.proc.poll() is not None:
                raise SkeinNotReady(
                    f"skein exited with {self.proc.returncode if self.proc else None} before /ready;"
                    f" argv={self.argv()}\n--- log ---\n{self.log_tail()}"
                )
            try:
                return self.session.get(self.http_url + "/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(ready, timeout=timeout, interval=0.05, what="skein /ready == 200")
        except TimeoutError as e:
            raise SkeinNotReady(f"{e}\nargv={self.argv()}\n--- log ---\n{self.log_tail()}") from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"skein did not exit within {timeout}s of SIGTERM")
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self, graceful: bool = True) -> "Skein":
        if graceful:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def terminate_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.session.close()

    # ---- diagnostics -----------------------------------------------------------------
    def log_text(self) -> str:
        parts = []
        for p in self._log_paths:
            try:
                parts.append(f"=== {p.name} ===\n" + _ANSI.sub("", p.read_text(errors="replace")))
            except OSError:
                pass
        return "\n".join(parts)

    def log_mark(self) -> tuple[int, int]:
        """A position in the logs; `log_since(mark)` returns what was written after it."""
        if not self._log_paths:
            return (0, 0)
        last = self._log_paths[-1]
        return (len(self._log_paths) - 1, last.stat().st_size if last.exists() else 0)

    def log_since(self, mark: tuple[int, int]) -> str:
        idx, off = mark
        parts = []
        for i, p in enumerate(self._log_paths):
            if i < idx:
                continue
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if i == idx:
                data = data[off:]
            parts.append(f"=== {p.name}{' (from test start)' if i == idx and off else ''} ===\n"
                         + _ANSI.sub("", data.decode(errors="replace")))
        return "\n".join(parts)

    def log_tail(self, max_chars: int = 20000) -> str:
        text = self.log_text()
        return text if len(text) <= max_chars else "...\n" + text[-max_chars:]

    def proc_status(self, field: str) -> int:
        """A `kB` field of /proc/<pid>/status (e.g. VmHWM, VmRSS) in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)
