"""Event-time windows (`client.window`): tumbling (`slide == size`) and
sliding (`slide < size`) windows over the events' own `time`.

Window `k` covers `[origin + k*slide, origin + k*slide + size)`, where
`origin` is the time of the first event seen, so windows line up with the
data rather than with the wall clock. An event belongs to every window that
covers its time. A window is emitted once the *watermark* passes its end
plus `lateness`; the watermark is the wall clock (`clock="wall"`, the
default: events stamped by the router or their publisher) or the newest
event time seen (`clock="event"`: replayed or back-dated events; open
windows are then flushed after `idle` seconds without events). An event
whose windows have all been emitted is **late**: it is dropped, counted in
`late`, and passed to `on_late` when given. Empty windows are skipped.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable

from ._event import Event


class Window(list[Event]):
    """The events of one window, oldest first, with its `start` and `end`
    (seconds since the Unix epoch)."""

    def __init__(self, start: float, end: float, events: list[Event]) -> None:
        super().__init__(events)
        self.start = start
        self.end = end


def event_time(event: Event) -> float:
    """The event's `time` in seconds since the Unix epoch (now when absent
    or unreadable)."""
    if event.time:
        try:
            return datetime.datetime.fromisoformat(event.time).timestamp()
        except ValueError:
            pass
    return datetime.datetime.now(datetime.UTC).timestamp()


class WindowAssigner:
    """The pure windowing logic: `add` events, `advance` the watermark to
    get the windows it closes, `flush` to get the rest."""

    def __init__(
        self,
        size: float,
        slide: float,
        lateness: float = 0.0,
        on_late: Callable[[Event], None] | None = None,
    ) -> None:
        if size <= 0 or slide <= 0:
            raise ValueError("window size and slide must be positive")
        if slide > size:
            raise ValueError("a window's slide must not exceed its size (no gaps)")
        self.size = size
        self.slide = slide
        self.lateness = max(0.0, lateness)
        self.on_late = on_late
        self.origin: float | None = None
        self.late = 0
        self._open: dict[int, list[tuple[float, int, Event]]] = {}
        self._closed_below: int | None = None
        self._seq = 0
        self.newest: float | None = None

    def add(self, t: float, event: Event) -> None:
        if self.origin is None:
            self.origin = t
        self.newest = t if self.newest is None else max(self.newest, t)
        rel = t - self.origin
        last = math.floor(rel / self.slide)
        first = math.floor((rel - self.size) / self.slide) + 1
        if self._closed_below is not None:
            first = max(first, self._closed_below)
        if first > last:
            self.late += 1
            if self.on_late is not None:
                self.on_late(event)
            return
        self._seq += 1
        for k in range(first, last + 1):
            self._open.setdefault(k, []).append((t, self._seq, event))

    def _window(self, k: int) -> Window:
        assert self.origin is not None
        start = self.origin + k * self.slide
        events = [e for _, _, e in sorted(self._open.pop(k), key=lambda x: (x[0], x[1]))]
        return Window(start, start + self.size, events)

    def advance(self, watermark: float) -> list[Window]:
        """Emits (and closes) every window whose end plus `lateness` is at
        or before `watermark`."""
        if self.origin is None:
            return []
        limit = watermark - self.lateness
        close_below = math.floor((limit - self.origin - self.size) / self.slide) + 1
        if self._closed_below is None or close_below > self._closed_below:
            self._closed_below = close_below
        return [self._window(k) for k in sorted(self._open) if k < close_below]

    def next_end(self) -> float | None:
        """When the oldest open window may be emitted (its end plus
        `lateness`), if any is open."""
        if self.origin is None or not self._open:
            return None
        return self.origin + min(self._open) * self.slide + self.size + self.lateness

    def flush(self) -> list[Window]:
        """Emits every open window, oldest first."""
        if not self._open:
            return []
        self._closed_below = max(self._open) + 1
        return [self._window(k) for k in sorted(self._open)]
