"""The async generators behind `EventRouterClient.stream` and `window`:
events one by one, in batches, or in sliding time windows, over one
subscription that closes with the generator."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncGenerator

from ._event import Event
from ._subscription import Subscription
from ._windows import Window, WindowAssigner, event_time


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
    sub: Subscription,
    assigner: WindowAssigner,
    clock: str,
    idle: float,
) -> AsyncGenerator[Window, None]:
    """See `_windows`: feeds `assigner` from `sub` and yields what it emits."""
    async with sub:
        while True:
            if clock == "wall":
                end = assigner.next_end()
                left = None if end is None else max(0.0, end - time.time())
            else:
                left = idle if assigner.next_end() is not None else None
            try:
                event = await asyncio.wait_for(sub._next(), left)
            except builtins.TimeoutError:
                out = assigner.advance(time.time()) if clock == "wall" else assigner.flush()
                for window in out:
                    yield window
                continue
            except Exception:
                for window in assigner.flush():
                    yield window
                return
            assigner.add(event_time(event), event)
            if clock == "wall":
                watermark = time.time()
            else:
                watermark = assigner.newest if assigner.newest is not None else 0.0
            for window in assigner.advance(watermark):
                yield window
