"""`ManagementClient`: the router's HTTP management API (stats, health,
subscriptions, dead letters, replay, history), with the standard library
only (each request runs `urllib` in a worker thread)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from ._client import EventRouterClient
from ._event import Event
from .errors import ConnectionError, EventRouterError, error_from_code


class ManagementClient:
    """Management calls against a router's HTTP API.

    Give it an `EventRouterClient` (its router, token and local router are
    used; connect the client first when it starts a local router) or an
    `http://`/`ws://` URL and optional bearer `token`. Every method raises
    the typed errors of `event_router.errors` (`AuthError` without admin
    rights when auth is on, `SubscriptionError` for an unknown
    subscription, `ConnectionError` when the router cannot be reached).
    """

    def __init__(
        self,
        target: EventRouterClient | str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._client = target if isinstance(target, EventRouterClient) else None
        self._url = None if self._client is not None else _http_url(str(target))
        self.token = token if token is not None else (self._client.token if self._client else None)
        self.timeout = timeout

    @property
    def url(self) -> str:
        """The router's HTTP base URL."""
        if self._url is not None:
            return self._url
        assert self._client is not None
        if self._client.url is None:
            raise ConnectionError("the client is not connected yet (no URL)", code="not_connected")
        return _http_url(self._client.url)

    async def stats(self) -> dict[str, Any]:
        """`GET /api/v1/stats`: published, delivered, dropped, subscriptions, connections."""
        return await self._json("GET", "/api/v1/stats")

    async def health(self) -> dict[str, Any]:
        """`GET /health`."""
        return await self._json("GET", "/health")

    async def ready(self) -> bool:
        """Whether `GET /ready` answers 200."""
        try:
            await self._json("GET", "/ready")
        except EventRouterError:
            return False
        return True

    async def subscriptions(self) -> list[dict[str, Any]]:
        """Every durable subscription with its counters."""
        body = await self._json("GET", "/api/v1/subscriptions")
        return list(body.get("subscriptions", []))

    async def subscription(self, name: str) -> dict[str, Any]:
        """One durable subscription: spec, pending, in_flight, dead_letters, ..."""
        return await self._json("GET", f"/api/v1/subscriptions/{_seg(name)}")

    async def put_subscription(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Creates or replaces a durable subscription from a `Subscription`
        spec as in YAML (`topics`, `filter`, `delivery: {maxAttempts,
        backoff, ackTimeout}`)."""
        return await self._json("PUT", f"/api/v1/subscriptions/{_seg(name)}", dict(spec))

    async def delete_subscription(self, name: str) -> None:
        """Deletes a durable subscription with its queued events and dead letters."""
        await self._json("DELETE", f"/api/v1/subscriptions/{_seg(name)}")

    async def dead_letters(self, name: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The subscription's dead letters: `id`, `event`, `reason`,
        `attempts`, `history`, ... (the event as an `Event` under `"event"`)."""
        body = await self._json("GET", f"/api/v1/subscriptions/{_seg(name)}/dlq?limit={limit}")
        letters = list(body.get("dead_letters", []))
        for letter in letters:
            if isinstance(letter.get("event"), dict):
                letter["event"] = Event.from_dict(letter["event"])
        return letters

    async def retry_dead_letters(self, name: str, ids: Iterable[str] | None = None) -> int:
        """Moves dead letters (all, or `ids`) back into the subscription
        with fresh attempts; returns how many."""
        body: dict[str, Any] = {} if ids is None else {"ids": list(ids)}
        reply = await self._json("POST", f"/api/v1/subscriptions/{_seg(name)}/dlq/redrive", body)
        return int(reply.get("count", 0))

    async def purge_dead_letters(self, name: str, ids: Iterable[str] | None = None) -> int:
        """Deletes dead letters (all, or `ids`); returns how many."""
        body: dict[str, Any] = {} if ids is None else {"ids": list(ids)}
        reply = await self._json("POST", f"/api/v1/subscriptions/{_seg(name)}/dlq/purge", body)
        return int(reply.get("count", 0))

    async def replay(
        self,
        name: str,
        *,
        topics: Iterable[str] | None = None,
        filter: Any = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> int:
        """Queues retained events (RFC 3339 `since`/`until` on each event's
        `time`) into the subscription as new deliveries, oldest first;
        returns how many."""
        body: dict[str, Any] = {}
        if topics is not None:
            body["topics"] = list(topics)
        for key, value in (("filter", filter), ("from", since), ("to", until), ("limit", limit)):
            if value is not None:
                body[key] = value
        reply = await self._json("POST", f"/api/v1/subscriptions/{_seg(name)}/replay", body)
        return int(reply.get("count", 0))

    async def history(
        self,
        topic: str | Iterable[str] = "#",
        *,
        limit: int = 100,
        since: str | None = None,
        until: str | None = None,
    ) -> list[Event]:
        """Retained events on `topic` patterns, oldest first."""
        topics = [topic] if isinstance(topic, str) else list(topic)
        query: list[tuple[str, str]] = [("topic", t) for t in topics]
        query.append(("limit", str(limit)))
        if since is not None:
            query.append(("from", since))
        if until is not None:
            query.append(("to", until))
        body = await self._json("GET", "/api/v1/events?" + urllib.parse.urlencode(query))
        return [Event.from_dict(item["event"]) for item in body.get("events", [])]

    # aliases with the v2 API design's names
    get_stats = stats
    health_check = health
    list_subscriptions = subscriptions
    get_dead_letter_queue = dead_letters
    retry_failed_events = retry_dead_letters

    async def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        url = self.url + path
        return await asyncio.to_thread(self._blocking, method, url, body)

    def _blocking(self, method: str, url: str, body: Any) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            raise _http_error(e.code, e.read()) from None
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(
                f"cannot reach {url}: {e}", code="unreachable", retryable=True
            ) from e
        if not text:
            return {}
        parsed = json.loads(text)
        return parsed if isinstance(parsed, dict) else {"items": parsed}


def _http_error(status: int, body: bytes) -> EventRouterError:
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{status}", body.decode(errors="replace")[:200]
    return error_from_code(code, message, "manage")


def _http_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    return f"{scheme}://{parts.netloc}"


def _seg(name: str) -> str:
    return urllib.parse.quote(name, safe="")
