"""Request/response and publish_and_wait."""

from __future__ import annotations

import asyncio
import builtins

import pytest
from conftest import Router, eventually
from event_router import Event, EventRouterClient, HandlerError, TimeoutError


async def test_request_gets_the_responders_return_value(router: Router) -> None:
    async with (
        EventRouterClient(router.ws_url) as server,
        EventRouterClient(router.ws_url) as caller,
    ):

        @server.respond("calculator.add")
        async def add_numbers(request: Event) -> dict[str, int]:
            return {"result": request.payload["x"] + request.payload["y"]}

        await eventually(lambda: all(s.server_id for s in server._subs.values()))
        response = await caller.request("calculator.add", {"x": 10, "y": 20}, timeout=5.0)
        assert response.payload == {"result": 30}
        assert response.correlation_id is not None
        assert response.causation_id is not None


async def test_a_raised_exception_reaches_the_requester_as_handler_error(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        failures: list[BaseException] = []
        client.on_error(lambda error, event: failures.append(error))

        @client.respond("user.get")
        def get_user(request: Event) -> dict[str, str]:
            if not request.payload.get("id"):
                raise ValueError("User ID required")
            return {"name": "Alice"}

        await eventually(lambda: all(s.server_id for s in client._subs.values()))
        assert (await client.request("user.get", {"id": 1}, timeout=5)).payload == {"name": "Alice"}
        with pytest.raises(HandlerError) as caught:
            await client.request("user.get", {}, timeout=5)
        assert caught.value.message == "User ID required"
        assert caught.value.code == "handler_error"
        assert [str(f) for f in failures] == ["User ID required"]


async def test_a_request_nobody_answers_times_out(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError) as caught:
            await client.request("nobody.home", {}, timeout=0.3)
        assert isinstance(caught.value, builtins.TimeoutError)
        assert caught.value.retryable
        assert asyncio.get_running_loop().time() - started < 3


async def test_responders_in_a_group_share_requests(router: Router) -> None:
    async with EventRouterClient(router.ws_url) as a, EventRouterClient(router.ws_url) as b:
        answered: list[str] = []

        def responder(name: str, client: EventRouterClient) -> None:
            @client.respond("work.do", group="doers")
            async def handle(request: Event) -> str:
                answered.append(name)
                return name

        responder("a", a)
        responder("b", b)
        await eventually(lambda: all(s.server_id for c in (a, b) for s in c._subs.values()))
        replies = await asyncio.gather(*(a.request("work.do", n, timeout=5) for n in range(10)))
        assert sorted(r.payload for r in replies) == sorted(answered)
        assert len(answered) == 10, "each request answered once"


async def test_publish_and_wait_returns_the_correlated_event(router: Router) -> None:
    async with (
        EventRouterClient(router.ws_url) as worker,
        EventRouterClient(router.ws_url) as orchestrator,
    ):

        @worker.on("task.assign")
        async def work(event: Event) -> None:
            # An unrelated completion first: publish_and_wait must skip it.
            await worker.publish("task.completed", {"result": "other"})
            await worker.publish("task.completed", {"result": {"issues": []}}, caused_by=event)

        await eventually(lambda: all(s.server_id for s in worker._subs.values()))
        done = await orchestrator.publish_and_wait(
            "task.assign", {"task": "analyze_code"}, wait_for="task.completed", timeout=5
        )
        assert done.payload == {"result": {"issues": []}}
        with pytest.raises(TimeoutError):
            await orchestrator.publish_and_wait(
                "task.unanswered", {}, wait_for="task.completed", timeout=0.3
            )
