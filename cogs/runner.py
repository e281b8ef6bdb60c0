"""Running one image job on Discord: refusal, status while queued and generating, the result."""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

import aiohttp
import discord

from bot import images
from bot.admission import Policy, Refused, Ticket
from bot.gemini import (
    ASPECT_RATIOS,
    IMAGE_SIZES,
    MAX_REFERENCE_IMAGES,
    GeminiError,
    InputImage,
)
from bot.jobs import ImageJobs, JobOutcome, Kind, Order, Place, Rendered
from bot.references import ReferenceLoader, UnusableReference
from bot.scheduler import Job, JobCancelled, JobState
from bot.settings import Settings
from bot.store import GuildSettings, JobStore
from cogs.errors import InvalidInput, clip, describe

log = logging.getLogger(__name__)

PROMPT_MAX = 1000
DISCORD_UPLOAD_CAP = 10 * 2**20  # bots are refused above this even where more is advertised
STATUS_MIN_INTERVAL = 2.0  # seconds between two edits of one status message
STATUS_REFRESH = 5.0  # how often the elapsed time is refreshed while generating
# Discord shows "thinking…" after the defer; the first status edit waits this long, so a
# burst's acknowledgements aren't queued behind a wave of edits.
FIRST_STATUS_DELAY = 1.0
# Interaction tokens live 15 minutes; past this age a result goes out as a channel message.
TOKEN_SAFE_AGE = datetime.timedelta(minutes=14)

_TITLES: dict[str, str] = {
    "imagine": "🎨 Imagine",
    "edit": "✏️ Edit",
    "reroll": "🎲 Reroll",
    "upscale": "🔍 Upscale",
}
_REFERENCE_LINK = re.compile(r"\]\((\S+?)\)")
_Ack = TypeVar("_Ack")


def options_text(order: Order) -> str:
    """The order's options as the result shows them (and `read_order` reads them back)."""
    return " · ".join([order.aspect_ratio or "auto ratio", order.image_size or "1K"])


def check_order(order: Order) -> None:
    """Refuse, before any work, an order that cannot succeed."""
    if not order.prompt.strip():
        raise InvalidInput("Tell me what to draw: the prompt is empty.")
    if len(order.prompt) > PROMPT_MAX:
        raise InvalidInput(f"The prompt is too long ({len(order.prompt)}/{PROMPT_MAX} characters).")
    if len(order.reference_urls) > MAX_REFERENCE_IMAGES:
        raise InvalidInput(f"At most {MAX_REFERENCE_IMAGES} images can be used at once.")


def result_embed(order: Order, outcome: JobOutcome, requester: discord.abc.User) -> discord.Embed:
    """The embed of a result message: what was asked, by whom, and the model's caption."""
    embed = discord.Embed(title=_TITLES[order.kind], colour=discord.Colour.gold())
    caption = "\n\n".join(outcome.captions)
    if caption:
        embed.description = clip(caption, 1500)
    embed.add_field(name="Prompt", value=clip(order.prompt, 1024), inline=False)
    embed.add_field(name="Options", value=options_text(order), inline=True)
    chunk = ""
    for number, url in enumerate(order.reference_urls, 1):
        link = f"[{number}]({url}) "
        if len(chunk) + len(link) > 1024:
            embed.add_field(name="References", value=chunk.strip(), inline=False)
            chunk = ""
        chunk += link
    if chunk:
        embed.add_field(name="References", value=chunk.strip(), inline=False)
    failed = len(outcome.errors)
    note = f" · {failed} of {failed + len(outcome.images)} failed" if failed else ""
    embed.set_footer(text=f"by {requester.display_name}{note}")
    return embed


def read_order(message: discord.Message, kind: Kind) -> Order:
    """Recover the order behind a result message from its embed (works across restarts)."""
    if not message.embeds:
        raise InvalidInput("This message has no request to repeat.")
    fields = {f.name: f.value or "" for f in message.embeds[0].fields}
    options = fields.get("Options", "").split(" · ")
    ratio = next((o for o in options if o in ASPECT_RATIOS), None)
    size = next((o for o in options if o in IMAGE_SIZES), None)
    urls = tuple(
        url
        for f in message.embeds[0].fields
        if f.name == "References"
        for url in _REFERENCE_LINK.findall(f.value or "")
    )
    count = max(1, len(image_urls(message)))
    return Order(kind, fields.get("Prompt", ""), ratio, size, count, urls)


