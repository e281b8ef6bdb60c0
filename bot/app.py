"""The Discord bot process: builds the services, owns their lifetimes, stops cleanly on signals."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.admission import Admission
from bot.gemini import GeminiClient
from bot.jobs import ImageJobs, Rendered
from bot.metrics import HealthCheck, Metrics, OpsServer
from bot.references import ReferenceLoader
from bot.scheduler import Scheduler
from bot.settings import Settings
from bot.store import DB_FILENAME, JobStore

log = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_SETTLE_SECONDS = 10.0
_WORKER_NICENESS = 10
EXTENSIONS = ("cogs.results", "cogs.imagine", "cogs.admin", "cogs.history")


@dataclass(frozen=True, slots=True)
class Services:
    """What the cogs are given: the bot's settings and its long-lived services."""

    settings: Settings
    jobs: ImageJobs
    references: ReferenceLoader
    store: JobStore


class BananaBot(commands.AutoShardedBot):
    """The bot: loads the cogs, syncs the commands, and hands the services to the cogs."""

    def __init__(self, services: Services) -> None:
        intents = discord.Intents.default()  # no privileged intents: mentions carry their content
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            shard_count=services.settings.shard_count,
            shard_ids=services.settings.shard_ids,  # type: ignore[arg-type]  # None: all shards
        )
        self.services = services
        self.background_tasks: set[asyncio.Task[None]] = set()

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
        _freeze_startup_objects()

    async def on_ready(self) -> None:
        log.info("ready as %s in %d guilds", self.user, len(self.guilds))


def _freeze_startup_objects() -> None:
    """Exempt what start-up built (modules, commands, settings) from garbage collection.

    Hundreds of thousands of long-lived objects made every full collection a ~55 ms pause of
    the event loop, long enough to delay a burst's acknowledgements.
    """
    gc.collect()
    gc.freeze()


def _limit_malloc_arenas() -> None:
    """Keep glibc from holding on to memory that image work frees.

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
    # A fixed threshold: blocks of 1 MiB and more (image buffers) get their own mapping, which
    # goes back to the system when freed, instead of glibc raising the threshold after the
    # first big free and serving the next ones from a heap that only grows.
    libc.mallopt(_M_MMAP_THRESHOLD, 2**20)


def _point_at_discord(settings: Settings) -> None:
    """Send REST and gateway traffic where the settings say (a proxy or a test double)."""
    if settings.discord_api_base_url is not None:
        discord.http.Route.BASE = settings.discord_api_base_url
    if settings.discord_gateway_url is not None:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def _yield_to_the_loop() -> None:
    """Run this worker thread below the event loop's priority (Linux: nice is per thread).

    Image and JSON work fill both cores in a burst; at equal priority the loop's thread waits
    its turn behind them, and acknowledgements are late. Threads libvips starts from here
    inherit the lower priority too.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _WORKER_NICENESS)


async def _serve(settings: Settings) -> int:
    _limit_malloc_arenas()
    _point_at_discord(settings)
    # asyncio.to_thread runs CPU work (fitting images, encoding payloads) on these threads.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(thread_name_prefix="worker", initializer=_yield_to_the_loop)
    )
    assert settings.discord_token is not None
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        store = await stack.enter_async_context(await JobStore.open(_database(settings)))
        metrics = Metrics()
        scheduler: Scheduler[Rendered] = Scheduler(settings.max_concurrent_jobs)
        metrics.track_queue(lambda: scheduler.queue_depth, lambda: scheduler.in_flight)
        # One gate for image work (fitting outputs, normalising inputs): the codecs release the
        # GIL, so a thread a core keeps the cores busy without piling up decoded images.
        cores = os.cpu_count() or 1
        cpu_slots = asyncio.Semaphore(cores)
        # Answers held in memory: per core, one being fitted and the next one ready.
        client = GeminiClient.from_settings(
            http, settings, on_retry=metrics.on_retry, held_answers=2 * cores
        )
        jobs = ImageJobs(
            client,
            scheduler,
            cpu_slots,
            admission=await stack.enter_async_context(Admission.connect(settings)),
            store=store,
            metrics=metrics,
        )
        # The stack unwinds in reverse: the scheduler stops the jobs first, then they settle
        # their allowances, and only then do the store and Redis close.
        stack.push_async_callback(jobs.wait_settled, _SETTLE_SECONDS)
        stack.push_async_callback(scheduler.close, cancel_running=True)
        bot = BananaBot(Services(settings, jobs, ReferenceLoader(http, cpu_slots), store))
        if settings.metrics_port is not None:
            ops = OpsServer(
                metrics,
                {"gateway": _gateway_check(bot), "store": store.ping},
                host=settings.metrics_host,
                port=settings.metrics_port,
            )
            await ops.start()
            stack.push_async_callback(ops.stop)
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
    log.info("stopped")
    return 0


def _database(settings: Settings) -> Path:
    # Processes that split the shards between them keep a database each: their guilds differ.
    if settings.shard_ids is None:
        return settings.data_dir / DB_FILENAME
    suffix = "-".join(str(shard) for shard in settings.shard_ids)
    return settings.data_dir / f"bot-shards-{suffix}.sqlite3"


def _gateway_check(bot: BananaBot) -> HealthCheck:
    async def gateway_connected() -> bool:
        return bot.is_ready() and not bot.is_closed()

    return gateway_connected


def run_bot(settings: Settings) -> int:
    """Run the bot until SIGINT/SIGTERM; return the process exit code."""
    return asyncio.run(_serve(settings))
