"""Event streams (`client.event_stream("order-123")`): named sequences of
events with a version per event, for event sourcing and saga state.

Appends may name the version they expect the stream to be at (optimistic
concurrency): a stale one raises `VersionConflictError` with the stream's
`current_version`. Following a stream (`subscribe`, `on_append`) reads
pages by version and waits between them, so it sees every version exactly
once, in order, and carries on across reconnects and router restarts.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._crypto import is_encrypted
from ._event import JSON, Event
from .errors import EventRouterError, TimeoutError

if TYPE_CHECKING:
    from ._client import EventRouterClient

#: Most entries one read returns (the router's cap).
MAX_READ_LIMIT = 1000

_CURRENT = re.compile(r"is at version (\d+)")


class VersionConflictError(EventRouterError):
    """An append expected another version (code `version_conflict`);
    `current_version` is where the stream is."""

    def __init__(self, message: str, *, code: str = "version_conflict", current_version: int = 0):
        super().__init__(message, code=code, retryable=False)
        self.current_version = current_version


def version_conflict(message: str) -> VersionConflictError:
    """The typed error for a `version_conflict` reply (its message names
    the current version)."""
    found = _CURRENT.search(message)
    return VersionConflictError(message, current_version=int(found.group(1)) if found else 0)


@dataclass(frozen=True)
class StreamEvent:
    """One event of an event stream and its version (1-based, no gaps)."""

    version: int
    event: Event

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def payload(self) -> JSON:
        return self.event.payload


class EventStream:
    """A handle on one event stream; cheap, holds no state but its name."""

    def __init__(self, client: EventRouterClient, name: str) -> None:
        self.client = client
        self.name = name
        self._followers: set[asyncio.Task[None]] = set()

    async def append(
        self,
        type: str,
        payload: JSON = None,
        *,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> int:
        """Appends one event; returns its version. With `expected_version`
        (0: the stream must be empty), appends only if the stream is there.

        Raises:
            VersionConflictError: the stream is at another version.
            PublishError: the event or the stream name is invalid.
        """
        _, text = self.client._event_json(
            type, payload, correlation_id=correlation_id, headers=headers, source=source
        )
        body = f'{{"op":"append","stream":{json.dumps(self.name)},"event":{text}'
        if expected_version is not None:
            body += f',"expected_version":{int(expected_version)}'
        try:
            reply = await self.client._call("publish", body + "}", 1, op="append")
        except EventRouterError as e:
            if e.code == "version_conflict":
                raise version_conflict(e.message) from None
            raise
        return int(reply.get("version", 0))

    async def read(self, from_version: int = 0, limit: int = 100) -> list[StreamEvent]:
        """Events from `from_version` on (0 or 1: the start), at most
        `limit` (at most 1000), oldest first."""
        _, entries = await self._read(from_version, limit)
        return entries

    async def version(self) -> int:
        """The stream's current version (0: never appended to)."""
        version, _ = await self._read(0, 1)
        return version

    async def read_all(self, from_version: int = 0) -> list[StreamEvent]:
        """Every event from `from_version` on, page by page."""
        out: list[StreamEvent] = []
        nxt = max(1, from_version)
        while True:
            _, page = await self._read(nxt, MAX_READ_LIMIT)
            out.extend(page)
            if len(page) < MAX_READ_LIMIT:
                return out
            nxt = page[-1].version + 1

    async def _read(self, from_version: int, limit: int) -> tuple[int, list[StreamEvent]]:
        body = json.dumps(
            {
                "op": "read_stream",
                "stream": self.name,
                "from_version": max(0, int(from_version)),
                "limit": max(1, min(int(limit), MAX_READ_LIMIT)),
            },
            separators=(",", ":"),
        )
        reply = await self.client._call("manage", body, 0, op="read_stream")
        entries = [
            StreamEvent(int(e["version"]), self._open(Event.from_dict(e["event"])))
            for e in reply.get("entries") or []
            if isinstance(e, dict) and isinstance(e.get("event"), dict)
        ]
        return int(reply.get("version", 0)), entries

    def _open(self, event: Event) -> Event:
        cipher = self.client.cipher
        if cipher is not None and is_encrypted(event.headers):
            event.payload = cipher.open(event.type, event.payload, event.headers)
        return event

    async def subscribe(
        self, from_version: int = 0, *, poll_interval: float = 0.1
    ) -> AsyncIterator[StreamEvent]:
        """Every event from `from_version` on, then each one appended later,
        exactly once and in version order (catch up, then live). Idle, it
        reads again every `poll_interval` seconds; while the router is
        unreachable it waits and resumes where it was; it ends when the
        client is closed."""
        nxt = max(1, from_version)
        while not self.client.closed:
            try:
                _, page = await self._read(nxt, MAX_READ_LIMIT)
            except TimeoutError:
                # A cancel that lands as the read's own timeout fires comes
                # out of `wait_for` as TimeoutError; it must still end us.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError() from None
                continue
            except EventRouterError as e:
                if e.retryable or e.code == "connection_lost":
                    await asyncio.sleep(poll_interval)
                    continue
                raise
            for entry in page:
                if entry.version != nxt:
                    continue
                nxt += 1
                yield entry
            if not page:
                await asyncio.sleep(poll_interval)

    def on_append(
        self, fn: Callable[[StreamEvent], Awaitable[Any]]
    ) -> Callable[[StreamEvent], Awaitable[Any]]:
        """Decorator: runs `fn` on every event of the stream, from the
        first (catch up, then live), until `stop()` or the client closes.
        Errors of `fn` go to the client's `on_error` handlers and the next
        event follows."""

        async def follow() -> None:
            async for entry in self.subscribe():
                try:
                    await fn(entry)
                except Exception as e:  # reported, like handler errors
                    await self.client._report_error(e, entry.event)

        task = asyncio.get_running_loop().create_task(follow())
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        return fn

    async def stop(self) -> None:
        """Stops the `on_append` followers."""
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
