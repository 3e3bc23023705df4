"""Pure pieces: event ids, the JSON encoder, the reconnect policy,
durations and URLs (no router needed)."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from event_router import Event, PublishError, ReconnectPolicy
from event_router._client import _dumps, _ws_url
from event_router._config import parse_duration
from event_router._event import new_event_id


def test_event_ids_are_unique_time_ordered_uuidv7s() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "time-ordered within a process"
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 2**70, 1.5, 1e300, 'é\n"\u2028', [], {}, {"a": [1, {"b": None}]}],
)
def test_the_encoder_writes_what_json_dumps_writes(value: object) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert _dumps(value, "payload") == expected


def test_values_that_are_not_json_are_publish_errors() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    for bad in (math.nan, math.inf, {"x": object()}, {1j: 1}, cyclic):
        with pytest.raises(PublishError) as caught:
            _dumps(bad, "payload")
        assert caught.value.code == "invalid_event"


def test_reconnect_delays_grow_exponentially_with_jitter_and_stop_at_max() -> None:
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=0.5, jitter=0.0)
    assert [round(policy.delay(n, 0.7), 3) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    jittery = ReconnectPolicy(jitter=0.5)
    assert jittery.delay(1, 0.0) == pytest.approx(0.1)
    assert jittery.delay(1, 1.0) == pytest.approx(0.05)
    three = ReconnectPolicy.from_value({"enabled": True, "max_attempts": 3})
    assert three.allows(2) and not three.allows(3)
    assert not ReconnectPolicy.from_value(False).allows(0)
    assert ReconnectPolicy.from_value({"backoff": "constant"}).delay(5, 0.0) == pytest.approx(0.1)


def test_durations_and_urls_are_read() -> None:
    assert [parse_duration(v) for v in (2, 0.5, "500ms", "30s", "1m", "1h")] == [
        2.0,
        0.5,
        0.5,
        30.0,
        60.0,
        3600.0,
    ]
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("soon")
    assert _ws_url("http://h:1") == "ws://h:1/ws"
    assert _ws_url("https://h/") == "wss://h/ws"
    assert _ws_url("ws://h:1/ws?token=t") == "ws://h:1/ws?token=t"
    with pytest.raises(ValueError, match="ws://"):
        _ws_url("redis://h")


def test_events_round_trip_through_the_envelope() -> None:
    event = Event(type="a.b", payload={"x": 1}, priority="high", headers={"h": "v"}, ttl=3)
    data = event.to_dict()
    assert data == {
        "type": "a.b",
        "payload": {"x": 1},
        "priority": "high",
        "headers": {"h": "v"},
        "ttl": 3,
    }
    again = Event.from_dict(json.loads(event.to_json()))
    assert again == event
    assert Event.from_dict({"topic": "c.d", "data": 5}).payload == 5
