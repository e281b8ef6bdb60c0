"""/imagine-admin, /imagine-settings and /history, through the real bot process."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import BotWorld, image_config, prompt_of
from tests.fakes.discord import DEFAULT_MEMBER_PERMISSIONS, InteractionRecord, StoredMessage
from tests.fakes.gemini import fake_png, image_response

MANAGE_GUILD = 1 << 5  # Discord's MANAGE_GUILD permission bit
ADMIN = DEFAULT_MEMBER_PERMISSIONS | MANAGE_GUILD
SUBCOMMANDS = {"show", "channels", "limits", "budget", "defaults", "banned-words", "stats"}
# One valid call of each subcommand that, from an admin, would change something.
EVERY_SUBCOMMAND: list[tuple[str, dict[str, Any]]] = [
    ("show", {}),
    ("channels", {"action": "allow"}),
    ("limits", {"rate_limit": "1/day", "max_pending": 1, "daily_quota": 0}),
    ("budget", {"usd": 0}),
    ("defaults", {"aspect_ratio": "16:9", "size": "2K"}),
    ("banned-words", {"action": "add", "words": "fox"}),
    ("stats", {}),
]


async def _answer(
    world: BotWorld,
    user: dict[str, Any],
    name: str,
    options: dict[str, Any] | None = None,
    *,
    sub: str | None = None,
    guild: bool = True,
) -> StoredMessage:
    """Run a command and return its (ephemeral) reply."""
    record = await world.discord.slash(user, name, options, subcommand=sub, guild=guild)
    await _callback(world, record)
    assert record.original is not None and record.original.ephemeral, record.payload["data"]
    assert len(record.original.content) <= 2000
    return record.original


async def _admin(world: BotWorld, user: dict[str, Any], sub: str, **options: Any) -> str:
    return (await _answer(world, user, "imagine-admin", options, sub=sub)).content


async def _callback(world: BotWorld, record: InteractionRecord) -> Any:
    event = await world.discord.wait_for(lambda e: e.interaction is record and e.kind == "callback")
    assert event.status < 300, event.response
    return event.request


def _overrides(shown: str) -> list[str]:
    """The lines of `show` that name this server's own settings (the first line is a header)."""
    return [line for line in shown.splitlines()[1:] if "(set here)" in line]


async def _eventually(ask: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """Ask again until the answer is `done`: results are stored just after they are posted."""
    async with asyncio.timeout(10):
        while not done(answer := await ask()):
            await asyncio.sleep(0.2)
    return answer


def _admin_command(world: BotWorld) -> dict[str, Any]:
    for scope in (world.discord.guild_id, None):
        for command in world.discord.commands.get(scope, []):
            if command["name"] == "imagine-admin":
                return command
    raise LookupError("the bot synced no /imagine-admin")


async def test_the_admin_group_is_synced_for_managers_only_with_bounded_options(
    world: BotWorld,
) -> None:
    await world.start()
    command = _admin_command(world)

    assert int(command["default_member_permissions"]) == MANAGE_GUILD
    assert command["contexts"] == [0] and command["dm_permission"] is False  # servers only
    options = {o["name"]: o for o in command["options"]}
    assert set(options) == SUBCOMMANDS
    limits = {o["name"]: o for o in options["limits"]["options"]}
    assert (limits["max_pending"]["min_value"], limits["max_pending"]["max_value"]) == (1, 20)
    assert (limits["daily_quota"]["min_value"], limits["daily_quota"]["max_value"]) == (0, 1000)
    # Discord itself hides the group from members without Manage Server.
    with pytest.raises(PermissionError):
        await world.discord.slash(world.user("bob"), "imagine-admin", subcommand="show")


async def test_members_without_manage_server_are_refused_and_nothing_changes(
    world: BotWorld,
) -> None:
    await world.start()
    # A server may grant the command to anyone in its Integrations settings; the bot still
    # keeps its settings to those who manage the server.
    _admin_command(world)["default_member_permissions"] = None
    bob = world.user("bob")

    assert {sub for sub, _ in EVERY_SUBCOMMAND} == SUBCOMMANDS
    for sub, options in EVERY_SUBCOMMAND:
        reply = await _admin(world, bob, sub, **options)
        assert "Manage Server" in reply, sub

    shown = await _admin(world, world.user("admin", permissions=ADMIN), "show")
    assert _overrides(shown) == [] and "Banned words: none" in shown
    world.gemini.enqueue(image_response(fake_png(64, 64)))
    await world.result_of(await world.discord.slash(bob, "imagine", {"prompt": "a fox"}))
    (request,) = world.gemini.requests
    assert image_config(request).get("aspectRatio") != "16:9"


async def test_an_admins_changes_show_work_and_survive_a_restart(world: BotWorld) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)
    channel = world.discord.channel_id

    general = world.discord.channels[channel]
    assert "✅" in await _admin(world, admin, "channels", action="allow", channel=general)
    limits = await _admin(
        world, admin, "limits", rate_limit="3/minute;20/day", max_pending=4, daily_quota=10
    )
    assert "`3/minute;20/day`" in limits and limits.count("set here") == 3
    assert "**$2.50**" in await _admin(world, admin, "budget", usd=2.5)
    await _admin(world, admin, "defaults", aspect_ratio="16:9", size="2K")
    await _admin(world, admin, "banned-words", action="add", words="ogre, troll")
    before = await _admin(world, admin, "show")

    await world.restart()

    after = await _admin(world, admin, "show")
    assert after == before
    for expected in (
        f"only <#{channel}>",
        "**`3/minute;20/day`**",
        "**4**",
        "**10**",
        "**$2.50**",
        "**16:9**",
        "**2K**",
        "Banned words: **2**",
    ):
        assert expected in after
    assert len(_overrides(after)) == 8
    # The server's defaults reach the API.
    world.gemini.enqueue(image_response(fake_png(64, 36)))
    await world.result_of(await world.discord.slash(admin, "imagine", {"prompt": "a castle"}))
    assert image_config(world.gemini.requests[-1]) == {"aspectRatio": "16:9", "imageSize": "2K"}

    await _admin(world, admin, "channels", action="everywhere")
    await _admin(world, admin, "limits", reset=True)
    await _admin(world, admin, "budget", reset=True)
    await _admin(world, admin, "defaults", reset=True)
    await _admin(world, admin, "banned-words", action="clear")
    reset = await _admin(world, admin, "show")
    assert _overrides(reset) == []
    assert "Channels: everywhere" in reset and "`100/minute`" in reset  # the bot's default


