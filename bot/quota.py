"""Daily image quotas per user, daily USD budgets per guild, and the shared per-user pending cap."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, Protocol, cast

from redis.asyncio import Redis

from bot.gemini.models import OUTPUT_TOKENS_PER_IMAGE

# Output tokens the model bills per image, by `imageConfig.imageSize`.

# Money is counted in whole micro-dollars: integers add up exactly where floats drift.
_MICROS_PER_USD = 1_000_000
# A day's counters outlive the day, so a reservation made just before midnight can still be read.
_DAY_TTL_SECONDS = 48 * 3600

Scope = Literal["user", "guild"]


def estimate_cost_usd(
    image_size: str | None, images: int, price_per_million_tokens: float
) -> float:
    """The output-token cost of `images` images of `image_size` (None is the API default, 1K)."""
    size = image_size or "1K"
    if size not in OUTPUT_TOKENS_PER_IMAGE:
        raise ValueError(
            f"unknown image size {size!r}; expected one of {list(OUTPUT_TOKENS_PER_IMAGE)}"
        )
    if images < 0 or price_per_million_tokens < 0:
        raise ValueError("images and price must not be negative")
    return OUTPUT_TOKENS_PER_IMAGE[size] * images * price_per_million_tokens / 1_000_000


class QuotaExceeded(Exception):
    """A reservation would take `scope` past `limit` (images or USD); `used` is spent already."""

    def __init__(self, scope: Scope, limit: float, used: float, resets_at: datetime) -> None:
        super().__init__(f"{scope} quota exceeded: {used:g} of {limit:g} used until {resets_at}")
        self.scope: Scope = scope
        self.limit = limit
        self.used = used
        self.resets_at = resets_at


@dataclass(frozen=True)
class Reservation:
    """Images and spend counted against a user and guild on `day` (UTC, ISO) until refunded."""

    id: str
    user_id: int
    guild_id: int | None
    images: int
    cost_usd: float
    day: str


@dataclass(frozen=True)
class Refusal:
    """Which counter refused a reservation and what it held then (images, or micro-dollars)."""

    scope: Scope
    used: int


class QuotaBackend(Protocol):
    """Per-day counters; `reserve` checks and adds both counters as one atomic step."""

    async def reserve(
        self,
        day: str,
        user_id: int,
        guild_id: int | None,
        images: int,
        micros: int,
        user_limit: int | None,
        guild_budget_micros: int | None,
    ) -> Refusal | None: ...

    async def refund(self, reservation: Reservation, images: int) -> None:
        """Give back `images` more of `reservation`, never more than it took in all."""
        ...

    async def usage(self, day: str, user_id: int, guild_id: int | None) -> tuple[int, int]:
        """The user's images and the guild's micro-dollars counted on `day`."""
        ...

    async def close(self) -> None: ...


def _micros(usd: float) -> int:
    return round(usd * _MICROS_PER_USD)


def _share(total: int, part: int, whole: int) -> int:
    """The part of `total` that `part` of `whole` images carry; shares of a split add up to it."""
    return total * part // whole


def _utc_now() -> datetime:
    return datetime.now(UTC)


class QuotaBook:
    """Reserves a request's images and cost before the API call; refunds what failed."""

    def __init__(self, backend: QuotaBackend, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._backend = backend
        self._clock = clock

    async def reserve(
        self,
        user_id: int,
        guild_id: int | None,
        images: int,
        cost_usd: float,
        *,
        user_limit: int | None,
        guild_budget_usd: float | None,
    ) -> Reservation:
        """Count `images` and `cost_usd` now, or raise `QuotaExceeded` and count nothing.

        None means unlimited; a request outside a guild has no guild budget. The user's limit
        is checked first.
        """
        if images < 1:
            raise ValueError(f"images must be at least 1, got {images}")
        if cost_usd < 0:
            raise ValueError(f"cost must not be negative, got {cost_usd}")
        today = self._today()
        budget = None if guild_budget_usd is None else _micros(guild_budget_usd)
        refusal = await self._backend.reserve(
            today.isoformat(), user_id, guild_id, images, _micros(cost_usd), user_limit, budget
        )
        if refusal is not None:
            resets_at = datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)
            if refusal.scope == "user":
                assert user_limit is not None
                raise QuotaExceeded("user", user_limit, refusal.used, resets_at)
            assert guild_budget_usd is not None
            used = refusal.used / _MICROS_PER_USD
            raise QuotaExceeded("guild", guild_budget_usd, used, resets_at)
        return Reservation(
            secrets.token_hex(8), user_id, guild_id, images, cost_usd, today.isoformat()
        )

    async def refund(self, reservation: Reservation, images: int | None = None) -> None:
        """Give back `images` of the reservation (default all) and their share of its cost.

        Refunds add up to at most the reservation, so repeating one does nothing; a reservation
        from an earlier day is left alone, as that day's counters no longer limit anyone.
        """
        back = reservation.images if images is None else images
        if not 0 <= back <= reservation.images:
            raise ValueError(f"can refund 0 to {reservation.images} images, got {back}")
        if back and reservation.day == self._today().isoformat():
            await self._backend.refund(reservation, back)

    async def usage(self, user_id: int, guild_id: int | None) -> tuple[int, float]:
        """Today's images counted for the user and USD counted for the guild (0 outside one)."""
        images, micros = await self._backend.usage(self._today().isoformat(), user_id, guild_id)
        return images, micros / _MICROS_PER_USD

    def _today(self) -> date:
        now = self._clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.astimezone(UTC).date()


