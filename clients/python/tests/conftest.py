"""Fixtures: real `event-router serve` processes (and a real `redis-server`)
on free loopback ports; no mocked server.

The binary comes from `EVENT_ROUTER_BIN` (scripts/test.sh sets it to the
one `cargo test` built), else target/debug/event-router. The SDK is
imported from the source tree. `async def` tests run on a fresh event loop
each, bounded by `TEST_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
PACKAGE = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE / "python"))

START_TIMEOUT = 20.0
TEST_TIMEOUT = 90.0
LISTENING = re.compile(r"listening on (\d+\.\d+\.\d+\.\d+:\d+)")


def router_binary() -> str:
    path = os.environ.get("EVENT_ROUTER_BIN") or str(ROOT / "target" / "debug" / "event-router")
    if not os.access(path, os.X_OK):
        pytest.fail(f"event-router binary not found at {path}: build it, or set EVENT_ROUTER_BIN")
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs `async def` tests with `asyncio.run`, bounded by TEST_TIMEOUT."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}

    async def bounded() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), TEST_TIMEOUT)

    asyncio.run(bounded())
    return True


class Router:
    """A running `event-router serve`; `kill()` SIGKILLs it, `restart()`
    starts it again on the same address."""

    def __init__(self, *args: str, listen: str = "127.0.0.1:0") -> None:
        self.args = list(args)
        self.output: list[str] = []
        self._start(listen)

    def _start(self, listen: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ROUTER_")}
        env["EVENT_ROUTER_LOG_FORMAT"] = "text"
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            [router_binary(), "serve", "--listen", listen, "--shutdown-grace", "1s", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stderr, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = LISTENING.search(line)
            if match:
                self.addr = match.group(1)
                return
        self.stop()
        raise RuntimeError("event-router did not start:\n" + "\n".join(self.output[-30:]))

    def _read(self, stream: IO[str], sink: queue.Queue[str]) -> None:
        for line in stream:
            self.output.append(line.rstrip("\n"))
            sink.put(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.addr}"

    def kill(self) -> None:
        """SIGKILL: no drain, no close frames."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Starts again on the same address, retrying while the port is freed."""
        last: Exception | None = None
        for _ in range(50):
            try:
                self._start(self.addr)
                return
            except RuntimeError as e:
                last = e
                time.sleep(0.1)
        raise RuntimeError(f"could not restart on {self.addr}: {last}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def router() -> Iterator[Router]:
    r = Router()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def start_router() -> Iterator[Callable[..., Router]]:
    """Starts routers with extra `serve` arguments; all stopped at the end."""
    started: list[Router] = []

    def start(*args: str) -> Router:
        r = Router(*args)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """`redis-server` on a free loopback port, killed by PID on `stop()`."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (scripts/test.sh installs it)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                exe,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not answer PING")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Polls `check()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what or check}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def _no_router_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their router explicitly."""
    monkeypatch.delenv("EVENT_ROUTER_URL", raising=False)
    monkeypatch.setenv("EVENT_ROUTER_BIN", router_binary())