async def test_a_zero_budget_pauses_image_making_until_reset(world: BotWorld) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)
    alice = world.user("alice")

    assert "paused" in await _admin(world, admin, "budget", usd=0)
    refused = await world.discord.slash(alice, "imagine", {"prompt": "a boat"})
    await _callback(world, refused)
    assert not world.gemini.requests

    assert "(default)" in await _admin(world, admin, "budget", reset=True)
    world.gemini.enqueue(image_response(fake_png(32, 32)))
    await world.result_of(await world.discord.slash(alice, "imagine", {"prompt": "a boat"}))
    assert len(world.gemini.requests) == 1


async def test_disallowing_keeps_an_allow_list_from_silently_becoming_everywhere(
    world: BotWorld,
) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)

    assert "allowed everywhere" in await _admin(world, admin, "channels", action="disallow")
    await _admin(world, admin, "channels", action="allow")
    assert "only allowed channel" in await _admin(world, admin, "channels", action="disallow")
    assert f"only <#{world.discord.channel_id}>" in await _admin(world, admin, "show")


async def test_an_invalid_rate_limit_is_refused_with_a_clear_message(world: BotWorld) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)

    reply = await _admin(world, admin, "limits", rate_limit="fast please", max_pending=3)
    assert "is not a rate limit" in reply and "5/minute" in reply
    reply = await _admin(world, admin, "limits", rate_limit="0/minute")
    assert "at least 1" in reply
    assert "set here" not in await _admin(world, admin, "limits")  # nothing was applied


async def test_banned_words_add_list_remove_and_clear(world: BotWorld) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)
    alice = world.user("alice")

    added = await _admin(
        world, admin, "banned-words", action="add", words="Dragon,  Evil  Wizard ,dragon"
    )
    assert "Added 2 words" in added
    listed = await _admin(world, admin, "banned-words", action="list")
    assert "dragon, evil wizard" in listed
    refused = await world.discord.slash(alice, "imagine", {"prompt": "An EVIL WIZARD at sea"})
    await _callback(world, refused)
    assert refused.original is not None and refused.original.ephemeral
    assert not world.gemini.requests

    removed = await _admin(world, admin, "banned-words", action="remove", words="DRAGON, unicorn")
    assert "Removed 1 word" in removed and "unicorn" in removed
    assert "dragon" not in await _admin(world, admin, "banned-words", action="list")
    too_long = await _admin(world, admin, "banned-words", action="add", words="x" * 51)
    assert "at most 50 characters" in too_long
    assert "Cleared 1 banned word" in await _admin(world, admin, "banned-words", action="clear")
    assert "No banned words" in await _admin(world, admin, "banned-words", action="list")