def image_urls(message: discord.Message) -> list[str]:
    """URLs of the images a message shows: image attachments, then image embeds."""
    urls = [a.url for a in message.attachments if _looks_like_image(a)]
    for embed in message.embeds:
        for media in (embed.image, embed.thumbnail):
            if media.url and media.url not in urls:
                urls.append(media.url)
    return urls


def _looks_like_image(attachment: discord.Attachment) -> bool:
    # A first filter only; the bytes decide later whether it really is an image.
    if attachment.content_type:
        return attachment.content_type.startswith("image/")
    return attachment.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".gif"))


def check_attachments(attachments: Sequence[discord.Attachment]) -> None:
    """Refuse, from what Discord declares, attachments that cannot be used."""
    for attachment in attachments:
        if attachment.size > images.MAX_INPUT_BYTES:
            raise InvalidInput(
                f"`{clip(attachment.filename, 60)}` is too large "
                f"({attachment.size / 2**20:.1f} MiB; the limit is "
                f"{images.MAX_INPUT_BYTES // 2**20} MiB)."
            )


def check_allowed(order: Order, place: Place, guild: GuildSettings | None) -> None:
    """Refuse what this server's admins ruled out: other channels, banned words."""
    if guild is None:
        return
    allowed = guild.allowed_channel_ids
    if allowed and place.channel_id not in allowed and place.parent_id not in allowed:
        channels = " ".join(f"<#{c}>" for c in guild.allowed_channel_ids[:5])
        raise InvalidInput(f"Images can't be made in this channel here. Try {channels}.")
    prompt = order.prompt.lower()
    # Whole words only, and words may begin or end with symbols ("c++"): no word character
    # may touch either side.
    if any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt) for word in guild.banned_words):
        raise InvalidInput("That prompt uses a word this server doesn't allow.")


def upload_budget(guild: discord.Guild | None, interaction_limit: int | None = None) -> int:
    """The most bytes one upload may carry here."""
    budget = DISCORD_UPLOAD_CAP
    if guild is not None:
        budget = min(budget, guild.filesize_limit)
    if interaction_limit:
        budget = min(budget, interaction_limit)
    return budget


def status_text(job: Job[Rendered]) -> str:
    """The status line of a job: its place in the queue, then the time spent generating."""
    position = job.position()
    if job.state is JobState.QUEUED and position is not None:
        return f"⏳ Queued — position {position}."
    started = job.started_at or time.monotonic()
    return f"🎨 Generating… {int(time.monotonic() - started)} s"


class ShowStatus(Protocol):
    """Puts a status line (and maybe a Cancel button) where the requester is looking."""

    async def __call__(self, text: str, view: discord.ui.View | None) -> object: ...


class Deliver(Protocol):
    """Posts a finished result."""

    async def __call__(
        self, *, embed: discord.Embed, attachments: list[discord.File], view: discord.ui.View
    ) -> discord.Message | None: ...


