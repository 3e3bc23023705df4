"""Sagas: long-running, multi-step processes with compensation, whose
state lives in event streams so that a saga survives its agent's restart.

```python
from event_router.saga import step

@client.saga("process_order", step_timeout=60)
class ProcessOrderSaga:
    @step("order.created", start=True)
    async def start(self, event):
        self.data["order_id"] = event.payload["id"]
        await self.publish("inventory.reserve", {"order_id": event.payload["id"]})

    @start.compensation
    async def release_inventory(self):
        await self.publish("inventory.release", {"order_id": self.data["order_id"]})

    @step("payment.completed")
    async def payment_completed(self, event):
        await self.publish("shipping.create", {"order_id": self.data["order_id"]})
        self.complete()

    @step("inventory.failed", "payment.failed")
    async def handle_failure(self, event):
        self.compensate()

await ProcessOrderSaga.start()
```

- **Identity.** A `start=True` step begins a saga whose id is the event's
  `correlation_id` (or its id). Every event the saga publishes with
  `self.publish` carries that id as `correlation_id`, and every later
  event is routed to the saga with that `correlation_id`.
- **State.** Each saga appends its history to the event stream
  `saga.<name>.<id>` (started, each step with `self.data` after it,
  compensations, the end), with `expected_version`, so two agents never
  both advance one saga; the stream `saga.<name>` lists started and ended
  sagas. `start()` reloads every unfinished saga and carries on: waiting
  for its next event (the saga's durable subscription kept the events that
  came meanwhile), or finishing an interrupted compensation.
- **Compensation.** A step's `compensation` is registered once the step
  succeeded. `compensate()` (or a step that raises, or a timeout) runs
  the registered compensations in reverse order, each once, then ends the
  saga as `compensated`. `complete()` ends it as `completed`; the
  compensations are then forgotten.
- **Timeouts.** `step(..., timeout=s)` bounds a step's handler;
  `step_timeout` (saga-wide) bounds the wait for the next step once one
  ran. Either running out compensates. Deadlines are stored, so they hold
  across restarts.
- **Delivery.** Events reach sagas through one durable group
  (`saga.<name>`): at least once. A redelivered event that a saga already
  handled (same event id) is ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._event import JSON, Event
from ._event_streams import EventStream, VersionConflictError

if TYPE_CHECKING:
    from ._client import EventRouterClient
    from ._subscription import Subscription

log = logging.getLogger("event_router.saga")

S = TypeVar("S")
StepFn = Callable[[Any, Event], Awaitable[None]]
CompensationFn = Callable[[Any], Awaitable[None]]

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How often deadlines (`step_timeout`) are checked.
TICK = 0.05


class Step:
    """A saga step: the handler of `topics`, with an optional compensation."""

    def __init__(
        self, fn: StepFn, topics: tuple[str, ...], start: bool, timeout: float | None
    ) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.topics = topics
        self.start = start
        self.timeout = timeout
        self.compensate_fn: CompensationFn | None = None

    def compensation(self, fn: CompensationFn) -> CompensationFn:
        """Decorator: what undoes this step (run by `compensate()`)."""
        self.compensate_fn = fn
        return fn


def step(
    *topics: str, start: bool = False, timeout: float | None = None
) -> Callable[[StepFn], Step]:
    """Decorator of a saga method run on events of `topics`; `start=True`
    lets the event begin a new saga; `timeout` bounds the handler."""
    if not topics:
        raise ValueError("a step needs at least one topic")

    def wrap(fn: StepFn) -> Step:
        return Step(fn, topics, start, timeout)

    return wrap


@dataclass
class SagaState:
    """What a saga's event stream says so far."""

    id: str
    data: dict[str, JSON] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    handled: set[str] = field(default_factory=set)
    compensations: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    status: str = "running"  # running | compensating | completed | compensated
    deadline: float | None = None  # wall clock (time.time())
    version: int = 0


class SagaContext:
    """What a step's `self` offers beyond the user's class: `id`, `data`
    (JSON, persisted after each step), `publish`, `complete`, `compensate`."""

    id: str
    data: dict[str, JSON]
    _client: EventRouterClient
    _end: str | None

    async def publish(self, type: str, payload: JSON = None, **options: Any) -> str:
        """Publishes with this saga's id as `correlation_id`."""
        options.setdefault("correlation_id", self.id)
        return await self._client.publish(type, payload, **options)

    def complete(self) -> None:
        """Ends the saga as completed once this step returns."""
        self._end = "completed"

    def compensate(self) -> None:
        """Runs the compensations (newest first) once this step returns."""
        self._end = "compensating"


