"""Token-bucket request limits, per key (an API token), per replica, in memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """``rate`` requests per second with bursts up to ``burst``; ``rate <= 0`` disables it.

    Each key has a bucket of ``burst`` tokens refilled at ``rate`` per second; a request takes
    one. :meth:`acquire` answers ``None`` (allowed) or the seconds until one token is back.
    The least recently used buckets are dropped beyond ``max_keys`` (a dropped bucket comes
    back full, which only ever errs towards allowing).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float | None:
        if not self.enabled:
            return None
        now = self.clock()
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after_header(wait_s: float) -> str:
        """``Retry-After`` takes whole seconds: round up, at least 1."""
        return str(max(1, math.ceil(wait_s)))
