"""Subscriptions as agents see them.

A `Subscription` is awaitable (it subscribes), an async iterator of
`Event`s, and an async context manager (it unsubscribes on exit). Each one
owns a bounded queue the connection pushes into without ever waiting, so a
slow consumer cannot stall the connection that also carries pongs and
publish confirmations: a full queue drops its oldest delivery and counts it
in `dropped` (a dropped durable delivery is redelivered by the router after
its ack timeout).

Durable deliveries (a `group`) pass a bounded memory of recently seen
delivery ids, so that one delivery is handed out once even if the router
sends it again after a reconnect; a repeat of an acked delivery is acked
again instead.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import enum
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._breaker import CircuitOpenError
from ._event import Event
from .errors import EventRouterError, SubscriptionError

if TYPE_CHECKING:
    from ._client import EventRouterClient

log = logging.getLogger("event_router")

#: A subscription handler: a function of the event, sync or async.
Handler = Callable[[Event], Awaitable[Any] | Any]
#: A filter: a document (`{"priority": {"$gte": 7}}`), a shorthand string
#: (`"priority:gt:5"`) or a list of shorthand strings (ANDed).
Filter = dict[str, Any] | str | list[str]

#: Default number of durable delivery ids remembered per subscription.
DEDUPE_CAPACITY = 10_000


class _Outcome(enum.Enum):
    PENDING = 0
    ACKED = 1
    NACKED = 2


class _Recent:
    """A bounded memory of recently seen durable deliveries."""

    def __init__(self, capacity: int) -> None:
        self.outcomes: collections.OrderedDict[str, _Outcome] = collections.OrderedDict()
        self.capacity = max(1, capacity)

    def admit(self, key: str) -> str:
        """`deliver`, `drop` (handed out, not settled) or `ack` (acked already)."""
        outcome = self.outcomes.get(key)
        if outcome is _Outcome.PENDING:
            return "drop"
        if outcome is _Outcome.ACKED:
            return "ack"
        self.outcomes[key] = _Outcome.PENDING
        self.outcomes.move_to_end(key)
        while len(self.outcomes) > self.capacity:
            self.outcomes.popitem(last=False)
        return "deliver"

    def settle(self, key: str, acked: bool) -> None:
        if key in self.outcomes:
            self.outcomes[key] = _Outcome.ACKED if acked else _Outcome.NACKED

    def forget(self, key: str) -> None:
        self.outcomes.pop(key, None)


class Delivery:
    """The settle handle of one durable delivery (`Event.ack`/`nack`)."""

    __slots__ = ("delivery_id", "done", "key", "subscription")

    def __init__(self, subscription: Subscription, delivery_id: str, key: str) -> None:
        self.subscription = subscription
        self.delivery_id = delivery_id
        self.key = key
        self.done = False

    def settle(self, *, ack: bool, delay: float | None = None, reason: str | None = None) -> None:
        """Acks or nacks once; later calls do nothing."""
        if self.done:
            return
        self.done = True
        sub = self.subscription
        if sub._recent is not None:
            sub._recent.settle(self.key, ack)
        frame: dict[str, Any] = {
            "op": "ack" if ack else "nack",
            "delivery_id": self.delivery_id,
            "subscription_id": sub.group,
        }
        if not ack:
            if delay is not None:
                frame["delay_ms"] = max(0, int(delay * 1000))
            if reason is not None:
                frame["reason"] = reason[:1000]
        sub._client._send_settle(json.dumps(frame, separators=(",", ":")))


class Subscription:
    """A live or durable subscription; see the module docs.

    Create it with `EventRouterClient.subscribe`; `await` it (or enter it
    with `async with`) to subscribe. Iterating yields `Event`s. In a durable
    group, an event yielded by the iterator is acked when the next one is
    asked for, or when the `async with` block ends normally, and nacked when
    the block ends with an exception; `event.ack()`/`event.nack()` settle it
    earlier.
    """

    def __init__(
        self,
        client: EventRouterClient,
        topics: list[str],
        *,
        pattern: str | None = None,
        filter: Filter | None = None,
        group: str | None = None,
        max_in_flight: int | None = None,
        handler: Handler | None = None,
        concurrency: int = 1,
        queue_size: int = 1024,
        nack_delay: float | None = None,
    ) -> None:
        self._client = client
        self.topics = list(topics)
        self.pattern = pattern
        self.filter = filter
        self.group = group
        self.max_in_flight = max_in_flight
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.nack_delay = nack_delay
        #: The router's id of this subscription on the current connection
        #: (the group name for durable ones).
        self.server_id: str | None = None
        #: Deliveries lost because this subscriber fell behind: live events
        #: the router dropped, plus deliveries the client-side queue dropped.
        self.dropped = 0
        capacity = queue_size
        if group is not None:
            capacity = max(capacity, 2 * (max_in_flight or 100))
        self._capacity = max(1, capacity)
        self._queue: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: EventRouterError | None = None
        self._recent = _Recent(DEDUPE_CAPACITY) if group is not None else None
        self._current: Event | None = None
        self._confirmed: asyncio.Future[str] | None = None
        self._started = False
        #: Put in the client's table by a decorator before connecting.
        self._registered = False
        self._runner: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._draining = False

    @property
    def durable(self) -> bool:
        """Whether this is a durable (group) subscription."""
        return self.group is not None

    @property
    def active(self) -> bool:
        """Whether the subscription still delivers."""
        return self._started and not self._ended

    def frame(self, request_id: int) -> str:
        """The `subscribe` frame that opens this subscription."""
        frame: dict[str, Any] = {"op": "subscribe", "id": str(request_id), "topics": self.topics}
        if self.pattern is not None:
            frame["pattern"] = self.pattern
        if self.filter is not None:
            frame["filter"] = self.filter
        if self.group is not None:
            frame["group"] = self.group
            if self.max_in_flight is not None:
                frame["max_in_flight"] = self.max_in_flight
        return json.dumps(frame, separators=(",", ":"))

    # --- lifecycle ----------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self.start().__await__()

    async def start(self) -> Subscription:
        """Subscribes (once) and waits for the router to confirm.

        Raises:
            SubscriptionError: the router refused it (bad pattern or filter,
                a group this connection already consumes, limits).
            AuthError: the principal may not subscribe to these topics.
            ConnectionError: the client closed first.
        """
        self._ensure_future()
        if not self._started:
            self._started = True
            if not self._registered:
                self._client._add_subscription(self)
        assert self._confirmed is not None
        try:
            await asyncio.shield(self._confirmed)
        except BaseException:
            if self._confirmed.done() and not self._confirmed.cancelled():
                self._ended = True
            raise
        if self.handler is not None and self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_handler())
        return self

    def _start_in_background(self) -> None:
        """Registers without waiting (decorators); failures go to `on_error`."""
        if self._started:
            return
        self._ensure_future()
        self._started = True
        self._client._add_subscription(self)
        asyncio.get_running_loop().create_task(self._confirm_in_background())

    def _ensure_future(self) -> None:
        if self._confirmed is not None:
            return
        self._confirmed = asyncio.get_running_loop().create_future()
        if self._ended:
            self._confirmed.set_exception(
                self._error or SubscriptionError("the subscription has ended", code="unsubscribed")
            )
        elif self.server_id is not None:
            self._confirmed.set_result(self.server_id)

    async def _confirm_in_background(self) -> None:
        try:
            await self.start()
        except EventRouterError as e:
            await self._client._report_error(e, None)

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        current, self._current = self._current, None
        if current is not None and current._delivery is not None:
            if exc is None:
                current._delivery.settle(ack=True)
            elif isinstance(exc, Exception):
                current._delivery.settle(ack=False, reason=_reason(exc))
        await self.unsubscribe()

    async def unsubscribe(self) -> None:
        """Ends the subscription. Running handlers are cancelled and their
        durable deliveries are not settled, so the group redelivers them;
        queued deliveries are dropped likewise."""
        if self._started:
            self._client._remove_subscription(self)
        self._end(None)
        await self._stop_handlers()

    async def _stop_handlers(self) -> None:
        tasks = [t for t in (self._runner, *self._running) if t is not None]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def drain(self, timeout: float | None = None) -> None:
        """Stops taking deliveries and waits up to `timeout` for running
        handlers to finish (graceful stop); the rest are cancelled."""
        self._draining = True
        self._wake()
        current = asyncio.current_task()
        tasks = [t for t in (self._runner, *self._running) if t is not None and t is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await self.unsubscribe()

    # --- iteration ----------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        current, self._current = self._current, None
        if current is not None and current._delivery is not None:
            current._delivery.settle(ack=True)
        if not self._started:
            await self.start()
        try:
            event = await self._next()
        except _Ended:
            raise StopAsyncIteration from None
        if event._delivery is not None:
            self._current = event
        return event

    async def get(self, timeout: float | None = None) -> Event:
        """The next delivery (not settled for you: call `event.ack()`).

        Raises:
            TimeoutError: nothing arrived within `timeout` seconds.
            SubscriptionError: the subscription ended.
        """
        from .errors import TimeoutError

        try:
            return await asyncio.wait_for(self._next(), timeout)
        except builtins.TimeoutError:
            raise TimeoutError(f"no event within {timeout}s", code="timeout") from None
        except _Ended:
            raise self._error or SubscriptionError(
                "the subscription has ended", code="unsubscribed"
            ) from None

    async def _next(self) -> Event:
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise _Ended
            if self._draining:
                raise _Ended
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    # --- fed by the connection ----------------------------------------------

    def _push(self, event: Event, delivery_id: str) -> None:
        if self._ended:
            return
        if self._recent is not None:
            key = f"{delivery_id}\x1f{event.id}"
            admit = self._recent.admit(key)
            if admit == "drop":
                return
            delivery = Delivery(self, delivery_id, key)
            if admit == "ack":
                delivery.settle(ack=True)
                return
            event._delivery = delivery
        if len(self._queue) >= self._capacity:
            old = self._queue.popleft()
            self.dropped += 1
            if old._delivery is not None and self._recent is not None:
                old._delivery.done = True
                self._recent.forget(old._delivery.key)
        self._queue.append(event)
        self._wake()

    def _overflowed(self, dropped: int) -> None:
        self.dropped += dropped

    def _discard_durable(self) -> None:
        """The connection is gone: queued durable deliveries go back to the
        group by themselves, so they are dropped here and, when redelivered,
        handed out again."""
        if self._recent is None:
            return
        for event in self._queue:
            if event._delivery is not None:
                event._delivery.done = True
                self._recent.forget(event._delivery.key)
        self._queue.clear()

    def _end(self, error: EventRouterError | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        if self._confirmed is not None and not self._confirmed.done():
            self._confirmed.set_exception(
                error or SubscriptionError("the subscription has ended", code="unsubscribed")
            )
            self._confirmed.exception()  # retrieved: the caller may be gone
        self._wake()

    def _subscribed(self, server_id: str) -> None:
        self.server_id = server_id
        if self._confirmed is not None and not self._confirmed.done():
            self._confirmed.set_result(server_id)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- handlers -----------------------------------------------------------

    async def _run_handler(self) -> None:
        if self.concurrency == 1:
            # In order, one at a time, with no task per delivery.
            while not self._draining:
                try:
                    event = await self._next()
                except (_Ended, EventRouterError):
                    break
                if self._draining:
                    break  # not started: a durable one is redelivered
                await self._handle(event)
            return
        slots = asyncio.Semaphore(self.concurrency)

        def done(task: asyncio.Task[None]) -> None:
            self._running.discard(task)
            slots.release()

        while not self._draining:
            # A slot first: a delivery taken off the queue is one a lost
            # connection can no longer discard.
            await slots.acquire()
            try:
                event = await self._next()
            except (_Ended, EventRouterError):
                break
            if self._draining:
                break
            task = asyncio.get_running_loop().create_task(self._handle(event))
            self._running.add(task)
            task.add_done_callback(done)
        if self._running:
            await asyncio.wait(list(self._running))

    async def _handle(self, event: Event) -> None:
        assert self.handler is not None
        try:
            result = self.handler(event)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if event._delivery is not None:
                delay = self.nack_delay
                if isinstance(e, CircuitOpenError):
                    # Back when the breaker may let a probe through.
                    delay = max(e.retry_after, 0.05)
                event._delivery.settle(ack=False, delay=delay, reason=_reason(e))
            await self._client._report_error(e, event)
        else:
            if event._delivery is not None:
                event._delivery.settle(ack=True)


class _Ended(Exception):
    """The queue is drained and the subscription ended without an error."""


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
