"""Per-caller request rate limits: a token bucket for each API key (or client address in open
mode), kept in this process. Each API process enforces its own limit, so N processes behind a
load balancer admit up to N times the rate; the point is to stop one runaway client from
starving the others, not exact global accounting."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` requests per second on average, bursts of up to ``burst``; ``rate`` 0 admits
    everything. At most ``max_callers`` buckets are kept (least recently used dropped first):
    a flood of new addresses cannot grow memory without bound."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, caller: str, now: float | None = None) -> float | None:
        """Spend one token of ``caller``'s bucket: None when admitted, else the seconds until
        a token is available (for ``Retry-After``)."""
        if self.rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(caller, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self._buckets[caller] = bucket
        if len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / self.rate

    def wait(self, caller: str, now: float | None = None) -> float | None:
        """The seconds until ``caller`` has a token again (None: it has one), spending none."""
        bucket = self._buckets.get(caller)
        if self.rate <= 0 or bucket is None:
            return None
        now = time.monotonic() if now is None else now
        tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        """Whole seconds, at least 1 (the header takes an integer)."""
        return str(max(1, math.ceil(seconds)))


class StreamSlots:
    """Live streams held open at once: at most ``per_caller`` for one key (or address in open
    mode) and ``total`` in this process; each holds a Redis connection."""

    def __init__(self, per_caller: int, total: int) -> None:
        self.per_caller = per_caller
        self.total = total
        self._held: dict[str, int] = {}

    def refusal(self, caller: str) -> tuple[int, str] | None:
        """Take a slot for ``caller``: None when taken, else (status, reason)."""
        if self._held.get(caller, 0) >= self.per_caller:
            return 429, (f"{caller} holds {self.per_caller} live streams already (the most one "
                         "key may); close one first")  # fmt: skip
        if sum(self._held.values()) >= self.total:
            return 503, f"this API process serves {self.total} live streams already; retry later"
        self._held[caller] = self._held.get(caller, 0) + 1
        return None

    def release(self, caller: str) -> None:
        left = self._held.get(caller, 0) - 1
        if left > 0:
            self._held[caller] = left
        else:
            self._held.pop(caller, None)
