"""Typed errors: every failure the SDK reports is an `EventRouterError`.

The router answers a failed request with a stable snake_case code
(docs/protocol.md, "Errors"); `error_from_code` turns each code into one of
the subclasses below. `TimeoutError` and `ConnectionError` also derive from
Python's built-in exceptions of the same name, so `except TimeoutError`
written against asyncio keeps working.
"""

from __future__ import annotations

import builtins
from typing import Literal

#: Which kind of call failed; picks the class of codes that any call can get.
Context = Literal["publish", "subscribe", "request", "manage", "connect"]

#: Codes after which the same call may succeed if made again later.
RETRYABLE_CODES = frozenset(
    {
        "unavailable",
        "closed",
        "not_ready",
        "rate_limited",
        "too_many_requests",
        "too_many_connections",
        "timeout",
        "queue_full",
        "buffer_full",
        "connection_lost",
    }
)


class EventRouterError(Exception):
    """Base of every error the SDK raises.

    `code` is the router's stable snake_case code (or the SDK's own, such as
    `buffer_full`), `message` what went wrong, `retryable` whether the same
    call may succeed later.
    """

    def __init__(self, message: str, *, code: str = "error", retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConnectionError(EventRouterError, builtins.ConnectionError):
    """The router cannot be reached, or reconnecting gave up; the client is
    closed once this is raised for a lost connection."""


class PublishError(EventRouterError):
    """The router rejected a publish or could not store it. `retryable`
    says whether publishing the same event again may succeed."""


class BufferFullError(PublishError):
    """The bounded buffer of unconfirmed publishes is full (the connection
    is down, or the router does not keep up). Retryable."""


class SubscriptionError(EventRouterError):
    """A subscription was refused (bad pattern or filter, unknown group,
    limits), or ended by the router."""


class TimeoutError(EventRouterError, builtins.TimeoutError):
    """No reply in time: a request's response, a publish's confirmation, or
    `publish_and_wait`'s awaited event."""


class AuthError(EventRouterError):
    """The credential is missing, unknown or invalid (`unauthorized`), or
    the principal may not do this (`forbidden`)."""


class HandlerError(EventRouterError):
    """The responder's handler raised: its message is in `message` (code
    `handler_error`)."""


#: Codes that mean the same thing whatever call got them.
_BY_CODE: dict[str, type[EventRouterError]] = {
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "timeout": TimeoutError,
    "too_many_connections": ConnectionError,
    "handler_error": HandlerError,
    # The event was refused.
    "invalid_event": PublishError,
    "too_deep": PublishError,
    "invalid_topic": PublishError,
    "invalid_priority": PublishError,
    "payload_too_large": PublishError,
    "frame_too_large": PublishError,
    "queue_full": PublishError,
    "rate_limited": PublishError,
    "unsupported_specversion": PublishError,
    "buffer_full": BufferFullError,
    # The subscription was refused or ended.
    "invalid_pattern": SubscriptionError,
    "invalid_filter": SubscriptionError,
    "invalid_subscription": SubscriptionError,
    "already_subscribed": SubscriptionError,
    "unknown_subscription": SubscriptionError,
    "unknown_delivery": SubscriptionError,
    "too_many_subscriptions": SubscriptionError,
    "too_many_patterns": SubscriptionError,
}

#: The class of any other code (a malformed request, a broker that cannot
#: serve, a bug), by the kind of call that got it.
_BY_CONTEXT: dict[str, type[EventRouterError]] = {
    "publish": PublishError,
    "request": PublishError,
    "subscribe": SubscriptionError,
    "connect": ConnectionError,
    "manage": EventRouterError,
}


def error_class(code: str, context: Context) -> type[EventRouterError]:
    """The class `error_from_code` uses for `code` in `context`."""
    return _BY_CODE.get(code, _BY_CONTEXT[context])


def error_from_code(code: str, message: str, context: Context = "manage") -> EventRouterError:
    """The typed error for a router error `code` met by a call of kind
    `context`."""
    return error_class(code, context)(message, code=code)
