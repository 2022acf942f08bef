"""Token-bucket rate limits per API key (or per client IP for anonymous loopback use)."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """One bucket of `burst` tokens per identity, refilled at `per_s` tokens a second.

    In-process: each gateway instance limits on its own, so N instances allow up to N times the rate. Buckets of
    identities not seen for a while are dropped beyond `max_identities` (least recently used first).
    """

    def __init__(
        self,
        per_s: float,
        burst: int,
        *,
        max_identities: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s = per_s
        self.burst = burst
        self._max = max_identities
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # identity -> (tokens, last refill)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_s > 0

    def acquire(self, identity: str) -> float:
        """Take one token; returns 0.0 when allowed, else the seconds until a token is available (Retry-After)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(identity, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.per_s)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.per_s
            self._buckets[identity] = (tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    """`Retry-After` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
