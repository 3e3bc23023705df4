"""Construction-time settings of `EventRouterClient`, read from the v2 API
design's dicts (`reconnect={"enabled": True, "max_attempts": 5,
"backoff": "exponential"}`, `auth={"type": "api_key", "key": ...}`)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Default bound of unconfirmed publishes (buffered offline or in flight), in events.
DEFAULT_BUFFER_SIZE = 10_000
#: Default interval between heartbeat pings, in seconds.
DEFAULT_HEARTBEAT_INTERVAL = 15.0
#: Default wait for any frame after a ping before the connection counts as dead.
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
#: Default wait for a publish's confirmation, buffered time included, in seconds.
DEFAULT_PUBLISH_TIMEOUT = 30.0
#: Default bound of one WebSocket handshake and of the first connection, in seconds.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Default `publish_nowait` batch size, in events.
DEFAULT_BATCH_SIZE = 100
#: Default wait before a partial `publish_nowait` batch is sent, in seconds.
DEFAULT_BATCH_TIMEOUT = 0.01
#: Default bound of a subscription's client-side queue, in deliveries.
DEFAULT_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter between reconnection attempts.

    Attempt `n` (1-based) waits `initial_delay * multiplier**(n-1)`, capped
    at `max_delay`, shortened by up to `jitter` of itself at random so that
    clients cut off together do not return in lockstep. After `max_attempts`
    consecutive failures (None: never) the client gives up and closes with
    `ConnectionError`. `enabled=False` closes on the first lost connection.
    """

    enabled: bool = True
    max_attempts: int | None = None
    initial_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    @classmethod
    def from_value(
        cls, value: ReconnectPolicy | Mapping[str, Any] | bool | None
    ) -> ReconnectPolicy:
        """A policy from the design's dict, a bool, or None (the default)."""
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(enabled=False)
        if isinstance(value, ReconnectPolicy):
            return value
        known = {
            "enabled",
            "max_attempts",
            "backoff",
            "initial_delay",
            "max_delay",
            "multiplier",
            "jitter",
        }
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown reconnect settings: {sorted(unknown)}")
        backoff = value.get("backoff", "exponential")
        multiplier = float(value.get("multiplier", 2.0))
        if backoff == "constant":
            multiplier = 1.0
        elif backoff not in ("exponential", "linear"):
            raise ValueError(
                f"reconnect backoff must be 'exponential' or 'constant', got {backoff!r}"
            )
        max_attempts = value.get("max_attempts")
        return cls(
            enabled=bool(value.get("enabled", True)),
            max_attempts=None if max_attempts is None else int(max_attempts),
            initial_delay=parse_duration(value.get("initial_delay", 0.1)),
            max_delay=parse_duration(value.get("max_delay", 10.0)),
            multiplier=max(1.0, multiplier),
            jitter=min(1.0, max(0.0, float(value.get("jitter", 0.2)))),
        )

    def delay(self, attempt: int, rand: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        r = random.random() if rand is None else rand
        base = self.initial_delay * self.multiplier ** max(0, attempt - 1)
        base = min(base, self.max_delay)
        return base * (1.0 - self.jitter * r)

    def allows(self, failed: int) -> bool:
        """Whether another attempt may follow `failed` consecutive failures."""
        if not self.enabled:
            return False
        return self.max_attempts is None or failed < self.max_attempts


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number (seconds) or a string such as `500ms`, `30s`, `1m`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"invalid duration {value!r} (seconds, or a string like '500ms', '30s', '1m')")


def token_from_auth(auth: Mapping[str, Any] | None, token: str | None) -> str | None:
    """The bearer token from `token=` or the design's `auth` dict."""
    if auth is None:
        return token
    kind = auth.get("type", "api_key")
    if kind == "api_key":
        found = auth.get("key", auth.get("api_key"))
    elif kind == "jwt":
        found = auth.get("token")
    else:
        raise ValueError(f"auth type must be 'api_key' or 'jwt', got {kind!r}")
    if not isinstance(found, str) or not found:
        field = "key" if kind == "api_key" else "token"
        raise ValueError(f"auth of type {kind!r} needs a non-empty {field!r}")
    return found
