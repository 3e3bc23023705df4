"""The async generators behind `EventRouterClient.stream` and `window`:
events one by one, in batches, or in sliding time windows, over one
subscription that closes with the generator."""

from __future__ import annotations

import asyncio
import builtins
import collections
import time
from collections.abc import AsyncGenerator

from ._event import Event
from ._subscription import Subscription


async def events(sub: Subscription) -> AsyncGenerator[Event, None]:
    async with sub:
        async for event in sub:
            yield event


async def batches(
    sub: Subscription, size: int, timeout: float | None
) -> AsyncGenerator[list[Event], None]:
    async with sub:
        while True:
            try:
                first = await sub._next()
            except Exception:
                return
            batch = [first]
            deadline = None if timeout is None else time.monotonic() + timeout
            while len(batch) < size:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(sub._next(), left))
                except builtins.TimeoutError:
                    break
                except Exception:
                    break
            yield batch
            for event in batch:
                await event.ack()


async def windows(
    sub: Subscription, size: float, slide: float
) -> AsyncGenerator[list[Event], None]:
    seen: collections.deque[tuple[float, Event]] = collections.deque()
    async with sub:
        next_at = time.monotonic() + slide
        while True:
            left = next_at - time.monotonic()
            if left > 0:
                try:
                    event = await asyncio.wait_for(sub._next(), left)
                except builtins.TimeoutError:
                    pass
                except Exception:
                    return
                else:
                    seen.append((time.monotonic(), event))
                    continue
            now = time.monotonic()
            next_at += slide
            while seen and seen[0][0] <= now - size:
                seen.popleft()
            if seen:
                yield [e for _, e in seen]
