"""Per-user rate limits in `limits` notation, spent all-or-nothing across every window."""

from __future__ import annotations

import asyncio
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string


class UserRateLimiter:
    """Moving-window limits per user, e.g. `5/minute;50/day`, kept in a `limits` storage."""

    def __init__(self, spec: str, storage_uri: str = "memory://") -> None:
        self._limits = parse_many(spec)
        # The asyncio strategies need the async variant of whatever backend the URI names.
        if not storage_uri.startswith("async+"):
            storage_uri = "async+" + storage_uri
        self._strategy = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self._lock = asyncio.Lock()

    @property
    def capacity(self) -> int:
        """The largest cost any single `acquire` can ever be granted."""
        return min(limit.amount for limit in self._limits)

    async def acquire(self, user_id: int, cost: int = 1) -> float | None:
        """Spend `cost` on every limit and return None, or spend nothing and return seconds to wait.

        The wait is until the binding window's oldest entry expires: exact for cost 1 and for
        entries spent together, a lower bound when `cost` needs several separate entries to expire.
        """
        if not 0 < cost <= self.capacity:
            raise ValueError(f"cost must be between 1 and {self.capacity}, got {cost}")
        key = ("user", str(user_id))
        # The lock makes check-then-spend atomic within this process; `limits` has no
        # multi-window transaction, and spending on some windows but not others would leak quota.
        async with self._lock:
            now = time.time()
            windows = [await self._strategy.get_window_stats(limit, *key) for limit in self._limits]
            waits = [w.reset_time - now for w in windows if w.remaining < cost]
            if waits:
                return max(waits)
            for limit in self._limits:
                if not await self._strategy.hit(limit, *key, cost=cost):
                    # Another process sharing the storage spent the quota since the check above.
                    # Windows already hit stay spent: that errs towards admitting less, never more.
                    window = await self._strategy.get_window_stats(limit, *key)
                    return max(window.reset_time - time.time(), 0.001)
        return None

    def describe(self) -> str:
        """The limits in words for users, e.g. `5 per minute, 50 per day`."""
        return ", ".join(_describe(limit) for limit in self._limits)


def _describe(limit: RateLimitItem) -> str:
    unit = limit.GRANULARITY.name
    if limit.multiples == 1:
        return f"{limit.amount} per {unit}"
    return f"{limit.amount} per {limit.multiples} {unit}s"
