"""Daily quotas and pending slots, in memory and in a real Redis shared by two "processes"."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from redis.asyncio import Redis

from bot.quota import (
    MemoryQuotaBackend,
    PendingSlots,
    QuotaBackend,
    QuotaBook,
    QuotaExceeded,
    RedisPendingSlots,
    RedisQuotaBackend,
    Reservation,
    estimate_cost_usd,
    pending_slots_from_url,
    quota_backend_from_url,
)

pytest_plugins = ["tests.redis_server"]

USER, GUILD = 1, 10


class Clock:
    """UTC wall time that moves only when told."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Store:
    """Where the counters live. Each call builds what one more bot process would build: with
    Redis a new client on the same server; in memory the one shared object a process has.
    """

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self._memory_quota = MemoryQuotaBackend()
        self._memory_slots = pending_slots_from_url(None)
        self._opened: list[QuotaBackend | PendingSlots] = []

    def quota_backend(self) -> QuotaBackend:
        if self.redis_url is None:
            return self._memory_quota
        backend = quota_backend_from_url(self.redis_url)
        self._opened.append(backend)
        return backend

    def pending_slots(self) -> PendingSlots:
        if self.redis_url is None:
            return self._memory_slots
        slots = pending_slots_from_url(self.redis_url)
        self._opened.append(slots)
        return slots

    def book(self, clock: Clock | None = None) -> QuotaBook:
        if clock is None:
            return QuotaBook(self.quota_backend())
        return QuotaBook(self.quota_backend(), clock=clock)

    async def close(self) -> None:
        for opened in self._opened:
            await opened.close()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    store = Store(url)
    yield store
    await store.close()


async def reserve(
    book: QuotaBook,
    user: int = USER,
    guild: int | None = GUILD,
    images: int = 1,
    cost: float = 0.04,
    *,
    user_limit: int | None = None,
    budget: float | None = None,
) -> Reservation:
    return await book.reserve(
        user, guild, images, cost, user_limit=user_limit, guild_budget_usd=budget
    )


def admitted(outcomes: list[Reservation | BaseException]) -> list[Reservation]:
    unexpected = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, QuotaExceeded) for o in unexpected), unexpected
    return [o for o in outcomes if isinstance(o, Reservation)]


# --- reserving ---------------------------------------------------------------------------------


async def test_six_simultaneous_reservations_against_three_admit_exactly_three(
    store: Store,
) -> None:
    books = [store.book(), store.book()]  # two processes racing for the same user
    outcomes = await asyncio.gather(
        *(reserve(books[i % 2], user_limit=3) for i in range(6)), return_exceptions=True
    )

    assert len(admitted(outcomes)) == 3
    refusals = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(refusals) == 3
    assert {r.scope for r in refusals} == {"user"}
    assert await books[0].usage(USER, GUILD) == pytest.approx((3, 0.12))


async def test_a_burst_against_a_nearly_spent_guild_budget_never_overspends(store: Store) -> None:
    books = [store.book(), store.book()]
    await reserve(books[0], user=99, cost=0.9, budget=1.0)

    outcomes = await asyncio.gather(
        *(reserve(books[u % 2], user=u, cost=0.03, budget=1.0) for u in range(20)),
        return_exceptions=True,
    )

    assert len(admitted(outcomes)) == 3  # 0.90 + 3 x 0.03 = 0.99; a fourth would be 1.02
    _, spent = await books[1].usage(USER, GUILD)
    assert spent == pytest.approx(0.99)


async def test_mixed_costs_in_a_burst_stay_within_the_budget(store: Store) -> None:
    books = [store.book(), store.book()]
    costs = [0.01 * (1 + i % 7) for i in range(40)]  # 0.01 … 0.07, 1.60 in all

    outcomes = await asyncio.gather(
        *(reserve(books[i % 2], user=i, cost=c, budget=0.5) for i, c in enumerate(costs)),
        return_exceptions=True,
    )

    taken = admitted(outcomes)
    assert math.fsum(r.cost_usd for r in taken) <= 0.5 + 1e-9
    _, spent = await books[0].usage(USER, GUILD)
    assert spent == pytest.approx(math.fsum(r.cost_usd for r in taken))
    # Spend only grows during the burst, so each refusal would still be one now.
    refused = [c for c, o in zip(costs, outcomes, strict=True) if isinstance(o, QuotaExceeded)]
    assert all(cost > 0.5 - spent + 1e-9 for cost in refused)


async def test_a_refusal_counts_nothing_on_either_counter(store: Store) -> None:
    book = store.book()
    await reserve(book, images=2, cost=0.08, budget=0.1)

    with pytest.raises(QuotaExceeded) as refused:
        await reserve(book, images=1, cost=0.04, user_limit=5, budget=0.1)
    assert refused.value.scope == "guild"
    assert await book.usage(USER, GUILD) == pytest.approx((2, 0.08))  # the user's 1 not counted


