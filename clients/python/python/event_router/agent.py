"""Agent helpers of the v2 API design: `EventEnabledAgent` and the
`event_handler` decorator.

An agent is a class whose methods decorated with `@event_handler(...)`
handle events; `start()` connects, opens a subscription per handler,
publishes `agent.started` and calls `on_start`; `stop()` stops taking
events, lets running handlers finish (up to `stop_timeout`), calls
`on_stop`, publishes `agent.stopped` and closes the client it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ._client import EventRouterClient
from ._event import JSON, Event
from ._subscription import Filter, Subscription

F = TypeVar("F", bound=Callable[..., Any])

_HANDLER_ATTR = "__event_router_handler__"


def event_handler(
    *topics: str,
    filter: Filter | None = None,
    group: str | None = None,
    concurrency: int = 1,
) -> Callable[[F], F]:
    """Marks an `EventEnabledAgent` method as the handler of `topics`.

    `group` makes it durable (return acks, exception nacks); the agent's
    `group` attribute is used when the decorator gives none.
    """

    def mark(fn: F) -> F:
        setattr(
            fn,
            _HANDLER_ATTR,
            {"topics": list(topics), "filter": filter, "group": group, "concurrency": concurrency},
        )
        return fn

    return mark


class EventEnabledAgent:
    """Base class of an agent with built-in event support (see module docs).

    Lifecycle events (`agent.started`, `agent.stopped`, payload
    `{"agent_id", "capabilities"}`, source the agent id) are published unless
    `lifecycle_events` is False. `publish` sets the agent id as source.
    """

    #: Capabilities announced in lifecycle events.
    capabilities: list[str] = []  # noqa: RUF012 - overridden per class
    #: Default durable group of handlers that name none (None: live).
    group: str | None = None
    #: Publish `agent.started`/`agent.stopped`.
    lifecycle_events: bool = True
    #: Seconds `stop()` waits for running handlers.
    stop_timeout: float = 10.0

    def __init__(
        self,
        client: EventRouterClient | None = None,
        *,
        id: str | None = None,
        url: str | None = None,
        capabilities: Iterable[str] | None = None,
        group: str | None = None,
    ) -> None:
        self.id = id or f"{type(self).__name__.lower()}-{uuid.uuid4().hex[:8]}"
        self._owns_client = client is None
        self.client = client or EventRouterClient(url, source=self.id)
        if capabilities is not None:
            self.capabilities = list(capabilities)
        if group is not None:
            self.group = group
        self._subscriptions: list[Subscription] = []
        self._stopped = asyncio.Event()
        self.running = False

    async def on_start(self) -> None:
        """Called once subscribed, after `agent.started` was published."""

    async def on_stop(self) -> None:
        """Called on `stop()` after handlers finished, before `agent.stopped`."""

    async def publish(self, type: str, payload: JSON = None, **fields: Any) -> str:
        """`EventRouterClient.publish` with this agent as the default source."""
        fields.setdefault("source", self.id)
        return await self.client.publish(type, payload, **fields)

    async def publish_and_wait(
        self,
        type: str,
        payload: JSON = None,
        *,
        wait_for: str | Iterable[str],
        timeout: float = 30.0,
        **fields: Any,
    ) -> Event:
        """`EventRouterClient.publish_and_wait` with this agent as the source."""
        fields.setdefault("source", self.id)
        return await self.client.publish_and_wait(
            type, payload, wait_for=wait_for, timeout=timeout, **fields
        )

    async def start(self) -> None:
        """Connects, subscribes every `@event_handler`, announces the agent
        and calls `on_start`.

        Raises:
            EventRouterError: connecting or subscribing failed.
        """
        await self.client.connect()
        for name in dir(type(self)):
            fn = getattr(type(self), name, None)
            spec = getattr(fn, _HANDLER_ATTR, None)
            if spec is None:
                continue
            sub = self.client.subscribe(
                spec["topics"],
                filter=spec["filter"],
                group=spec["group"] or self.group,
                handler=getattr(self, name),
                concurrency=spec["concurrency"],
            )
            self._subscriptions.append(await sub)
        self.running = True
        if self.lifecycle_events:
            await self.publish(
                "agent.started", {"agent_id": self.id, "capabilities": list(self.capabilities)}
            )
        await self.on_start()

    async def stop(self) -> None:
        """Graceful stop: no new events, running handlers finish (up to
        `stop_timeout`), `on_stop`, `agent.stopped`, then the client closes
        when the agent opened it. Calling it again does nothing."""
        if not self.running:
            self._stopped.set()
            return
        self.running = False
        for sub in self._subscriptions:
            await sub.drain(self.stop_timeout)
        self._subscriptions.clear()
        try:
            await self.on_stop()
        finally:
            if self.lifecycle_events and not self.client.closed:
                with contextlib.suppress(Exception):
                    await self.publish("agent.stopped", {"agent_id": self.id})
            if self._owns_client:
                await self.client.close()
            self._stopped.set()

    async def run(self) -> None:
        """Starts, then runs until `stop()` or SIGINT/SIGTERM, then stops."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
                installed.append(sig)
        try:
            await self.start()
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> EventEnabledAgent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
