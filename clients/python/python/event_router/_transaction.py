"""`Transaction`: publishes collected in a block and stored all or nothing
as one atomic batch (`EventRouterClient.transaction`)."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._event import JSON
from .errors import PublishError

if TYPE_CHECKING:
    from ._client import EventRouterClient


class Transaction:
    """Publishes collected in a block and stored all or nothing
    (`EventRouterClient.transaction`)."""

    def __init__(self, client: EventRouterClient) -> None:
        self._client = client
        self._events: list[str] = []
        self._done = False
        #: Ids of the committed events, in order (after commit).
        self.event_ids: list[str] = []

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.commit()
        else:
            self.rollback()

    async def publish(self, type: str, payload: JSON = None, **fields: Any) -> str:
        """Adds an event (as `EventRouterClient.publish` takes it) and returns
        the id it will be stored under; nothing is sent before commit.

        Raises:
            PublishError: invalid topic or priority.
        """
        if self._done:
            raise PublishError("the transaction is finished", code="bad_request", retryable=False)
        event_id, text = self._client._event_json(type, payload, **fields)
        self._events.append(text)
        return event_id

    async def commit(self) -> list[str]:
        """Stores every event or none (one atomic batch); returns their ids.

        Raises:
            PublishError: the batch was refused; nothing was stored.
        """
        if self._done:
            return self.event_ids
        self._done = True
        self.event_ids = await self._client._batch_call(self._events, True)
        return self.event_ids

    def rollback(self) -> None:
        """Drops the collected events."""
        self._done = True
        self._events.clear()
