"""A two-agent workflow: a planner assigns a task and waits for its result
(`publish_and_wait`); a reviewer agent handles `task.assign` on a durable
group and publishes `task.completed` caused by the assignment.

    python two_agents.py                # local router
"""

from __future__ import annotations

import asyncio

from event_router import Event, EventEnabledAgent, EventRouterClient, event_handler


class Reviewer(EventEnabledAgent):
    """Reviews code on request."""

    capabilities = ["review"]  # noqa: RUF012
    group = "reviewers"

    @event_handler("task.assign")
    async def review(self, event: Event) -> None:
        code = event.payload["code"]
        issues = ["uses eval"] if "eval(" in code else []
        await self.publish("task.completed", {"result": {"issues": issues}}, caused_by=event)


class Planner(EventEnabledAgent):
    """Sends work and routes on the result."""

    async def run_workflow(self, code: str) -> str:
        done = await self.publish_and_wait(
            "task.assign",
            {"task": "review", "code": code},
            wait_for="task.completed",
            timeout=10,
        )
        issues = done.payload["result"]["issues"]
        if issues:
            await self.publish("review.needed", {"issues": issues})
            return f"review needed: {', '.join(issues)}"
        await self.publish("deployment.approved", {"code": code})
        return "approved"


async def main() -> None:
    async with EventRouterClient() as router_owner:
        # Each agent has its own connection to the same router.
        reviewer = Reviewer(EventRouterClient(router_owner.url, source="reviewer"), id="reviewer")
        planner = Planner(EventRouterClient(router_owner.url, source="planner"), id="planner")
        async with reviewer, planner:
            print("workflow 1:", await planner.run_workflow("print('hello')"))
            print("workflow 2:", await planner.run_workflow("eval(input())"))
        await reviewer.client.close()
        await planner.client.close()


if __name__ == "__main__":
    asyncio.run(main())
