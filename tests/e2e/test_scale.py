"""Two bot processes, each running half the shards, share one user's limits through Redis."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import BotWorld
from tests.fakes.discord import DEFAULT_MEMBER_PERMISSIONS

pytest_plugins = ["tests.redis_server"]


async def test_two_processes_on_one_redis_share_a_users_limit(
    world: BotWorld, redis_url: str, tmp_path: Path
) -> None:
    discord = world.discord
    first = await discord.make_guild("Shard zero", shard=(0, 2))
    second = await discord.make_guild("Shard one", shard=(1, 2))
    alice = world.user("alice", guild_id=first.id)
    discord._add_member(second, alice, [discord._role_for(second, DEFAULT_MEMBER_PERMISSIONS)])
    shared = {"REDIS_URL": redis_url, "SHARD_COUNT": "2", "USER_RATE_LIMIT": "2/minute"}
    # Global command sync: the commands must exist in both guilds.
    await world.start(**shared, SHARD_IDS="0", DEV_GUILD_ID="")
    (tmp_path / "other").mkdir()
    other = BotWorld(discord, world.gemini, tmp_path / "other" / "bot.log", world.env)
    await other.start(**shared, SHARD_IDS="1", DEV_GUILD_ID="")
    try:
        await discord.wait_ready(sessions=2, timeout=30)
        for n in range(2):
            record = await discord.slash(
                alice, "imagine", {"prompt": f"cat {n}"}, channel_id=first.channel_id
            )
            await world.result_of(record)
        refused = await discord.slash(
            alice, "imagine", {"prompt": "one more"}, channel_id=second.channel_id
        )
        await discord.wait_for(lambda e: e.interaction is refused and e.kind == "callback")
        assert refused.original is not None and refused.original.ephemeral
        assert "Slow down" in refused.original.content
        assert len(world.gemini.requests) == 2
    finally:
        assert await other.stop() == 0