async def test_long_banned_word_lists_come_as_a_file_and_are_capped(world: BotWorld) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)
    long_words = [f"{n:02d}" + "x" * 48 for n in range(57)]
    for start in range(0, 57, 19):
        words = ",".join(long_words[start : start + 19])
        assert "Added 19 words" in await _admin(
            world, admin, "banned-words", action="add", words=words
        )

    listed = await _answer(world, admin, "imagine-admin", {"action": "list"}, sub="banned-words")
    assert "57 banned words" in listed.content
    (attached,) = listed.files
    assert attached.filename == "banned-words.txt"
    assert attached.data is not None and bytes(attached.data).decode().split("\n") == long_words

    many = ",".join(f"w{n}" for n in range(150))
    refused = await _admin(world, admin, "banned-words", action="add", words=many)
    assert "At most 200 banned words" in refused
    assert (
        "57 banned words"
        in (
            await _answer(world, admin, "imagine-admin", {"action": "list"}, sub="banned-words")
        ).content
    )


async def test_stats_count_todays_results_and_name_top_users_without_pinging(
    world: BotWorld,
) -> None:
    await world.start()
    admin = world.user("admin", permissions=ADMIN)
    alice, bob = world.user("alice"), world.user("bob")
    world.gemini.enqueue(*(image_response(fake_png(32, 32)) for _ in range(3)))
    asks = [
        await world.discord.slash(alice, "imagine", {"prompt": "two cats", "count": 2}),
        await world.discord.slash(bob, "imagine", {"prompt": "a dog"}),
    ]
    for ask in asks:
        await world.result_of(ask)

    async def stats() -> InteractionRecord:
        record = await world.discord.slash(admin, "imagine-admin", subcommand="stats")
        await _callback(world, record)
        return record

    record = await _eventually(stats, lambda r: "Images: 3 from 2 jobs" in r.original.content)
    text = record.original.content
    assert f"1. <@{alice['id']}> — 2 images" in text
    assert f"2. <@{bob['id']}> — 1 image" in text
    assert re.search(r"Estimated spend: \$\d+\.\d\d", text)
    body = await _callback(world, record)
    assert body["data"]["allowed_mentions"]["parse"] == []


async def test_imagine_settings_round_trip_in_a_server_and_in_dms(world: BotWorld) -> None:
    await world.start(DEV_GUILD_ID="")  # global commands, as DMs need
    alice = world.user("alice")

    assert "Aspect ratio: not set" in (await _answer(world, alice, "imagine-settings")).content
    changed = await _answer(
        world, alice, "imagine-settings", {"aspect_ratio": "9:16", "size": "512"}
    )
    assert "9:16" in changed.content and "512" in changed.content
    in_dm = await _answer(world, alice, "imagine-settings", guild=False)
    assert "Aspect ratio: 9:16" in in_dm.content and "Size: 512" in in_dm.content

    world.gemini.enqueue(image_response(fake_png(36, 64)))
    await world.result_of(
        await world.discord.slash(alice, "imagine", {"prompt": "a tower"}, guild=False)
    )
    assert image_config(world.gemini.requests[-1]) == {"aspectRatio": "9:16", "imageSize": "512"}

    reset = await _answer(world, alice, "imagine-settings", {"reset": True}, guild=False)
    assert "Aspect ratio: not set" in reset.content and "Size: not set" in reset.content
    with pytest.raises(PermissionError):  # the admin group never shows in DMs
        admin = world.user("admin", permissions=ADMIN)
        await world.discord.slash(admin, "imagine-admin", subcommand="show", guild=False)


async def test_history_lists_results_newest_first_with_jump_links(world: BotWorld) -> None:
    await world.start(DEV_GUILD_ID="")
    alice = world.user("alice")
    empty = await _answer(world, alice, "history")
    assert "haven't made any images yet" in empty.content

    world.gemini.enqueue(*(image_response(fake_png(32, 32)) for _ in range(2)))
    in_guild = await world.result_of(
        await world.discord.slash(alice, "imagine", {"prompt": "a *bold* lighthouse"})
    )
    in_dm = await world.result_of(
        await world.discord.slash(alice, "imagine", {"prompt": "a quiet harbour"}, guild=False)
    )

    def listing(message: StoredMessage) -> str:
        return str(message.payload["embeds"][0]["description"]) if message.payload["embeds"] else ""

    async def history() -> str:
        return listing(await _answer(world, alice, "history"))

    text = await _eventually(history, lambda t: t.count("Jump to it") == 2)
    guild_link = (
        f"https://discord.com/channels/{world.discord.guild_id}/"
        f"{in_guild.payload['channel_id']}/{in_guild.id}"
    )
    dm_link = f"https://discord.com/channels/@me/{in_dm.payload['channel_id']}/{in_dm.id}"
    assert text.index(dm_link) < text.index(guild_link)  # newest first
    assert "a quiet harbour" in text and r"a \*bold\* lighthouse" in text
    assert re.search(r"<t:\d+:R>", text)
    latest = listing(await _answer(world, alice, "history", {"count": 1}, guild=False))
    assert dm_link in latest and guild_link not in latest
    assert prompt_of(world.gemini.requests[0]) == "a *bold* lighthouse"
