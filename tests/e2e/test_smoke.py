"""Smoke: the bot starts, syncs, answers /imagine with an image, stops cleanly."""

from __future__ import annotations

from tests.e2e.conftest import BotWorld


async def test_imagine_posts_an_image(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    record = await world.discord.slash(alice, "imagine", {"prompt": "a red fox"})
    message = await world.result_of(record)
    assert record.ack_latency is not None and record.ack_latency < 3
    assert message.files[0].filename.endswith(".png")
