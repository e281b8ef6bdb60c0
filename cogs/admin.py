"""Server settings for admins (/imagine-admin) and each user's own defaults (/imagine-settings)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

import discord
from discord import app_commands
from discord.ext import commands
from limits import parse_many

from bot.settings import Settings
from bot.store import GuildSettings, JobStore, UsageStats
from cogs.errors import clip
from cogs.imagine import RATIO_CHOICES, SIZE_CHOICES

if TYPE_CHECKING:
    from bot.app import BananaBot

MESSAGE_LIMIT = 2000
RATE_LIMIT_MAX = 100  # characters of a rate-limit text
MAX_ALLOWED_CHANNELS = 100
CHANNELS_SHOWN = 20  # channel mentions listed before "and N more"
MAX_BANNED_WORDS = 200
BANNED_WORD_MAX = 50
BANNED_WORDS_INPUT_MAX = 1000
MAX_BUDGET_USD = 100_000.0

_LIMIT_FIELDS = ("user_rate_limit", "max_pending_per_user", "user_daily_quota")
_T = TypeVar("_T")
_NO_PINGS = discord.AllowedMentions.none()
_REFUSAL = "🔒 Only members with the **Manage Server** permission can use this."
_SET_HERE = "*(set here)*"
_DEFAULT = "*(default)*"


async def _reply(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(
        clip(text, MESSAGE_LIMIT), ephemeral=True, allowed_mentions=_NO_PINGS
    )


async def _managed_guild(interaction: discord.Interaction) -> int | None:
    """The server's id if the caller may manage it; otherwise None, after telling them why.

    Discord hides the group from members without Manage Server, but a server can grant any
    role the command in its Integrations settings; the bot's settings stay admin-only anyway.
    """
    if interaction.guild_id is None:
        await _reply(interaction, "This only works in a server.")
        return None
    permissions = interaction.permissions
    if not (permissions.manage_guild or permissions.administrator):
        await _reply(interaction, _REFUSAL)
        return None
    return interaction.guild_id


class AdminCog(commands.Cog):
    """/imagine-admin: one server's channels, limits, budget, defaults and banned words."""

    admin = app_commands.Group(
        name="imagine-admin",
        description="Image bot settings for this server (needs Manage Server).",
        guild_only=True,
        allowed_contexts=app_commands.AppCommandContext(guild=True),
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self._store = store
        self._defaults = settings

    @admin.command(name="show", description="This server's settings, and which are its own.")
    async def show(self, interaction: discord.Interaction) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        current = await self._store.guild_settings(guild_id)
        lines = [
            f"**Image bot settings for this server** — {_SET_HERE} marks this server's own "
            f"choices, {_DEFAULT} the bot's.",
            _channels_line(current),
            *_limit_lines(current, self._defaults),
            _budget_line(current, self._defaults),
            *_default_lines(current),
            _words_line(current),
        ]
        await _reply(interaction, "\n".join(lines))

    @admin.command(
        name="channels", description="Where the bot takes requests (default: everywhere)."
    )
    @app_commands.describe(
        action="allow or disallow a channel, or go back to everywhere",
        channel="The channel (default: this one)",
    )
    async def channels(
        self,
        interaction: discord.Interaction,
        action: Literal["allow", "disallow", "everywhere"],
        channel: app_commands.AppCommandChannel | app_commands.AppCommandThread | None = None,
    ) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        if channel is not None and channel.type is discord.ChannelType.category:
            await _reply(interaction, "⚠️ Pick a channel or thread, not a category.")
            return
        target = channel.id if channel is not None else interaction.channel_id
        allowed = (await self._store.guild_settings(guild_id)).allowed_channel_ids
        if action == "everywhere":
            updated: tuple[int, ...] = ()
        elif target is None:
            await _reply(interaction, "⚠️ Name the channel.")
            return
        elif action == "allow":
            if target not in allowed and len(allowed) >= MAX_ALLOWED_CHANNELS:
                await _reply(
                    interaction, f"⚠️ At most {MAX_ALLOWED_CHANNELS} channels can be allowed."
                )
                return
            updated = allowed if target in allowed else (*allowed, target)
        else:
            problem = _disallow_problem(allowed, target)
            if problem:
                await _reply(interaction, f"⚠️ {problem}")
                return
            updated = tuple(c for c in allowed if c != target)
        current = await self._store.update_guild_settings(guild_id, allowed_channel_ids=updated)
        await _reply(interaction, "✅ " + _channels_line(current))

    @admin.command(
        name="limits", description="Per-member limits here; with no options, shows them."
    )
    @app_commands.describe(
        rate_limit="Requests per member in limits notation, e.g. 5/minute;50/day",
        max_pending="Jobs a member may have queued or running at once (1–20)",
        daily_quota="Images a member may make per UTC day (0 stops them)",
        reset="Go back to the bot's defaults (options given too are applied after)",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        rate_limit: app_commands.Range[str, 1, RATE_LIMIT_MAX] | None = None,
        max_pending: app_commands.Range[int, 1, 20] | None = None,
        daily_quota: app_commands.Range[int, 0, 1000] | None = None,
        reset: bool = False,
    ) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        changes: dict[str, object] = dict.fromkeys(_LIMIT_FIELDS) if reset else {}
        if rate_limit is not None:
            spec = " ".join(rate_limit.split())
            problem = rate_limit_problem(spec)
            if problem:
                await _reply(interaction, f"⚠️ {problem}")
                return
            changes["user_rate_limit"] = spec
        if max_pending is not None:
            changes["max_pending_per_user"] = max_pending
        if daily_quota is not None:
            changes["user_daily_quota"] = daily_quota
        current = await self._current(guild_id, changes)
        lead = "✅ Limits for each member here:" if changes else "Limits for each member here:"
        await _reply(interaction, "\n".join([lead, *_limit_lines(current, self._defaults)]))

    @admin.command(
        name="budget", description="This server's daily spending cap; no options shows it."
    )
    @app_commands.describe(
        usd="Estimated USD the server may spend per UTC day (0 pauses image making)",
        reset="Go back to the bot's default budget",
    )
    async def budget(
        self,
        interaction: discord.Interaction,
        usd: app_commands.Range[float, 0.0, MAX_BUDGET_USD] | None = None,
        reset: bool = False,
    ) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        changes: dict[str, object] = {}
        if reset:
            changes["daily_budget_usd"] = None
        if usd is not None:
            changes["daily_budget_usd"] = usd
        current = await self._current(guild_id, changes)
        line = _budget_line(current, self._defaults)
        await _reply(interaction, "✅ " + line if changes else line)

    @admin.command(name="defaults", description="Options /imagine uses here when none are given.")
    @app_commands.describe(
        aspect_ratio="Default shape of images made here",
        size="Default resolution of images made here",
        reset="Clear both (options given too are applied after)",
    )
    @app_commands.choices(aspect_ratio=RATIO_CHOICES, size=SIZE_CHOICES)
    async def defaults(
        self,
        interaction: discord.Interaction,
        aspect_ratio: str | None = None,
        size: str | None = None,
        reset: bool = False,
    ) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        changes = _default_changes(aspect_ratio, size, reset=reset)
        current = await self._current(guild_id, changes)
        lines = _default_lines(current)
        await _reply(interaction, "\n".join(["✅ " + lines[0], *lines[1:]] if changes else lines))

    @admin.command(name="banned-words", description="Words that refuse a prompt here.")
    @app_commands.describe(
        action="add, remove, list or clear the words",
        words="Words or phrases separated by commas; case does not matter",
    )
    async def banned_words(
        self,
        interaction: discord.Interaction,
        action: Literal["add", "remove", "list", "clear"],
        words: app_commands.Range[str, 1, BANNED_WORDS_INPUT_MAX] | None = None,
    ) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        banned = (await self._store.guild_settings(guild_id)).banned_words
        if action == "list":
            await _send_word_list(interaction, banned)
            return
        if action == "clear":
            await self._store.update_guild_settings(guild_id, banned_words=())
            await _reply(interaction, f"✅ Cleared {_count(len(banned), 'banned word')}.")
            return
        given = parse_words(words or "")
        if not given:
            await _reply(interaction, f"⚠️ Give the words to {action}, separated by commas.")
            return
        if action == "add":
            text, updated = _add_words(banned, given)
        else:
            text, updated = _remove_words(banned, given)
        if updated != banned:
            await self._store.update_guild_settings(guild_id, banned_words=updated)
        await _reply(interaction, text)

    @admin.command(name="stats", description="Today's image making here (UTC day).")
    async def stats(self, interaction: discord.Interaction) -> None:
        if (guild_id := await _managed_guild(interaction)) is None:
            return
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        usage = await self._store.usage_since(day.timestamp(), guild_id)
        current = await self._store.guild_settings(guild_id)
        budget = _pick(current.daily_budget_usd, self._defaults.guild_daily_budget_usd)
        await _reply(interaction, stats_text(usage, budget, day + timedelta(days=1)))

    async def _current(self, guild_id: int, changes: dict[str, object]) -> GuildSettings:
        if changes:
            return await self._store.update_guild_settings(guild_id, **changes)
        return await self._store.guild_settings(guild_id)


class PreferencesCog(commands.Cog):
    """/imagine-settings: a user's own default options, everywhere including DMs."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    @app_commands.command(
        name="imagine-settings",
        description="Your own defaults for /imagine; no options shows them.",
    )
    @app_commands.describe(
        aspect_ratio="Your default image shape",
        size="Your default resolution",
        reset="Forget your defaults (options given too are applied after)",
    )
    @app_commands.choices(aspect_ratio=RATIO_CHOICES, size=SIZE_CHOICES)
    async def imagine_settings(
        self,
        interaction: discord.Interaction,
        aspect_ratio: str | None = None,
        size: str | None = None,
        reset: bool = False,
    ) -> None:
        user_id = interaction.user.id
        changes = _default_changes(aspect_ratio, size, reset=reset)
        if changes:
            mine = await self._store.update_user_settings(user_id, **changes)
        else:
            mine = await self._store.user_settings(user_id)
        lines = [
            ("✅ Your defaults" if changes else "Your defaults")
            + " (used when /imagine doesn't say):",
            f"📐 Aspect ratio: {mine.default_aspect_ratio or 'not set'}",
            f"🔍 Size: {mine.default_size or 'not set'}",
        ]
        await _reply(interaction, "\n".join(lines))


def _default_changes(
    aspect_ratio: str | None, size: str | None, *, reset: bool
) -> dict[str, object]:
    """Changes to a server's or user's default options: cleared if `reset`, then the given ones."""
    changes: dict[str, object] = (
        {"default_aspect_ratio": None, "default_size": None} if reset else {}
    )
    if aspect_ratio is not None:
        changes["default_aspect_ratio"] = aspect_ratio
    if size is not None:
        changes["default_size"] = size
    return changes


def _disallow_problem(allowed: tuple[int, ...], channel_id: int) -> str | None:
    if not allowed:
        return (
            "The bot is allowed everywhere: `allow` the channels it should use instead, "
            "and the rest are off limits."
        )
    if channel_id not in allowed:
        return f"<#{channel_id}> is not on the allowed list."
    if allowed == (channel_id,):
        # An empty list means everywhere: removing the last channel would open them all.
        return (
            f"<#{channel_id}> is the only allowed channel; removing it would allow every "
            "channel. Use `everywhere` if that is what you want."
        )
    return None


def rate_limit_problem(spec: str) -> str | None:
    """Why `spec` is not a usable per-member rate limit, or None if it is."""
    try:
        items = parse_many(spec)
    except ValueError:
        return (
            f"`{clip(spec, 40)}` is not a rate limit. Write amounts per period, "
            "e.g. `5/minute` or `5/minute;50/day`."
        )
    if any(item.amount < 1 or item.multiples < 1 for item in items):
        return "Each rate limit must allow at least 1 request per period."
    return None


def parse_words(text: str) -> tuple[str, ...]:
    """Comma-separated words: lower-cased, spaces collapsed, empty ones and repeats dropped."""
    words = (" ".join(part.split()).lower() for part in text.split(","))
    return tuple(dict.fromkeys(word for word in words if word))


def _add_words(banned: tuple[str, ...], given: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    too_long = [word for word in given if len(word) > BANNED_WORD_MAX]
    if too_long:
        shown = discord.utils.escape_markdown(clip(too_long[0], 60))
        return f"⚠️ Each word may be at most {BANNED_WORD_MAX} characters: {shown}", banned
    updated = tuple(dict.fromkeys((*banned, *given)))
    if len(updated) > MAX_BANNED_WORDS:
        return (
            f"⚠️ At most {MAX_BANNED_WORDS} banned words (this would make {len(updated)}).",
            banned,
        )
    added = len(updated) - len(banned)
    return f"✅ Added {_count(added, 'word')}; {_count(len(updated), 'banned word')} now.", updated


def _remove_words(banned: tuple[str, ...], given: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    updated = tuple(word for word in banned if word not in given)
    removed = len(banned) - len(updated)
    text = f"✅ Removed {_count(removed, 'word')}; {_count(len(updated), 'banned word')} left."
    missing = [word for word in given if word not in banned]
    if missing:
        text += " Not on the list: " + _escaped_list(missing, 500)
    return text, updated


async def _send_word_list(interaction: discord.Interaction, banned: tuple[str, ...]) -> None:
    if not banned:
        await _reply(interaction, "No banned words here.")
        return
    head = f"🚫 {_count(len(banned), 'banned word')}:\n"
    shown = ", ".join(discord.utils.escape_markdown(word) for word in banned)
    if len(head) + len(shown) <= MESSAGE_LIMIT:
        await _reply(interaction, head + shown)
        return
    # Too many for one message: the whole list as a file, one word a line.
    data = io.BytesIO("\n".join(banned).encode())
    await interaction.response.send_message(
        head + "(the full list is attached)",
        file=discord.File(data, "banned-words.txt"),
        ephemeral=True,
        allowed_mentions=_NO_PINGS,
    )


def stats_text(usage: UsageStats, budget_usd: float | None, resets_at: datetime) -> str:
    """Today's usage in a server for its admins; users as mentions (sent without pings)."""
    spend = f"${usage.estimated_spend_usd:,.2f}"
    if budget_usd is not None:
        spend += f" of ${budget_usd:,.2f} budget"
    lines = [
        f"📊 **Today in this server** (UTC day, resets <t:{int(resets_at.timestamp())}:R>)",
        f"🖼️ Images: {usage.images} from {_count(usage.jobs, 'job')}",
        f"💰 Estimated spend: {spend}",
    ]
    if usage.top_users:
        lines.append("🏆 Top members:")
        lines += [
            f"{rank}. <@{user_id}> — {_count(images, 'image')}"
            for rank, (user_id, images) in enumerate(usage.top_users, 1)
        ]
    return "\n".join(lines)


def _pick(override: _T | None, default: _T) -> _T:
    return default if override is None else override


def _marked(override: _T | None, default: _T, text: Callable[[_T], str]) -> str:
    if override is None:
        return f"{text(default)} {_DEFAULT}"
    return f"**{text(override)}** {_SET_HERE}"


def _channels_line(current: GuildSettings) -> str:
    ids = current.allowed_channel_ids
    if not ids:
        return f"📍 Channels: everywhere {_DEFAULT}"
    shown = " ".join(f"<#{channel_id}>" for channel_id in ids[:CHANNELS_SHOWN])
    more = f" and {len(ids) - CHANNELS_SHOWN} more" if len(ids) > CHANNELS_SHOWN else ""
    return f"📍 Channels: only {shown}{more} {_SET_HERE}"


def _limit_lines(current: GuildSettings, defaults: Settings) -> list[str]:
    rate = _marked(current.user_rate_limit, defaults.user_rate_limit, lambda s: f"`{s}`")
    pending = _marked(current.max_pending_per_user, defaults.max_pending_per_user, str)
    quota = _marked(current.user_daily_quota, defaults.user_daily_quota, _quota_text)
    return [
        f"⏱️ Rate limit per member: {rate}",
        f"📥 Jobs at once per member: {pending}",
        f"🖼️ Images per member per day: {quota}",
    ]


def _budget_line(current: GuildSettings, defaults: Settings) -> str:
    budget = _marked(current.daily_budget_usd, defaults.guild_daily_budget_usd, _budget_text)
    return f"💰 Daily budget (estimated spend): {budget}"


def _default_lines(current: GuildSettings) -> list[str]:
    ratio = _marked(current.default_aspect_ratio, None, _unset_text)
    size = _marked(current.default_size, None, _unset_text)
    return [f"📐 Default aspect ratio: {ratio}", f"🔍 Default size: {size}"]


def _words_line(current: GuildSettings) -> str:
    if not current.banned_words:
        return "🚫 Banned words: none"
    count = len(current.banned_words)
    return f"🚫 Banned words: **{count}** {_SET_HERE} (`/imagine-admin banned-words list`)"


def _quota_text(quota: int | None) -> str:
    if quota is None:
        return "unlimited"
    return "0 (image making off)" if quota == 0 else str(quota)


def _budget_text(usd: float | None) -> str:
    if usd is None:
        return "none (unlimited)"
    return "$0 (image making paused)" if usd == 0 else f"${usd:,.2f}"


def _unset_text(value: str | None) -> str:
    return value or "not set"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _escaped_list(words: Sequence[str], limit: int) -> str:
    return clip(", ".join(discord.utils.escape_markdown(word) for word in words), limit)


async def setup(bot: BananaBot) -> None:
    services = bot.services
    await bot.add_cog(AdminCog(services.store, services.settings))
    await bot.add_cog(PreferencesCog(services.store))