async def test_quota_exceeded_carries_scope_limit_usage_and_the_next_utc_midnight(
    store: Store,
) -> None:
    clock = Clock(datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC))
    book = store.book(clock)
    midnight = datetime(2026, 3, 15, tzinfo=UTC)
    await reserve(book, images=2, cost=0.45)

    with pytest.raises(QuotaExceeded) as user:
        await reserve(book, images=2, user_limit=3, budget=0.5)
    assert (user.value.scope, user.value.limit, user.value.used) == ("user", 3, 2)
    assert user.value.resets_at == midnight

    with pytest.raises(QuotaExceeded) as guild:
        await reserve(book, images=1, cost=0.06, user_limit=3, budget=0.5)
    assert guild.value.scope == "guild"
    assert guild.value.limit == 0.5
    assert guild.value.used == pytest.approx(0.45)
    assert guild.value.resets_at == midnight

    # Both would refuse: the user's limit is checked first.
    with pytest.raises(QuotaExceeded) as both:
        await reserve(book, images=2, cost=0.06, user_limit=3, budget=0.5)
    assert both.value.scope == "user"


async def test_no_limit_is_unlimited_and_direct_messages_have_no_guild_budget(
    store: Store,
) -> None:
    book = store.book()
    for _ in range(3):
        await reserve(book, guild=None, images=4, cost=10.0, user_limit=None, budget=0.0)
    assert await book.usage(USER, None) == (12, 0.0)
    assert await book.usage(USER, GUILD) == (12, 0.0)


# --- refunding ---------------------------------------------------------------------------------


async def test_a_refund_after_a_failure_restores_capacity(store: Store) -> None:
    book = store.book()
    first = await reserve(book, images=2, cost=0.08, user_limit=3, budget=0.1)
    with pytest.raises(QuotaExceeded):
        await reserve(book, images=2, cost=0.08, user_limit=3, budget=0.1)

    await book.refund(first)  # the API call failed

    assert await book.usage(USER, GUILD) == (0, 0.0)
    await reserve(book, images=2, cost=0.08, user_limit=3, budget=0.1)


async def test_a_partial_refund_gives_back_its_share_of_the_cost(store: Store) -> None:
    book = store.book()
    await reserve(book, images=2, cost=0.02)  # another job's, untouched by this one's refunds
    job = await reserve(book, images=3, cost=0.1)  # 0.1 / 3 per image does not divide evenly

    await book.refund(job, 1)
    images, spent = await book.usage(USER, GUILD)
    assert images == 4
    assert spent == pytest.approx(0.12 - 0.1 / 3, abs=1e-6)

    await book.refund(job, 1)
    await book.refund(job, 1)
    assert await book.usage(USER, GUILD) == (2, 0.02)  # the three shares add up exactly


async def test_refunds_are_idempotent_and_never_give_back_more_than_was_reserved(
    store: Store,
) -> None:
    book = store.book()
    job = await reserve(book, images=3, cost=0.06, user_limit=3)
    await book.refund(job, 2)
    await book.refund(job)  # only the last image is left to give back
    await book.refund(job)
    await book.refund(job, 3)
    assert await book.usage(USER, GUILD) == (0, 0.0)

    await reserve(book, images=3, cost=0.06, user_limit=3)
    with pytest.raises(QuotaExceeded):  # repeated refunds bought no extra capacity
        await reserve(book, user_limit=3)


async def test_refund_arguments_are_checked(store: Store) -> None:
    book = store.book()
    job = await reserve(book, images=2)
    for images in (-1, 3):
        with pytest.raises(ValueError, match="refund"):
            await book.refund(job, images)
    with pytest.raises(ValueError, match="images"):
        await reserve(book, images=0)
    with pytest.raises(ValueError, match="cost"):
        await reserve(book, cost=-0.01)


# --- days --------------------------------------------------------------------------------------


async def test_counts_start_afresh_each_utc_day_and_old_refunds_do_nothing(store: Store) -> None:
    clock = Clock(datetime(2026, 3, 14, 23, 59, 30, tzinfo=UTC))
    book = store.book(clock)
    late = await reserve(book, images=3, cost=0.3, user_limit=3, budget=0.3)
    assert late.day == "2026-03-14"
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(book, user_limit=3, budget=0.3)
    assert refused.value.resets_at == datetime(2026, 3, 15, tzinfo=UTC)

    clock.now += timedelta(seconds=40)
    assert await book.usage(USER, GUILD) == (0, 0.0)
    early = await reserve(book, images=2, cost=0.2, user_limit=3, budget=0.3)
    assert early.day == "2026-03-15"

    await book.refund(late)  # yesterday's spend cannot make room today
    assert await book.usage(USER, GUILD) == pytest.approx((2, 0.2))
    with pytest.raises(QuotaExceeded):
        await reserve(book, images=2, user_limit=3)


