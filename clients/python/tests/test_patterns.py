"""Sagas, the circuit breaker and payload encryption against real routers
(memory and Redis), and windows against a reference computation."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import pathlib
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import PACKAGE, RedisServer, Router, eventually
from event_router import Event, EventRouterClient
from event_router._breaker import CircuitBreaker, CircuitOpenError
from event_router._crypto import DecryptionError, generate_key
from event_router._windows import Window, WindowAssigner
from event_router.saga import step


def order_saga(client: EventRouterClient, log: list[str], **options: Any) -> Any:
    @client.saga("process_order", **options)
    class ProcessOrderSaga:
        data: dict[str, Any]

        @step("order.created", start=True)
        async def start(self, event: Event) -> None:
            assert isinstance(event.payload, dict)
            self.data["order_id"] = event.payload["id"]
            log.append("reserve")
            await self.publish("inventory.reserve", {"order_id": event.payload["id"]})  # type: ignore[attr-defined]

        @start.compensation
        async def release_inventory(self) -> None:
            log.append("release")

        @step("inventory.reserved")
        async def inventory_reserved(self, event: Event) -> None:
            log.append("charge")

        @inventory_reserved.compensation
        async def refund(self) -> None:
            log.append("refund")

        @step("payment.completed")
        async def payment_completed(self, event: Event) -> None:
            log.append("ship")
            self.complete()  # type: ignore[attr-defined]

        @step("inventory.failed", "payment.failed")
        async def handle_failure(self, event: Event) -> None:
            self.compensate()  # type: ignore[attr-defined]

    return ProcessOrderSaga


async def test_a_saga_runs_its_steps_and_completes_with_one_correlation_id(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        log: list[str] = []
        saga = order_saga(client, log)
        seen: list[Event] = []
        await client.subscribe("inventory.reserve", handler=seen.append)
        await saga.start()
        await client.publish("order.created", {"id": 7}, correlation_id="order-7")
        await eventually(lambda: log == ["reserve"])
        await client.publish("inventory.reserved", {}, correlation_id="order-7")
        await client.publish("payment.completed", {}, correlation_id="order-7")
        state = await saga.wait("order-7")
        assert (state.status, log) == ("completed", ["reserve", "charge", "ship"])
        assert state.data == {"order_id": 7}
        await eventually(lambda: len(seen) == 1)
        assert seen[0].correlation_id == "order-7"
        history = await saga.stream("order-7").read_all()
        assert [e.type for e in history] == [
            "saga.started",
            "saga.step",
            "saga.step",
            "saga.step",
            "saga.completed",
        ]
        assert {e.event.correlation_id for e in history} == {"order-7"}
        await saga.stop()


async def test_a_failing_step_runs_the_compensations_in_reverse(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        log: list[str] = []
        saga = order_saga(client, log)
        await saga.start()
        await client.publish("order.created", {"id": 8}, correlation_id="order-8")
        await client.publish("inventory.reserved", {}, correlation_id="order-8")
        await eventually(lambda: log == ["reserve", "charge"])
        await client.publish("payment.failed", {"error": "card"}, correlation_id="order-8")
        state = await saga.wait("order-8")
        assert state.status == "compensated"
        assert log == ["reserve", "charge", "refund", "release"]
        await saga.stop()


async def test_a_saga_times_out_between_steps_and_compensates(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        log: list[str] = []
        saga = order_saga(client, log, step_timeout=0.3)
        await saga.start()
        await client.publish("order.created", {"id": 9}, correlation_id="order-9")
        state = await saga.wait("order-9")
        assert (state.status, log) == ("compensated", ["reserve", "release"])
        await saga.stop()


async def test_with_redis_a_saga_interrupted_midway_resumes_in_a_new_agent_and_completes(
    redis: RedisServer, start_router: Callable[..., Router]
) -> None:
    router = start_router("--redis", redis.url)
    log: list[str] = []
    first = EventRouterClient(router.ws_url)
    await first.connect()
    saga = order_saga(first, log)
    await saga.start()
    await first.publish("order.created", {"id": 10}, correlation_id="order-10")
    await eventually(lambda: log == ["reserve"])
    # The agent goes away mid-saga; the router is restarted too.
    await saga.stop()
    await first.close(flush=False)
    router.kill()
    router.restart()
    async with EventRouterClient(router.ws_url) as publisher:
        await publisher.publish("inventory.reserved", {}, correlation_id="order-10")
        async with EventRouterClient(router.ws_url) as second:
            resumed = order_saga(second, log)
            await resumed.start()
            assert resumed.sagas["order-10"].steps == ["start"]
            await publisher.publish("payment.completed", {}, correlation_id="order-10")
            state = await resumed.wait("order-10")
            assert state.status == "completed"
            assert log == ["reserve", "charge", "ship"]
            assert state.data == {"order_id": 10}
            await resumed.stop()


async def test_with_redis_a_saga_agent_process_killed_after_step_one_resumes_elsewhere(
    redis: RedisServer, start_router: Callable[..., Router], tmp_path: pathlib.Path
) -> None:
    """The saga's agent is a separate process, SIGKILLed once step 1 is
    stored and before step 2's event exists; this test then resumes the
    saga as a second agent. Step 1 ran once (in the killed process), steps
    2 and 3 once each here, no compensation anywhere, and the saga's stream
    holds each step once."""
    router = start_router("--redis", redis.url)
    killed_log = tmp_path / "killed-agent.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE / "python")
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PACKAGE / "tests" / "saga_agent.py"),
        router.ws_url,
        str(killed_log),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert agent.stdout is not None
        ready = await asyncio.wait_for(agent.stdout.readline(), 20)
        assert ready == b"ready\n", ready
        async with EventRouterClient(router.ws_url) as publisher:
            history = order_saga(publisher, []).stream("order-11")
            await publisher.publish("order.created", {"id": 11}, correlation_id="order-11")

            async def stored_steps() -> list[str]:
                entries = await history.read_all()
                return [
                    str(e.payload.get("step"))
                    for e in entries
                    if e.type == "saga.step" and isinstance(e.payload, dict)
                ]

            deadline = time.monotonic() + 10
            while await stored_steps() != ["start"]:
                assert time.monotonic() < deadline, "step 1 was not stored in time"
                await asyncio.sleep(0.02)
            agent.kill()
            assert await asyncio.wait_for(agent.wait(), 10) == -signal.SIGKILL
            assert killed_log.read_text().splitlines() == ["reserve"]

            await publisher.publish("inventory.reserved", {}, correlation_id="order-11")
            await publisher.publish("payment.completed", {}, correlation_id="order-11")
            log: list[str] = []
            async with EventRouterClient(router.ws_url) as second:
                resumed = order_saga(second, log)
                await resumed.start()
                assert resumed.sagas["order-11"].steps == ["start"]
                state = await resumed.wait("order-11")
                assert state.status == "completed"
                assert state.data == {"order_id": 11}
                # Redeliveries of the events the killed agent held must not
                # run anything again.
                await asyncio.sleep(0.5)
                assert log == ["charge", "ship"]
                await resumed.stop()
            assert killed_log.read_text().splitlines() == ["reserve"]
            assert await stored_steps() == ["start", "inventory_reserved", "payment_completed"]
            types = [e.type for e in await history.read_all()]
            assert types == [
                "saga.started",
                "saga.step",
                "saga.step",
                "saga.step",
                "saga.completed",
            ]
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


async def test_circuit_breaker_opens_fails_fast_probes_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, 10.0, ValueError, clock=lambda: now[0])
    calls = []

    @breaker
    async def api(ok: bool) -> str:
        calls.append(ok)
        if not ok:
            raise ValueError("down")
        return "up"

    for _ in range(3):
        with pytest.raises(ValueError, match="down"):
            await api(False)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as refused:
        await api(True)
    assert refused.value.retryable and refused.value.retry_after == 10.0
    assert len(calls) == 3, "an open breaker does not call through"
    now[0] = 10.0
    state: str = breaker.state
    assert state == "half_open"
    with pytest.raises(ValueError, match="down"):
        await api(False)
    assert breaker.state == "open", "a failed probe opens it again"
    now[0] = 20.0
    assert await api(True) == "up"
    assert (breaker.state, breaker.failures) == ("closed", 0)
    with pytest.raises(KeyError):
        await breaker.call(_raise_key_error)
    assert breaker.failures == 0, "unexpected exceptions are not counted"


async def _raise_key_error() -> None:
    raise KeyError("x")


async def test_a_breaker_on_a_durable_handler_holds_events_until_the_dependency_recovers(
    router: Router,
) -> None:
    healthy = asyncio.Event()
    done: list[int] = []
    async with EventRouterClient(router.ws_url) as client:
        breaker = client.circuit_breaker(failure_threshold=2, recovery_timeout=0.3)
        tries = [0]

        @client.on("external.api.call", group="api-callers")
        @breaker
        async def call_external_api(event: Event) -> None:
            tries[0] += 1
            if not healthy.is_set():
                raise ConnectionError("api down")
            assert isinstance(event.payload, int)
            done.append(event.payload)

        await client.wait_subscribed(10)
        for n in range(3):
            await client.publish("external.api.call", n)
        await eventually(lambda: breaker.state == "open", what="breaker opens")
        opened_tries = tries[0]
        await asyncio.sleep(0.1)
        assert tries[0] == opened_tries, "no calls reach the dependency while open"
        healthy.set()
        await eventually(lambda: sorted(done) == [0, 1, 2], timeout=30, what="flow resumes")
        assert breaker.state == "closed"


async def test_encrypted_payloads_round_trip_route_on_the_envelope_and_wrong_keys_fail(
    router: Router,
) -> None:
    key = generate_key()
    enc = {"enabled": True, "algorithm": "AES-256-GCM", "key": key, "key_id": "k1"}
    async with (
        EventRouterClient(router.ws_url, encryption=enc) as alice,
        EventRouterClient(router.ws_url, encryption=enc) as bob,
        EventRouterClient(router.ws_url) as router_view,
        EventRouterClient(
            router.ws_url, encryption={"key": os.urandom(32), "key_id": "k1"}
        ) as mallory,
    ):
        got: list[Event] = []
        raw: list[Event] = []
        errors: list[BaseException] = []
        mallory_got: list[Event] = []
        await bob.subscribe("sensitive", filter={"priority": {"$gte": 7}}, handler=got.append)
        await router_view.subscribe("sensitive", handler=raw.append)
        await mallory.subscribe("sensitive", handler=mallory_got.append)
        mallory.on_error(lambda e, ev: errors.append(e))
        unmatched: list[Event] = []
        await router_view.subscribe(
            "sensitive", filter={"payload.ssn": {"$exists": True}}, handler=unmatched.append
        )
        await alice.publish("sensitive", {"ssn": "123-45-6789"}, priority="high")
        await eventually(lambda: len(got) == 1 and len(raw) == 1 and len(errors) == 1)
        assert got[0].payload == {"ssn": "123-45-6789"}
        assert "123-45-6789" not in str(raw[0].payload)
        assert raw[0].headers["encryption"] == "aes-256-gcm"
        assert raw[0].headers["encryption-key-id"] == "k1"
        assert isinstance(errors[0], DecryptionError)
        assert errors[0].code == "decryption_failed"
        assert mallory_got == [] and unmatched == []
        with pytest.raises(DecryptionError):
            mallory.decrypt(raw[0])
        assert bob.decrypt(raw[0]) == {"ssn": "123-45-6789"}


def reference_windows(
    times: list[float], size: float, slide: float, origin: float | None = None
) -> list[tuple[float, list[int]]]:
    """Brute force: every window [origin + k*slide, +size) that holds an
    event (origin: the first event's time), with the indexes of its events
    by time."""
    origin = times[0] if origin is None else origin
    out = []
    k = math.floor((min(times) - origin - size) / slide)
    while origin + k * slide <= max(times):
        start = origin + k * slide
        inside = sorted(
            (i for i, t in enumerate(times) if start <= t < start + size),
            key=lambda i: (times[i], i),
        )
        if inside:
            out.append((start, inside))
        k += 1
    return out


@pytest.mark.parametrize(("size", "slide"), [(10.0, 10.0), (10.0, 2.5), (7.0, 3.0)])
def test_windows_match_a_reference_computation(size: float, slide: float) -> None:
    rng = random.Random(f"{size}/{slide}")
    times = [1_700_000_000.0 + rng.uniform(0, 100) for _ in range(300)]
    times.sort()
    # Shuffle within 1 s so events arrive a little out of order.
    arrival = sorted(range(len(times)), key=lambda i: times[i] + rng.uniform(0, 1))
    assigner = WindowAssigner(size, slide, lateness=2.0)
    emitted: list[Window] = []
    for i in arrival:
        assigner.add(times[i], Event("m.x", i))
        emitted.extend(assigner.advance(assigner.newest or 0.0))
    emitted.extend(assigner.flush())
    assert assigner.late == 0
    got = [(w.start, [e.payload for e in w]) for w in emitted]
    assert got == reference_windows(times, size, slide, origin=times[arrival[0]])


def test_late_events_are_dropped_counted_and_reported() -> None:
    late: list[Event] = []
    assigner = WindowAssigner(10.0, 10.0, lateness=0.0, on_late=late.append)
    assigner.add(100.0, Event("m.x", "a"))
    assigner.add(105.0, Event("m.x", "b"))
    first = assigner.advance(111.0)
    assert [(w.start, [e.payload for e in w]) for w in first] == [(100.0, ["a", "b"])]
    assigner.add(109.0, Event("m.x", "late"))
    assigner.add(112.0, Event("m.x", "c"))
    assert (assigner.late, [e.payload for e in late]) == (1, ["late"])
    assert [[e.payload for e in w] for w in assigner.flush()] == [["c"]]


async def test_event_time_windows_over_the_router_match_the_reference(router: Router) -> None:
    base = 1_700_000_000.0
    offsets = [0.0, 1.0, 2.5, 4.0, 5.5, 6.0, 9.9, 10.0, 14.0, 19.0]
    async with EventRouterClient(router.ws_url) as client:
        got: list[tuple[float, list[int]]] = []

        async def collect() -> None:
            it = client.window("metrics.*", size=5, slide=2.5, clock="event", idle=0.5)
            async with contextlib.aclosing(it) as windows:
                async for w in windows:
                    got.append((w.start, [e.payload for e in w]))

        task = asyncio.create_task(collect())
        await eventually(lambda: any(s.server_id for s in client._subs.values()))
        for n, off in enumerate(offsets):
            stamp = datetime.datetime.fromtimestamp(base + off, datetime.UTC).isoformat()
            await client.publish_event(Event("metrics.cpu", n, time=stamp))
        want = reference_windows([base + o for o in offsets], 5.0, 2.5)
        await eventually(lambda: len(got) >= len(want), what="all windows")
        task.cancel()
        assert got == want
