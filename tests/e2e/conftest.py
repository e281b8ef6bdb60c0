"""The real bot process (`python -m bot`) wired to loopback fakes of Discord and Gemini."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybase64
import pytest
from PIL import Image

from tests.fakes.discord import Event, FakeDiscord, InteractionRecord, StoredMessage
from tests.fakes.gemini import FakeGemini, FakeReply, FakeRequest, fake_png, image_response

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "AIzaSy-e2e-secret-api-key-000111"
TOKEN = "MTE-e2e-secret-discord-token.XYZ"


@dataclass
class BotWorld:
    """A running bot and the fakes around it."""

    discord: FakeDiscord
    gemini: FakeGemini
    log_path: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Interactions a test had the fake drop on purpose: exempt from "acknowledged in time".
    dropped: list[InteractionRecord] = field(default_factory=list)

    async def start(self, **settings: str) -> None:
        env = self.env | settings
        self.log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", env=env, cwd=self.log_path.parent,
            stdout=self.log, stderr=self.log,
        )  # fmt: skip
        await self.discord.wait_for(lambda e: e.kind == "commands", timeout=30)
        await self.discord.wait_ready(timeout=30)

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 20)
        self.log.close()
        return code

    async def restart(self, **settings: str) -> None:
        assert await self.stop() == 0
        await self.start(**settings)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def user(self, name: str, **kwargs: Any) -> dict[str, Any]:
        if name not in self.users:
            self.users[name] = self.discord.make_user(name, **kwargs)
        return self.users[name]

    async def result_of(self, record: InteractionRecord, timeout: float = 20) -> StoredMessage:
        """The message carrying this interaction's images, once posted."""
        return await self._images_posted(
            lambda m: m.interaction is record or _replies_for(m, record), timeout
        )

    async def reply_to(
        self, message_id: int, *, skip: Collection[StoredMessage] = (), timeout: float = 20
    ) -> StoredMessage:
        """The bot's message with images that replies to `message_id` (other than `skip`)."""
        return await self._images_posted(
            lambda m: m.reference_id == message_id and m not in skip, timeout
        )

    async def _images_posted(
        self, wanted: Callable[[StoredMessage], bool], timeout: float
    ) -> StoredMessage:
        def done(event: Event) -> bool:
            message = event.message
            return (
                message is not None
                and event.kind in ("message_create", "message_update")
                and bool(message.files)
                and wanted(message)
            )

        event = await self.discord.wait_for(done, timeout)
        assert event.message is not None
        return event.message

    async def final_text(self, record: InteractionRecord, predicate: Callable[[str], bool]) -> str:
        """Wait until the interaction's original response reads as `predicate` wants."""

        def matches(event: Event) -> bool:
            return (
                event.interaction is record
                and record.original is not None
                and predicate(record.original.content)
            )

        await self.discord.wait_for(matches, 20)
        assert record.original is not None
        return record.original.content


class Gate:
    """A Gemini responder that holds each request until released, counting those in flight."""

    def __init__(self, reply: FakeReply | None = None) -> None:
        self.reply = reply or image_response(fake_png(256, 256))
        self.prompts: list[str] = []  # in arrival order
        self.in_flight = 0
        self.peak = 0
        self._released = asyncio.Event()
        self._arrived = asyncio.Event()

    async def __call__(self, request: FakeRequest) -> FakeReply:
        self.prompts.append(prompt_of(request))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self._arrived.set()
        try:
            await self._released.wait()
        finally:
            self.in_flight -= 1
        return self.reply

    async def arrivals(self, count: int, timeout: float = 20) -> None:
        """Wait until `count` requests have reached the gate in all."""
        async with asyncio.timeout(timeout):
            while len(self.prompts) < count:
                self._arrived.clear()
                await self._arrived.wait()

    def release(self) -> None:
        self._released.set()


def prompt_of(request: FakeRequest) -> str:
    parts = request.json["contents"][0]["parts"]
    return " ".join(part["text"] for part in parts if "text" in part)


def image_config(request: FakeRequest) -> dict[str, Any]:
    config: dict[str, Any] = request.json.get("generationConfig", {}).get("imageConfig", {})
    return config


def inline_images(request: FakeRequest) -> list[bytes]:
    """The images a request carried inline, in order (either JSON spelling)."""
    parts = request.json["contents"][0]["parts"]
    inline = [part.get("inline_data") or part.get("inlineData") for part in parts]
    return [pybase64.b64decode(i["data"]) for i in inline if i is not None]


def png_size(data: bytes | bytearray | None) -> tuple[int, int]:
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
        return image.size


def button_id(message: StoredMessage, label: str) -> str:
    """The custom_id of the message's button whose label starts with `label`."""
    for row in message.payload["components"]:
        for item in row.get("components", []):
            if item.get("type") == 2 and str(item.get("label", "")).startswith(label):
                return str(item["custom_id"])
    raise LookupError(f"no button {label!r} on message {message.id}")


def text_input_id(record: InteractionRecord, index: int = 0) -> str:
    """The custom_id of the `index`th text input of the modal the bot opened for `record`."""
    assert record.modal is not None, "the bot opened no modal"
    inputs = []
    for row in record.modal["components"]:
        inner = row.get("components") or [row.get("component")]
        inputs += [c["custom_id"] for c in inner if c and c.get("type") == 4]
    return str(inputs[index])


def _replies_for(message: StoredMessage, record: InteractionRecord) -> bool:
    target = record.payload.get("message") or next(
        iter(record.payload.get("data", {}).get("resolved", {}).get("messages", {}).values()), None
    )
    return target is not None and message.reference_id == int(target["id"])


def bot_env(discord: FakeDiscord, gemini: FakeGemini) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "DISCORD_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DISCORD_TOKEN=TOKEN,
        GEMINI_API_KEY=API_KEY,
        GEMINI_BASE_URL=gemini.base_url,
        GEMINI_MAX_RETRIES="0",
        DISCORD_API_BASE_URL=discord.api_base_url,
        DISCORD_GATEWAY_URL=discord.gateway_url,
        DEV_GUILD_ID=str(discord.guild_id),
        USER_RATE_LIMIT="100/minute",
        USER_DAILY_QUOTA="1000",
        MAX_CONCURRENT_JOBS="4",
        MAX_PENDING_PER_USER="2",
        LOG_LEVEL="DEBUG",
    )
    return env


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[BotWorld]:
    async with FakeDiscord(token=TOKEN) as discord, FakeGemini(api_key=API_KEY) as gemini:
        world = BotWorld(discord, gemini, tmp_path / "bot.log", bot_env(discord, gemini))
        yield world
        if world.process is not None:
            code = await world.stop()
            output = world.output()
            assert code == 0, output[-3000:]
            assert API_KEY not in output and TOKEN not in output
            assert "Traceback" not in output, output[-3000:]
        # What every user saw: every interaction acknowledged in time, no secret in any message.
        for record in discord.interactions:
            if record in world.dropped:
                continue
            assert record.ack_latency is not None and record.ack_latency < 3, record.payload["data"]
        for message in discord.messages.values():
            for payload in (message.payload, *message.history):
                assert API_KEY not in repr(payload) and TOKEN not in repr(payload)
