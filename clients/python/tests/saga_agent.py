"""A saga agent in its own process, for tests that SIGKILL it mid-saga.

Runs the same `process_order` saga as `test_patterns.order_saga` (same step
and compensation names, so another agent can resume its sagas) against the
router at argv[1], appending the name of every step and compensation it
runs to the file argv[2] (flushed and synced, so the line is there even
when the process is killed right after). Prints `ready` once subscribed,
then runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from event_router import Event, EventRouterClient
from event_router.saga import step


def record(path: str, what: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(what + "\n")
        f.flush()
        os.fsync(f.fileno())


async def main(url: str, log_path: str) -> None:
    client = EventRouterClient(url)
    await client.connect()

    @client.saga("process_order")
    class ProcessOrderSaga:
        data: dict[str, Any]

        @step("order.created", start=True)
        async def start(self, event: Event) -> None:
            assert isinstance(event.payload, dict)
            self.data["order_id"] = event.payload["id"]
            record(log_path, "reserve")

        @start.compensation
        async def release_inventory(self) -> None:
            record(log_path, "release")

        @step("inventory.reserved")
        async def inventory_reserved(self, event: Event) -> None:
            record(log_path, "charge")

        @inventory_reserved.compensation
        async def refund(self) -> None:
            record(log_path, "refund")

        @step("payment.completed")
        async def payment_completed(self, event: Event) -> None:
            record(log_path, "ship")
            self.complete()  # type: ignore[attr-defined]

        @step("inventory.failed", "payment.failed")
        async def handle_failure(self, event: Event) -> None:
            self.compensate()  # type: ignore[attr-defined]

    # The decorated class is a SagaDefinition; mypy sees the class body.
    saga: Any = ProcessOrderSaga
    await saga.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
