"""The event as agents see it: the router's JSON envelope as a dataclass.

Attribute names are the envelope's (`event.type`, `event.payload`,
`event.source`, `event.priority`, `event.id`, ...). A delivered event also
carries where it came from (`subscription_id`, `delivery_id`, `attempt`).
"""

from __future__ import annotations

import json
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


def topic_problem(topic: object) -> str | None:
    """Why `topic` is not a valid topic, or None when it is."""
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


def new_event_id() -> str:
    """A fresh UUIDv7 (time-ordered), as the router assigns.

    The 74 random bits come from `random` (not a secret: an id only has to
    be unique), which is several times cheaper than `os.urandom` per event.
    """
    millis = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (
        ((millis & 0xFFFF_FFFF_FFFF) << 80)
        | (0x7 << 76)
        | ((rand >> 62) << 64)
        | (0b10 << 62)
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


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
