"""The buttons under a result — Reroll, Edit, Upscale, Delete — working across restarts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.jobs import Order
from cogs.errors import InvalidInput, describe
from cogs.runner import PROMPT_MAX, Runner, read_order

if TYPE_CHECKING:
    from bot.app import BananaBot, Services

UPSCALE_PROMPT = (
    "Re-render this exact image at a higher resolution. Keep the content, composition, "
    "colours and style identical; only add fine detail and sharpness."
)
# Everything a button needs lives in its custom_id or in the message it sits on, so the
# buttons keep working after a restart: `banana:<action>:<owner id>:<image number>`.
_TEMPLATE = r"banana:(?P<action>reroll|edit|up2K|up4K|delete):(?P<owner>\d+):(?P<index>\d)"
_LABELS = {
    "reroll": ("Reroll", "🎲"),
    "edit": ("Edit", "✏️"),
    "up2K": ("Upscale 2K", "🔍"),
    "up4K": ("Upscale 4K", "🔍"),
    "delete": ("Delete", "🗑️"),
}


class ResultButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=_TEMPLATE):
    """One result button; its action is handled by the `Results` that owns the view."""

    def __init__(self, action: str, owner: int, index: int, *, row: int | None = None) -> None:
        label, emoji = _LABELS[action]
        if index:
            label = f"{label.split()[-1]} #{index}" if action.startswith("up") else label
        style = discord.ButtonStyle.danger if action == "delete" else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                custom_id=f"banana:{action}:{owner}:{index}",
                row=row,
            )
        )
        self.action, self.owner, self.index = action, owner, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ResultButton:
        return cls(match["action"], int(match["owner"]), int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        results = _results_cog(interaction)
        if results is None:
            await interaction.response.send_message("Not ready yet; try again.", ephemeral=True)
            return
        await results.press(interaction, self.action, self.owner, self.index)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"banana:cancel:(?P<job>[0-9a-f]+):(?P<owner>\d+)",
):
    """Cancel on a queued job's status; matched by id, so it works from the first instant."""

    def __init__(self, job_id: str, owner: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel",
                emoji="✖️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"banana:cancel:{job_id}:{owner}",
            )
        )
        self.job_id, self.owner = job_id, owner

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CancelButton:
        return cls(match["job"], int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        results = _results_cog(interaction)
        if interaction.user.id != self.owner:
            await interaction.response.send_message(
                "Only the person who asked can cancel this.", ephemeral=True
            )
        elif results is None or (cancelled := results.cancel(self.job_id)) is None:
            await interaction.response.edit_message(
                content="✖️ This job no longer exists.", view=None
            )
        elif cancelled:
            await interaction.response.edit_message(content="✖️ Cancelled.", view=None)
        else:
            await interaction.response.send_message(
                "Too late to cancel: it's already generating.", ephemeral=True
            )


def cancel_view(job_id: str, owner: int) -> discord.ui.View:
    """The status message's Cancel button for a queued job."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id, owner))
    return view


def _results_cog(interaction: discord.Interaction) -> Results | None:
    # discord.py builds dynamic items itself, so the handling cog is looked up, not injected.
    # AutoShardedBot is not a subclass of Bot: accept either.
    client = interaction.client
    bots = (commands.Bot, commands.AutoShardedBot)
    cog = client.get_cog(Results.__name__) if isinstance(client, bots) else None
    return cog if isinstance(cog, Results) else None


def result_view(owner: int, images: int) -> discord.ui.View:
    """Buttons for a result of `images` images requested by `owner`."""
    view = discord.ui.View(timeout=None)
    if images == 1:
        for action in ("reroll", "edit", "up2K", "up4K", "delete"):
            view.add_item(ResultButton(action, owner, 0))
        return view
    for action in ("reroll", "edit", "delete"):
        view.add_item(ResultButton(action, owner, 0, row=0))
    for row, action in enumerate(("up2K", "up4K"), 1):
        for index in range(1, images + 1):
            view.add_item(ResultButton(action, owner, index, row=row))
    return view


class EditResultModal(discord.ui.Modal, title="Edit this image"):
    """Asks how to change a result (and which one, when there are several)."""

    instruction: discord.ui.TextInput[EditResultModal] = discord.ui.TextInput(
        label="What should change?", style=discord.TextStyle.paragraph, max_length=PROMPT_MAX
    )

    def __init__(self, runner: Runner, message: discord.Message, urls: list[str]) -> None:
        super().__init__()
        self._runner, self._message, self._urls = runner, message, urls
        self.number: discord.ui.TextInput[EditResultModal] | None = None
        if len(urls) > 1:
            self.number = discord.ui.TextInput(
                label=f"Which image (1–{len(urls)})?", default="1", max_length=1
            )
            self.add_item(self.number)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        choice = self.number.value.strip() if self.number is not None else "1"
        if not choice.isdigit() or not 1 <= int(choice) <= len(self._urls):
            message = f"Pick an image number from 1 to {len(self._urls)}."
            await interaction.response.send_message(message, ephemeral=True)
            return
        base = read_order(self._message, "edit")
        order = Order(
            "edit",
            self.instruction.value,
            base.aspect_ratio,
            base.image_size,
            1,
            (self._urls[int(choice) - 1],),
        )
        await self._runner.run_interaction(interaction, order, reply_to=self._message)


class Results(commands.Cog):
    """Handles presses of the result buttons."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def cancel(self, job_id: str) -> bool | None:
        return self._runner.cancel(job_id)

    async def press(
        self, interaction: discord.Interaction, action: str, owner: int, index: int
    ) -> None:
        message = interaction.message
        if message is None:
            return
        if action == "delete":
            await self._delete(interaction, owner)
            return
        urls = [a.url for a in message.attachments]
        try:
            if action == "reroll":
                order = read_order(message, "reroll")
                await self._runner.run_interaction(interaction, order, reply_to=message)
            elif action == "edit":
                await interaction.response.send_modal(EditResultModal(self._runner, message, urls))
            else:
                if not urls or index > len(urls):
                    raise InvalidInput("This result has no image to upscale.")
                base = read_order(message, "upscale")
                order = Order(
                    "upscale",
                    UPSCALE_PROMPT,
                    base.aspect_ratio,
                    action.removeprefix("up"),
                    1,
                    (urls[max(index, 1) - 1],),
                )
                await self._runner.run_interaction(interaction, order, reply_to=message)
        except InvalidInput as exc:
            await interaction.response.send_message(describe(exc), ephemeral=True)

    async def _delete(self, interaction: discord.Interaction, owner: int) -> None:
        allowed = interaction.user.id == owner or (
            isinstance(interaction.user, discord.Member)
            and interaction.channel is not None
            and interaction.permissions.manage_messages
        )
        if not allowed:
            await interaction.response.send_message(
                "Only the person who asked for this image, or a moderator, can delete it.",
                ephemeral=True,
            )
            return
        await interaction.response.defer()
        await interaction.delete_original_response()


def make_runner(services: Services) -> Runner:
    """The runner every surface uses, with this module's buttons on its messages."""
    return Runner(
        services.jobs,
        services.references,
        services.store,
        services.settings,
        result_view,
        cancel_view,
    )


async def setup(bot: BananaBot) -> None:
    await bot.add_cog(Results(make_runner(bot.services)))
    bot.add_dynamic_items(ResultButton, CancelButton)
