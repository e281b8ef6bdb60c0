"""Per-user rate limits in `limits` notation, spent all-or-nothing across every window."""

from __future__ import annotations

import asyncio
import functools
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import Redis, RedisCluster


class UserRateLimiter:
    """Moving-window limits per user, e.g. `5/minute;50/day`, kept in a `limits` storage.

    `storage_uri` is `memory://` for one process, or `redis://host:port/db` to share every
    user's windows between the processes that use the same server.
    """

    def __init__(self, spec: str, storage_uri: str = "memory://") -> None:
        self._limits = _parse(spec)
        self._storage = _async_storage(storage_uri)
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._lock = asyncio.Lock()

    @property
    def capacity(self) -> int:
        """The largest cost any single `acquire` can ever be granted."""
        return self.capacity_for(None)

    def capacity_for(self, spec: str | None) -> int:
        """The largest cost `acquire` can grant under `spec` (None: the limiter's own)."""
        return min(limit.amount for limit in self._limits_for(spec))

    async def acquire(
        self, user_id: int, cost: int = 1, *, spec: str | None = None
    ) -> float | None:
        """Spend `cost` on every limit and return None, or spend nothing and return seconds to wait.

        `spec` replaces the limiter's own limits for this call (a guild's own per-user limit).
        Windows are counted per user and per limit, so calls under specs that share a limit
        (`5/minute` in both) share its window. The wait is until the binding window's oldest
        entry expires: exact for cost 1 and for entries spent together, a lower bound when
        `cost` needs several separate entries to expire.
        """
        limits = self._limits_for(spec)
        capacity = min(limit.amount for limit in limits)
        if not 0 < cost <= capacity:
            raise ValueError(f"cost must be between 1 and {capacity}, got {cost}")
        key = ("user", str(user_id))
        # The lock makes check-then-spend atomic within this process; `limits` has no
        # multi-window transaction, and spending on some windows but not others would leak quota.
        async with self._lock:
            now = time.time()
            windows = [await self._strategy.get_window_stats(limit, *key) for limit in limits]
            waits = [w.reset_time - now for w in windows if w.remaining < cost]
            if waits:
                return max(waits)
            for limit in limits:
                if not await self._strategy.hit(limit, *key, cost=cost):
                    # Another process sharing the storage spent the quota since the check above.
                    # Windows already hit stay spent: that errs towards admitting less, never more.
                    window = await self._strategy.get_window_stats(limit, *key)
                    return max(window.reset_time - time.time(), 0.001)
        return None

    def describe(self, spec: str | None = None) -> str:
        """The limits in words for users, e.g. `5 per minute, 50 per day`."""
        return ", ".join(_describe(limit) for limit in self._limits_for(spec))

    async def close(self) -> None:
        """Close the storage's connections, if it has any."""
        # `limits` storages have no close of their own; the redis-py bridge keeps its client here.
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if isinstance(client, Redis | RedisCluster):
            await client.aclose()

    def _limits_for(self, spec: str | None) -> tuple[RateLimitItem, ...]:
        return self._limits if spec is None else _parse(spec)


@functools.lru_cache(maxsize=256)
def _parse(spec: str) -> tuple[RateLimitItem, ...]:
    # Guild overrides arrive as strings on every call; parse each distinct one once.
    return tuple(parse_many(spec))


def _async_storage(uri: str) -> Storage:
    # The asyncio strategies need the async variant of whatever backend the URI names.
    uri = uri.removeprefix("async+")
    if uri.split("://", 1)[0].split("+", 1)[0] in {"redis", "rediss"}:
        # redis-py's asyncio client is a dependency already; `limits` defaults to coredis.
        storage = storage_from_string("async+" + uri, implementation="redispy")
    else:
        storage = storage_from_string("async+" + uri)
    assert isinstance(storage, Storage)
    return storage


def _describe(limit: RateLimitItem) -> str:
    unit = limit.GRANULARITY.name
    if limit.multiples == 1:
        return f"{limit.amount} per {unit}"
    return f"{limit.amount} per {limit.multiples} {unit}s"
