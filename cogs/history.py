"""/history: a user's latest results, with links back to the messages that carry them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.store import JobRecord, JobStore
from cogs.errors import clip

if TYPE_CHECKING:
    from bot.app import BananaBot

PROMPT_SHOWN = 80  # characters of each prompt in the list
_EMOJI = {"imagine": "🎨", "edit": "✏️", "reroll": "🎲", "upscale": "🔍"}


class HistoryCog(commands.Cog):
    """Lists a user's delivered jobs, newest first, only to them."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    @app_commands.command(name="history", description="Your latest images, with links to them.")
    @app_commands.describe(count="How many to list (1–10, default 5)")
    async def history(
        self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 10] = 5
    ) -> None:
        records = await self._store.history(interaction.user.id, count)
        if not records:
            await interaction.response.send_message(
                "You haven't made any images yet — try `/imagine`! 🎨", ephemeral=True
            )
            return
        embed = discord.Embed(
            title="🕘 Your latest images",
            description="\n".join(history_line(n, r) for n, r in enumerate(records, 1)),
        )
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


def jump_url(record: JobRecord) -> str:
    """The link that opens the job's result message ("@me" for DMs)."""
    place = record.guild_id if record.guild_id is not None else "@me"
    return f"https://discord.com/channels/{place}/{record.result_channel_id}/{record.result_message_id}"


def history_line(number: int, record: JobRecord) -> str:
    """One job as a line: what was asked, when, and a jump link (at most ~260 characters)."""
    prompt = discord.utils.escape_markdown(clip(" ".join(record.prompt.split()), PROMPT_SHOWN))
    when = int(record.finished_at if record.finished_at is not None else record.created_at)
    emoji = _EMOJI.get(record.kind, "🖼️")
    images = f" · {record.images} images" if record.images > 1 else ""
    return (
        f"**{number}.** {emoji} {prompt or '*(no prompt)*'}\n"
        f"<t:{when}:R>{images} · [Jump to it]({jump_url(record)})"
    )


async def setup(bot: BananaBot) -> None:
    await bot.add_cog(HistoryCog(bot.services.store))