class Runner:
    """Takes an order from any surface (slash command, menu, button, reply) through to a result."""

    def __init__(
        self,
        jobs: ImageJobs,
        references: ReferenceLoader,
        store: JobStore,
        settings: Settings,
        result_view: Callable[[int, int], discord.ui.View],
        cancel_view: Callable[[str, int], discord.ui.View],
    ) -> None:
        self._jobs = jobs
        self._references = references
        self._store = store
        self._settings = settings
        self._result_view = result_view
        self._cancel_view = cancel_view

    def cancel(self, job_id: str) -> bool | None:
        """Cancel a queued job: True if done, False if it already started, None if unknown."""
        job = self._jobs.scheduler.find(job_id)
        return None if job is None else job.cancel()

    async def run_interaction(
        self,
        interaction: discord.Interaction,
        order: Order,
        *,
        reply_to: discord.Message | None = None,
    ) -> None:
        """Run `order` for an interaction not yet responded to.

        With `reply_to`, the status is private and the result replies to that message;
        otherwise the status and then the result are the interaction's public response.
        """
        place = Place(
            interaction.user.id,
            interaction.guild_id,
            interaction.channel_id,
            getattr(interaction.channel, "parent_id", None),
        )
        try:
            order, ticket = await self._admit(order, place)
        except (Refused, InvalidInput) as exc:
            await interaction.response.send_message(describe(exc), ephemeral=True)
            return
        # Acknowledged before the job is queued: a burst's acknowledgements go out ahead of its
        # API calls, and one that fails (the 3 seconds ran out) leaves no orphaned job behind.
        defer = interaction.response.defer(thinking=True, ephemeral=reply_to is not None)
        budget = upload_budget(interaction.guild, interaction.filesize_limit)
        _, job = await self._submit_after(defer, order, place, ticket, budget)

        async def show(text: str, view: discord.ui.View | None) -> object:
            return await interaction.edit_original_response(content=text, view=view)

        async def deliver(
            *, embed: discord.Embed, attachments: list[discord.File], view: discord.ui.View
        ) -> discord.Message | None:
            return await _deliver_to_interaction(interaction, reply_to, embed, attachments, view)

        await self._follow(job, order, interaction.user, show, deliver)

    async def run_message(self, message: discord.Message, order: Order) -> None:
        """Run `order` asked for by a message that mentions the bot; everything replies to it."""
        place = Place(
            message.author.id,
            message.guild.id if message.guild else None,
            message.channel.id,
            getattr(message.channel, "parent_id", None),
        )
        try:
            order, ticket = await self._admit(order, place)
        except (Refused, InvalidInput) as exc:
            await message.reply(describe(exc), mention_author=False, delete_after=30)
            return
        reply = message.reply("⏳ Queued.", mention_author=False)
        budget = upload_budget(message.guild)
        status, job = await self._submit_after(reply, order, place, ticket, budget)

        async def show(text: str, view: discord.ui.View | None) -> object:
            return await status.edit(content=text, view=view)

        async def deliver(
            *, embed: discord.Embed, attachments: list[discord.File], view: discord.ui.View
        ) -> discord.Message | None:
            return await status.edit(content=None, embed=embed, attachments=attachments, view=view)

        await self._follow(job, order, message.author, show, deliver)

    async def _admit(self, order: Order, place: Place) -> tuple[Order, Ticket]:
        """Apply the server's rules and the user's defaults, then take the allowances; or raise
        why not."""
        check_order(order)
        guild = await self._store.guild_settings(place.guild_id) if place.guild_id else None
        check_allowed(order, place, guild)
        if order.kind in ("imagine", "edit"):
            mine = await self._store.user_settings(place.user_id)
            order = replace(
                order,
                aspect_ratio=order.aspect_ratio
                or mine.default_aspect_ratio
                or (guild.default_aspect_ratio if guild else None),
                image_size=order.image_size
                or mine.default_size
                or (guild.default_size if guild else None),
            )
        return order, await self._jobs.admit(order, place, Policy.of(self._settings, guild))

    async def _submit_after(
        self,
        acknowledge: Awaitable[_Ack],
        order: Order,
        place: Place,
        ticket: Ticket,
        budget: int,
    ) -> tuple[_Ack, Job[Rendered]]:
        """Queue the admitted order once the user has been answered; if answering (or
        queueing, during a stop) fails, give its allowances back instead."""
        urls = order.reference_urls

        async def load() -> tuple[InputImage, ...]:
            return await self._references.load(urls)

        try:
            acknowledged = await acknowledge
            job = self._jobs.submit(
                ticket, order, place, upload_budget=budget, references=load if urls else None
            )
        except BaseException:
            await asyncio.shield(self._jobs.withdraw(ticket))
            raise
        return acknowledged, job

    async def _follow(
        self,
        job: Job[Rendered],
        order: Order,
        requester: discord.abc.User,
        show: ShowStatus,
        deliver: Deliver,
    ) -> None:
        log.info("job %s: %s by %s (%s)", job.id, order.kind, requester.id, options_text(order))
        updater = asyncio.create_task(self._show_status(job, requester.id, show))
        try:
            outcome = await self._jobs.finish(job, order)
        except JobCancelled:
            log.info("job %s: cancelled", job.id)
            return
        finally:
            updater.cancel()
        for error in outcome.errors:
            _log_failure(job.id, error)
        stopped = [e for e in outcome.errors if isinstance(e, asyncio.CancelledError)]
        if not outcome.images and stopped and len(stopped) == len(outcome.errors):
            return  # the bot is stopping: the job is marked interrupted at the next start
        if not outcome.images:
            await self._jobs.record(job.id, order, "failed", outcome=outcome)
            text = describe(outcome.errors[0]) if outcome.errors else describe(None)
            try:
                await show(text, None)
            except discord.HTTPException as exc:  # e.g. the interaction token expired meanwhile
                log.warning("job %s: could not report the failure: %s", job.id, exc)
            return
        files = [
            discord.File(io.BytesIO(image.data), filename=f"banana-{job.id}-{n}.{image.extension}")
            for n, image in enumerate(outcome.images, 1)
        ]
        log.info("job %s: done, %d image(s)", job.id, len(files))
        try:
            posted = await deliver(
                embed=result_embed(order, outcome, requester),
                attachments=files,
                view=self._result_view(requester.id, len(files)),
            )
        except Exception:
            await self._jobs.record(job.id, order, "failed", outcome=outcome)
            raise
        where = (posted.channel.id, posted.id) if posted is not None else None
        await self._jobs.record(job.id, order, "done", outcome=outcome, result=where)

    async def _show_status(self, job: Job[Rendered], owner: int, show: ShowStatus) -> None:
        last_text, last_edit = "", 0.0
        await asyncio.sleep(FIRST_STATUS_DELAY)
        while job.state in (JobState.QUEUED, JobState.RUNNING):
            text = status_text(job)
            if text != last_text and time.monotonic() - last_edit >= STATUS_MIN_INTERVAL:
                view = self._cancel_view(job.id, owner) if job.state is JobState.QUEUED else None
                try:
                    await show(text, view)
                except discord.HTTPException as exc:
                    log.debug("job %s: status edit failed: %s", job.id, exc)
                last_text, last_edit = text, time.monotonic()
            await job.wait_changed(STATUS_REFRESH)


