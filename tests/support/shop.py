"""Run the demo shop's services (`skein shop <service>`) as separate processes."""

from __future__ import annotations

import os
import pathlib
import select
import subprocess
import time

from .collector import skein_bin

START_TIMEOUT = 30.0


class ShopService:
    """One shop service process; it exits when its stdin closes (see `stop`)."""

    def __init__(self, name: str, log_dir: pathlib.Path, collector, args=(), env=None):
        self.name = name
        self.log_path = pathlib.Path(log_dir) / f"shop-{name}-{time.monotonic_ns()}.log"
        self.args = list(args)
        self.env = dict(os.environ)
        self.env.update({
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.grpc_addr}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_SERVICE_NAME": name,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "RUST_LOG": "info",
            "NO_COLOR": "1",
        })
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None

    def start(self) -> "ShopService":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(skein_bin()), "shop", self.name, "--listen", "127.0.0.1:0", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"shop {self.name} did not start:\n{self.log()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"shop {self.name} closed stdout:\n{self.log()}")
                line += chunk
        word, addr = line.decode().split()
        assert word == "LISTENING", line
        self.addr = addr
        return self

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"shop {self.name} ignored stdin EOF")
        return self.proc.returncode


class Shop:
    """inventory, payment, orders and a gateway, wired together and exporting to `collector`."""

    def __init__(self, log_dir: pathlib.Path, collector, faults: bool = False, env: dict | None = None):
        self.log_dir = pathlib.Path(log_dir)
        self.collector = collector
        self.env = env or {}
        self.extra = [] if faults else ["--no-faults"]
        self.services: list[ShopService] = []

    def _start(self, name, args=(), env=None) -> ShopService:
        s = ShopService(name, self.log_dir, self.collector, [*args, *self.extra], {**self.env, **(env or {})}).start()
        self.services.append(s)
        return s

    def start(self) -> "Shop":
        inv = self._start("inventory")
        pay = self._start("payment")
        self.orders = self._start("orders", ["--inventory", inv.addr, "--payment", pay.addr])
        self.gateway = self.add_gateway()
        return self

    def add_gateway(self, args=(), env=None) -> ShopService:
        return self._start("gateway", ["--orders", self.orders.addr, *args], env)

    def stop(self) -> None:
        for s in reversed(self.services):
            s.stop()