@dataclass
class _Day:
    user_images: dict[int, int] = field(default_factory=dict)
    guild_micros: dict[int, int] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)


class MemoryQuotaBackend:
    """Counters in this process only: for a single bot process and for tests."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._days: dict[str, _Day] = {}

    async def reserve(
        self,
        day: str,
        user_id: int,
        guild_id: int | None,
        images: int,
        micros: int,
        user_limit: int | None,
        guild_budget_micros: int | None,
    ) -> Refusal | None:
        async with self._lock:
            for old in [d for d in self._days if d < day]:
                del self._days[old]
            ledger = self._days.setdefault(day, _Day())
            used = ledger.user_images.get(user_id, 0)
            if user_limit is not None and used + images > user_limit:
                return Refusal("user", used)
            if guild_id is not None:
                spent = ledger.guild_micros.get(guild_id, 0)
                if guild_budget_micros is not None and spent + micros > guild_budget_micros:
                    return Refusal("guild", spent)
                ledger.guild_micros[guild_id] = spent + micros
            ledger.user_images[user_id] = used + images
            return None

    async def refund(self, reservation: Reservation, images: int) -> None:
        async with self._lock:
            ledger = self._days.get(reservation.day)
            if ledger is None:
                return
            before = ledger.refunded.get(reservation.id, 0)
            after = min(reservation.images, before + images)
            if after <= before:
                return
            ledger.refunded[reservation.id] = after
            user = reservation.user_id
            if user in ledger.user_images:
                ledger.user_images[user] = max(0, ledger.user_images[user] - (after - before))
            guild = reservation.guild_id
            if guild is not None and guild in ledger.guild_micros:
                micros = _micros(reservation.cost_usd)
                back = _share(micros, after, reservation.images)
                back -= _share(micros, before, reservation.images)
                ledger.guild_micros[guild] = max(0, ledger.guild_micros[guild] - back)

    async def usage(self, day: str, user_id: int, guild_id: int | None) -> tuple[int, int]:
        async with self._lock:
            ledger = self._days.get(day, _Day())
            spent = 0 if guild_id is None else ledger.guild_micros.get(guild_id, 0)
            return ledger.user_images.get(user_id, 0), spent

    async def close(self) -> None:
        return None


# KEYS: the user's image counter, then the guild's micro-dollar counter unless outside a guild.
# ARGV: images, user limit, micro-dollars, guild budget (a negative limit is none), key TTL.
_RESERVE = """
local images, user_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local micros, budget, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if user_limit >= 0 and used + images > user_limit then
    return {1, used}
end
if #KEYS > 1 then
    local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
    if budget >= 0 and spent + micros > budget then
        return {2, spent}
    end
    redis.call('INCRBY', KEYS[2], micros)
    redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('INCRBY', KEYS[1], images)
redis.call('EXPIRE', KEYS[1], ttl)
return {0, 0}
"""

# KEYS: the reservation's refunded-image count, the user's counter, the guild's (if any).
# ARGV: the reservation's images and micro-dollars, images to give back now, key TTL.
_REFUND = """
local images, micros = tonumber(ARGV[1]), tonumber(ARGV[2])
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = math.min(images, before + tonumber(ARGV[3]))
if after <= before then
    return 0
end
redis.call('SET', KEYS[1], after, 'EX', ARGV[4])
local function take(key, amount)
    local value = redis.call('GET', key)
    if value then
        redis.call('DECRBY', key, math.min(tonumber(value), amount))
    end
end
take(KEYS[2], after - before)
if #KEYS > 2 then
    take(KEYS[3], math.floor(micros * after / images) - math.floor(micros * before / images))
