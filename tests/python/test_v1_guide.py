"""The seed v1 usage guide's client examples, run against a real router.

The guide's clients connect to the server root (`ws://host:port`, no path)
and speak v1 frames (`"type"`, not `"op"`). Each message below is copied
verbatim from the guide ("Client Usage Examples" and "Testing the
Service"); only the address differs. The guide's other examples (direct
Python API, agent integration) call the original Python service in-process
and have no wire form.
"""

import json
from datetime import datetime

import websocket

TIMEOUT = 10


def connect(router):
    # The guide's URI has no path: seed clients talk to `/`.
    return websocket.create_connection(f"ws://{router.addr}", timeout=TIMEOUT)


def reply(ws):
    return json.loads(ws.recv())


def guide_publish(router, event_message):
    """Example 1's client: send one `publish_event`, wait for the reply."""
    ws = connect(router)
    try:
        ws.send(json.dumps(event_message))
        return reply(ws)
    finally:
        ws.close()


def publishing_example_message():
    # Example 1, "Publishing Events (Python Client)".
    return {
        "type": "publish_event",
        "event": {
            "type": "task_created",
            "priority": "normal",
            "source": "task_manager",
            "target": "worker_pool",
            "payload": {
                "task_id": "task-123",
                "description": "Process data batch",
                "created_at": datetime.now().isoformat()
            },
            "metadata": {
                "user": "system",
                "version": "1.0"
            }
        }
    }


def test_publishing_example_is_acknowledged(router):
    response = guide_publish(router, publishing_example_message())
    assert response["type"] == "event_published", response
    assert response["status"] == "published", response
    assert response["event_id"], response


def test_subscribing_example_receives_only_events_matching_the_nested_filter(router):
    # Example 2, "Subscribing to Events".
    subscription_message = {
        "type": "subscribe",
        "subscription": {
            "type": "filtered",
            "filter": {
                "event_types": ["task_created", "task_completed"],
                "sources": ["task_manager"],
                "priorities": ["high", "critical"]
            }
        }
    }
    ws = connect(router)
    try:
        ws.send(json.dumps(subscription_message))
        subscribed = reply(ws)
        assert subscribed["type"] == "subscribed", subscribed

        def event(topic, source, priority, n):
            return {"type": "publish_event", "event": {
                "type": topic, "source": source, "priority": priority, "payload": {"n": n}}}

        # Each of the first three misses one criterion; the last matches.
        for message in [
            event("task_created", "task_manager", "normal", 1),
            event("task_created", "scheduler", "high", 2),
            event("task_updated", "task_manager", "critical", 3),
            event("task_completed", "task_manager", "critical", 4),
        ]:
            assert guide_publish(router, message)["type"] == "event_published"

        received = reply(ws)
        assert received["type"] == "event", received
        assert received["event"]["type"] == "task_completed", received
        assert received["event"]["payload"] == {"n": 4}, received
        assert received["event"]["priority"] == "critical", received
        # Nothing else was queued before it (deliveries keep publish order).
        ws.send(json.dumps({"type": "ping", "id": "after"}))
        assert reply(ws)["type"] == "pong"
    finally:
        ws.close()


def test_quick_test_script_pings_and_publishes(router):
    # "Testing the Service": the quick test script's two exchanges.
    ws = connect(router)
    try:
        ws.send(json.dumps({"type": "ping"}))
        pong = reply(ws)
        assert pong["type"] == "pong", pong

        event = {
            "type": "publish_event",
            "event": {
                "type": "custom_event",
                "priority": "normal",
                "source": "test_client",
                "payload": {"test": True}
            }
        }
        ws.send(json.dumps(event))
        ack = reply(ws)
        assert ack["type"] == "event_published", ack
    finally:
        ws.close()


def test_subscription_with_an_unknown_key_is_answered_with_a_v1_error(router):
    ws = connect(router)
    try:
        for subscription, key in [
            ({"type": "filtered", "filter": {"event_type": ["task_created"]}}, "event_type"),
            ({"type": "pattern", "pattern": "task_*", "flags": "i"}, "flags"),
            ({"type": "conditional", "conditions": {"priority": {"$gte": 7}}, "match": "any"}, "match"),
        ]:
            ws.send(json.dumps({"type": "subscribe", "subscription": subscription}))
            error = reply(ws)
            assert error["type"] == "error", error
            assert error["code"] == "invalid_frame", error
            assert key in error["error"], error
    finally:
        ws.close()


def test_pattern_and_conditional_subscriptions_deliver_matching_events(router):
    ws = connect(router)
    try:
        for subscription in [
            {"type": "pattern", "pattern": "^task_"},
            {"type": "conditional", "conditions": {"payload.test": True}},
        ]:
            ws.send(json.dumps({"type": "subscribe", "subscription": subscription}))
            assert reply(ws)["type"] == "subscribed"
        guide_publish(router, publishing_example_message())
        guide_publish(router, {"type": "publish_event", "event": {
            "type": "custom_event", "priority": "normal", "source": "test_client",
            "payload": {"test": True}}})
        topics = sorted(reply(ws)["event"]["type"] for _ in range(2))
        assert topics == ["custom_event", "task_created"], topics
    finally:
        ws.close()
