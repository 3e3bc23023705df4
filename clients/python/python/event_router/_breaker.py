"""A circuit breaker for handlers and calls (`client.circuit_breaker`).

Closed, it counts consecutive failures of the `expected_exception` kinds
(other exceptions pass through uncounted); at `failure_threshold` it opens.
Open, every call fails fast with `CircuitOpenError` (retryable, with
`retry_after`) until `recovery_timeout` seconds have passed; then one call
goes through as a probe (half-open): success closes the breaker, failure
opens it again for another `recovery_timeout`.

On a handler of a durable subscription, a call refused while open raises
`CircuitOpenError`, so the delivery is nacked and comes back later instead
of reaching the failing dependency.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Literal, ParamSpec, TypeVar

from .errors import EventRouterError

P = ParamSpec("P")
R = TypeVar("R")

State = Literal["closed", "open", "half_open"]


class CircuitOpenError(EventRouterError):
    """The breaker is open: the call was not made (code `circuit_open`,
    retryable). `retry_after` is how many seconds until a probe may go."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code="circuit_open", retryable=True)
        self.retry_after = retry_after


class CircuitBreaker:
    """See the module docs. Usable as a decorator of async functions or
    through `call`."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        expected_exception: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if recovery_timeout < 0:
            raise ValueError("recovery_timeout must not be negative")
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.expected_exception = expected_exception
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.recovery_timeout:
            return "half_open"
        return "open"

    @property
    def failures(self) -> int:
        """Consecutive counted failures."""
        return self._failures

    def _admit(self) -> None:
        if self._opened_at is None:
            return
        waited = self._clock() - self._opened_at
        if waited < self.recovery_timeout or self._probing:
            left = max(0.0, self.recovery_timeout - waited)
            raise CircuitOpenError(
                f"circuit open after {self._failures} failures; next probe in {left:.1f}s",
                retry_after=left,
            )
        self._probing = True

    def _succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def _failed(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._probing = False

    async def call(self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs `fn` through the breaker.

        Raises:
            CircuitOpenError: the breaker is open (or a probe is under way).
        """
        self._admit()
        try:
            result = await fn(*args, **kwargs)
        except self.expected_exception:
            self._failed()
            raise
        except BaseException:
            # Not a failure of the dependency: a probe slot is given back.
            self._probing = False
            raise
        self._succeeded()
        return result

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(fn, *args, **kwargs)

        guarded.circuit_breaker = self  # type: ignore[attr-defined]
        return guarded


def circuit_breaker(
    failure_threshold: int = 5,
    recovery_timeout: float = 30.0,
    expected_exception: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> CircuitBreaker:
    """A new `CircuitBreaker`, for use as a decorator."""
    return CircuitBreaker(failure_threshold, recovery_timeout, expected_exception)


__all__ = ["CircuitBreaker", "CircuitOpenError", "circuit_breaker"]
