"""Typed errors: every server error code maps to a subclass, and bad input
against a real router is answered with the right one."""

from __future__ import annotations

import builtins
import hashlib
import pathlib
import re
from collections.abc import Awaitable, Callable

import pytest
from conftest import ROOT, Router, eventually
from event_router import (
    AuthError,
    BufferFullError,
    ConnectionError,
    EventRouterClient,
    EventRouterError,
    ManagementClient,
    PublishError,
    SubscriptionError,
    TimeoutError,
    error_from_code,
)
from event_router.errors import error_class


def documented_codes() -> list[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Errors", 1)[1]
    codes: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            codes.extend(re.findall(r"`([a-z_]+)`", first_cell))
    return codes


def test_every_documented_server_code_maps_to_a_specific_error_class() -> None:
    codes = documented_codes()
    assert len(codes) >= 35, codes
    for code in codes:
        for context in ("publish", "request", "subscribe"):
            cls = error_class(code, context)
            assert cls is not EventRouterError and issubclass(cls, EventRouterError), (
                code,
                context,
            )


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        ("unauthorized", AuthError, False),
        ("forbidden", AuthError, False),
        ("timeout", TimeoutError, True),
        ("invalid_event", PublishError, False),
        ("invalid_topic", PublishError, False),
        ("payload_too_large", PublishError, False),
        ("rate_limited", PublishError, True),
        ("queue_full", PublishError, True),
        ("unavailable", PublishError, True),
        ("invalid_filter", SubscriptionError, False),
        ("already_subscribed", SubscriptionError, False),
        ("too_many_subscriptions", SubscriptionError, False),
        ("too_many_connections", ConnectionError, True),
    ],
)
def test_codes_map_to_the_documented_class_and_retryability(
    code: str, cls: type[EventRouterError], retryable: bool
) -> None:
    error = error_from_code(code, "m", "publish")
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.code == code and error.message == "m"


def test_timeout_and_connection_errors_are_also_the_builtin_ones() -> None:
    assert issubclass(TimeoutError, builtins.TimeoutError)
    assert issubclass(ConnectionError, builtins.ConnectionError)
    assert issubclass(BufferFullError, PublishError)


async def test_bad_events_are_refused_with_publish_errors(
    start_router: Callable[..., Router],
) -> None:
    router = start_router("--max-payload-bytes", "1000")
    async with EventRouterClient(router.ws_url) as client:
        cases: list[tuple[Callable[[], Awaitable[str]], str]] = [
            (lambda: client.publish("bad topic", 1), "invalid_topic"),
            (lambda: client.publish("", 1), "invalid_topic"),
            (lambda: client.publish("a.b", 1, priority=11), "invalid_priority"),
            (lambda: client.publish("a.b", 1, priority="urgent"), "invalid_priority"),
            (lambda: client.publish("a.b", {"x": object()}), "invalid_event"),
            (lambda: client.publish("a.b", "x" * 2000), "payload_too_large"),
            (lambda: client.publish("a.b", 1, ttl=-1), "invalid_event"),
        ]
        for call, code in cases:
            with pytest.raises(PublishError) as caught:
                await call()
            assert caught.value.code == code, caught.value
            assert not caught.value.retryable
        with pytest.raises(PublishError) as caught:
            client.publish_nowait("no spaces allowed", 1)
        assert caught.value.code == "invalid_topic"
        # Nothing above broke the connection.
        assert await client.publish("a.b", 1)


async def test_a_full_subscription_queue_is_a_retryable_publish_error(
    start_router: Callable[..., Router],
) -> None:
    router = start_router("--max-queued-per-subscription", "1")
    async with EventRouterClient(router.ws_url) as client:
        await ManagementClient(client).put_subscription("slow", {"topics": ["q.*"]})
        await client.publish("q.a", 1)
        with pytest.raises(PublishError) as caught:
            await client.publish("q.a", 2)
        assert caught.value.code == "queue_full" and caught.value.retryable


AUTH_FILE = """
api_keys:
  - name: planner
    sha256: "{digest}"
acl:
  - principal: planner
    publish: ["task.*"]
    subscribe: ["task.*"]
    groups: ["planners"]
limits:
  publish_rate: 1
  publish_burst: 3
"""


async def test_auth_failures_are_auth_errors(
    start_router: Callable[..., Router], tmp_path: pathlib.Path
) -> None:
    key = "erk_test_key_for_the_python_sdk"
    auth = tmp_path / "auth.yaml"
    auth.write_text(AUTH_FILE.format(digest=hashlib.sha256(key.encode()).hexdigest()))
    router = start_router("--auth", str(auth))

    bad = EventRouterClient(router.ws_url, auth={"type": "api_key", "key": "erk_wrong"})
    with pytest.raises(AuthError) as caught:
        await bad.connect()
    assert caught.value.code == "unauthorized" and not caught.value.retryable
    await bad.close()

    async with EventRouterClient(router.ws_url, auth={"type": "api_key", "key": key}) as client:
        assert await client.publish("task.created", 1)
        with pytest.raises(AuthError) as caught:
            await client.publish("secret.plans", 1)
        assert caught.value.code == "forbidden"
        with pytest.raises(AuthError):
            await client.subscribe("secret.*")
        with pytest.raises(AuthError):
            await client.subscribe("task.*", group="not-mine")
        with pytest.raises(AuthError):
            await ManagementClient(client).put_subscription("x", {"topics": ["task.*"]})
        limited = None
        for n in range(10):
            try:
                await client.publish("task.created", n)
            except PublishError as e:
                limited = e
                break
        assert limited is not None and limited.code == "rate_limited" and limited.retryable


async def test_an_unreachable_router_is_a_connection_error_after_max_attempts() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = EventRouterClient(
        f"ws://127.0.0.1:{port}/ws",
        reconnect={
            "enabled": True,
            "max_attempts": 3,
            "backoff": "exponential",
            "initial_delay": 0.01,
        },
    )
    with pytest.raises(ConnectionError) as caught:
        await client.connect()
    assert "3 failed attempts" in caught.value.message
    assert isinstance(caught.value, builtins.ConnectionError)
    with pytest.raises(ConnectionError):
        await client.publish("a.b", 1)
    await client.close()


async def test_management_errors_are_typed(router: Router) -> None:
    manage = ManagementClient(router.http_url)
    with pytest.raises(SubscriptionError) as caught:
        await manage.subscription("no-such-group")
    assert caught.value.code == "unknown_subscription"
    with pytest.raises(SubscriptionError):
        await manage.put_subscription("bad", {"topics": ["a..b"]})
    unreachable = ManagementClient("http://127.0.0.1:9")
    with pytest.raises(ConnectionError):
        await unreachable.stats()


async def test_an_ack_of_an_unknown_delivery_does_not_break_the_connection(
    router: Router,
) -> None:
    async with EventRouterClient(router.ws_url) as client:
        async with client.subscribe("d.*", group="dg") as sub:
            await client.publish("d.x", 1)
            event = await sub.get(5)
            await event.ack()
            await event.ack()  # settling twice does nothing
            client._send_settle('{"op":"ack","delivery_id":"nope","subscription_id":"dg"}')
            await client.publish("d.x", 2)
            assert (await sub.get(5)).payload == 2
        await eventually(lambda: client.connected)
