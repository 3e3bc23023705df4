"""Benchmark of the Python SDK over WebSocket on loopback.

1. Publish throughput with batching: `publish_nowait` events of ~100 bytes
   in batches of `--batch-size`, until the router confirmed all of them;
   events/s = events / (first publish .. last confirmation).
2. Publish→deliver latency at `--rate` events/s, unbatched: one client
   publishes each event in its own `publish` frame, paced; another client's
   live subscription receives it; latency = receive time - send time (one
   process, one clock). Reports p50, p99 and max.

Run it against a release build of the router (debug builds are several
times slower):

    cargo build --release
    EVENT_ROUTER_BIN=target/release/event-router python clients/python/bench/bench.py

Without `--url` (and `EVENT_ROUTER_URL`) it starts the router itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from event_router import Event, EventRouterClient


async def throughput(url: str | None, events: int, batch_size: int) -> tuple[str, float]:
    async with EventRouterClient(
        url, batch_size=batch_size, batch_timeout=0.005, buffer_size=50_000
    ) as client:
        url = client.url
        payload = {"sensor": "s-17", "value": 21.5, "unit": "C", "seq": 0}
        # Warm-up: connections, allocations.
        for _ in range(2_000):
            client.publish_nowait("bench.throughput", payload)
        await client.flush()
        room = batch_size * 4
        started = time.perf_counter()
        for _ in range(events):
            if client.buffered + room > client.buffer_size:
                await client.wait_for_room(room)
            client.publish_nowait("bench.throughput", payload)
        await client.flush()
        elapsed = time.perf_counter() - started
    assert url is not None
    return url, events / elapsed


async def latency(url: str, rate: float, seconds: float) -> tuple[list[float], list[float]]:
    """Publish->deliver latencies (ms), and how late the pacing loop woke
    up (ms): the second shows what the machine's scheduler adds by itself."""
    samples: list[float] = []
    lateness: list[float] = []
    async with EventRouterClient(url) as subscriber, EventRouterClient(url) as publisher:

        def received(event: Event) -> None:
            samples.append((time.perf_counter_ns() - event.payload["sent"]) / 1e6)

        await subscriber.subscribe("bench.latency", handler=received)
        interval = 1.0 / rate
        total = int(rate * seconds)
        started = time.perf_counter()
        pending: set[asyncio.Task[str]] = set()
        for n in range(total):
            target = started + n * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
                lateness.append((time.perf_counter() - target) * 1000)
            task = asyncio.ensure_future(
                publisher.publish("bench.latency", {"sent": time.perf_counter_ns(), "n": n})
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        deadline = time.perf_counter() + 5
        while len(samples) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # The first second warms up connections and caches.
    return samples[int(rate) :], lateness[int(rate) :]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=None, help="router URL (default: start one)")
    parser.add_argument("--events", type=int, default=200_000, help="throughput: events")
    parser.add_argument("--batch-size", type=int, default=500, help="throughput: batch size")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: duration")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    local: EventRouterClient | None = None
    url = args.url
    if url is None:
        # One local router for both phases.
        local = EventRouterClient()
        await local.connect()
        url = local.url
    try:
        _, rate = await throughput(url, args.events, args.batch_size)
        assert url is not None
        samples, lateness = await latency(url, args.rate, args.seconds)
    finally:
        if local is not None:
            await local.close()
    result = {
        "throughput_events_per_s": round(rate),
        "batch_size": args.batch_size,
        "events": args.events,
        "latency_rate": args.rate,
        "latency_samples": len(samples),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "max_ms": round(max(samples), 3),
        "loop_late_p99_ms": round(percentile(lateness, 99), 3) if lateness else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"publish throughput (batches of {args.batch_size}): "
            f"{result['throughput_events_per_s']:,} events/s over {args.events:,} events"
        )
        print(
            f"publish->deliver latency at {args.rate:g} events/s, unbatched "
            f"({len(samples)} samples): p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
        )
        print(
            f"(the pacing loop's own wake-ups were late by {result['loop_late_p99_ms']} ms "
            "at p99: what the machine's scheduler adds by itself)"
        )


if __name__ == "__main__":
    asyncio.run(main())
