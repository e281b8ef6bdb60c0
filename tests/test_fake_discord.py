"""The fake Discord proves itself against a real discord.py bot running in this process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route
from PIL import Image

from tests.fakes.discord import MIB, Event, FakeDiscord, Flag, InteractionRecord, shard_of


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "orange").save(out, "PNG")
    return out.getvalue()


RESULT_PNG = _png((64, 48))


class ImageBot(commands.Bot):
    """The shapes of an image bot: defer + follow-up with a file and a button, a modal, a menu."""

    def __init__(self, guild_id: int, **options: Any) -> None:
        options.setdefault("intents", discord.Intents.default())
        super().__init__(
            command_prefix=commands.when_mentioned, guild_ready_timeout=0.05, **options
        )
        self.guild = discord.Object(guild_id)
        self.seen: dict[str, Any] = {}
        self.errors: list[Exception] = []

    async def setup_hook(self) -> None:
        self.tree.add_command(imagine)
        self.tree.add_command(edit_image)
        self.tree.add_command(slow, guild=self.guild)
        self.tree.error(self.record_error)
        await self.tree.sync()
        await self.tree.sync(guild=self.guild)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before re-identifying (Discord's identify rate limit); not here."""

    async def record_error(
        self, _: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        self.errors.append(getattr(error, "original", error))

    async def on_message(self, message: discord.Message) -> None:
        self.seen.setdefault("messages", []).append(message.content)


class Refine(discord.ui.Modal, title="Refine"):
    prompt: discord.ui.TextInput[Refine] = discord.ui.TextInput(label="New prompt", custom_id="p")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"refined: {self.prompt.value}", ephemeral=True)


class Result(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Refine", custom_id="refine")
    async def refine(self, interaction: discord.Interaction, _: discord.ui.Button[Result]) -> None:
        await interaction.response.send_modal(Refine())


@app_commands.command(description="Make an image")
async def imagine(
    interaction: discord.Interaction[ImageBot],
    prompt: str,
    count: app_commands.Range[int, 1, 4] = 1,
    image: discord.Attachment | None = None,
    private: bool = False,
) -> None:
    await interaction.response.defer(thinking=True, ephemeral=private)
    source = await image.read() if image else b""
    interaction.client.seen["imagine"] = (prompt, count, image and image.filename, source)
    result = discord.File(io.BytesIO(RESULT_PNG), "result.png")
    await interaction.followup.send(f"{prompt} x{count}", file=result, view=Result())


@app_commands.context_menu(name="Edit image")
async def edit_image(interaction: discord.Interaction, message: discord.Message) -> None:
    names = [a.filename for a in message.attachments]
    await interaction.response.send_message(f"editing {names}", ephemeral=True)


@app_commands.command(description="Acknowledges too late")
async def slow(interaction: discord.Interaction) -> None:
    await asyncio.sleep(0.3)
    await interaction.response.defer()


@pytest.fixture(autouse=True)
def _restore_discord_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)


def point_discord_py_at(fake: FakeDiscord) -> None:
    """What the bot does with DISCORD_API_BASE_URL and DISCORD_GATEWAY_URL."""
    Route.BASE = fake.api_base_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, *bots: commands.Bot) -> AsyncIterator[None]:
    point_discord_py_at(fake)
    tasks = [asyncio.create_task(bot.start(fake.token)) for bot in bots]
    try:
        await fake.wait_ready(5, sessions=len(bots))
        for bot in bots:
            await asyncio.wait_for(bot.wait_until_ready(), 5)
        yield
    finally:
        for bot in bots:
            await bot.close()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def fake_with_bot(**options: Any) -> AsyncIterator[tuple[FakeDiscord, ImageBot]]:
    async with FakeDiscord(**options) as fake:
        bot = ImageBot(fake.guild_id)
        async with running(fake, bot):
            yield fake, bot


def replied(rec: InteractionRecord, kind: str) -> Callable[[Event], bool]:
    return lambda e: e.interaction is rec and e.kind == kind


