"""Event streams from the Python SDK against real routers: versions,
optimistic concurrency (one winner), typed conflicts, and a follower that
sees every version once across a router restart (on Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import RedisServer, Router, eventually
from event_router import (
    EventRouterClient,
    PublishError,
    ReconnectPolicy,
    VersionConflictError,
)

FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=200)


async def test_appends_get_versions_reads_return_them_and_conflicts_are_typed(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        stream = client.event_stream("order-123")
        assert await stream.version() == 0
        assert await stream.append("order.created", {"id": 123}, expected_version=0) == 1
        assert await stream.append("order.paid", {"amount": 5}) == 2
        assert await stream.append("order.shipped", None, expected_version=2) == 3
        with pytest.raises(VersionConflictError) as conflict:
            await stream.append("order.shipped", None, expected_version=2)
        assert conflict.value.current_version == 3
        assert conflict.value.code == "version_conflict"
        events = await stream.read(from_version=0)
        assert [(e.version, e.type) for e in events] == [
            (1, "order.created"),
            (2, "order.paid"),
            (3, "order.shipped"),
        ]
        assert events[1].payload == {"amount": 5}
        assert [e.version for e in await stream.read(from_version=2, limit=1)] == [2]
        with pytest.raises(PublishError) as bad:
            await client.event_stream("no spaces").append("x", 1)
        assert bad.value.code == "invalid_stream"


async def test_concurrent_appends_expecting_the_same_version_have_exactly_one_winner(
    router: Router,
) -> None:
    clients = [EventRouterClient(router.ws_url) for _ in range(6)]
    for c in clients:
        await c.connect()
    try:
        results = await asyncio.gather(
            *(
                c.event_stream("race").append("t.x", n, expected_version=0)
                for n, c in enumerate(clients)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if r == 1]
        losers = [r for r in results if isinstance(r, VersionConflictError)]
        assert (len(winners), len(losers)) == (1, 5), results
        assert all(e.current_version == 1 for e in losers)
    finally:
        for c in clients:
            await c.close()


async def test_on_append_follows_from_the_start_and_then_live(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        stream = client.event_stream("order-live")
        await stream.append("order.created", 1)
        seen: list[int] = []

        @stream.on_append
        async def update_read_model(event: object) -> None:
            seen.append(event.version)  # type: ignore[attr-defined]

        await eventually(lambda: seen == [1])
        await stream.append("order.paid", 2)
        await stream.append("order.shipped", 3)
        await eventually(lambda: seen == [1, 2, 3])
        await stream.stop()


async def test_with_redis_a_follower_sees_every_version_once_across_a_router_restart(
    redis: RedisServer, start_router: Callable[..., Router]
) -> None:
    reader_router = start_router("--redis", redis.url)
    writer_router = start_router("--redis", redis.url)
    async with (
        EventRouterClient(reader_router.ws_url, reconnect=FAST) as reader,
        EventRouterClient(writer_router.ws_url) as writer,
    ):
        out = writer.event_stream("order-r")
        got: list[int] = []

        async def follow() -> None:
            async for entry in reader.event_stream("order-r").subscribe(poll_interval=0.05):
                got.append(entry.version)

        task = asyncio.create_task(follow())
        for n in range(1, 11):
            await out.append("order.changed", n)
        await eventually(lambda: len(got) == 10, what="catch up")
        reader_router.kill()
        for n in range(11, 21):
            await out.append("order.changed", n)
        reader_router.restart()
        for n in range(21, 31):
            await out.append("order.changed", n)
        await eventually(lambda: len(got) >= 30, timeout=20, what="resume after restart")
        await asyncio.sleep(0.3)
        task.cancel()
        assert got == list(range(1, 31))