async def _deliver_to_interaction(
    interaction: discord.Interaction,
    reply_to: discord.Message | None,
    embed: discord.Embed,
    files: list[discord.File],
    view: discord.ui.View,
) -> discord.Message | None:
    token_fresh = discord.utils.utcnow() - interaction.created_at < TOKEN_SAFE_AGE
    if reply_to is None and token_fresh:
        try:
            return await interaction.edit_original_response(
                content=None, embed=embed, attachments=files, view=view
            )
        except discord.HTTPException as exc:
            if not _token_refused(exc):
                raise
            # Discord's clock is the one that counts: the token died before ours said so.
            token_fresh = False
            for file in files:
                file.reset()
    # Past the token's life (or when replying in place) the result is a channel message;
    # a late one mentions the requester, who may have stopped watching.
    mention = None if token_fresh else f"{interaction.user.mention} your image is ready."
    pings = discord.AllowedMentions(users=[interaction.user])
    if reply_to is not None:
        message = await reply_to.reply(
            content=mention, embed=embed, files=files, view=view, allowed_mentions=pings
        )
    elif isinstance(interaction.channel, discord.abc.Messageable):
        message = await interaction.channel.send(
            content=mention, embed=embed, files=files, view=view, allowed_mentions=pings
        )
    else:
        log.warning("no channel to deliver interaction %s to", interaction.id)
        return None
    if token_fresh:
        # The result is posted; pointing the status at it is a courtesy, and its failure (an
        # expired token, a dropped connection, a stop under way) must not fail the job.
        try:
            await interaction.edit_original_response(
                content=f"✅ Done: {message.jump_url}", view=None
            )
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.info("interaction %s: status not pointed at the result: %s", interaction.id, exc)
    return message


def _token_refused(error: discord.HTTPException) -> bool:
    """Whether Discord refused an interaction token because it expired (15 minutes)."""
    return error.status == 401 or error.code in (10015, 50027)  # unknown webhook, invalid token


def _log_failure(job_id: str, error: BaseException) -> None:
    if isinstance(error, asyncio.CancelledError):
        log.info("job %s: stopped before it finished", job_id)
    elif isinstance(error, GeminiError | InvalidInput | UnusableReference):
        log.warning("job %s: %s: %s", job_id, type(error).__name__, error)
    else:
        log.error("job %s: unexpected failure", job_id, exc_info=error)
