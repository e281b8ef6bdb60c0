"""Ways to ask for an image: /imagine, /edit, the "Edit image" menu, replies mentioning the bot."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.gemini import ASPECT_RATIOS, IMAGE_SIZES, MAX_REFERENCE_IMAGES
from bot.jobs import Order
from bot.store import JobRecord
from cogs.errors import InvalidInput, clip, describe
from cogs.results import make_runner
from cogs.runner import PROMPT_MAX, Runner, check_attachments, image_urls

if TYPE_CHECKING:
    from bot.app import BananaBot

log = logging.getLogger(__name__)

UNKNOWN_INTERACTION = 10062  # Discord's error code for an expired or unknown interaction
RATIO_CHOICES = [app_commands.Choice(name=r, value=r) for r in ASPECT_RATIOS]
SIZE_CHOICES = [app_commands.Choice(name=s, value=s) for s in IMAGE_SIZES]


class InstructionModal(discord.ui.Modal, title="Edit image"):
    """Asks how to change an image; the answer starts the edit."""

    instruction: discord.ui.TextInput[InstructionModal] = discord.ui.TextInput(
        label="What should change?",
        style=discord.TextStyle.paragraph,
        placeholder="e.g. make it night time and add a full moon",
        max_length=PROMPT_MAX,
    )

    def __init__(self, runner: Runner, target: discord.Message, order: Order) -> None:
        super().__init__()
        self._runner = runner
        self._target = target
        self._order = order

    async def on_submit(self, interaction: discord.Interaction) -> None:
        order = Order(
            self._order.kind,
            self.instruction.value,
            self._order.aspect_ratio,
            self._order.image_size,
            1,
            self._order.reference_urls,
        )
        await self._runner.run_interaction(interaction, order, reply_to=self._target)


class ImagineCog(commands.Cog):
    """Slash commands, the message menu and reply-to-edit."""

    def __init__(self, runner: Runner, bot_user_id: int | None) -> None:
        self._runner = runner
        self._bot_user_id = bot_user_id

    @app_commands.command(name="imagine", description="Make an image from a prompt.")
    @app_commands.describe(
        prompt="What to draw",
        aspect_ratio="Shape of the image (default: square, or the reference's shape)",
        size="Resolution of the long edge: 512, 1K (default), 2K or 4K",
        count="How many images to make at once (1–4)",
        reference="An image to draw from",
        reference2="Another image to combine",
        reference3="A third image to combine",
    )
    @app_commands.choices(aspect_ratio=RATIO_CHOICES, size=SIZE_CHOICES)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_MAX],
        aspect_ratio: str | None = None,
        size: str | None = None,
        count: app_commands.Range[int, 1, 4] = 1,
        reference: discord.Attachment | None = None,
        reference2: discord.Attachment | None = None,
        reference3: discord.Attachment | None = None,
    ) -> None:
        attachments = [a for a in (reference, reference2, reference3) if a is not None]
        await self._run_slash(
            interaction, "imagine", prompt, aspect_ratio, size, count, attachments
        )

    @app_commands.command(name="edit", description="Change an image by instruction.")
    @app_commands.describe(
        image="The image to change",
        instruction="What to change",
        reference="An extra image to draw from",
        reference2="Another extra image",
        aspect_ratio="Shape of the result (default: the image's shape)",
        size="Resolution of the long edge: 512, 1K (default), 2K or 4K",
    )
    @app_commands.choices(aspect_ratio=RATIO_CHOICES, size=SIZE_CHOICES)
    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        instruction: app_commands.Range[str, 1, PROMPT_MAX],
        reference: discord.Attachment | None = None,
        reference2: discord.Attachment | None = None,
        aspect_ratio: str | None = None,
        size: str | None = None,
    ) -> None:
        attachments = [a for a in (image, reference, reference2) if a is not None]
        await self._run_slash(interaction, "edit", instruction, aspect_ratio, size, 1, attachments)

    async def _run_slash(
        self,
        interaction: discord.Interaction,
        kind: Literal["imagine", "edit"],
        prompt: str,
        aspect_ratio: str | None,
        size: str | None,
        count: int,
        attachments: list[discord.Attachment],
    ) -> None:
        try:
            check_attachments(attachments)
        except InvalidInput as exc:
            await interaction.response.send_message(describe(exc), ephemeral=True)
            return
        order = Order(kind, prompt, aspect_ratio, size, count, tuple(a.url for a in attachments))
        await self._runner.run_interaction(interaction, order)

    async def edit_from_menu(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        """Right-click → Apps → Edit image: ask for an instruction, then edit in place."""
        try:
            urls = _edit_sources(message, [])
        except InvalidInput as exc:
            await interaction.response.send_message(describe(exc), ephemeral=True)
            return
        order = Order("edit", "", reference_urls=tuple(urls))
        await interaction.response.send_modal(InstructionModal(self._runner, message, order))

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A reply that mentions the bot edits the image it replies to."""
        if message.author.bot or self._bot_user_id is None or message.reference is None:
            return
        if not any(user.id == self._bot_user_id for user in message.mentions):
            return
        target = await _referenced_message(message)
        if target is None:
            return
        instruction = _strip_mentions(message.content, self._bot_user_id)
        try:
            check_attachments(message.attachments)
            urls = _edit_sources(target, image_urls(message))
        except InvalidInput as exc:
            await message.reply(describe(exc), mention_author=False, delete_after=30)
            return
        await self._runner.run_message(
            message, Order("edit", instruction, reference_urls=tuple(urls))
        )


