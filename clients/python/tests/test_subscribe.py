"""Subscribing: decorators, programmatic subscriptions as iterators and
context managers, durable groups (ack on return, nack on exception, dead
letters), on_error, stream and window."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import Router, eventually
from event_router import (
    Event,
    EventRouterClient,
    ManagementClient,
    SubscriptionError,
)


async def test_on_decorator_with_several_topics_patterns_and_filters(router: Router) -> None:
    client = EventRouterClient(router.ws_url)
    users: list[str] = []
    orders: list[str] = []
    large: list[int] = []

    @client.on("user.created", "user.updated", "user.deleted")
    async def handle_user_events(event: Event) -> None:
        users.append(event.type)

    @client.on_pattern(r"^order\.(created|updated)$")
    async def handle_orders(event: Event) -> None:
        orders.append(event.type)

    @client.on("payment.*", filter={"payload.amount": {"$gt": 100}})
    def handle_large_payments(event: Event) -> None:  # a plain function works too
        large.append(event.payload["amount"])

    async with client:
        for topic in ("user.created", "user.updated", "user.deleted", "user.other"):
            await client.publish(topic, {})
        for topic in ("order.created", "order.updated", "order.shipped"):
            await client.publish(topic, {})
        for amount in (50, 150, 100, 101):
            await client.publish("payment.made", {"amount": amount})
        await eventually(lambda: len(users) == 3 and len(orders) == 2 and len(large) == 2)
        await asyncio.sleep(0.1)
        assert users == ["user.created", "user.updated", "user.deleted"]
        assert orders == ["order.created", "order.updated"]
        assert large == [150, 101]


async def test_a_decorator_after_connecting_subscribes_at_once(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        got: list[Event] = []

        @client.on("late.topic")
        async def late(event: Event) -> None:
            got.append(event)

        await eventually(lambda: any(s.server_id for s in client._subs.values()))
        await client.publish("late.topic", 1)
        await eventually(lambda: got)


async def test_subscribe_with_a_handler_and_unsubscribe(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        seen: list[object] = []
        sub = await client.subscribe("user.*", handler=lambda e: seen.append(e.payload))
        assert sub.active and sub.server_id
        await client.publish("user.a", 1)
        await eventually(lambda: seen == [1])
        await sub.unsubscribe()
        assert not sub.active
        await client.publish("user.a", 2)
        async with client.subscribe("user.*") as probe:
            await client.publish("user.a", 3)
            assert (await probe.get(5)).payload == 3
        assert seen == [1]


async def test_a_subscription_is_an_async_iterator_and_context_manager(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        received = []
        async with client.subscribe("test.*") as subscription:
            for n in range(3):
                await client.publish("test.x", {"n": n, "stop": n == 2})
            async for event in subscription:
                received.append(event.payload["n"])
                if event.payload.get("stop"):
                    break
        assert received == [0, 1, 2]
        assert not subscription.active


async def test_invalid_subscriptions_raise_subscription_error(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        with pytest.raises(SubscriptionError) as caught:
            await client.subscribe("a.*", filter={"payload.x": {"$bogus": 1}})
        assert caught.value.code == "invalid_filter" and "$bogus" in caught.value.message
        with pytest.raises(SubscriptionError) as caught:
            await client.subscribe("a..b")
        assert caught.value.code == "invalid_pattern"
        with pytest.raises(SubscriptionError) as caught:
            await client.subscribe([], pattern="(unclosed")
        assert caught.value.code == "invalid_pattern"
        async with client.subscribe("job.*", group="once"):
            with pytest.raises(SubscriptionError) as caught:
                await client.subscribe("job.*", group="once")
            assert caught.value.code == "already_subscribed"
        # The client is still usable.
        await client.publish("a.b", 1)


async def test_a_decorator_refused_before_connect_fails_connect(router: Router) -> None:
    client = EventRouterClient(router.ws_url)

    @client.on("x.*", filter={"$nope": []})
    async def never(event: Event) -> None:
        raise AssertionError("not called")

    with pytest.raises(SubscriptionError):
        await client.connect()
    await client.close()


async def test_durable_handler_return_acks_and_exception_nacks_then_redelivers(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        attempts: list[tuple[object, int]] = []
        errors: list[tuple[str, str | None]] = []

        @client.on_error
        async def record(error: BaseException, event: Event | None) -> None:
            errors.append((str(error), event.id if event else None))

        async def work(event: Event) -> None:
            attempts.append((event.payload, event.attempt))
            if event.payload == "flaky" and event.attempt == 1:
                raise ValueError("first try fails")

        await client.subscribe("job.*", group="workers", handler=work, nack_delay=0.05)
        await client.publish("job.run", "ok")
        flaky = await client.publish("job.run", "flaky")
        await eventually(lambda: ("flaky", 2) in attempts, what="the redelivery")
        manage = ManagementClient(client)
        await eventually(lambda: True)
        info = await manage.subscription("workers")
        for _ in range(100):
            if info["pending"] == 0 and info["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
            info = await manage.subscription("workers")
        assert (info["pending"], info["in_flight"]) == (0, 0), info
        assert info["acked"] == 2 and info["retried"] >= 1, info
        assert sorted(attempts, key=str) == sorted([("ok", 1), ("flaky", 1), ("flaky", 2)], key=str)
        assert errors == [("first try fails", flaky)]


async def test_after_max_attempts_an_event_is_dead_lettered_and_can_be_retried_or_purged(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        manage = ManagementClient(client)
        await manage.put_subscription(
            "poison",
            {
                "topics": ["poison.*"],
                "delivery": {"maxAttempts": 2, "backoff": {"initial": "20ms", "max": "50ms"}},
            },
        )
        calls: list[int] = []
        fail = True

        async def handler(event: Event) -> None:
            calls.append(event.attempt)
            if fail:
                raise RuntimeError("cannot handle")

        await client.subscribe("poison.*", group="poison", handler=handler)
        event_id = await client.publish("poison.pill", {"n": 1})

        async def dead() -> list[dict[str, object]]:
            for _ in range(200):
                letters = await manage.dead_letters("poison")
                if letters:
                    return letters
                await asyncio.sleep(0.05)
            raise AssertionError("no dead letter")

        letters = await dead()
        assert calls == [1, 2]
        assert len(letters) == 1
        letter = letters[0]
        assert isinstance(letter["event"], Event) and letter["event"].id == event_id
        assert letter["attempts"] == 2 and "cannot handle" in str(letter["reason"])
        fail = False
        assert await manage.retry_dead_letters("poison") == 1
        await eventually(lambda: len(calls) == 3, what="the redriven delivery")
        assert calls[2] == 1, "redriven with fresh attempts"
        assert await manage.dead_letters("poison") == []
        # Purge: dead-letter another and purge it.
        fail = True
        await client.publish("poison.pill", {"n": 2})
        await dead()
        assert await manage.purge_dead_letters("poison") == 1
        assert await manage.dead_letters("poison") == []


async def test_consumers_of_one_group_share_the_events(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as a, EventRouterClient(router.ws_url) as b:
        got: dict[str, list[int]] = {"a": [], "b": []}

        async def slow(name: str, event: Event) -> None:
            got[name].append(event.payload)
            await asyncio.sleep(0.01)

        await a.subscribe("share.*", group="pool", handler=lambda e: slow("a", e), max_in_flight=1)
        await b.subscribe("share.*", group="pool", handler=lambda e: slow("b", e), max_in_flight=1)
        await a.publish_batch([("share.x", n) for n in range(40)])
        await eventually(lambda: len(got["a"]) + len(got["b"]) == 40)
        assert sorted(got["a"] + got["b"]) == list(range(40)), "each event once"
        assert got["a"] and got["b"], "both consumers worked"


async def test_iterating_a_durable_subscription_acks_each_event_on_the_next(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        manage = ManagementClient(client)
        async with client.subscribe("it.*", group="iter") as sub:
            await client.publish_batch([("it.x", n) for n in range(3)])
            seen = []
            async for event in sub:
                seen.append(event.payload)
                if len(seen) == 3:
                    break
        info = await manage.subscription("iter")
        for _ in range(100):
            if info["acked"] == 3:
                break
            await asyncio.sleep(0.05)
            info = await manage.subscription("iter")
        assert info["acked"] == 3 and info["pending"] == 0, info


async def test_an_exception_in_the_block_nacks_the_current_event(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        await ManagementClient(client).put_subscription(
            "blk", {"topics": ["blk.*"], "delivery": {"backoff": {"initial": "20ms"}}}
        )
        with pytest.raises(KeyError):
            async with client.subscribe("blk.*", group="blk") as sub:
                await client.publish("blk.x", 1)
                async for _event in sub:
                    raise KeyError("boom")
        async with client.subscribe("blk.*", group="blk") as sub:
            again = await sub.get(10)
            assert again.payload == 1 and again.attempt == 2
            await again.ack()


async def test_stream_yields_events_and_batches(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:

        async def take(n: int) -> list[object]:
            out: list[object] = []
            async with contextlib.aclosing(client.stream("sensor.*")) as events:
                async for event in events:
                    out.append(event.payload)
                    if len(out) == n:
                        break
            return out

        reader = asyncio.ensure_future(take(3))
        await eventually(lambda: any(s.server_id for s in client._subs.values()))
        for n in range(3):
            await client.publish("sensor.t", n)
        assert await asyncio.wait_for(reader, 10) == [0, 1, 2]

        batches: list[list[int]] = []

        async def take_batches() -> None:
            stream = client.stream("logs.*", batch_size=4, timeout=0.3)
            async with contextlib.aclosing(stream) as it:
                async for batch in it:
                    batches.append([e.payload for e in batch])
                    if sum(len(b) for b in batches) == 6:
                        break

        task = asyncio.ensure_future(take_batches())
        await eventually(lambda: any(s.server_id for s in client._subs.values()))
        await client.publish_batch([("logs.x", n) for n in range(6)])
        await asyncio.wait_for(task, 10)
        assert batches == [[0, 1, 2, 3], [4, 5]], "full batches, then what came within timeout"


async def test_window_yields_the_events_of_each_time_window(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        windows: list[list[float]] = []

        async def average() -> None:
            async with contextlib.aclosing(client.window("metrics.*", size="300ms")) as it:
                async for window in it:
                    windows.append([e.payload["value"] for e in window])
                    if len(windows) == 2:
                        break

        task = asyncio.ensure_future(average())
        await eventually(lambda: any(s.server_id for s in client._subs.values()))
        await client.publish_batch([("metrics.cpu", {"value": v}) for v in (1, 2, 3)])
        await asyncio.sleep(0.45)
        await client.publish("metrics.cpu", {"value": 10})
        await asyncio.wait_for(task, 10)
        assert windows[0] == [1, 2, 3]
        assert windows[1] == [10], "a tumbling window holds only its own events"


async def test_an_ack_made_right_before_close_reaches_the_router(router: Router) -> None:
    manage = ManagementClient(router.http_url)
    for n in range(5):
        client = EventRouterClient(router.ws_url)
        await client.connect()
        sub = await client.subscribe("last.*", group="last")
        await client.publish("last.x", n)
        event = await sub.get(5)
        await event.ack()
        await client.close()
        info = await manage.subscription("last")
        for _ in range(100):
            if info["acked"] == n + 1 and info["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
        assert (info["acked"], info["pending"], info["in_flight"]) == (n + 1, 0, 0), info
