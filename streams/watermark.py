"""Event-time watermarks of the stream worker's partitions (pure; `app.py` feeds them)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Watermark:
    """Event-time watermark of one partition number (over the input topics): the newest event time seen; once the
    partition has been idle for `idle_s` with nothing left to read, the wall clock minus `idle_s` when that is later
    (so a quiet system still closes its last windows and timeouts, while a replay of old events, which keeps the
    partition busy, is judged by event time alone).

    While input topics still have records to read (`lagging`), the watermark is the lowest of *their* newest event
    times instead, and never follows the clock. In a backlog the consumer reads topics and partitions at different
    speeds (the feedback topic, a third the size, ran minutes of event time ahead of the decisions): the newest
    event time of the fastest topic, or the clock for a partition that merely waited, would close windows and
    feedback TTLs that unread events still belong to (their facts then count as late and are dropped)."""

    event_times: dict[str, float] = field(default_factory=dict)
    """Input topic ("" for entries recovered from the table) → newest event time seen."""
    last_wall: float = field(default_factory=time.monotonic)

    def observe(self, t: float, topic: str = "") -> None:
        self.event_times[topic] = max(self.event_times.get(topic, t), t)
        self.last_wall = time.monotonic()

    def current(self, idle_s: float, lagging: Sequence[str] = ()) -> float | None:
        if lagging:
            behind = [self.event_times.get(topic) for topic in lagging]
            return None if None in behind else min(t for t in behind if t is not None)  # None: hold it
        newest = max(self.event_times.values(), default=None)
        if time.monotonic() - self.last_wall < idle_s:
            return newest
        wall = time.time() - idle_s
        return wall if newest is None else max(newest, wall)
