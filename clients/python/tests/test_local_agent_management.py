"""Local development mode, URL resolution, EventEnabledAgent and
ManagementClient."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from conftest import Router, eventually
from event_router import (
    Event,
    EventEnabledAgent,
    EventRouterClient,
    ManagementClient,
    event_handler,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it counts as stopped.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_without_a_url_a_local_router_is_started_and_stopped_on_exit() -> None:
    async with EventRouterClient() as client:
        local = client.local_router
        assert local is not None
        assert local.addr.startswith("127.0.0.1:")
        assert client.url == local.ws_url
        pid = local.pid
        assert alive(pid)
        seen: list[Event] = []
        await client.subscribe("local.*", handler=seen.append)
        await client.publish("local.test", {"data": "value"})
        await eventually(lambda: seen)
        stats = await ManagementClient(client).stats()
        assert stats["broker"]["published"] >= 1
    assert not alive(pid), "the local router stops with the client"


async def test_the_url_comes_from_event_router_url(
    router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENT_ROUTER_URL", router.http_url)
    async with EventRouterClient() as client:
        assert client.local_router is None
        assert client.url == router.ws_url, "http:// becomes ws:// with the /ws path"
        assert await client.publish("env.url", 1)


async def test_config_dict_settings_are_read(router: Router) -> None:
    client = EventRouterClient(
        config={
            "url": router.ws_url,
            "reconnect": {"enabled": True, "max_attempts": 5, "backoff": "exponential"},
            "batch_size": 7,
            "buffer_size": 99,
            "heartbeat": {"interval": "5s", "timeout": "2s"},
        }
    )
    assert client.reconnect_policy.max_attempts == 5
    assert (client.batch_size, client.buffer_size) == (7, 99)
    assert (client.heartbeat_interval, client.heartbeat_timeout) == (5.0, 2.0)
    async with client:
        assert client.connected
    explicit = EventRouterClient(transport="websocket", url=router.ws_url)
    assert explicit.url == router.ws_url
    assert EventRouterClient(router.ws_url, transport="memory").url is None, "local router"
    with pytest.raises(ValueError, match="transport"):
        EventRouterClient(config={"transport": "redis"})
    with pytest.raises(ValueError, match="reconnect"):
        EventRouterClient(router.ws_url, reconnect={"retries": 3})


class Worker(EventEnabledAgent):
    capabilities = ["analyze"]  # noqa: RUF012

    def __init__(self, client: EventRouterClient) -> None:
        super().__init__(client, id="worker-1")
        self.handled: list[object] = []
        self.release = asyncio.Event()
        self.events: list[str] = []

    async def on_start(self) -> None:
        self.events.append("on_start")

    async def on_stop(self) -> None:
        self.events.append("on_stop")

    @event_handler("task.assigned", group="agents")
    async def handle_task(self, event: Event) -> None:
        await self.release.wait()
        self.handled.append(event.payload["id"])
        await self.publish("task.completed", {"task_id": event.payload["id"]}, caused_by=event)


async def test_an_agent_announces_itself_handles_events_and_stops_gracefully(
    router: Router,
) -> None:
    async with (
        EventRouterClient(router.ws_url) as observer,
        EventRouterClient(router.ws_url) as agent_client,
    ):
        lifecycle: list[Event] = []
        completed: list[Event] = []
        await observer.subscribe("agent.*", handler=lifecycle.append)
        await observer.subscribe("task.completed", handler=completed.append)

        agent = Worker(agent_client)
        await agent.start()
        assert agent.running and agent.events == ["on_start"]
        await eventually(lambda: lifecycle)
        started = lifecycle[0]
        assert started.type == "agent.started" and started.source == "worker-1"
        assert started.payload == {"agent_id": "worker-1", "capabilities": ["analyze"]}

        task_id = await observer.publish("task.assigned", {"id": 42})
        await asyncio.sleep(0.2)  # the handler is now waiting on `release`
        stopping = asyncio.ensure_future(agent.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done(), "stop waits for the running handler"
        agent.release.set()
        await asyncio.wait_for(stopping, 10)
        assert agent.handled == [42]
        assert agent.events == ["on_start", "on_stop"]
        await eventually(lambda: completed and len(lifecycle) == 2)
        assert completed[0].causation_id == task_id
        assert lifecycle[1].type == "agent.stopped"
        info = await ManagementClient(observer).subscription("agents")
        assert info["acked"] == 1 and info["pending"] == 0


async def test_agent_run_stops_on_sigterm(router: Router) -> None:
    agent = EventEnabledAgent(url=router.ws_url)
    runner = asyncio.ensure_future(agent.run())
    await eventually(lambda: agent.running)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(runner, 10)
    assert not agent.running and agent.client.closed


async def test_management_client_reads_stats_health_subscriptions_history_and_replays(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        manage = ManagementClient(client)
        assert (await manage.health())["status"] in ("ok", "healthy")
        assert await manage.ready()
        await manage.put_subscription("audit", {"topics": ["audit.*"]})
        ids = await client.publish_batch([("audit.login", {"n": n}) for n in range(3)])
        stats = await manage.get_stats()
        assert stats["broker"]["published"] >= 3
        names = [s["spec"].get("name", s.get("name")) for s in await manage.subscriptions()]
        assert "audit" in str(names)
        history = await manage.history("audit.*")
        assert [e.id for e in history] == ids
        # Replay: retained events come again into the subscription.
        async with client.subscribe("audit.*", group="audit") as sub:
            first = [await sub.get(5) for _ in range(3)]
            for e in first:
                await e.ack()
            assert await manage.replay("audit", topics=["audit.login"]) == 3
            again = [await sub.get(5) for _ in range(3)]
            assert [e.id for e in again] == ids
            for e in again:
                await e.ack()
        await manage.delete_subscription("audit")
        assert "audit" not in str(await manage.list_subscriptions())
