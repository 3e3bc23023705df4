"""Fixtures for end-to-end tests against a real `event-router serve` process.

The binary comes from the environment variable EVENT_ROUTER_BIN (set by
scripts/test.sh), falling back to target/debug/event-router. Each test gets
its own router on a free loopback port, learned from the stable startup line
`listening on ADDR` that `serve` prints on stderr.
"""

import os
import pathlib
import queue
import re
import subprocess
import threading
import time

import pytest

START_TIMEOUT = 20.0
LISTENING = re.compile(r"^listening on (\d+\.\d+\.\d+\.\d+:\d+)$")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def router_binary() -> str:
    path = os.environ.get("EVENT_ROUTER_BIN") or str(ROOT / "target" / "debug" / "event-router")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"event-router binary not found at {path}: build it with `cargo build` "
            "or set EVENT_ROUTER_BIN"
        )
    return path


class Router:
    """A running `event-router serve --listen 127.0.0.1:0`, stopped by `stop()`."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ROUTER_")}
        self.proc = subprocess.Popen(
            [router_binary(), "serve", "--listen", "127.0.0.1:0", "--shutdown-grace", "1s", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.output: list[str] = []
        stderr_lines: "queue.Queue[str]" = queue.Queue()
        for stream, sink in ((self.proc.stdout, None), (self.proc.stderr, stderr_lines)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        self.addr = self._wait_for_listening_line(stderr_lines)
        self.http_url = f"http://{self.addr}"
        self.ws_url = f"ws://{self.addr}/ws"

    def _read(self, stream, sink) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.output.append(line)
            if sink is not None:
                sink.put(line)

    def _wait_for_listening_line(self, lines: "queue.Queue[str]") -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = LISTENING.match(line)
            if match:
                return match.group(1)
        self.stop()
        output = "\n".join(self.output)
        pytest.fail(f"event-router did not print `listening on ADDR` in time; output:\n{output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def router():
    r = Router()
    try:
        yield r
    finally:
        r.stop()
