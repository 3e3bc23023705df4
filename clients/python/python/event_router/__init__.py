"""Python SDK for event-router: publish, subscribe, handle and request
events over the router's WebSocket protocol, with asyncio.

```python
from event_router import EventRouterClient

async with EventRouterClient("ws://127.0.0.1:8080") as client:
    @client.on("task.*", group="workers")
    async def work(event):
        print(event.type, event.payload)

    await client.publish("task.created", {"id": 1}, priority="high")
```

Without a URL (and without `EVENT_ROUTER_URL`), the client starts the
bundled `event-router serve` on a free loopback port and stops it on exit.
See docs/python.md.
"""

from ._breaker import CircuitBreaker, CircuitOpenError
from ._client import ERROR_HEADER, URL_ENV, EventRouterClient
from ._config import ReconnectPolicy
from ._crypto import DecryptionError, PayloadCipher, generate_key
from ._event import PRIORITIES, Event
from ._event_streams import EventStream, StreamEvent, VersionConflictError
from ._local import LocalRouter, find_binary
from ._subscription import Subscription
from ._transaction import Transaction
from .agent import EventEnabledAgent, event_handler
from .errors import (
    AuthError,
    BufferFullError,
    ConnectionError,
    EventRouterError,
    HandlerError,
    PublishError,
    SubscriptionError,
    TimeoutError,
    error_from_code,
)
from .management import ManagementClient

__all__ = [
    "ERROR_HEADER",
    "PRIORITIES",
    "URL_ENV",
    "AuthError",
    "BufferFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConnectionError",
    "DecryptionError",
    "Event",
    "EventEnabledAgent",
    "EventRouterClient",
    "EventRouterError",
    "EventStream",
    "HandlerError",
    "LocalRouter",
    "ManagementClient",
    "PayloadCipher",
    "PublishError",
    "ReconnectPolicy",
    "StreamEvent",
    "Subscription",
    "SubscriptionError",
    "TimeoutError",
    "Transaction",
    "VersionConflictError",
    "error_from_code",
    "event_handler",
    "find_binary",
    "generate_key",
]
