"""Publishing: publish, publish_nowait batching, publish_batch,
publish_events, transactions."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Router, eventually
from event_router import Event, EventRouterClient, PublishError, Subscription


async def listen(client: EventRouterClient, *topics: str) -> tuple[Subscription, list[Event]]:
    seen: list[Event] = []
    sub = await client.subscribe(list(topics), handler=seen.append)
    return sub, seen


async def test_publish_returns_the_stored_id_and_every_field_arrives(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        _, seen = await listen(client, "order.*")
        event_id = await client.publish(
            "order.placed",
            {"order_id": 456, "total": 99.99},
            source="order_service",
            target="payment_service",
            priority="high",
            correlation_id="req-789",
            causation_id="cause-1",
            key="customer-7",
            ttl=60,
            headers={"x-tenant": "acme"},
            metadata={"m": 1},
        )
        await eventually(lambda: seen, what="the event")
        event = seen[0]
        assert event.id == event_id
        assert event.type == "order.placed" and event.topic == "order.placed"
        assert event.payload == {"order_id": 456, "total": 99.99}
        assert (event.source, event.target) == ("order_service", "payment_service")
        assert event.priority == 7
        assert (event.correlation_id, event.causation_id, event.key) == (
            "req-789",
            "cause-1",
            "customer-7",
        )
        assert event.ttl == 60
        assert event.headers == {"x-tenant": "acme"}
        assert event.metadata == {"m": 1}
        assert event.time is not None
        assert event.attempt == 1 and event.subscription_id is not None


async def test_the_client_source_is_the_default_source(router: Router) -> None:
    async with EventRouterClient(router.ws_url, source="agent-7") as client:
        _, seen = await listen(client, "a.b")
        await client.publish("a.b", 1)
        await client.publish("a.b", 2, source="other")
        await eventually(lambda: len(seen) == 2)
        assert [e.source for e in seen] == ["agent-7", "other"]


async def test_publish_nowait_sends_batches_of_batch_size_in_order(
    router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with EventRouterClient(router.ws_url, batch_size=100, batch_timeout=5.0) as client:
        _, seen = await listen(client, "metric")
        assert client._conn is not None
        frames: list[str] = []
        conn = client._conn
        original = conn.send

        def spy(text: str) -> None:
            frames.append(text)
            original(text)

        monkeypatch.setattr(conn, "send", spy)
        ids = [client.publish_nowait("metric", {"value": i}) for i in range(1000)]
        await client.flush()
        batches = [f for f in frames if f.startswith('{"op":"publish_batch"')]
        assert len(batches) == 10, "1000 events in 10 batches of 100"
        await eventually(lambda: len(seen) == 1000, what="1000 events")
        assert [e.payload["value"] for e in seen] == list(range(1000))
        assert [e.id for e in seen] == ids


async def test_a_partial_nowait_batch_goes_out_after_batch_timeout(router: Router) -> None:
    async with EventRouterClient(router.ws_url, batch_size=100, batch_timeout=0.05) as client:
        _, seen = await listen(client, "metric")
        client.publish_nowait("metric", {"cpu": 75})
        await eventually(lambda: seen, timeout=5, what="the lone event without flush()")
        assert seen[0].payload == {"cpu": 75}


async def test_close_flushes_queued_nowait_events(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as reader:
        _, seen = await listen(reader, "late.#")
        writer = EventRouterClient(router.ws_url, batch_timeout=60)
        await writer.connect()
        for i in range(5):
            writer.publish_nowait("late.event", i)
        await writer.close()
        await eventually(lambda: len(seen) == 5, what="events queued before close")
        assert [e.payload for e in seen] == [0, 1, 2, 3, 4]


async def test_publish_batch_and_publish_events_keep_order_and_per_event_options(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        _, seen = await listen(client, "user.created", "#.priority")
        ids = await client.publish_batch([("user.created", {"id": n}) for n in (1, 2, 3)])
        assert len(ids) == 3 and len(set(ids)) == 3
        more = await client.publish_events(
            [
                Event(type="high.priority", payload={}, priority=9),
                Event(type="low.priority", payload={}, priority="low"),
            ]
        )
        await eventually(lambda: len(seen) == 5)
        assert [e.id for e in seen] == ids + more
        assert [e.payload for e in seen[:3]] == [{"id": 1}, {"id": 2}, {"id": 3}]
        assert [e.priority for e in seen[3:]] == [9, 3]
        assert await client.publish_batch([]) == []


async def test_transaction_publishes_all_on_commit(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        _, seen = await listen(client, "#")
        async with client.transaction() as tx:
            a = await tx.publish("order.created", {"id": 1})
            b = await tx.publish("inventory.reserved", ["x"])
            c = await tx.publish("payment.initiated", {"amount": 5}, priority=8)
            await asyncio.sleep(0.2)
            assert seen == [], "nothing is sent before commit"
        assert tx.event_ids == [a, b, c]
        await eventually(lambda: len(seen) == 3)
        assert [e.id for e in seen] == [a, b, c]


async def test_a_transaction_left_by_an_exception_publishes_nothing(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        _, seen = await listen(client, "#")
        with pytest.raises(RuntimeError):
            async with client.transaction() as tx:
                await tx.publish("order.created", {"id": 1})
                raise RuntimeError("abort")
        await client.publish("marker.event", None)
        await eventually(lambda: seen)
        assert [e.type for e in seen] == ["marker.event"]


async def test_a_transaction_with_one_bad_event_stores_none(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        _, seen = await listen(client, "#")
        with pytest.raises(PublishError) as caught:
            async with client.transaction() as tx:
                await tx.publish("order.created", {"id": 1})
                # Passes the client's checks; the router refuses it.
                await tx.publish("order.paid", 1, headers={"x": 5})
        assert caught.value.code == "invalid_event"
        assert not caught.value.retryable
        await client.publish("marker.event", None)
        await eventually(lambda: seen)
        assert [e.type for e in seen] == ["marker.event"]
