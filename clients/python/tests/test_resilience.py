"""Resilience against a real router process that is killed (SIGKILL) and
started again on the same port under connected clients, frozen (SIGSTOP)
so that only heartbeats can tell, or gone for good.

The in-memory broker forgets everything when its process dies, so the
memory cases show what survives in the client: subscriptions restored, and
publishes buffered while the router is down delivered once and in order.
Durable in-flight deliveries are shown redelivered where the state holding
them survives the router: in Redis (`serve --redis` on a real
`redis-server`).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RedisServer, Router, eventually
from event_router import (
    BufferFullError,
    ConnectionError,
    Event,
    EventRouterClient,
    ManagementClient,
)

FAST = {"enabled": True, "initial_delay": 0.05, "max_delay": 0.3}


async def test_subscriptions_are_restored_and_offline_publishes_arrive_once_in_order(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url, reconnect=FAST) as client:
        seen: list[Event] = []
        await client.subscribe("buf.*", handler=seen.append)
        await client.publish("buf.before", -1)
        await eventually(lambda: len(seen) == 1)

        router.kill()
        await eventually(lambda: not client.connected, what="the loss noticed")
        ids = [client.publish_nowait("buf.x", n) for n in range(50)]
        waiting = [asyncio.ensure_future(client.publish("buf.y", 50 + n)) for n in range(5)]
        await asyncio.sleep(0)  # the publish tasks run up to their wait: queued in order
        ids += [client.publish_nowait("buf.x", 55 + n) for n in range(5)]
        await asyncio.sleep(0.3)
        assert client.buffered == 60
        assert not any(w.done() for w in waiting), "publishes wait while the router is down"

        await asyncio.to_thread(router.restart)
        await client.wait_connected(10)
        ids[50:50] = await asyncio.gather(*waiting)
        await client.flush()
        await eventually(lambda: len(seen) >= 61, what="every buffered event")
        await asyncio.sleep(0.3)
        payloads = [e.payload for e in seen[1:]]
        assert payloads == list(range(60)), "each buffered publish once, in order"
        assert [e.id for e in seen[1:]] == ids
        assert client.connections == 2


async def test_a_live_handler_keeps_receiving_after_the_router_restarts(router: Router) -> None:
    publisher = EventRouterClient(router.ws_url, reconnect=FAST)
    async with EventRouterClient(router.ws_url, reconnect=FAST) as client:
        got: list[Any] = []

        @client.on("live.#")
        async def handle(event: Event) -> None:
            got.append(event.payload)

        await publisher.connect()
        await publisher.publish("live.a", 1)
        await eventually(lambda: got == [1])
        router.kill()
        await asyncio.to_thread(router.restart)
        await client.wait_connected(10)
        await publisher.wait_connected(10)
        await publisher.publish("live.b", 2)
        await eventually(lambda: got == [1, 2], what="delivery on the restored subscription")
        await publisher.close()


async def test_with_redis_durable_deliveries_are_redelivered_and_no_handler_runs_twice(
    redis: RedisServer, start_router: Callable[..., Router]
) -> None:
    extra = (
        "--redis",
        redis.url,
        "--node-id",
        "replica-a",
        "--redis-membership-ttl",
        "1s",
        "--redis-reclaim-idle",
        "1s",
    )
    router = start_router(*extra)
    manage = ManagementClient(router.http_url)

    async def group(in_flight: int, pending: int) -> None:
        last: dict[str, Any] = {}
        for _ in range(300):
            last = await manage.subscription("py-workers")
            if last["in_flight"] == in_flight and last["pending"] == pending:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"want in_flight {in_flight}, pending {pending}; last {last}")

    async with EventRouterClient(router.ws_url, reconnect=FAST) as worker:
        log: list[tuple[str, str, int]] = []
        gate = asyncio.Event()

        async def handle(event: Event) -> None:
            assert event.delivery_id and event.id
            log.append((event.delivery_id, event.id, event.attempt))
            await gate.wait()

        await worker.subscribe("work.*", group="py-workers", handler=handle, max_in_flight=10)
        published = [await worker.publish("work.item", n) for n in range(5)]
        # The handler holds the first delivery; the other four wait in the
        # client's queue.
        await eventually(lambda: len(log) == 1)
        await group(5, 0)

        router.kill()
        await eventually(lambda: not worker.connected)
        await asyncio.to_thread(router.restart)
        await worker.wait_connected(20)
        gate.set()
        await eventually(lambda: len(log) == 5, timeout=30, what="five handler calls")
        # Every ack reached Redis, including the one for the delivery the
        # handler held across the restart.
        await group(0, 0)
        await asyncio.sleep(0.5)

    assert sorted(e for _, e, _ in log) == sorted(published), f"each event handled once: {log}"
    per_delivery = collections.Counter(d for d, _, _ in log)
    assert all(n == 1 for n in per_delivery.values()), f"no delivery id twice: {log}"
    assert log[0][2] == 1
    assert all(attempt >= 2 for _, _, attempt in log[1:]), (
        f"deliveries in flight at the kill came back as redeliveries: {log}"
    )


async def test_heartbeats_detect_a_router_that_stopped_answering(router: Router) -> None:
    client = EventRouterClient(
        router.ws_url,
        reconnect=FAST,
        heartbeat={"interval": 0.2, "timeout": 0.3},
        connect_timeout=0.5,
    )
    async with client:
        os.kill(router.pid, signal.SIGSTOP)
        try:
            # The socket stays open; only the missing pong tells.
            await eventually(lambda: not client.connected, timeout=5, what="a dead connection")
            assert client.last_error is not None
        finally:
            os.kill(router.pid, signal.SIGCONT)
        await client.wait_connected(10)
        assert client.connections >= 2
        assert await client.publish("hb.ok", 1)


async def test_the_offline_buffer_is_bounded(router: Router) -> None:
    async with EventRouterClient(
        router.ws_url, reconnect=FAST, buffer_size=10, batch_size=4
    ) as client:
        router.kill()
        await eventually(lambda: not client.connected)
        for n in range(10):
            client.publish_nowait("b.x", n)
        with pytest.raises(BufferFullError) as caught:
            client.publish_nowait("b.x", 10)
        assert caught.value.retryable and caught.value.code == "buffer_full"
        with pytest.raises(BufferFullError):
            await client.publish("b.x", 11)
        await asyncio.to_thread(router.restart)
        await client.wait_connected(10)
        await client.flush()
        assert client.buffered == 0
        assert await client.publish("b.x", 12)


async def test_when_reconnecting_gives_up_waiting_calls_and_iterators_fail(
    router: Router,
) -> None:
    client = EventRouterClient(
        router.ws_url,
        reconnect={
            "enabled": True,
            "max_attempts": 3,
            "backoff": "exponential",
            "initial_delay": 0.02,
        },
    )
    async with client:
        sub = await client.subscribe("gone.*")
        router.kill()
        pending = asyncio.ensure_future(client.publish("gone.x", 1))
        with pytest.raises(ConnectionError) as caught:
            await asyncio.wait_for(pending, 10)
        assert "gave up after 3 failed attempts" in caught.value.message
        assert client.closed
        with pytest.raises(ConnectionError):
            await sub.get(5)
        with pytest.raises(ConnectionError):
            client.publish_nowait("gone.x", 2)


async def test_with_reconnect_disabled_a_lost_connection_closes_the_client(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url, reconnect=False) as client:
        router.kill()
        await eventually(lambda: client.closed)
        with pytest.raises(ConnectionError) as caught:
            await client.publish("x.y", 1)
        assert caught.value.code == "connection_lost"


async def test_a_dead_connection_returns_durable_deliveries_to_the_group(router: Router) -> None:
    """The router lives (memory broker) but the connection dies: the client's
    heartbeat replaces it, the router gives the in-flight deliveries back to
    the group, and they come again on the new connection."""
    client = EventRouterClient(
        router.ws_url,
        reconnect=FAST,
        heartbeat={"interval": 0.2, "timeout": 0.3},
        connect_timeout=0.5,
    )
    manage = ManagementClient(router.http_url)
    async with client:
        log: list[tuple[str, str, int]] = []
        gate = asyncio.Event()

        async def handle(event: Event) -> None:
            assert event.delivery_id and event.id
            log.append((event.delivery_id, event.id, event.attempt))
            await gate.wait()

        await client.subscribe("cut.*", group="cut-workers", handler=handle, max_in_flight=10)
        published = [await client.publish("cut.item", n) for n in range(3)]
        await eventually(lambda: len(log) == 1)
        os.kill(router.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: not client.connected, timeout=5)
        finally:
            os.kill(router.pid, signal.SIGCONT)
        await client.wait_connected(10)
        gate.set()
        await eventually(
            lambda: set(published) <= {e for _, e, _ in log}, timeout=20, what="every event handled"
        )
        for _ in range(200):
            info = await manage.subscription("cut-workers")
            if (info["pending"], info["in_flight"]) == (0, 0):
                break
            await asyncio.sleep(0.05)
        assert (info["pending"], info["in_flight"]) == (0, 0), info
    per_delivery = collections.Counter(d for d, _, _ in log)
    assert all(n == 1 for n in per_delivery.values()), f"no delivery id twice: {log}"
    assert any(attempt >= 2 for _, _, attempt in log), f"redelivered after the cut: {log}"


async def test_reconnect_starts_over_after_the_policy_gave_up(router: Router) -> None:
    client = EventRouterClient(
        router.ws_url,
        reconnect={"enabled": True, "max_attempts": 2, "initial_delay": 0.02},
    )
    async with client:
        router.kill()
        await eventually(lambda: client.closed, what="the policy giving up")
        with pytest.raises(ConnectionError):
            await client.publish("again.x", 1)
        await asyncio.to_thread(router.restart)
        await client.reconnect()
        assert client.connected and not client.closed
        seen: list[Event] = []
        await client.subscribe("again.*", handler=seen.append)
        await client.publish("again.x", 2)
        await eventually(lambda: [e.payload for e in seen] == [2])
        # A connected client replaces its connection.
        before = client.connections
        await client.reconnect()
        assert client.connections == before + 1
        await client.publish("again.x", 3)
        await eventually(lambda: [e.payload for e in seen] == [2, 3])
