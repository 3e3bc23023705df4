"""`EventRouterClient`: publish, subscribe, handle and request over the
router's WebSocket protocol (docs/protocol.md), resilient by default.

One driver task per client owns the connection:
- a lost connection is re-established with exponential backoff and jitter
  (`ReconnectPolicy`), forever or up to `max_attempts`;
- subscriptions are restored on each new connection and keep feeding the
  same `Subscription` objects;
- every unconfirmed publish, batch and request is kept in id order and
  (re)sent on each new connection after the subscriptions, so a publish
  made while disconnected is flushed exactly once and in order; one whose
  confirmation was lost with its connection is sent again under the same
  event id (at-least-once: subscribers that must not see a repeat dedupe by
  event id);
- the unconfirmed publishes are bounded by `buffer_size` events: a publish
  that finds the buffer full waits for room while connected, and fails with
  `BufferFullError` (retryable) at once while disconnected; `publish_nowait`
  always fails at once;
- a ping goes out every heartbeat interval, and a connection on which
  nothing arrives within the heartbeat timeout after it is replaced;
- acks and nacks made while disconnected wait and are sent once every
  subscription is restored (a broker that keeps deliveries across a restart
  accepts them; others answer `unknown_delivery`, which is ignored).
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import inspect
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from . import _config, _streams
from ._breaker import CircuitBreaker
from ._config import ReconnectPolicy, parse_duration, token_from_auth
from ._crypto import DecryptionError, PayloadCipher, is_encrypted
from ._event import JSON, Event, Priority, new_event_id, priority_problem, topic_problem
from ._event_streams import EventStream
from ._local import LocalRouter
from ._saga import S, SagaDefinition, define_saga
from ._subscription import Filter, Handler, Subscription
from ._transaction import Transaction
from ._windows import Window, WindowAssigner
from .errors import (
    AuthError,
    BufferFullError,
    ConnectionError,
    Context,
    EventRouterError,
    HandlerError,
    PublishError,
    TimeoutError,
    error_from_code,
)

log = logging.getLogger("event_router")

#: The environment variable the URL defaults to.
URL_ENV = "EVENT_ROUTER_URL"
#: Header a responder sets on its reply when its handler raised.
ERROR_HEADER = "error"
#: Header naming the exception class a responder's handler raised.
ERROR_TYPE_HEADER = "error_type"
#: Most events in one `publish_batch` frame (the router's limit).
MAX_BATCH_EVENTS = 10_000

#: An error handler: `(error, event)`, sync or async; `event` is None when
#: the failure was not about one delivered event.
ErrorHandler = Callable[[BaseException, Event | None], Awaitable[Any] | Any]
H = TypeVar("H", bound=Callable[..., Any])
E = TypeVar("E", bound=ErrorHandler)

# One encoder for every event: json.dumps with arguments builds a new
# encoder per call, which was half the cost of a publish_nowait.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass
class _Call:
    """A publish, batch or request waiting for its `ok`/`error` reply."""

    id: int
    kind: Context
    body: str  # the frame without its id, for publish/batch; the event for request
    events: int
    future: asyncio.Future[dict[str, Any]] | None
    deadline: float | None = None
    op: str = "publish"
    atomic: bool = False

    def frame(self) -> str:
        if self.op == "publish":
            return f'{{"op":"publish","id":"{self.id}","event":{self.body}}}'
        if self.op == "publish_batch":
            atomic = "true" if self.atomic else "false"
            return (
                f'{{"op":"publish_batch","id":"{self.id}","events":[{self.body}],'
                f'"atomic":{atomic}}}'
            )
        if self.op != "request":
            # Any other op: `body` is its whole frame without the id.
            return f'{{"id":"{self.id}",{self.body[1:]}'
        assert self.deadline is not None
        left = max(1, int((self.deadline - time.monotonic()) * 1000))
        return f'{{"op":"request","id":"{self.id}","event":{self.body},"timeout_ms":{left}}}'


@dataclass
class _Conn:
    """One WebSocket connection and its ordered write queue."""

    ws: ClientConnection
    out: collections.deque[str] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    last_rx: float = field(default_factory=time.monotonic)

    def send(self, text: str) -> None:
        self.out.append(text)
        self.idle.clear()
        self.wake.set()


class EventRouterClient:
    """A connection to event-router; see the module docs.

    `url` is `ws://`, `wss://`, `http://` or `https://` (the `/ws` path is
    added when there is none); it defaults to `config["url"]`, then the
    `EVENT_ROUTER_URL` environment variable. With none of them the client
    starts the bundled `event-router serve` on a free loopback port and
    stops it when closed (local development).

    `async with EventRouterClient() as client:` connects and closes.
    Settings come from keyword arguments, else from `config` (the same
    names as keys), else defaults:

    - `token` or `auth` (`{"type": "api_key", "key": ...}`,
      `{"type": "jwt", "token": ...}`): the bearer credential;
    - `reconnect`: `{"enabled": True, "max_attempts": 5, "backoff":
      "exponential", "initial_delay": 0.1, "max_delay": 10, "jitter": 0.2}`
      (`max_attempts` None retries forever), kept as `reconnect_policy`;
    - `batch_size` (100) and `batch_timeout` (0.01 s): `publish_nowait`
      sends a batch when it holds `batch_size` events or `batch_timeout`
      after its first;
    - `buffer_size` (10,000 events): bound of unconfirmed publishes;
    - `heartbeat` (`{"interval": 15, "timeout": 10}`, seconds; interval 0
      turns heartbeats off); `publish_timeout` (30 s); `connect_timeout`
      (10 s); `queue_size` (1,024 deliveries per subscription);
    - `source`: the default `source` of published events;
    - `transport`: `"websocket"` (default) or `"memory"` (always the local
      router, whatever the URL settings say).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        auth: Mapping[str, Any] | None = None,
        reconnect: ReconnectPolicy | Mapping[str, Any] | bool | None = None,
        config: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        buffer_size: int | None = None,
        heartbeat: Mapping[str, Any] | None = None,
        publish_timeout: float | None = None,
        connect_timeout: float | None = None,
        queue_size: int | None = None,
        source: str | None = None,
        transport: str | None = None,
        encryption: Mapping[str, Any] | None = None,
    ) -> None:
        cfg = dict(config or {})

        def pick(name: str, value: Any, default: Any) -> Any:
            return value if value is not None else cfg.get(name, default)

        transport = pick("transport", transport, None)
        if transport not in (None, "websocket", "memory", "local", "auto"):
            raise ValueError(
                f"transport {transport!r} is not available in this SDK: connect to a router "
                "(which may itself use Redis) with transport 'websocket', or use 'memory' "
                "for a local router"
            )
        explicit = pick("url", url, None)
        if transport in ("memory", "local"):
            explicit = None
        elif explicit is None:
            explicit = os.environ.get(URL_ENV) or None
        self.url: str | None = _ws_url(explicit) if explicit else None
        self.token = token_from_auth(pick("auth", auth, None), pick("token", token, None))
        self.reconnect_policy = ReconnectPolicy.from_value(pick("reconnect", reconnect, None))
        self.batch_size = max(
            1,
            min(MAX_BATCH_EVENTS, int(pick("batch_size", batch_size, _config.DEFAULT_BATCH_SIZE))),
        )
        self.batch_timeout = parse_duration(
            pick("batch_timeout", batch_timeout, _config.DEFAULT_BATCH_TIMEOUT)
        )
        self.buffer_size = max(
            1, int(pick("buffer_size", buffer_size, _config.DEFAULT_BUFFER_SIZE))
        )
        beat = dict(pick("heartbeat", heartbeat, {}) or {})
        self.heartbeat_interval = parse_duration(
            beat.get("interval", _config.DEFAULT_HEARTBEAT_INTERVAL)
        )
        self.heartbeat_timeout = parse_duration(
            beat.get("timeout", _config.DEFAULT_HEARTBEAT_TIMEOUT)
        )
        self.publish_timeout = parse_duration(
            pick("publish_timeout", publish_timeout, _config.DEFAULT_PUBLISH_TIMEOUT)
        )
        self.connect_timeout = parse_duration(
            pick("connect_timeout", connect_timeout, _config.DEFAULT_CONNECT_TIMEOUT)
        )
        self.queue_size = max(1, int(pick("queue_size", queue_size, _config.DEFAULT_QUEUE_SIZE)))
        self.source: str | None = pick("source", source, None)
        enc = pick("encryption", encryption, None)
        #: Payload encryption (`encryption=`, docs/patterns.md); None when off.
        self.cipher: PayloadCipher | None = PayloadCipher.from_config(enc) if enc else None

        self._ids = 0
        self._calls: dict[int, _Call] = {}
        self._buffered = 0
        self._space = asyncio.Event()
        self._batch: list[str] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._subs: dict[int, Subscription] = {}
        self._sub_ids: dict[int, int] = {}  # id(subscription) -> client-side id
        self._by_server: dict[str, Subscription] = {}
        self._pending_subs: dict[int, Subscription] = {}
        self._orphans: list[dict[str, Any]] = []
        self._settles: collections.deque[str] = collections.deque(maxlen=100_000)
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._error_handlers: list[ErrorHandler] = []
        self._conn: _Conn | None = None
        self._connected = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: EventRouterError | None = None
        self._closed_event = asyncio.Event()
        self._local: LocalRouter | None = None
        #: Connections made so far (1 after the first, +1 per reconnect).
        self.connections = 0
        #: Why the last connection attempt failed or the connection was lost.
        self.last_error: str | None = None

    # --- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> EventRouterClient:
        try:
            await self.connect()
        except BaseException:
            await self.close(flush=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether connected with every subscription restored."""
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        """Whether the client is closed for good."""
        return self._closed is not None

    @property
    def local_router(self) -> LocalRouter | None:
        """The router this client started (local development), if any."""
        return self._local

    @property
    def buffered(self) -> int:
        """Events published but not confirmed yet (queued, buffered or in flight)."""
        return self._buffered

    async def connect(self) -> None:
        """Connects (starting a local router when there is no URL) and waits
        until every subscription registered so far is confirmed.

        Raises:
            ConnectionError: no connection within `connect_timeout`, or the
                reconnect policy gave up.
            AuthError: the router refused the credential.
            SubscriptionError: a subscription registered with a decorator
                before connecting was refused.
        """
        if self._closed is not None:
            raise self._closed
        registered = list(self._subs.values())
        if self._driver is None:
            if self.url is None:
                self._local = await LocalRouter.start()
                self.url = self._local.ws_url
            self._driver = asyncio.get_running_loop().create_task(self._run())
        await self.wait_connected(self.connect_timeout)
        for sub in registered:
            await sub.start()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Waits until connected with every subscription restored.

        Raises:
            ConnectionError: not connected within `timeout` seconds, or the
                client closed (the reason it closed is raised).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed is not None:
                raise self._closed
            if self._connected.is_set():
                return
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise ConnectionError(
                    f"not connected to {self.url} within {timeout}s"
                    + (f"; last: {self.last_error}" if self.last_error else ""),
                    code="connect_timeout",
                    retryable=True,
                )
            waits = [
                asyncio.ensure_future(self._connected.wait()),
                asyncio.ensure_future(self._closed_event.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        """Waits until every subscription made so far (decorators included)
        is confirmed by the router: events published from now on, by any
        client, reach them.

        Raises:
            SubscriptionError: one was refused (it is also given to the
                `on_error` handlers).
            TimeoutError: not all confirmed within `timeout` seconds.
        """
        subs = [s for s in self._subs.values() if s._confirmed is not None]
        waits = [asyncio.shield(s._confirmed) for s in subs if s._confirmed is not None]
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except builtins.TimeoutError:
            raise TimeoutError("subscriptions not confirmed in time", code="timeout") from None

    async def reconnect(self) -> None:
        """Reconnects now. A connected client replaces its connection
        (subscriptions are restored, unconfirmed publishes re-sent). A client
        that closed because reconnecting gave up starts over with a fresh
        attempt budget; its old subscriptions ended, so subscribe again.

        Raises:
            ConnectionError: as `connect`; also for a client closed by
                `close()`.
        """
        if self._closed is not None:
            if self._closed.code == "closed":
                raise self._closed
            self._closed = None
            self._closed_event.clear()
            self._driver = None
            self._closing = False
            await self.connect()
            return
        if self._driver is None:
            await self.connect()
            return
        if self._conn is not None:
            self._connected.clear()
            self._conn.ws.transport.abort()
        await self.wait_connected(self.connect_timeout)

    async def close(self, *, flush: bool = True) -> None:
        """Closes the client. With `flush` (the default) queued
        `publish_nowait` events are sent first and confirmations awaited up
        to `publish_timeout` while connected. Then calls still waiting fail
        with `ConnectionError` (code `closed`), every subscription ends,
        running handlers are cancelled (durable deliveries not acked go back
        to their groups), and a local router is stopped."""
        if self._closed is not None:
            return
        if flush and self._driver is not None and self._connected.is_set():
            try:
                await asyncio.wait_for(self.flush(), self.publish_timeout)
            except (builtins.TimeoutError, EventRouterError) as e:
                log.warning("close: unconfirmed publishes dropped: %s", e)
        self._closing = True
        for sub in list(self._subs.values()):
            await sub.unsubscribe()
        if self._conn is not None:
            # Acks, nacks and unsubscribes queued so far go out first.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.idle.wait(), 1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.ws.close(), 1.0)
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._driver
        self._finish(ConnectionError("the client is closed", code="closed", retryable=False))
        if self._local is not None:
            await self._local.stop()

    # --- publishing ---------------------------------------------------------

    def _event_json(
        self,
        type: str,
        payload: JSON,
        *,
        source: str | None = None,
        target: str | None = None,
        priority: Priority | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        key: str | None = None,
        ttl: int | None = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, JSON] | None = None,
        id: str | None = None,
        caused_by: Event | None = None,
        time: str | None = None,
    ) -> tuple[str, str]:
        problem = topic_problem(type)
        if problem is not None:
            raise PublishError(problem, code="invalid_topic", retryable=False)
        if self.cipher is not None:
            payload, headers = self.cipher.seal(type, payload, headers)
        # Built by hand around json.dumps of the values: a dict per event and
        # one dumps of it cost twice as much on the publish_nowait path. The
        # topic needs no escaping (checked above), a generated id neither.
        if id is None:
            id = new_event_id()
            parts = [f'{{"id":"{id}","type":"{type}","payload":', _dumps(payload, "payload")]
        else:
            parts = [
                f'{{"id":{_dumps(id, "id")},"type":"{type}","payload":',
                _dumps(payload, "payload"),
            ]
        if caused_by is not None:
            causation_id = causation_id or caused_by.id
            correlation_id = correlation_id or caused_by.correlation_id or caused_by.id
        src = source if source is not None else self.source
        if priority is not None:
            problem = priority_problem(priority)
            if problem is not None:
                raise PublishError(problem, code="invalid_priority", retryable=False)
        for name, value in (
            ("source", src),
            ("target", target),
            ("priority", priority),
            ("correlation_id", correlation_id),
            ("causation_id", causation_id),
            ("reply_to", reply_to),
            ("key", key),
            ("ttl", ttl),
            ("time", time),
            ("headers", dict(headers) if headers else None),
            ("metadata", dict(metadata) if metadata is not None else None),
        ):
            if value is not None:
                parts.append(f',"{name}":')
                parts.append(_dumps(value, name))
        parts.append("}")
        return id, "".join(parts)

    def _prepared_json(self, event: Event) -> tuple[str, str]:
        if not isinstance(event, Event):
            raise PublishError(
                f"expected an Event, got {type(event).__name__}",
                code="invalid_event",
                retryable=False,
            )
        return self._event_json(
            event.type,
            event.payload,
            source=event.source,
            target=event.target,
            priority=event.priority,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            reply_to=event.reply_to,
            key=event.key,
            ttl=event.ttl,
            headers=event.headers,
            metadata=event.metadata,
            id=event.id,
            time=event.time,
        )

    async def publish(
        self,
        type: str,
        payload: JSON = None,
        *,
        source: str | None = None,
        target: str | None = None,
        priority: Priority | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        key: str | None = None,
        ttl: int | None = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, JSON] | None = None,
        id: str | None = None,
        caused_by: Event | None = None,
    ) -> str:
        """Publishes one event and waits for the router to store it; returns
        its id. `caused_by` sets `causation_id` to that event's id and keeps
        its correlation id. While disconnected the event waits in the buffer.

        Raises:
            PublishError: the router (or the client, before sending) refused
                it — `code` says why, `retryable` whether to try again.
            BufferFullError: disconnected with a full buffer.
            TimeoutError: not confirmed within `publish_timeout` (an event
                already sent may still have been stored).
            AuthError: the principal may not publish on this topic.
            ConnectionError: the client is closed.
        """
        event_id, text = self._event_json(
            type,
            payload,
            source=source,
            target=target,
            priority=priority,
            correlation_id=correlation_id,
            causation_id=causation_id,
            reply_to=reply_to,
            key=key,
            ttl=ttl,
            headers=headers,
            metadata=metadata,
            id=id,
            caused_by=caused_by,
        )
        reply = await self._call("publish", text, 1)
        return str(reply.get("event_id", event_id))

    async def publish_event(self, event: Event) -> str:
        """Publishes a prepared `Event`; as `publish`."""
        _, text = self._prepared_json(event)
        reply = await self._call("publish", text, 1)
        return str(reply.get("event_id"))

    def publish_nowait(
        self,
        type: str,
        payload: JSON = None,
        *,
        source: str | None = None,
        target: str | None = None,
        priority: Priority | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        key: str | None = None,
        ttl: int | None = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, JSON] | None = None,
        id: str | None = None,
        caused_by: Event | None = None,
    ) -> str:
        """Queues an event without waiting and returns its id. Events are
        sent in batches of `batch_size`, or `batch_timeout` after the first
        of a batch, in order with other publishes; `flush()` waits for their
        confirmation and `close()` flushes. A rejection by the router is
        given to the `on_error` handlers (and logged).

        Raises:
            PublishError: invalid topic or priority (nothing was queued).
            BufferFullError: `buffer_size` events await confirmation.
            ConnectionError: the client is closed.
        """
        if self._closed is not None:
            raise self._closed
        event_id, text = self._event_json(
            type,
            payload,
            source=source,
            target=target,
            priority=priority,
            correlation_id=correlation_id,
            causation_id=causation_id,
            key=key,
            ttl=ttl,
            headers=headers,
            metadata=metadata,
            id=id,
            caused_by=caused_by,
        )
        if self._buffered >= self.buffer_size:
            raise BufferFullError(
                f"publish buffer is full ({self.buffer_size} events awaiting confirmation); "
                "retry later or await flush()",
                code="buffer_full",
            )
        self._buffered += 1
        self._batch.append(text)
        if len(self._batch) >= self.batch_size:
            self._send_batch()
        elif self._batch_timer is None:
            loop = asyncio.get_running_loop()
            self._batch_timer = loop.call_later(self.batch_timeout, self._send_batch)
        return event_id

    def _send_batch(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        if not self._batch:
            return
        events, self._batch = self._batch, []
        call = _Call(
            self._next_id(), "publish", ",".join(events), len(events), None, op="publish_batch"
        )
        self._calls[call.id] = call
        if self._conn is not None:
            self._conn.send(call.frame())

    async def publish_batch(
        self, events: Iterable[tuple[str, JSON]], *, atomic: bool = False
    ) -> list[str]:
        """Publishes `(type, payload)` pairs in order in one frame (or one
        per 10,000 events); returns their ids in input order. With `atomic`
        all are stored or none.

        Raises:
            As `publish`; an invalid event fails the whole batch.
        """
        texts = [self._event_json(t, p)[1] for t, p in events]
        return await self._batch_call(texts, atomic)

    async def publish_events(self, events: Iterable[Event], *, atomic: bool = False) -> list[str]:
        """Publishes prepared `Event`s in order (priority, key, ... per
        event); as `publish_batch`."""
        texts = [self._prepared_json(e)[1] for e in events]
        return await self._batch_call(texts, atomic)

    async def _batch_call(self, texts: list[str], atomic: bool) -> list[str]:
        if not texts:
            return []
        if atomic and len(texts) > MAX_BATCH_EVENTS:
            raise PublishError(
                f"an atomic batch holds at most {MAX_BATCH_EVENTS} events, got {len(texts)}",
                code="bad_request",
                retryable=False,
            )
        ids: list[str] = []
        for start in range(0, len(texts), MAX_BATCH_EVENTS):
            chunk = texts[start : start + MAX_BATCH_EVENTS]
            reply = await self._call(
                "publish", ",".join(chunk), len(chunk), op="publish_batch", atomic=atomic
            )
            ids.extend(str(i) for i in reply.get("event_ids", []))
        return ids

    def transaction(self) -> Transaction:
        """An async context manager collecting publishes that are stored all
        or nothing when the block ends normally (one atomic batch); an
        exception in the block publishes nothing."""
        return Transaction(self)

    async def flush(self) -> None:
        """Sends the pending `publish_nowait` batch and waits until every
        publish queued before this call is confirmed or rejected.

        Raises:
            ConnectionError: the client closed first.
        """
        self._send_batch()
        if self._closed is not None:
            raise self._closed
        upto = self._ids
        if not any(i <= upto for i in self._calls):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((upto, future))
        await future

    async def wait_for_room(self, events: int = 1) -> None:
        """Waits until `events` more fit in the publish buffer: the
        backpressure of a producer that uses `publish_nowait` in a loop
        (`flush()` would wait for the whole pipeline to empty).

        Raises:
            BufferFullError: `events` exceeds `buffer_size`.
            ConnectionError: the client closed first.
        """
        if events > self.buffer_size:
            raise BufferFullError(
                f"{events} events exceed the publish buffer of {self.buffer_size}",
                code="buffer_full",
            )
        self._send_batch()
        while self._buffered + events > self.buffer_size:
            if self._closed is not None:
                raise self._closed
            self._space.clear()
            waits = [
                asyncio.ensure_future(self._space.wait()),
                asyncio.ensure_future(self._closed_event.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def _call(
        self,
        kind: Context,
        body: str,
        events: int,
        *,
        op: str = "publish",
        atomic: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if self._closed is not None:
            raise self._closed
        if self._driver is None:
            await self.connect()
        # Queued publish_nowait events go first: publishes keep their order.
        self._send_batch()
        wait = self.publish_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        await self._take_room(events, deadline)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        call = _Call(
            self._next_id(),
            kind,
            body,
            events,
            future,
            op=op,
            atomic=atomic,
            deadline=deadline if op == "request" else None,
        )
        self._buffered += events
        self._calls[call.id] = call
        if self._conn is not None:
            self._conn.send(call.frame())
        try:
            return await asyncio.wait_for(
                asyncio.shield(future),
                max(0.001, deadline - time.monotonic()) + (0.5 if op == "request" else 0),
            )
        except builtins.TimeoutError:
            self._forget(call.id)
            raise TimeoutError(f"{op}: no reply within {wait}s", code="timeout") from None
        except asyncio.CancelledError:
            self._forget(call.id)
            raise

    async def _take_room(self, events: int, deadline: float) -> None:
        if events > self.buffer_size:
            raise BufferFullError(
                f"{events} events exceed the publish buffer of {self.buffer_size}",
                code="buffer_full",
            )
        while self._buffered + events > self.buffer_size:
            if not self._connected.is_set():
                raise BufferFullError(
                    f"disconnected and the publish buffer is full ({self.buffer_size} events)",
                    code="buffer_full",
                )
            self._space.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no room in the publish buffer in time", code="timeout")
            try:
                await asyncio.wait_for(self._space.wait(), left)
            except builtins.TimeoutError:
                raise TimeoutError(
                    "no room in the publish buffer in time", code="timeout"
                ) from None

    def _forget(self, call_id: int) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None:
            self._buffered -= call.events
            self._space.set()
            self._check_flushes()

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # --- subscribing --------------------------------------------------------

    def subscribe(
        self,
        topics: str | Iterable[str] = (),
        *,
        filter: Filter | None = None,
        group: str | None = None,
        handler: Handler | None = None,
        pattern: str | None = None,
        max_in_flight: int | None = None,
        concurrency: int = 1,
        nack_delay: float | None = None,
    ) -> Subscription:
        """A subscription to topic patterns (`task.*`, `agent.#`,
        `pattern:REGEX`) and/or a regex `pattern`, optionally narrowed by a
        `filter`. `await` it, or use it as `async with`; iterate it, or give
        a `handler` (sync or async) that runs on every event, at most
        `concurrency` at once.

        Without `group` it is live (at-most-once). With `group` it is
        durable: a handler's normal return acks, an exception nacks (the
        router redelivers with backoff, after `nack_delay` seconds when
        given, and dead-letters after the subscription's `maxAttempts`).
        Every handler exception also goes to the `on_error` handlers.
        """
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        return Subscription(
            self,
            topic_list,
            pattern=pattern,
            filter=filter,
            group=group,
            max_in_flight=max_in_flight,
            handler=handler,
            concurrency=concurrency,
            queue_size=self.queue_size,
            nack_delay=nack_delay,
        )

    def on(
        self,
        *topics: str,
        filter: Filter | None = None,
        group: str | None = None,
        max_in_flight: int | None = None,
        concurrency: int = 1,
    ) -> Callable[[H], H]:
        """Decorator: run the function on every event of `topics` (see
        `subscribe`). Before `connect()` the subscription opens with the
        connection (and `connect()` raises if it is refused); after, it opens
        at once and a refusal goes to the `on_error` handlers."""

        def register(fn: H) -> H:
            self._register(
                self.subscribe(
                    list(topics),
                    filter=filter,
                    group=group,
                    handler=fn,
                    max_in_flight=max_in_flight,
                    concurrency=concurrency,
                )
            )
            return fn

        return register

    def on_pattern(
        self, regex: str, *, filter: Filter | None = None, group: str | None = None
    ) -> Callable[[H], H]:
        """Decorator: as `on`, for topics matching the regular expression
        `regex` (Rust `regex` syntax, unanchored unless anchored)."""

        def register(fn: H) -> H:
            self._register(
                self.subscribe([], pattern=regex, filter=filter, group=group, handler=fn)
            )
            return fn

        return register

    def on_error(self, fn: E) -> E:
        """Decorator: `fn(error, event)` sees every handler failure (and
        rejected `publish_nowait` events or refused decorator subscriptions,
        with `event` None)."""
        self._error_handlers.append(fn)
        return fn

    def respond(
        self, *topics: str, group: str | None = None, filter: Filter | None = None
    ) -> Callable[[H], H]:
        """Decorator: answer requests on `topics`. The function's return
        value is the reply's payload; an exception becomes an error reply
        that the requester's `request` raises as `HandlerError`. Live by
        default (every responder gets every request); give `group` to share
        requests among responders."""

        def register(fn: H) -> H:
            async def answer(request: Event) -> None:
                await self._answer(fn, request)

            self._register(
                self.subscribe(
                    list(topics), filter=filter, group=group, handler=answer, concurrency=16
                )
            )
            return fn

        return register

    def _register(self, sub: Subscription) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            running = False
        else:
            running = self._driver is not None
        if running:
            sub._start_in_background()
        else:
            # Opened by connect().
            sub._registered = True
            self._subs[self._sub_key(sub)] = sub

    def _sub_key(self, sub: Subscription) -> int:
        key = self._sub_ids.get(id(sub))
        if key is None:
            key = self._next_id()
            self._sub_ids[id(sub)] = key
        return key

    async def _answer(self, fn: Callable[..., Any], request: Event) -> None:
        if not request.reply_to:
            log.debug("request %s has no reply_to; nothing to answer", request.id)
            return
        headers: dict[str, str] = {}
        payload: JSON = None
        try:
            result = fn(request)
            payload = await result if inspect.isawaitable(result) else result
        except Exception as e:
            headers[ERROR_HEADER] = str(e) or type(e).__name__
            headers[ERROR_TYPE_HEADER] = type(e).__name__
            await self._report_error(e, request)
        await self.publish(
            request.reply_to,
            payload,
            headers=headers,
            correlation_id=request.correlation_id or request.id,
            causation_id=request.id,
        )

    @overload
    def stream(
        self,
        *topics: str,
        filter: Filter | None = ...,
        group: str | None = ...,
        batch_size: None = ...,
        timeout: float | None = ...,
    ) -> AsyncGenerator[Event, None]: ...

    @overload
    def stream(
        self,
        *topics: str,
        filter: Filter | None = ...,
        group: str | None = ...,
        batch_size: int,
        timeout: float | None = ...,
    ) -> AsyncGenerator[list[Event], None]: ...

    def stream(
        self,
        *topics: str,
        filter: Filter | None = None,
        group: str | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Events of `topics` as an async iterator; with `batch_size`, lists
        of up to `batch_size` events, each yielded when full or `timeout`
        seconds after its first event. Durable (`group`) events are acked
        once the next item is asked for. Breaking out of the loop leaves the
        subscription open until the iterator is closed or collected
        (`contextlib.aclosing` closes it at once)."""
        sub = self.subscribe(list(topics), filter=filter, group=group)
        if batch_size is None:
            return _streams.events(sub)
        return _streams.batches(sub, max(1, batch_size), timeout)

    def window(
        self,
        *topics: str,
        size: float | str,
        slide: float | str | None = None,
        filter: Filter | None = None,
        lateness: float | str = 0.2,
        clock: str = "wall",
        idle: float | str | None = None,
        on_late: Callable[[Event], None] | None = None,
    ) -> AsyncGenerator[Window, None]:
        """Event-time windows over the live events of `topics`: tumbling
        (`slide` = `size`, the default) or sliding (`slide` < `size`;
        seconds or `"30s"`, `"1m"`). Each window is a list of its events,
        oldest first, with `start` and `end`; it is yielded once the
        watermark (the wall clock, or with `clock="event"` the newest event
        time, flushing after `idle` seconds, default `size`, without events)
        passes its end plus `lateness`. Events for windows already yielded
        are late: dropped, counted, and given to `on_late`. Empty windows
        are skipped. See docs/patterns.md."""
        if clock not in ("wall", "event"):
            raise ValueError("clock is 'wall' or 'event'")
        width = parse_duration(size)
        assigner = WindowAssigner(
            width,
            parse_duration(slide if slide is not None else size),
            parse_duration(lateness),
            on_late,
        )
        return _streams.windows(
            self.subscribe(list(topics), filter=filter),
            assigner,
            clock,
            parse_duration(idle) if idle is not None else width,
        )

    # --- patterns -----------------------------------------------------------

    def circuit_breaker(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        expected_exception: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> CircuitBreaker:
        """A circuit breaker to decorate a handler with (below `@client.on`):
        see docs/patterns.md."""
        return CircuitBreaker(failure_threshold, recovery_timeout, expected_exception)

    def saga(self, name: str, **options: Any) -> Callable[[type[S]], SagaDefinition[S]]:
        """Class decorator defining a saga: see `event_router.saga` and
        docs/patterns.md."""
        return define_saga(self, name, **options)

    def decrypt(self, event: Event) -> JSON:
        """The decrypted payload of `event` (with `encryption=` set).

        Raises:
            DecryptionError: wrong or unknown key, tampered or plain payload.
        """
        if self.cipher is None:
            raise DecryptionError("this client has no encryption keys", code="unknown_key")
        return self.cipher.open(event.type, event.payload, event.headers)

    # --- event streams ------------------------------------------------------

    def event_stream(self, name: str) -> EventStream:
        """A handle on the event stream `name` (`order-123`): `append`
        with optimistic concurrency, `read` by version, `subscribe` /
        `on_append` to follow it. See docs/patterns.md."""
        return EventStream(self, name)

    # --- request/response ---------------------------------------------------

    async def request(
        self,
        type: str,
        payload: JSON = None,
        timeout: float = 30.0,
        *,
        source: str | None = None,
        priority: Priority | None = None,
        headers: Mapping[str, str] | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> Event:
        """Publishes a request and waits up to `timeout` seconds for the
        first reply (from a `respond` handler, or any event published on its
        `reply_to` with its correlation id). The reply's `payload` is the
        responder's return value.

        Raises:
            TimeoutError: no reply in time.
            HandlerError: the responder's handler raised.
            PublishError, AuthError, ConnectionError: as `publish`.
        """
        if timeout <= 0:
            raise TimeoutError("request timeout must be positive", code="timeout")
        if timeout > 300:
            raise PublishError(
                "request timeout is at most 300 s", code="bad_request", retryable=False
            )
        _, text = self._event_json(
            type,
            payload,
            source=source,
            priority=priority,
            headers=headers,
            reply_to=reply_to,
            correlation_id=correlation_id,
        )
        reply = await self._call("request", text, 1, op="request", timeout=timeout)
        raw = reply.get("response")
        if not isinstance(raw, dict):
            raise EventRouterError("malformed response: no event", code="invalid_reply")
        response = Event.from_dict(raw)
        if ERROR_HEADER in response.headers:
            raise HandlerError(response.headers[ERROR_HEADER], code="handler_error")
        return response

    async def publish_and_wait(
        self,
        type: str,
        payload: JSON = None,
        *,
        wait_for: str | Iterable[str],
        timeout: float = 30.0,
        correlate: bool = True,
        filter: Filter | None = None,
        **publish: Any,
    ) -> Event:
        """Publishes an event and waits up to `timeout` seconds for the first
        event on `wait_for` (patterns). With `correlate` (the default) only
        an event that continues this one counts: its `correlation_id` equals
        this event's (its id when not given) or its `causation_id` is this
        event's id, as `publish(..., caused_by=event)` sets.

        Raises:
            TimeoutError: nothing came in time.
            PublishError, SubscriptionError, ConnectionError: as `publish`
                and `subscribe`.
        """
        event_id = publish.pop("id", None) or new_event_id()
        correlation = publish.pop("correlation_id", None) or event_id
        conditions: list[dict[str, Any]] = []
        if correlate:
            conditions.append(
                {"$or": [{"correlation_id": correlation}, {"causation_id": event_id}]}
            )
        if isinstance(filter, dict):
            conditions.append(filter)
        elif filter is not None:
            raise ValueError("publish_and_wait takes a filter document (a dict)")
        doc: dict[str, Any] | None = None
        if conditions:
            doc = conditions[0] if len(conditions) == 1 else {"$and": conditions}
        patterns = [wait_for] if isinstance(wait_for, str) else list(wait_for)
        async with self.subscribe(patterns, filter=doc) as sub:
            await self.publish(type, payload, id=event_id, correlation_id=correlation, **publish)
            return await sub.get(timeout)

    # --- errors -------------------------------------------------------------

    async def _report_error(self, error: BaseException, event: Event | None) -> None:
        if not self._error_handlers:
            if event is not None:
                log.warning("handler failed on %s (%s): %r", event.type, event.id, error)
            else:
                log.warning("%s", error)
            return
        for handler in list(self._error_handlers):
            try:
                result = handler(error, event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("an on_error handler failed")

    # --- the connection -----------------------------------------------------

    def _add_subscription(self, sub: Subscription) -> None:
        if self._closed is not None:
            sub._end(self._closed)
            return
        key = self._sub_key(sub)
        self._subs[key] = sub
        if self._conn is not None:
            self._send_subscribe(key, sub)

    def _remove_subscription(self, sub: Subscription) -> None:
        key = self._sub_ids.pop(id(sub), None)
        if key is None:
            return
        self._subs.pop(key, None)
        server_id = sub.server_id
        if server_id is not None and self._by_server.get(server_id) is sub:
            del self._by_server[server_id]
            if self._conn is not None:
                self._conn.send(json.dumps({"op": "unsubscribe", "subscription_id": server_id}))

    def _send_subscribe(self, key: int, sub: Subscription) -> None:
        assert self._conn is not None
        request = self._next_id()
        self._pending_subs[request] = sub
        self._conn.send(sub.frame(request))

    def _send_settle(self, frame: str) -> None:
        if self._conn is not None and self._connected.is_set():
            self._conn.send(frame)
        else:
            self._settles.append(frame)

    async def _run(self) -> None:
        failed = 0
        assert self.url is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        while not self._closing:
            try:
                ws = await ws_connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=self.connect_timeout,
                    ping_interval=None,
                    close_timeout=1.0,
                    compression=None,
                    max_size=None,
                    max_queue=None,
                    user_agent_header="event-router-python",
                )
            except asyncio.CancelledError:
                raise
            except websockets.InvalidStatus as e:
                status = e.response.status_code
                if status in (401, 403):
                    code = "unauthorized" if status == 401 else "forbidden"
                    self._finish(
                        AuthError(f"the router refused the connection: {_body(e)}", code=code)
                    )
                    return
                reason = f"HTTP {status} on the WebSocket upgrade"
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                failed = 0
                self.connections += 1
                reason = await self._serve(ws)
                if self._closing:
                    break
                self.last_error = reason
                log.warning("connection to %s lost (%s); reconnecting", self.url, reason)
                if not self.reconnect_policy.allows(0):
                    self._finish(
                        ConnectionError(
                            f"connection lost ({reason}) and reconnecting is disabled",
                            code="connection_lost",
                            retryable=False,
                        )
                    )
                    return
                continue
            failed += 1
            self.last_error = reason
            if not self.reconnect_policy.allows(failed):
                self._finish(
                    ConnectionError(
                        f"cannot connect to {self.url}: gave up after {failed} failed attempts; "
                        f"last: {reason}",
                        code="connection_failed",
                        retryable=False,
                    )
                )
                return
            await asyncio.sleep(self.reconnect_policy.delay(failed))

    async def _serve(self, ws: ClientConnection) -> str:
        conn = _Conn(ws)
        self._conn = conn
        writer = asyncio.get_running_loop().create_task(self._write_loop(conn))
        beat = asyncio.get_running_loop().create_task(self._heartbeat(conn))
        reason = "connection closed"
        try:
            self._restore()
            async for message in ws:
                conn.last_rx = time.monotonic()
                if isinstance(message, str):
                    self._on_frame(message)
        except websockets.ConnectionClosed as e:
            reason = f"connection closed ({e})"
        except OSError as e:
            reason = f"read failed: {e}"
        finally:
            self._conn = None
            self._connected.clear()
            for task in (writer, beat):
                task.cancel()
            for task in (writer, beat):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not self._closing:
                self._lost()
        if ws.close_code is not None and ws.close_code != 1000:
            reason = f"closed by the router ({ws.close_code}: {ws.close_reason})"
        return reason

    async def _write_loop(self, conn: _Conn) -> None:
        try:
            while True:
                while not conn.out:
                    conn.idle.set()
                    conn.wake.clear()
                    await conn.wake.wait()
                frames = conn.out
                conn.out = collections.deque()
                for frame in frames:
                    await conn.ws.send(frame)
        except websockets.ConnectionClosed:
            pass
        except OSError:
            conn.ws.transport.abort()

    async def _heartbeat(self, conn: _Conn) -> None:
        if self.heartbeat_interval <= 0:
            return
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            sent = time.monotonic()
            conn.send('{"op":"ping"}')
            await asyncio.sleep(self.heartbeat_timeout)
            if conn.last_rx < sent:
                log.warning("no reply to ping within %ss; reconnecting", self.heartbeat_timeout)
                conn.ws.transport.abort()
                return

    def _restore(self) -> None:
        """On a new connection: subscribe again, then send every unanswered
        call in order."""
        assert self._conn is not None
        self._pending_subs.clear()
        for key, sub in list(self._subs.items()):
            self._send_subscribe(key, sub)
        for call in self._calls.values():
            self._conn.send(call.frame())
        if not self._pending_subs:
            self._restored()

    def _restored(self) -> None:
        self._orphans.clear()
        if self._conn is not None:
            while self._settles:
                self._conn.send(self._settles.popleft())
        self._connected.set()
        self._space.set()

    def _lost(self) -> None:
        """The connection is gone: forget what belonged to it."""
        self._pending_subs.clear()
        self._by_server.clear()
        self._orphans.clear()
        for sub in self._subs.values():
            sub.server_id = None
            sub._discard_durable()
        self._space.set()

    def _on_frame(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            log.debug("ignoring a frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        op = frame.get("op")
        if op == "event":
            self._on_event(frame)
        elif op == "ok":
            self._on_reply(frame.get("id"), frame, None)
        elif op == "error":
            code = str(frame.get("code", "unknown"))
            message = str(frame.get("message", ""))
            if frame.get("id") is not None:
                self._on_reply(frame.get("id"), None, (code, message))
            else:
                self._on_unsolicited_error(frame.get("subscription_id"), code, message)
        elif op == "overflow":
            sub = self._by_server.get(str(frame.get("subscription_id")))
            dropped = frame.get("dropped", 0)
            if sub is not None and isinstance(dropped, int):
                sub._overflowed(dropped)
            log.warning(
                "subscription %s fell behind; %s dropped", frame.get("subscription_id"), dropped
            )

    def _on_event(self, frame: dict[str, Any]) -> None:
        server_id = frame.get("subscription_id")
        raw = frame.get("event")
        if not isinstance(server_id, str) or not isinstance(raw, dict):
            return
        sub = self._by_server.get(server_id)
        if sub is None:
            if self._pending_subs and len(self._orphans) < 4096:
                self._orphans.append(frame)
            return
        event = Event.from_dict(raw)
        if self.cipher is not None and is_encrypted(event.headers):
            try:
                event.payload = self.cipher.open(event.type, event.payload, event.headers)
            except DecryptionError as e:
                # Never handed on as garbage: reported, and a durable
                # delivery is left to time out into redelivery and the DLQ.
                asyncio.get_running_loop().create_task(self._report_error(e, event))
                return
        event.subscription_id = server_id
        delivery_id = str(frame.get("delivery_id", event.id))
        event.delivery_id = delivery_id
        attempt = frame.get("attempt", 1)
        event.attempt = attempt if isinstance(attempt, int) else 1
        sub._push(event, delivery_id)

    def _on_reply(
        self, raw_id: Any, fields: dict[str, Any] | None, error: tuple[str, str] | None
    ) -> None:
        try:
            request = int(raw_id)
        except (TypeError, ValueError):
            return
        call = self._calls.pop(request, None)
        if call is not None:
            self._buffered -= call.events
            self._space.set()
            if error is not None:
                exc = error_from_code(error[0], error[1], call.kind)
                if call.future is None:
                    asyncio.get_running_loop().create_task(self._report_error(exc, None))
                elif not call.future.done():
                    call.future.set_exception(exc)
            elif call.future is not None and not call.future.done():
                call.future.set_result(fields or {})
            self._check_flushes()
            return
        sub = self._pending_subs.pop(request, None)
        if sub is None:
            return
        if error is not None:
            exc = error_from_code(error[0], error[1], "subscribe")
            self._subs.pop(self._sub_ids.pop(id(sub), -1), None)
            if sub._confirmed is not None and not sub._confirmed.done():
                sub._end(exc)
            else:
                log.warning("subscription could not be restored: %s", exc)
                sub._end(exc)
                asyncio.get_running_loop().create_task(self._report_error(exc, None))
        else:
            server_id = str((fields or {}).get("subscription_id"))
            if self._sub_ids.get(id(sub)) is None:
                # Unsubscribed while the subscribe was on its way.
                if self._conn is not None:
                    self._conn.send(json.dumps({"op": "unsubscribe", "subscription_id": server_id}))
            else:
                self._by_server[server_id] = sub
                sub._subscribed(server_id)
                orphans, self._orphans = self._orphans, []
                for frame in orphans:
                    self._on_event(frame)
        if not self._pending_subs and not self._connected.is_set() and self._conn is not None:
            self._restored()

    def _on_unsolicited_error(self, server_id: Any, code: str, message: str) -> None:
        if not isinstance(server_id, str):
            log.debug("router error without a request id: %s: %s", code, message)
            return
        sub = self._by_server.pop(server_id, None)
        if sub is not None:
            self._subs.pop(self._sub_ids.pop(id(sub), -1), None)
            exc = error_from_code(code, message, "subscribe")
            log.warning("subscription %s ended by the router: %s", server_id, exc)
            sub._end(exc)

    def _check_flushes(self) -> None:
        if not self._flushes:
            return
        oldest = min(self._calls, default=None)
        waiting = []
        for upto, future in self._flushes:
            if oldest is None or oldest > upto:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((upto, future))
        self._flushes = waiting

    def _finish(self, end: EventRouterError) -> None:
        """The client is done: fail what waits, end every subscription."""
        if self._closed is not None:
            return
        self._closed = end
        self._closed_event.set()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        for call in self._calls.values():
            if call.future is not None and not call.future.done():
                call.future.set_exception(end)
                call.future.exception()
            elif call.future is None:
                log.warning(
                    "a publish_nowait batch of %d events was not sent: %s", call.events, end
                )
        self._calls.clear()
        self._buffered = 0
        for _, future in self._flushes:
            if not future.done():
                future.set_exception(end)
                future.exception()
        self._flushes.clear()
        stream_error = None if end.code == "closed" else end
        for sub in list(self._subs.values()):
            sub._end(stream_error)
        self._subs.clear()


def _fast_encoder() -> Callable[[Any], str] | None:
    """The C encoder of `json`, made once. `JSONEncoder.encode` builds it
    (and a Python closure) on every call, which was a third of the cost of
    a `publish_nowait`. The constructor is private to `json`, so it is
    checked against `JSONEncoder` and not used when it differs."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None

    def default(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    try:
        encode = make(
            None, default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
        sample = {"a": [1, 2.5, "é\n", None, True], "b": {"c": -1}}
        if "".join(encode(sample, 0)) != _ENCODER.encode(sample):
            return None
    except Exception:
        return None
    return lambda value: "".join(encode(value, 0))


_ENCODE = _fast_encoder() or _ENCODER.encode


def _dumps(value: Any, what: str) -> str:
    try:
        return _ENCODE(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise PublishError(
            f"the {what} is not JSON: {e}", code="invalid_event", retryable=False
        ) from e


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"the URL must be ws://, wss://, http:// or https://, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _body(e: websockets.InvalidStatus) -> str:
    body = e.response.body or b""
    try:
        data = json.loads(body)
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200] or f"HTTP {e.response.status_code}"
