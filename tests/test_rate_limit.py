"""Per-user rate limits: multi-window specs, all-or-nothing costs, retry-after, concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from limits.aio.storage import MemoryStorage

from bot.rate_limit import UserRateLimiter

pytest_plugins = ["tests.redis_server"]


class Clock:
    """Wall time that moves only when told; `limits` and the limiter both read `time.time`."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


@pytest.fixture
def networked_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every storage call yield to the loop, as a Redis round trip would."""

    def yielding(method: Callable[..., Coroutine[Any, Any, Any]]) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return await method(*args, **kwargs)

        return call

    for name in ("get_moving_window", "acquire_entry"):
        monkeypatch.setattr(MemoryStorage, name, yielding(getattr(MemoryStorage, name)))


async def admitted(limiter: UserRateLimiter, user: int, attempts: int) -> int:
    waits = await asyncio.gather(*(limiter.acquire(user) for _ in range(attempts)))
    return sum(wait is None for wait in waits)


async def test_admits_up_to_the_limit_then_waits_until_the_oldest_hit_expires(clock: Clock) -> None:
    limiter = UserRateLimiter("5/minute")
    for _ in range(3):
        assert await limiter.acquire(1) is None
    clock.advance(10)
    for _ in range(2):
        assert await limiter.acquire(1) is None

    assert await limiter.acquire(1) == pytest.approx(50)
    clock.advance(49.9)
    assert await limiter.acquire(1) == pytest.approx(0.1)
    clock.advance(0.2)
    assert await limiter.acquire(1) is None


async def test_several_limits_bind_together_and_a_refused_cost_spends_nothing(
    clock: Clock,
) -> None:
    # Hour first: spending window by window would spend the hour before the minute refuses.
    limiter = UserRateLimiter("8/hour;5/minute")
    assert await limiter.acquire(1, cost=4) is None
    assert await limiter.acquire(1, cost=2) == pytest.approx(60)

    clock.advance(61)
    assert await limiter.acquire(1, cost=4) is None  # 8 of 8 per hour: the refused 2 were not spent
    assert await limiter.acquire(1) == pytest.approx(3600 - 61)  # the longest wait wins


async def test_users_are_limited_separately(clock: Clock) -> None:
    limiter = UserRateLimiter("2/minute")
    assert await limiter.acquire(1, cost=2) is None
    assert await limiter.acquire(1) is not None
    assert await limiter.acquire(2, cost=2) is None


async def test_retry_after_is_positive_and_within_the_window() -> None:
    limiter = UserRateLimiter("5/minute")
    assert await limiter.acquire(1, cost=5) is None
    wait = await limiter.acquire(1)
    assert wait is not None
    assert 0 < wait <= 60


async def test_concurrent_acquires_admit_exactly_the_limit(networked_storage: None) -> None:
    limiter = UserRateLimiter("5/minute")
    assert await admitted(limiter, 1, 20) == 5


async def test_concurrent_refusals_spend_nothing(clock: Clock, networked_storage: None) -> None:
    limiter = UserRateLimiter("10/hour;5/minute")
    assert await admitted(limiter, 1, 20) == 5
    clock.advance(61)
    # Checks racing past each other would have spent all 10 per hour on the first burst.
    assert await admitted(limiter, 1, 20) == 5
    assert await admitted(limiter, 1, 1) == 0


@pytest.mark.parametrize("cost", [0, 3])
async def test_a_cost_no_window_can_hold_is_refused(cost: int) -> None:
    limiter = UserRateLimiter("2/second;10/minute")
    assert limiter.capacity == 2
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire(1, cost=cost)


def test_describe_spells_out_each_limit() -> None:
    assert UserRateLimiter("5/minute").describe() == "5 per minute"
    assert UserRateLimiter("5/minute;50/day").describe() == "5 per minute, 50 per day"
    assert UserRateLimiter("10 per 2 hours").describe() == "10 per 2 hours"


async def test_async_storage_uris_are_accepted_as_given() -> None:
    limiter = UserRateLimiter("1/minute", "async+memory://")
    assert await limiter.acquire(1) is None
    assert await limiter.acquire(1) is not None


async def test_a_spec_per_call_replaces_the_limiters_own(clock: Clock) -> None:
    limiter = UserRateLimiter("5/minute")
    assert limiter.capacity_for("2/minute;10/hour") == 2
    assert limiter.describe("2/minute;10/hour") == "2 per minute, 10 per hour"
    assert await limiter.acquire(1, cost=2, spec="2/minute") is None
    assert await limiter.acquire(1, spec="2/minute") == pytest.approx(60)
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire(1, cost=3, spec="2/minute")

    # The limiter's own 5/minute is a different window, and a spec sharing a limit shares it.
    assert await limiter.acquire(1, cost=4) is None
    assert await limiter.acquire(1, spec="5/minute;20/hour") is None
    assert await limiter.acquire(1, spec="5/minute;20/hour") == pytest.approx(60)


async def test_a_malformed_spec_per_call_is_refused() -> None:
    with pytest.raises(ValueError):
        await UserRateLimiter("5/minute").acquire(1, spec="often")


# --- shared through Redis ----------------------------------------------------------------------


@pytest.fixture
async def two_processes(redis_url: str) -> AsyncIterator[tuple[UserRateLimiter, UserRateLimiter]]:
    """Two limiters, each with its own Redis connection, as two bot processes would have."""
    first = UserRateLimiter("3/minute", redis_url)
    second = UserRateLimiter("3/minute", redis_url.replace("redis://", "async+redis://"))
    yield first, second
    await first.close()
    await second.close()


async def test_limiters_on_one_redis_share_a_users_limit(
    clock: Clock, two_processes: tuple[UserRateLimiter, UserRateLimiter]
) -> None:
    first, second = two_processes
    assert await first.acquire(1, cost=2) is None
    clock.advance(10)
    assert await second.acquire(1) is None
    assert await first.acquire(1) == pytest.approx(50)
    assert await second.acquire(1) == pytest.approx(50)
    assert await second.acquire(2, cost=3) is None  # other users are counted apart

    clock.advance(50.1)
    assert await second.acquire(1, cost=2) is None
    assert await first.acquire(1) is not None


async def test_concurrent_acquires_through_two_limiters_admit_exactly_the_limit(
    two_processes: tuple[UserRateLimiter, UserRateLimiter],
) -> None:
    first, second = two_processes
    waits = await asyncio.gather(*(limiter.acquire(1) for limiter in [first, second] * 10))
    assert sum(wait is None for wait in waits) == 3


async def test_several_windows_through_two_limiters_never_admit_too_many(redis_url: str) -> None:
    limiters = [UserRateLimiter("10/hour;3/minute", redis_url) for _ in range(2)]
    try:
        waits = await asyncio.gather(*(limiter.acquire(1) for limiter in limiters * 10))
        # Racing processes may spend an hour entry for a refused call, never admit a 4th.
        assert 1 <= sum(wait is None for wait in waits) <= 3
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_closing_a_memory_limiter_is_harmless() -> None:
    limiter = UserRateLimiter("1/minute")
    await limiter.close()
    assert await limiter.acquire(1) is None
