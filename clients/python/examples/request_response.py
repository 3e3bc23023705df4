"""Request/response: one client answers `calculator.add`, another asks. A
raised exception in the responder reaches the requester as `HandlerError`.

    python request_response.py          # local router
"""

from __future__ import annotations

import asyncio

from event_router import Event, EventRouterClient, HandlerError


async def main() -> None:
    async with EventRouterClient() as service:

        @service.respond("calculator.add")
        async def add_numbers(request: Event) -> dict[str, float]:
            x, y = request.payload["x"], request.payload["y"]
            if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                raise ValueError("x and y must be numbers")
            return {"result": x + y}

        await service.wait_subscribed()
        # Another connection to the same router, as another agent would have.
        async with EventRouterClient(service.url) as caller:
            response = await caller.request("calculator.add", {"x": 10, "y": 20}, timeout=5.0)
            print(f"Result: {response.payload['result']}")
            try:
                await caller.request("calculator.add", {"x": "ten", "y": 20}, timeout=5.0)
            except HandlerError as e:
                print(f"Refused: {e.message}")


if __name__ == "__main__":
    asyncio.run(main())