async def eventually(condition: Callable[[], object], timeout: float = 5) -> None:
    """For what the bot does after the fake has answered it."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_login_sync_and_guild_state() -> None:
    async with fake_with_bot(premium_tier=2) as (fake, bot):
        assert {c["name"] for c in fake.commands[None]} == {"imagine", "Edit image"}
        assert [c["name"] for c in fake.commands[fake.guild_id]] == ["slow"]
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None
        assert guild.filesize_limit == fake.upload_limit == 50 * MIB
        assert guild.me.guild_permissions.attach_files
        assert guild.default_role.id == fake.guild_id
        assert isinstance(bot.get_channel(fake.channel_id), discord.TextChannel)
    assert fake.unknown_requests == []


@pytest.mark.parametrize("private", [False, True])
async def test_slash_defer_then_followup_fills_the_original(private: bool) -> None:
    async with fake_with_bot() as (fake, bot):
        user = fake.make_user("alice")
        source = fake.add_cdn_file(_png((32, 32)), "my cat.png")
        options = {"prompt": "a cat", "count": 2, "private": private}
        rec = await fake.slash(user, "imagine", options, attachments={"image": source})
        await fake.wait_for(replied(rec, "followup"))

        assert source["width"] == 32 and source["filename"] == "my_cat.png"
        assert bot.seen["imagine"] == ("a cat", 2, "my_cat.png", fake.file(source).data)
        assert rec.response_type == 5 and rec.ack_latency is not None and rec.ack_latency < 1
        message = rec.original
        assert message is not None and rec.followups == []
        assert message.history[0]["flags"] == Flag.LOADING | (Flag.EPHEMERAL if private else 0)
        assert message.content == "a cat x2" and not message.loading
        assert message.ephemeral is private
        assert message.payload["type"] == 20
        [result] = message.files
        assert result.data == RESULT_PNG and (result.width, result.height) == (64, 48)
        assert message.payload["components"][0]["components"][0]["custom_id"] == "refine"


async def test_button_opens_a_modal_and_the_context_menu_sees_the_result() -> None:
    async with fake_with_bot() as (fake, _):
        user = fake.make_user("alice")
        rec = await fake.slash(user, "imagine", {"prompt": "a cat"})
        await fake.wait_for(replied(rec, "followup"))
        assert rec.original is not None

        click = await fake.click(user, rec.original, "refine")
        await fake.wait_for(replied(click, "callback"))
        assert click.response_type == 9 and click.modal is not None
        submit = await fake.submit_modal(user, click.modal["custom_id"], {"p": "a dog"})
        await fake.wait_for(replied(submit, "callback"))
        assert submit.original is not None and submit.original.ephemeral
        assert submit.original.content == "refined: a dog"

        menu = await fake.message_command(user, "Edit image", rec.original)
        await fake.wait_for(replied(menu, "callback"))
        assert menu.original is not None
        assert menu.original.content == "editing ['result.png']"


async def test_second_acknowledgement_is_rejected() -> None:
    async with fake_with_bot() as (fake, _):
        rec = await fake.slash(fake.make_user("alice"), "imagine", {"prompt": "a cat"})
        await fake.wait_for(replied(rec, "followup"))
        url = f"{fake.api_base_url}/interactions/{rec.id}/{rec.token}/callback"
        async with aiohttp.ClientSession() as http, http.post(url, json={"type": 5}) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 40060
        assert [e.status for e in rec.events if e.kind == "callback"] == [200, 400]


async def test_late_acknowledgement_is_an_unknown_interaction() -> None:
    async with fake_with_bot(ack_deadline=0.2) as (fake, bot):
        rec = await fake.slash(fake.make_user("alice"), "slow")
        event = await fake.wait_for(replied(rec, "callback"))
        assert event.status == 404 and event.response["code"] == 10062
        await eventually(lambda: bot.errors)
        [error] = bot.errors
        assert isinstance(error, discord.NotFound) and error.code == 10062
        assert rec.response_type is None


async def test_uploads_are_limited_by_the_guild_tier() -> None:
    async with fake_with_bot(keep_files=False) as (fake, bot):
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        exact = b"\1" * (10 * MIB)
        sent = await channel.send(file=discord.File(io.BytesIO(exact), "exact.bin"))
        [kept] = fake.messages[sent.id].files
        assert kept.size == len(exact) and kept.data is None and kept.head == exact[:64]
        assert kept.sha256 == hashlib.sha256(exact).hexdigest()
        with pytest.raises(discord.HTTPException) as caught:
            await channel.send(file=discord.File(io.BytesIO(exact + b"\1"), "big.bin"))
        assert (caught.value.status, caught.value.code) == (413, 40005)


def _long_custom_id() -> discord.ui.View:
    return discord.ui.View().add_item(discord.ui.Button(label="b", custom_id="c" * 101))


@pytest.mark.parametrize(
    "message",
    [
        lambda: {"content": "x" * 2001},
        lambda: {"embed": discord.Embed(title="t" * 257)},
        lambda: {"embeds": [discord.Embed(description="d" * 4000)] * 2},
        lambda: {"view": _long_custom_id()},
        lambda: {"content": ""},
    ],
    ids=["content", "embed-title", "embeds-total", "custom-id", "empty"],
)
async def test_messages_over_discord_limits_are_rejected(
    message: Callable[[], dict[str, Any]],
) -> None:
    async with fake_with_bot() as (fake, bot):
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as caught:
            await channel.send(**message())
        assert caught.value.status == 400 and caught.value.code in (50035, 50006)


async def test_expired_token_and_emulated_rate_limit() -> None:
    async with fake_with_bot() as (fake, bot):
        rec = await fake.slash(fake.make_user("alice"), "imagine", {"prompt": "a cat"})
        await fake.wait_for(replied(rec, "followup"))
        fake.expire_tokens()
        url = f"{fake.api_base_url}/webhooks/{fake.application_id}/{rec.token}/messages/@original"
        async with aiohttp.ClientSession() as http, http.patch(url, json={"content": "late"}) as r:
            assert (r.status, (await r.json())["code"]) == (401, 50027)

        fake.rate_limit_next("POST /channels/*/messages", retry_after=0.05)
        channel = bot.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("hello")  # discord.py waits and retries
        posts = [r.status for r in fake.request_log if r.path.endswith("/messages")]
        assert posts == [429, 200]


async def test_message_content_needs_the_intent_or_a_mention() -> None:
    async with fake_with_bot() as (fake, bot):
        alice = fake.make_user("alice")
        await fake.post_message(alice, "just chatting")
        await fake.post_message(alice, f"<@{fake.application_id}> draw a cat")
        await eventually(lambda: len(bot.seen.get("messages", [])) == 2)
        assert bot.seen["messages"] == ["", f"<@{fake.application_id}> draw a cat"]


@pytest.mark.parametrize("resumable", [True, False])
async def test_gateway_reconnects_after_a_drop(resumable: bool) -> None:
    async with fake_with_bot() as (fake, bot):
        [before] = fake.sessions
        await fake.disconnect_gateway(4000, resumable=resumable)
        await fake.wait_ready(5)
        assert (list(fake.sessions) == [before]) is resumable
        rec = await fake.slash(fake.make_user("alice"), "imagine", {"prompt": "again"})
        await fake.wait_for(replied(rec, "followup"))
        assert bot.seen["imagine"][0] == "again"


async def test_privileged_intents_not_enabled_close_with_4014() -> None:
    async with FakeDiscord(intents_allowed=discord.Intents.default().value) as fake:
        point_discord_py_at(fake)
        bot = ImageBot(fake.guild_id, intents=discord.Intents.all())
        try:
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(bot.start(fake.token), 5)
        finally:
            await bot.close()


async def test_each_shard_gets_only_its_guilds_and_interactions() -> None:
    async with FakeDiscord() as fake:
        first = shard_of(fake.guild_id, 2)
        other = await fake.make_guild("Other", shard=(1 - first, 2))
        bots = [ImageBot(fake.guild_id, shard_id=i, shard_count=2) for i in range(2)]
        async with running(fake, *bots):
            assert [g.id for g in bots[first].guilds] == [fake.guild_id]
            assert [g.id for g in bots[1 - first].guilds] == [other.id]
            bob = fake.make_user("bob", guild_id=other.id)
            rec = await fake.slash(bob, "imagine", {"prompt": "x"}, channel_id=other.channel_id)
            await fake.wait_for(replied(rec, "followup"))
            assert "imagine" in bots[1 - first].seen and "imagine" not in bots[first].seen
            dm = await fake.slash(bob, "imagine", {"prompt": "dm"}, guild=False)
            await fake.wait_for(replied(dm, "followup"))
            assert bots[0].seen["imagine"][0] == "dm"


async def test_protocol_errors_look_like_discord() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bot {fake.token}"}
        async with http.get(f"{fake.api_base_url}/users/@me") as r:
            assert r.status == 401
        async with http.get(f"{fake.api_base_url}/applications/1/emojis", headers=auth) as r:
            assert r.status == 404 and r.content_type == "application/json"
            assert await r.json() == {"code": 0, "message": "404: Not Found"}
        assert [u.path for u in fake.unknown_requests] == ["/applications/1/emojis"]
        async with http.ws_connect(fake.gateway_url) as ws:
            assert (await ws.receive_json())["op"] == 10
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0}})
            await ws.receive()
            assert ws.close_code == 4004
