"""CloudEvents over HTTP (DESIGN §5): events built with the official
CloudEvents Python SDK, published in structured and binary content mode to
`POST /api/v1/events`, and received by a WebSocket subscriber (`/ws`, v2
frames) with their attributes mapped onto the router's event fields."""

import json
from datetime import datetime

import requests
import websocket
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

TIMEOUT = 10


def subscribe(router, topics):
    ws = websocket.create_connection(router.ws_url, timeout=TIMEOUT)
    ws.send(json.dumps({"op": "subscribe", "id": "1", "topics": topics}))
    while True:
        frame = json.loads(ws.recv())
        if frame.get("id") == "1":
            assert frame["op"] == "ok", frame
            assert frame.get("subscription_id"), frame
            return ws


def next_event(ws):
    while True:
        frame = json.loads(ws.recv())
        if frame["op"] == "event":
            return frame["event"]
        assert frame["op"] != "error", frame


def publish(router, message):
    response = requests.post(
        f"{router.http_url}/api/v1/events",
        headers=message.headers,
        data=message.body,
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    return response.json()


def same_instant(a: str, b: datetime) -> bool:
    return datetime.fromisoformat(a.replace("Z", "+00:00")) == b


def test_structured_mode_event_is_accepted_and_delivered_with_attributes_mapped(router):
    ws = subscribe(router, ["task.*"])
    event = CloudEvent(
        {"type": "task.created", "source": "/agents/planner", "datacontenttype": "application/json"},
        {"task": 42, "title": "write docs"},
    )
    message = to_structured(event, JSONFormat())
    assert message.headers["content-type"].startswith("application/cloudevents+json")

    receipt = publish(router, message)
    assert receipt["event_id"] == event.get_id()
    assert receipt["status"] == "published"
    assert receipt["timestamp"]

    got = next_event(ws)
    assert got["id"] == event.get_id()
    assert got["type"] == "task.created"
    assert got["source"] == "/agents/planner"
    assert got["payload"] == {"task": 42, "title": "write docs"}
    assert same_instant(got["time"], event.get_time())
    assert got["priority"] == 5
    ws.close()


def test_binary_mode_event_is_accepted_and_delivered_with_attributes_mapped(router):
    ws = subscribe(router, ["agent.#"])
    event = CloudEvent(
        {"type": "agent.step.done", "source": "urn:agent:7", "datacontenttype": "application/json"},
        {"step": 3, "ok": True},
    )
    message = to_binary(event, JSONFormat())
    assert message.headers["ce-type"] == "agent.step.done"

    receipt = publish(router, message)
    assert receipt["event_id"] == event.get_id()

    got = next_event(ws)
    assert got["id"] == event.get_id()
    assert got["type"] == "agent.step.done"
    assert got["source"] == "urn:agent:7"
    assert got["payload"] == {"step": 3, "ok": True}
    assert same_instant(got["time"], event.get_time())
    ws.close()


def test_priority_extension_maps_to_priority_in_both_modes(router):
    ws = subscribe(router, ["alert.*"])
    binary = CloudEvent({"type": "alert.raised", "source": "/monitor", "priority": 9}, {"n": 1})
    message = to_binary(binary, JSONFormat())
    assert message.headers["ce-priority"] == "9"
    publish(router, message)
    got = next_event(ws)
    assert got["id"] == binary.get_id()
    assert got["priority"] == 9

    structured = CloudEvent({"type": "alert.cleared", "source": "/monitor", "priority": 2}, {"n": 2})
    publish(router, to_structured(structured, JSONFormat()))
    got = next_event(ws)
    assert got["id"] == structured.get_id()
    assert got["priority"] == 2
    ws.close()


def test_invalid_cloudevent_is_rejected_with_an_error_code(router):
    response = requests.post(
        f"{router.http_url}/api/v1/events",
        headers={"content-type": "application/cloudevents+json"},
        data=json.dumps({"specversion": "1.0", "id": "x", "source": "/s", "type": "bad topic!"}),
        timeout=TIMEOUT,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
