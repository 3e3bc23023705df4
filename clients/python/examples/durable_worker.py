"""An agent worker on a durable group: start several of these and they share
the `task.*` events; a normal return acks, an exception nacks (the router
redelivers with backoff and dead-letters after `maxAttempts`).

    EVENT_ROUTER_URL=ws://127.0.0.1:8080 python durable_worker.py [--count N]

Without EVENT_ROUTER_URL a local router is started, and a few tasks are
published so that there is something to do.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from event_router import Event, EventRouterClient


async def main(count: int) -> None:
    done = asyncio.Event()
    handled = 0

    async with EventRouterClient(source="worker") as client:

        @client.on("task.*", group="workers", max_in_flight=10)
        async def work(event: Event) -> None:
            nonlocal handled
            if event.payload.get("fail") and event.attempt == 1:
                raise RuntimeError("transient failure; the router will redeliver")
            print(f"task {event.payload['id']} done (attempt {event.attempt})", flush=True)
            await client.publish("result.ready", {"task": event.payload["id"]}, caused_by=event)
            handled += 1
            if handled >= count:
                done.set()

        @client.on_error
        async def report(error: BaseException, event: Event | None) -> None:
            print(f"handler failed on {event.id if event else '-'}: {error}", flush=True)

        await client.wait_subscribed()
        if not os.environ.get("EVENT_ROUTER_URL"):
            for n in range(count):
                await client.publish("task.created", {"id": n, "fail": n == 1})
        await done.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5, help="tasks to handle before exiting")
    asyncio.run(main(parser.parse_args().count))
