"""Local development mode: the bundled `event-router serve` as a child
process on a free loopback port (the seeds' "memory transport").

The binary is the one the wheel installed next to the Python code (the
`event-router` command), found as: the environment variable
`EVENT_ROUTER_BIN`, then the scripts directory of this Python environment,
then `PATH`.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import os
import re
import shutil
import signal
import sys
import sysconfig
from pathlib import Path

from .errors import ConnectionError

#: Environment variable naming the binary to run, overriding the lookup.
BIN_ENV = "EVENT_ROUTER_BIN"
#: How long the child may take to print its listening line.
START_TIMEOUT = 20.0
#: How long a stopping child may drain before it is killed.
STOP_TIMEOUT = 5.0

_LISTENING = re.compile(rb"listening on (\d+\.\d+\.\d+\.\d+:\d+)")
_EXE = "event-router.exe" if sys.platform == "win32" else "event-router"


def find_binary() -> str:
    """The path of the `event-router` binary.

    Raises:
        ConnectionError: no binary was found (install the wheel, or set
            `EVENT_ROUTER_BIN`).
    """
    explicit = os.environ.get(BIN_ENV)
    if explicit:
        return explicit
    candidates = [Path(sysconfig.get_path("scripts")) / _EXE, Path(sys.prefix) / "bin" / _EXE]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("event-router")
    if found:
        return found
    raise ConnectionError(
        "no URL was given, EVENT_ROUTER_URL is unset, and the event-router binary "
        f"was not found (install the event-router wheel, or set {BIN_ENV})",
        code="no_binary",
    )


class LocalRouter:
    """A running `event-router serve --listen 127.0.0.1:0`; `stop()` ends it."""

    def __init__(self, process: asyncio.subprocess.Process, addr: str) -> None:
        self.process = process
        self.addr = addr
        self.ws_url = f"ws://{addr}/ws"
        self.http_url = f"http://{addr}"
        self._output: collections.deque[bytes] = collections.deque(maxlen=50)
        self._drain: asyncio.Task[None] | None = None
        self._at_exit: functools.partial[None] | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @classmethod
    async def start(cls, *args: str, binary: str | None = None) -> LocalRouter:
        """Starts the router and waits for its `listening on ADDR` line.

        Raises:
            ConnectionError: the binary is missing or did not come up.
        """
        exe = binary or find_binary()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ROUTER_")}
        env.setdefault("RUST_LOG", "warn")
        env["EVENT_ROUTER_LOG_FORMAT"] = "text"
        try:
            process = await asyncio.create_subprocess_exec(
                exe,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--shutdown-grace",
                "1s",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as e:
            raise ConnectionError(f"cannot start {exe}: {e}", code="no_binary") from e
        seen: list[bytes] = []
        assert process.stderr is not None
        try:
            addr = await asyncio.wait_for(_listening(process.stderr, seen), START_TIMEOUT)
        except (TimeoutError, EOFError):
            addr = None
        if addr is None:
            await _end(process)
            output = b"".join(seen).decode(errors="replace")
            raise ConnectionError(
                f"{exe} serve did not start:\n{output}", code="not_started", retryable=False
            )
        router = cls(process, addr)
        # Should the event loop end without close(), the child ends with us.
        router._at_exit = functools.partial(_terminate, process.pid)
        atexit.register(router._at_exit)
        router._output.extend(seen)
        router._drain = asyncio.get_running_loop().create_task(router._read_rest())
        return router

    async def _read_rest(self) -> None:
        # The pipe must be read, or a chatty child would block on a full pipe.
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self._output.append(line)

    def output(self) -> str:
        """The child's last lines on stderr."""
        return b"".join(self._output).decode(errors="replace")

    async def stop(self) -> None:
        """Stops the child (SIGTERM, then SIGKILL after `STOP_TIMEOUT`)."""
        await _end(self.process)
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain


async def _listening(stream: asyncio.StreamReader, seen: list[bytes]) -> str:
    while True:
        line = await stream.readline()
        if not line:
            raise EOFError
        seen.append(line)
        match = _LISTENING.search(line)
        if match:
            return match.group(1).decode()


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    try:
        process.terminate()
    except ProcessLookupError:
        return
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