class SagaDefinition(Generic[S]):
    """A saga class bound to a client; `start()` runs it."""

    def __init__(
        self,
        client: EventRouterClient,
        name: str,
        cls: type[S],
        *,
        step_timeout: float | None = None,
        group: str | None = None,
    ) -> None:
        if not _SEGMENT.match(name):
            raise ValueError("a saga name is 1-64 characters of [A-Za-z0-9_-]")
        self.client = client
        self.name = name
        self.cls: type[Any] = type(cls.__name__, (cls, SagaContext), {})
        self.step_timeout = step_timeout
        self.group = group or f"saga.{name}"
        self.steps: dict[str, Step] = {}
        for attr in dir(cls):
            value = getattr(cls, attr, None)
            if isinstance(value, Step):
                self.steps[value.name] = value
        if not any(s.start for s in self.steps.values()):
            raise ValueError(f"saga {name!r} has no step with start=True")
        #: Sagas in memory by id (running and finished in this process).
        self.sagas: dict[str, SagaState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sub: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.index = EventStream(client, f"saga.{name}")

    def stream(self, saga_id: str) -> EventStream:
        """The event stream holding one saga's state."""
        return EventStream(self.client, f"saga.{self.name}.{_segment(saga_id)}")

    async def start(self) -> None:
        """Reloads unfinished sagas (finishing interrupted compensations),
        then subscribes to the steps' topics."""
        ended: set[str] = set()
        started: list[str] = []
        for entry in await self.index.read_all():
            payload = entry.payload if isinstance(entry.payload, dict) else {}
            sid = str(payload.get("saga_id", ""))
            (ended.add if entry.type == "saga.ended" else started.append)(sid)
        for sid in started:
            if sid in ended or sid in self.sagas:
                continue
            state = await self._load(sid)
            self.sagas[sid] = state
            if state.status == "compensating":
                await self._run_compensations(state)
        topics = sorted({t for s in self.steps.values() for t in s.topics})
        self._sub = self.client.subscribe(topics, group=self.group, handler=self._dispatch)
        await self._sub
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        """Stops receiving events; state stays in the streams."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _load(self, sid: str) -> SagaState:
        state = SagaState(sid)
        for entry in await self.stream(sid).read_all():
            p = entry.payload if isinstance(entry.payload, dict) else {}
            state.version = entry.version
            if entry.type == "saga.step":
                state.steps.append(str(p.get("step")))
                state.handled.add(str(p.get("event_id")))
                state.data = dict(p.get("data") or {})
                state.compensations = [str(c) for c in p.get("compensations") or []]
                deadline = p.get("deadline")
                state.deadline = float(deadline) if isinstance(deadline, int | float) else None
            elif entry.type == "saga.compensating":
                state.status = "compensating"
            elif entry.type == "saga.compensation_done":
                state.compensated.append(str(p.get("step")))
            elif entry.type in ("saga.completed", "saga.compensated"):
                state.status = entry.type.removeprefix("saga.")
        return state

    async def _append(self, state: SagaState, type: str, payload: JSON) -> None:
        state.version = await self.stream(state.id).append(
            type, payload, expected_version=state.version, correlation_id=state.id
        )

    async def _dispatch(self, event: Event) -> None:
        sid = event.correlation_id or event.id
        if sid is None:
            return
        try:
            await self._dispatch_to(sid, event)
        except VersionConflictError:
            # Another agent advanced this saga: forget the stale copy; the
            # nacked event comes back and meets the reloaded state.
            self.sagas.pop(sid, None)
            raise

    async def _dispatch_to(self, sid: str, event: Event) -> None:
        async with self._locks.setdefault(sid, asyncio.Lock()):
            state = self.sagas.get(sid)
            if state is None:
                state = await self._load(sid)
                if state.version > 0:
                    self.sagas[sid] = state
            step_ = self._step_for(event.type, new=state.version == 0)
            if step_ is None or state.status != "running" or event.id in state.handled:
                return
            if state.version == 0:
                await self.index.append("saga.started", {"saga_id": sid})
                await self._append(state, "saga.started", {"saga_id": sid})
                self.sagas[sid] = state
            await self._run_step(state, step_, event)

    def _step_for(self, topic: str, *, new: bool) -> Step | None:
        """The step for `topic`: a start step for a new saga, any other for
        a running one."""
        for s in self.steps.values():
            if s.start == new and any(topic_matches(p, topic) for p in s.topics):
                return s
        return None

    def _instance(self, state: SagaState) -> Any:
        instance: Any = object.__new__(self.cls)
        instance.id = state.id
        instance.data = state.data
        instance._client = self.client
        instance._end = None
        return instance

    async def _run_step(self, state: SagaState, step_: Step, event: Event) -> None:
        instance = self._instance(state)
        try:
            await asyncio.wait_for(step_.fn(instance, event), step_.timeout)
        except Exception as e:
            log.warning("saga %s/%s: step %s failed: %r", self.name, state.id, step_.name, e)
            await self._start_compensation(state)
            return
        if step_.compensate_fn is not None:
            state.compensations.append(step_.name)
        state.steps.append(step_.name)
        state.handled.add(str(event.id))
        state.data = instance.data
        state.deadline = time.time() + self.step_timeout if self.step_timeout is not None else None
        await self._append(
            state,
            "saga.step",
            {
                "step": step_.name,
                "event_id": event.id,
                "data": state.data,
                "compensations": state.compensations,
                "deadline": state.deadline,
            },
        )
        if instance._end == "completed":
            await self._finish(state, "completed")
        elif instance._end == "compensating":
            await self._start_compensation(state)

    async def _start_compensation(self, state: SagaState) -> None:
        state.status = "compensating"
        await self._append(state, "saga.compensating", {"compensations": state.compensations})
        await self._run_compensations(state)

    async def _run_compensations(self, state: SagaState) -> None:
        instance = self._instance(state)
        for name in reversed(state.compensations):
            if name in state.compensated:
                continue
            fn = self.steps[name].compensate_fn if name in self.steps else None
            if fn is not None:
                await fn(instance)
            state.compensated.append(name)
            await self._append(state, "saga.compensation_done", {"step": name})
        await self._finish(state, "compensated")

    async def _finish(self, state: SagaState, status: str) -> None:
        state.status = status
        state.deadline = None
        await self._append(state, f"saga.{status}", {"data": state.data})
        await self.index.append("saga.ended", {"saga_id": state.id, "status": status})

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.time()
            for sid, state in list(self.sagas.items()):
                if (
                    state.status == "running"
                    and state.deadline is not None
                    and now > state.deadline
                ):
                    async with self._locks.setdefault(sid, asyncio.Lock()):
                        if state.status == "running":
                            log.warning("saga %s/%s timed out", self.name, sid)
                            await self._start_compensation(state)

    async def wait(self, saga_id: str, *statuses: str, timeout: float = 10.0) -> SagaState:
        """Waits until the saga reaches one of `statuses` (default: ended)."""
        want = statuses or ("completed", "compensated")
        deadline = time.monotonic() + timeout
        while True:
            state = self.sagas.get(saga_id)
            if state is not None and state.status in want:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"saga {saga_id} is not {want} after {timeout}s")
            await asyncio.sleep(TICK)


def topic_matches(pattern: str, topic: str) -> bool:
    """Router pattern semantics: `*` is one segment, `#` zero or more."""

    def match(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == "#":
            return any(match(p[1:], t[i:]) for i in range(len(t) + 1))
        return bool(t) and (p[0] in ("*", t[0])) and match(p[1:], t[1:])

    return match(pattern.split("."), topic.split("."))


def _segment(saga_id: str) -> str:
    if _SEGMENT.match(saga_id):
        return saga_id
    return hashlib.sha256(saga_id.encode()).hexdigest()[:32]


def define_saga(
    client: EventRouterClient, name: str, **options: Any
) -> Callable[[type[S]], SagaDefinition[S]]:
    """See `EventRouterClient.saga`."""

    def wrap(cls: type[S]) -> SagaDefinition[S]:
        return SagaDefinition(client, name, cls, **options)

    return wrap