def _edit_sources(target: discord.Message, extra: list[str]) -> list[str]:
    urls = image_urls(target)
    if not urls:
        raise InvalidInput("That message has no image to edit.")
    check_attachments(target.attachments)
    urls += [u for u in extra if u not in urls]
    if len(urls) > MAX_REFERENCE_IMAGES:
        raise InvalidInput(f"At most {MAX_REFERENCE_IMAGES} images can be used at once.")
    return urls


async def _referenced_message(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None:
        return None
    if isinstance(reference.resolved, discord.Message):
        return reference.resolved
    if reference.message_id is None:
        return None
    try:
        return await message.channel.fetch_message(reference.message_id)
    except discord.HTTPException:
        return None


def _strip_mentions(content: str, user_id: int) -> str:
    for form in (f"<@{user_id}>", f"<@!{user_id}>"):
        content = content.replace(form, " ")
    return " ".join(content.split())


async def _tell_interrupted(bot: BananaBot, jobs: list[JobRecord]) -> None:
    """Tell each requester whose job a stop cut short, where they asked for it."""
    await bot.wait_until_ready()
    for job in jobs:
        if job.channel_id is None:
            continue
        text = (
            f"<@{job.user_id}> the bot restarted before your request "
            f"“{clip(job.prompt, 150)}” finished. Please run it again."
        )
        try:
            await bot.get_partial_messageable(job.channel_id).send(
                text, allowed_mentions=discord.AllowedMentions(users=True)
            )
        except discord.HTTPException as exc:
            log.warning("could not tell %s about interrupted job %s: %s", job.user_id, job.id, exc)


async def on_app_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """Whatever a command raised: a log line for the operator, a short sentence for the user."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(cause, discord.NotFound) and cause.code == UNKNOWN_INTERACTION:
        # Discord dropped it before we answered (its 3 seconds ran out): no one to tell.
        log.warning("interaction %s expired before it was acknowledged", interaction.id)
        return
    log.error("interaction %s failed", interaction.id, exc_info=cause)
    if not interaction.response.is_done():
        await interaction.response.send_message(describe(cause), ephemeral=True)


async def setup(bot: BananaBot) -> None:
    services = bot.services
    bot.tree.on_error = on_app_command_error  # type: ignore[method-assign]
    interrupted = await services.jobs.recover_interrupted()
    if interrupted:
        log.info("%d job(s) were cut short by the last stop", len(interrupted))
        # Held by the bot so the task isn't collected; it ends once everyone is told.
        task = asyncio.create_task(_tell_interrupted(bot, interrupted))
        bot.background_tasks.add(task)
        task.add_done_callback(bot.background_tasks.discard)
    cog = ImagineCog(make_runner(services), bot.user.id if bot.user else None)
    await bot.add_cog(cog)
    # Context menus can't live inside a cog class; register the cog's method on the tree.
    bot.tree.add_command(app_commands.ContextMenu(name="Edit image", callback=cog.edit_from_menu))
