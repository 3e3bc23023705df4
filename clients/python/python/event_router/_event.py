"""The event as agents see it: the router's JSON envelope as a dataclass.

Attribute names are the envelope's (`event.type`, `event.payload`,
`event.source`, `event.priority`, `event.id`, ...). A delivered event also
carries where it came from (`subscription_id`, `delivery_id`, `attempt`).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._subscription import Delivery

#: JSON as the router carries it.
JSON = Any

#: Priority names the router accepts, with their numbers.
PRIORITIES: dict[str, int] = {
    "lowest": 1,
    "low": 3,
    "normal": 5,
    "high": 7,
    "critical": 9,
    "system": 10,
}

#: A priority: 1..=10 or one of the names in `PRIORITIES`.
Priority = int | str

_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_MAX_TOPIC_BYTES = 255

# Envelope fields in the order they are written.
_FIELDS = (
    "id",
    "type",
    "source",
    "target",
    "time",
    "priority",
    "payload",
    "correlation_id",
    "causation_id",
    "reply_to",
    "key",
    "ttl",
    "headers",
    "metadata",
    "datacontenttype",
)


_VALID_TOPICS: set[str] = set()


def topic_problem(topic: object) -> str | None:
    """Why `topic` is not a valid topic, or None when it is."""
    if topic in _VALID_TOPICS:
        return None
    problem = _topic_problem(topic)
    if problem is None and len(_VALID_TOPICS) < 4096:
        _VALID_TOPICS.add(topic)  # type: ignore[arg-type]
    return problem


def _topic_problem(topic: object) -> str | None:
    if not isinstance(topic, str):
        return f"a topic must be a string, got {type(topic).__name__}"
    if not topic:
        return "the topic is empty"
    if len(topic.encode()) > _MAX_TOPIC_BYTES:
        return f"topic is longer than {_MAX_TOPIC_BYTES} bytes"
    if _TOPIC.fullmatch(topic) is None:
        return (
            f"invalid topic {topic!r}: dot-separated segments of letters, digits, "
            "'_' and '-' expected"
        )
    return None


def priority_problem(priority: object) -> str | None:
    """Why `priority` is not a valid priority, or None when it is."""
    if isinstance(priority, bool):
        return "priority must be 1..=10 or a name, got a bool"
    if isinstance(priority, int):
        return None if 1 <= priority <= 10 else f"priority must be 1..=10, got {priority}"
    if isinstance(priority, str):
        if priority.lower() in PRIORITIES:
            return None
        names = ", ".join(PRIORITIES)
        return f"unknown priority name {priority!r} (expected 1..=10 or one of {names})"
    return f"priority must be 1..=10 or a name, got {type(priority).__name__}"


class _Ids:
    """UUIDv7 ids: the 48-bit millisecond time, then 74 bits that start at a
    random value per process and count up, so ids are unique, time-ordered,
    and cheap (no big-integer work or random draw per event)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """New random start (a forked child must not repeat its parent's ids)."""
        self.counter = random.getrandbits(62)
        self.rand_a = random.getrandbits(12)
        self.millis = -1
        self.prefix = ""

    def next(self) -> str:
        millis = time.time_ns() // 1_000_000
        if millis != self.millis:
            self.millis = millis
            self.prefix = (
                f"{(millis >> 16) & 0xFFFFFFFF:08x}-{millis & 0xFFFF:04x}-7{self.rand_a:03x}-"
            )
        self.counter = (self.counter + 1) & 0x3FFF_FFFF_FFFF_FFFF
        c = self.counter
        return f"{self.prefix}{0x8000 | (c >> 48):04x}-{c & 0xFFFF_FFFF_FFFF:012x}"


_IDS = _Ids()
os.register_at_fork(after_in_child=_IDS.reset)


def new_event_id() -> str:
    """A fresh UUIDv7 (time-ordered), as the router assigns."""
    return _IDS.next()


@dataclass
class Event:
    """One event: what is published, and what a subscription delivers.

    Only `type` (the topic) is required. `id` is assigned by the client when
    publishing (so that a publish re-sent after a reconnect keeps its id);
    `time` by the router. `priority` is 1..=10 or a name (`"high"`);
    delivered events carry the number.
    """

    type: str
    payload: JSON = None
    id: str | None = None
    source: str | None = None
    target: str | None = None
    time: str | None = None
    priority: Priority | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    reply_to: str | None = None
    key: str | None = None
    ttl: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, JSON] | None = None
    datacontenttype: str | None = None
    #: The subscription that delivered it (deliveries only).
    subscription_id: str | None = field(default=None, compare=False)
    #: The id to ack/nack a durable delivery by (deliveries only).
    delivery_id: str | None = field(default=None, compare=False)
    #: 1 on first delivery, counting up on redeliveries (deliveries only).
    attempt: int = field(default=1, compare=False)
    _delivery: Delivery | None = field(default=None, compare=False, repr=False)

    @property
    def topic(self) -> str:
        """Alias of `type`."""
        return self.type

    @property
    def data(self) -> JSON:
        """Alias of `payload` (CloudEvents)."""
        return self.payload

    def to_dict(self) -> dict[str, JSON]:
        """The envelope as the router reads it; unset fields are left out."""
        out: dict[str, JSON] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is None or (name == "headers" and not value):
                continue
            out[name] = value
        if "payload" not in out:
            out["payload"] = None
        return out

    def to_json(self) -> str:
        """`to_dict` as compact JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Event:
        """An event from the router's JSON (`topic`/`data` aliases accepted)."""
        topic = data.get("type", data.get("topic"))
        return cls(
            type=str(topic),
            payload=data.get("payload", data.get("data")),
            id=data.get("id"),
            source=data.get("source"),
            target=data.get("target"),
            time=data.get("time"),
            priority=data.get("priority"),
            correlation_id=data.get("correlation_id"),
            causation_id=data.get("causation_id"),
            reply_to=data.get("reply_to"),
            key=data.get("key"),
            ttl=data.get("ttl"),
            headers=dict(data.get("headers") or {}),
            metadata=data.get("metadata"),
            datacontenttype=data.get("datacontenttype"),
        )

    async def ack(self) -> None:
        """Acknowledges this durable delivery (nothing for live ones or
        events that were not delivered). Settling twice does nothing."""
        if self._delivery is not None:
            self._delivery.settle(ack=True)

    async def nack(self, *, delay: float | None = None, reason: str | None = None) -> None:
        """Rejects this durable delivery: the router redelivers it after
        `delay` seconds (else its backoff), and dead-letters it after the
        subscription's `maxAttempts`."""
        if self._delivery is not None:
            self._delivery.settle(ack=False, delay=delay, reason=reason)
