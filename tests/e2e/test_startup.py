"""Starting and stopping the bot process: signals, a refused token, and what it syncs."""

from __future__ import annotations

import asyncio
import signal
import sys

from tests.e2e.conftest import API_KEY, TOKEN, BotWorld, bot_env
from tests.fakes.discord import FakeDiscord
from tests.fakes.gemini import FakeGemini


async def test_syncs_commands_and_the_menu_to_the_dev_guild(world: BotWorld) -> None:
    await world.start()
    synced = {(c["name"], c["type"]) for c in world.discord.commands[world.discord.guild_id]}
    assert {("imagine", 1), ("edit", 1), ("Edit image", 3)} <= synced
    imagine = next(
        c for c in world.discord.commands[world.discord.guild_id] if c["name"] == "imagine"
    )
    prompt = next(o for o in imagine["options"] if o["name"] == "prompt")
    assert prompt["required"] and prompt["max_length"] == 1000
    sizes = next(o for o in imagine["options"] if o["name"] == "size")
    assert [c["value"] for c in sizes["choices"]] == ["512", "1K", "2K", "4K"]


async def test_sigint_stops_it_with_exit_code_0(world: BotWorld) -> None:
    await world.start()
    assert world.process is not None
    world.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(world.process.wait(), 20) == 0


async def test_a_refused_token_ends_with_one_readable_line() -> None:
    async with (
        FakeDiscord(token="the-real-token") as discord,
        FakeGemini(api_key=API_KEY) as gemini,
    ):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", env=bot_env(discord, gemini),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    text = (out + err).decode()
    assert "DISCORD_TOKEN" in text
    assert "Traceback" not in text
    assert TOKEN not in text and API_KEY not in text