end
return after - before
"""


class RedisQuotaBackend:
    """Counters in Redis, shared by every process using the same server and prefix."""

    def __init__(self, redis: Redis, key_prefix: str = "banana:") -> None:
        self._redis = redis
        self._prefix = key_prefix + "quota:"
        self._reserve = redis.register_script(_RESERVE)
        self._refund = redis.register_script(_REFUND)

    async def reserve(
        self,
        day: str,
        user_id: int,
        guild_id: int | None,
        images: int,
        micros: int,
        user_limit: int | None,
        guild_budget_micros: int | None,
    ) -> Refusal | None:
        keys = self._keys(day, user_id, guild_id)
        limit = -1 if user_limit is None else user_limit
        budget = -1 if guild_budget_micros is None else guild_budget_micros
        args = [images, limit, micros, budget, _DAY_TTL_SECONDS]
        refused, used = await self._reserve(keys=keys, args=args)
        if refused == 0:
            return None
        return Refusal("user" if refused == 1 else "guild", int(used))

    async def refund(self, reservation: Reservation, images: int) -> None:
        refunded = f"{self._prefix}{reservation.day}:refunded:{reservation.id}"
        keys = [refunded, *self._keys(reservation.day, reservation.user_id, reservation.guild_id)]
        args = [reservation.images, _micros(reservation.cost_usd), images, _DAY_TTL_SECONDS]
        await self._refund(keys=keys, args=args)

    async def usage(self, day: str, user_id: int, guild_id: int | None) -> tuple[int, int]:
        keys = self._keys(day, user_id, guild_id)
        values = await cast(Awaitable[list[bytes | None]], self._redis.mget(keys))
        counts = [int(value or 0) for value in values]
        return counts[0], counts[1] if guild_id is not None else 0

    async def close(self) -> None:
        await self._redis.aclose()

    def _keys(self, day: str, user_id: int, guild_id: int | None) -> list[str]:
        keys = [f"{self._prefix}{day}:user:{user_id}"]
        if guild_id is not None:
            keys.append(f"{self._prefix}{day}:guild:{guild_id}")
        return keys


def quota_backend_from_url(redis_url: str | None) -> QuotaBackend:
    """Redis-backed counters for a `redis://` URL; in-process ones without a URL."""
    if not redis_url:
        return MemoryQuotaBackend()
    return RedisQuotaBackend(Redis.from_url(redis_url))


class PendingSlots(Protocol):
    """A cap on each user's unfinished jobs, across every process that shares it."""

    async def acquire(self, user_id: int, limit: int) -> bool:
        """Take one of the user's `limit` slots; False, taking nothing, if all are taken."""
        ...

    async def release(self, user_id: int) -> None:
        """Give back a slot taken by `acquire`."""
        ...

    async def close(self) -> None: ...


class MemoryPendingSlots:
    """Pending slots counted in this process only."""

    def __init__(self) -> None:
        self._held: dict[int, int] = {}

    async def acquire(self, user_id: int, limit: int) -> bool:
        held = self._held.get(user_id, 0)
        if held >= limit:
            return False
        self._held[user_id] = held + 1
        return True

    async def release(self, user_id: int) -> None:
        held = self._held.pop(user_id, 0)
        if held > 1:
            self._held[user_id] = held - 1

    async def close(self) -> None:
        return None


# KEYS: the user's slot counter. ARGV: the limit, the counter's TTL.
# Only a granted slot refreshes the TTL: a user retrying against slots leaked by a crashed
# process must not keep them alive.
_ACQUIRE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
    return 0
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') <= 1 then
    redis.call('DEL', KEYS[1])
else
    redis.call('DECR', KEYS[1])
end
return 0
"""


class RedisPendingSlots:
    """Pending slots in Redis, shared by every process using the same server and prefix.

    A user's count expires `ttl_seconds` after their last grant, so slots that a crashed
    process never released come back in the end.
    """

    def __init__(self, redis: Redis, key_prefix: str = "banana:", ttl_seconds: int = 3600) -> None:
        self._redis = redis
        self._prefix = key_prefix + "pending:"
        self._ttl = ttl_seconds
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, user_id: int, limit: int) -> bool:
        granted = await self._acquire(keys=[f"{self._prefix}{user_id}"], args=[limit, self._ttl])
        return bool(granted)

    async def release(self, user_id: int) -> None:
        await self._release(keys=[f"{self._prefix}{user_id}"])

    async def close(self) -> None:
        await self._redis.aclose()


def pending_slots_from_url(redis_url: str | None) -> PendingSlots:
    """Redis-backed slots for a `redis://` URL; in-process ones without a URL."""
    if not redis_url:
        return MemoryPendingSlots()
    return RedisPendingSlots(Redis.from_url(redis_url))
