"""A monitor: prints every event (or those matching the patterns given) and,
every few seconds, the router's counters.

    EVENT_ROUTER_URL=ws://127.0.0.1:8080 python monitor.py 'task.#' 'agent.*'
    python monitor.py --seconds 5          # stops after 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from event_router import EventRouterClient, ManagementClient


async def main(patterns: list[str], seconds: float | None, every: float) -> None:
    async with EventRouterClient() as client:
        manage = ManagementClient(client)

        async def show_events() -> None:
            async with contextlib.aclosing(client.stream(*patterns)) as events:
                async for event in events:
                    payload = json.dumps(event.payload)
                    print(f"[{event.time}] {event.type} p{event.priority} {payload}", flush=True)

        async def show_stats() -> None:
            while True:
                await asyncio.sleep(every)
                stats = await manage.stats()
                broker = stats["broker"]
                print(
                    f"-- published {broker['published']}, subscriptions "
                    f"{broker['subscriptions']}, live {broker['live_subscriptions']}",
                    flush=True,
                )

        tasks = [asyncio.ensure_future(show_events()), asyncio.ensure_future(show_stats())]
        if client.local_router is not None:
            await client.publish("demo.hello", {"from": "monitor"})
        try:
            await asyncio.wait(tasks, timeout=seconds)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("patterns", nargs="*", default=["#"])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between stats")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.patterns, args.seconds, args.every))