async def test_the_day_is_the_utc_day_whatever_the_clocks_zone(store: Store) -> None:
    tokyo = timezone(timedelta(hours=9))
    clock = Clock(datetime(2026, 3, 15, 8, 0, tzinfo=tokyo))  # 23:00 UTC the day before
    job = await reserve(store.book(clock))
    assert job.day == "2026-03-14"


# --- processes ---------------------------------------------------------------------------------


async def test_two_books_on_one_store_share_the_counts(store: Store) -> None:
    first, second = store.book(), store.book()
    job = await reserve(first, images=2, cost=0.5, user_limit=3, budget=1.0)

    assert await second.usage(USER, GUILD) == (2, 0.5)
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(second, images=2, cost=0.5, user_limit=3, budget=1.0)
    assert refused.value.used == 2

    await second.refund(job)  # a reservation can be settled by another process
    await first.refund(job)
    assert await first.usage(USER, GUILD) == (0, 0.0)


# --- pending slots -----------------------------------------------------------------------------


async def test_pending_slots_admit_exactly_the_limit_across_processes(store: Store) -> None:
    slots = [store.pending_slots(), store.pending_slots()]
    granted = await asyncio.gather(*(slots[i % 2].acquire(USER, 2) for i in range(6)))
    assert sum(granted) == 2
    assert await slots[0].acquire(2, 2)  # users are counted separately

    await slots[1].release(USER)
    assert await slots[0].acquire(USER, 2)
    assert not await slots[1].acquire(USER, 2)


async def test_releasing_more_than_was_acquired_frees_no_extra_slots(store: Store) -> None:
    slots = store.pending_slots()
    assert await slots.acquire(USER, 1)
    for _ in range(3):
        await slots.release(USER)
    assert await slots.acquire(USER, 1)
    assert not await slots.acquire(USER, 1)


# --- Redis specifics ---------------------------------------------------------------------------


async def test_redis_day_counters_expire_after_about_two_days(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as client:
        book = QuotaBook(RedisQuotaBackend(client, key_prefix="test:"))
        job = await reserve(book, images=2)
        await book.refund(job, 1)
        keys = sorted([k.decode() async for k in client.scan_iter("test:*")])
        assert keys == [
            f"test:quota:{job.day}:guild:{GUILD}",
            f"test:quota:{job.day}:refunded:{job.id}",
            f"test:quota:{job.day}:user:{USER}",
        ]
        for key in keys:
            assert 47 * 3600 < await client.ttl(key) <= 48 * 3600


async def test_redis_slots_leaked_by_a_crashed_process_come_back(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as client:
        slots = RedisPendingSlots(client, key_prefix="test:", ttl_seconds=3600)
        key = f"test:pending:{USER}"
        assert await slots.acquire(USER, 1)
        assert 3590 < await client.ttl(key) <= 3600

        await client.pexpire(key, 200)  # as if the slot were taken long ago
        assert not await slots.acquire(USER, 1)  # a refusal does not keep the leak alive
        assert 0 < await client.pttl(key) <= 200
        await asyncio.sleep(0.25)
        assert await slots.acquire(USER, 1)


def test_backends_follow_the_url() -> None:
    assert isinstance(quota_backend_from_url(None), MemoryQuotaBackend)
    assert isinstance(quota_backend_from_url(""), MemoryQuotaBackend)
    assert isinstance(quota_backend_from_url("redis://127.0.0.1:1/0"), RedisQuotaBackend)
    assert isinstance(pending_slots_from_url("redis://127.0.0.1:1/0"), RedisPendingSlots)


# --- cost --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "images", "expected"),
    [
        (None, 1, 1120 * 30 / 1e6),
        ("1K", 1, 1120 * 30 / 1e6),
        ("512", 2, 2 * 747 * 30 / 1e6),
        ("2K", 1, 1680 * 30 / 1e6),
        ("4K", 3, 3 * 2520 * 30 / 1e6),
    ],
)
def test_cost_is_output_tokens_per_image_at_the_price(
    size: str | None, images: int, expected: float
) -> None:
    assert estimate_cost_usd(size, images, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize("size", ["1k", "8K", "1024"])
def test_an_unknown_size_has_no_cost(size: str) -> None:
    with pytest.raises(ValueError, match="size"):
        estimate_cost_usd(size, 1, 30.0)
