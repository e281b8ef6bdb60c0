"""Who may start a job now: pending caps, rate limits, daily quotas and budgets (Redis-shared)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from redis.asyncio import Redis

from bot.quota import (
    MemoryPendingSlots,
    MemoryQuotaBackend,
    PendingSlots,
    QuotaBook,
    QuotaExceeded,
    RedisPendingSlots,
    RedisQuotaBackend,
    Reservation,
    Scope,
    estimate_cost_usd,
)
from bot.rate_limit import UserRateLimiter
from bot.settings import Settings
from bot.store import GuildSettings

_N = TypeVar("_N", int, float)


class Refused(Exception):
    """A request turned away before it cost anything."""


class UserRateLimited(Refused):
    """The user used up their rate limit; `retry_after` seconds until enough frees up."""

    def __init__(self, retry_after: float, limit: str) -> None:
        super().__init__(f"rate limited for {retry_after:.0f}s ({limit})")
        self.retry_after = retry_after
        self.limit = limit


class TooManyAtOnce(Refused):
    """One request asks for more images than the user's rate limit ever allows at once."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"at most {capacity} images at once")
        self.capacity = capacity


class TooManyPending(Refused):
    """The user already has `limit` jobs queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs already pending")
        self.limit = limit


class QuotaExhausted(Refused):
    """Today's image quota (scope "user") or spend budget (scope "guild") is used up."""

    def __init__(self, scope: Scope, limit: float, resets_at: datetime) -> None:
        super().__init__(f"{scope} daily limit {limit:g} reached until {resets_at:%H:%M} UTC")
        self.scope: Scope = scope
        self.limit = limit
        self.resets_at = resets_at


@dataclass(frozen=True, slots=True)
class Policy:
    """The limits that apply to one request: the bot's defaults, overridden per server."""

    rate_limit: str
    max_pending: int
    daily_quota: int | None
    daily_budget_usd: float | None

    @classmethod
    def of(cls, settings: Settings, guild: GuildSettings | None = None) -> Policy:
        guild = guild or GuildSettings()
        return cls(
            guild.user_rate_limit or settings.user_rate_limit,
            guild.max_pending_per_user or settings.max_pending_per_user,
            _first_set(guild.user_daily_quota, settings.user_daily_quota),
            _first_set(guild.daily_budget_usd, settings.guild_daily_budget_usd),
        )


@dataclass(frozen=True, slots=True)
class Ticket:
    """What admitting a job took: a pending slot, rate-limit hits and a quota reservation."""

    owner: int
    reservation: Reservation


class Admission:
    """Checks and takes every per-user and per-server allowance a job needs, all or nothing."""

    def __init__(
        self,
        limiter: UserRateLimiter,
        pending: PendingSlots,
        quotas: QuotaBook,
        price_per_million_tokens: float,
    ) -> None:
        self._limiter = limiter
        self._pending = pending
        self._quotas = quotas
        self._price = price_per_million_tokens

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: Settings) -> AsyncIterator[Admission]:
        """In-process counters, or ones in Redis shared by every process when REDIS_URL is set."""
        if settings.redis_url is None:
            limiter = UserRateLimiter(settings.user_rate_limit)
            admission = cls(
                limiter,
                MemoryPendingSlots(),
                QuotaBook(MemoryQuotaBackend()),
                settings.price_per_million_image_tokens_usd,
            )
            yield admission
            return
        redis = Redis.from_url(settings.redis_url)
        limiter = UserRateLimiter(settings.user_rate_limit, settings.redis_url)
        try:
            yield cls(
                limiter,
                RedisPendingSlots(redis),
                QuotaBook(RedisQuotaBackend(redis)),
                settings.price_per_million_image_tokens_usd,
            )
        finally:
            await limiter.close()
            await redis.aclose()

    def estimate(self, image_size: str | None, images: int) -> float:
        """Estimated USD cost of `images` images of `image_size`."""
        return estimate_cost_usd(image_size, images, self._price)

    async def admit(
        self, owner: int, guild_id: int | None, images: int, image_size: str | None, policy: Policy
    ) -> Ticket:
        """Take a pending slot, `images` rate-limit hits and today's quota, or raise `Refused`."""
        capacity = self._limiter.capacity_for(policy.rate_limit)
        if images > capacity:
            raise TooManyAtOnce(capacity)
        if not await self._pending.acquire(owner, policy.max_pending):
            raise TooManyPending(policy.max_pending)
        try:
            retry_after = await self._limiter.acquire(owner, images, spec=policy.rate_limit)
            if retry_after is not None:
                raise UserRateLimited(retry_after, self._limiter.describe(policy.rate_limit))
            try:
                reservation = await self._quotas.reserve(
                    owner,
                    guild_id,
                    images,
                    self.estimate(image_size, images),
                    user_limit=policy.daily_quota,
                    guild_budget_usd=policy.daily_budget_usd,
                )
            except QuotaExceeded as exc:
                raise QuotaExhausted(exc.scope, exc.limit, exc.resets_at) from None
        except BaseException:
            await self._pending.release(owner)
            raise
        return Ticket(owner, reservation)

    async def settle(self, ticket: Ticket, delivered: int) -> None:
        """The job is over: give back its pending slot and the quota of undelivered images."""
        try:
            undelivered = ticket.reservation.images - delivered
            if undelivered > 0:
                await self._quotas.refund(ticket.reservation, undelivered)
        finally:
            await self._pending.release(ticket.owner)

    async def refund(self, reservation: Reservation) -> None:
        """Give back a whole reservation (a job lost to a restart)."""
        await self._quotas.refund(reservation)


def _first_set(override: _N | None, default: _N | None) -> _N | None:
    return override if override is not None else default
