"""The Discord bot process: builds the services, owns their lifetimes, stops cleanly on signals."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.gemini import GeminiClient
from bot.jobs import ImageJobs, Rendered
from bot.rate_limit import UserRateLimiter
from bot.references import ReferenceLoader
from bot.scheduler import Scheduler
from bot.settings import Settings

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
EXTENSIONS = ("cogs.results", "cogs.imagine")


@dataclass(frozen=True, slots=True)
class Services:
    """What the cogs are given: the bot's settings and its long-lived services."""

    settings: Settings
    jobs: ImageJobs
    references: ReferenceLoader


class BananaBot(commands.AutoShardedBot):
    """The bot: loads the cogs, syncs the commands, and hands the services to the cogs."""

    def __init__(self, services: Services) -> None:
        intents = discord.Intents.default()  # no privileged intents: mentions carry their content
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.services = services

    async def setup_hook(self) -> None:
        settings = self.services.settings
        if settings.discord_gateway_url is not None and self.shard_count is None:
            # AutoShardedBot dials the gateway URL that Discord advertises unless the shard
            # count is known; asking for the count keeps our override in force.
            self.shard_count, _, _ = await self.http.get_bot_gateway()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if settings.dev_guild_id is not None:
            guild = discord.Object(settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d application commands", len(synced))

    async def on_ready(self) -> None:
        log.info("ready as %s in %d guilds", self.user, len(self.guilds))


def _limit_malloc_arenas() -> None:
    """Keep glibc from giving every worker thread a heap of its own.

    Pillow and base64 work in threads frees tens of MB at a time; in per-thread arenas that
    memory is rarely handed back, and the bot's footprint grows with the thread count.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(_M_ARENA_MAX, 2)


def _point_at_discord(settings: Settings) -> None:
    """Send REST and gateway traffic where the settings say (a proxy or a test double)."""
    if settings.discord_api_base_url is not None:
        discord.http.Route.BASE = settings.discord_api_base_url
    if settings.discord_gateway_url is not None:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def _serve(settings: Settings) -> int:
    _limit_malloc_arenas()
    _point_at_discord(settings)
    assert settings.discord_token is not None
    async with aiohttp.ClientSession() as http:
        scheduler: Scheduler[Rendered] = Scheduler(
            settings.max_concurrent_jobs, settings.max_pending_per_user
        )
        # One gate for Pillow work (fitting outputs, normalising inputs): Pillow's codecs release
        # the GIL, so a thread a core keeps the cores busy without piling up decoded images.
        cpu_slots = asyncio.Semaphore(os.cpu_count() or 1)
        jobs = ImageJobs(
            GeminiClient.from_settings(http, settings),
            UserRateLimiter(settings.user_rate_limit),
            scheduler,
            cpu_slots,
        )
        bot = BananaBot(Services(settings, jobs, ReferenceLoader(http, cpu_slots)))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))
        try:
            async with bot:
                await bot.start(settings.discord_token.get_secret_value())
        except discord.LoginFailure:
            print("error: Discord rejected DISCORD_TOKEN (check the bot token)", file=sys.stderr)
            return 1
        except discord.PrivilegedIntentsRequired:
            print(
                "error: Discord refused a privileged intent; enable it in the developer portal",
                file=sys.stderr,
            )
            return 1
        except discord.ConnectionClosed as exc:
            print(f"error: Discord closed the gateway (code {exc.code})", file=sys.stderr)
            return 1
        finally:
            await scheduler.close(cancel_running=True)
    log.info("stopped")
    return 0


def run_bot(settings: Settings) -> int:
    """Run the bot until SIGINT/SIGTERM; return the process exit code."""
    return asyncio.run(_serve(settings))
