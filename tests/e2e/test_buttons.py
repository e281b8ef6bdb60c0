"""The buttons under a result: Reroll, Edit, Upscale 2K/4K, Delete — also after a restart."""

from __future__ import annotations

from tests.e2e.conftest import (
    BotWorld,
    button_id,
    image_config,
    inline_images,
    prompt_of,
    text_input_id,
)
from tests.fakes.discord import DEFAULT_MEMBER_PERMISSIONS, InteractionRecord, Perm, StoredMessage


async def _first_result(world: BotWorld) -> StoredMessage:
    alice = world.user("alice")
    record = await world.discord.slash(
        alice, "imagine", {"prompt": "a lighthouse", "aspect_ratio": "16:9", "size": "512"}
    )
    return await world.result_of(record)


async def _private_status(world: BotWorld, record: InteractionRecord) -> None:
    await world.discord.wait_for(lambda e: e.interaction is record and e.kind == "callback")
    assert record.original is not None and record.original.ephemeral


async def test_reroll_edit_and_upscale_reply_to_the_result(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    result = await _first_result(world)
    shown = result.files[0].data
    seen: list[StoredMessage] = []

    # Reroll: the same prompt and options again, a new API call.
    reroll = await world.discord.click(alice, result, button_id(result, "Reroll"))
    seen.append(await world.reply_to(result.id, skip=seen))
    await _private_status(world, reroll)
    assert len(world.gemini.requests) == 2
    again = world.gemini.requests[1]
    assert prompt_of(again) == "a lighthouse"
    assert image_config(again) == {"aspectRatio": "16:9", "imageSize": "512"}

    # Edit: a modal, then an edit of the result's image.
    opener = await world.discord.click(alice, result, button_id(result, "Edit"))
    await world.discord.wait_for(lambda e: e.interaction is opener and e.kind == "callback")
    assert opener.modal is not None
    await world.discord.submit_modal(
        alice, opener.modal["custom_id"], {text_input_id(opener): "add a storm"}
    )
    seen.append(await world.reply_to(result.id, skip=seen))
    edit = world.gemini.requests[2]
    assert prompt_of(edit) == "add a storm"
    assert inline_images(edit) == [shown]

    # Upscale: the result image as reference, at the size the button names.
    for size in ("2K", "4K"):
        await world.discord.click(alice, result, button_id(result, f"Upscale {size}"))
        upscaled = await world.reply_to(result.id, skip=seen)
        seen.append(upscaled)
        request = world.gemini.requests[-1]
        assert image_config(request)["imageSize"] == size
        assert inline_images(request) == [shown]
        assert upscaled.payload["embeds"][0]["title"].endswith("Upscale")
    assert len(world.gemini.requests) == 5
    assert not result.deleted


async def test_delete_by_requester_other_user_and_moderator(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    bob = world.user("bob")
    moderator = world.user("mod", permissions=DEFAULT_MEMBER_PERMISSIONS | Perm.MANAGE_MESSAGES)

    first = await _first_result(world)
    refused = await world.discord.click(bob, first, button_id(first, "Delete"))
    await world.discord.wait_for(lambda e: e.interaction is refused and e.kind == "callback")
    assert refused.original is not None and refused.original.ephemeral
    assert "Only the person who asked" in refused.original.content
    assert not first.deleted

    await world.discord.click(moderator, first, button_id(first, "Delete"))
    await world.discord.wait_for(lambda e: e.kind == "message_delete" and e.message is first)

    second = await _first_result(world)
    await world.discord.click(alice, second, button_id(second, "Delete"))
    await world.discord.wait_for(lambda e: e.kind == "message_delete" and e.message is second)


async def test_buttons_work_after_a_restart(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    result = await _first_result(world)

    await world.restart()

    await world.discord.click(alice, result, button_id(result, "Reroll"))
    await world.reply_to(result.id)
    assert prompt_of(world.gemini.requests[-1]) == "a lighthouse"
    assert image_config(world.gemini.requests[-1]) == {"aspectRatio": "16:9", "imageSize": "512"}
    await world.discord.click(alice, result, button_id(result, "Delete"))
    await world.discord.wait_for(lambda e: e.kind == "message_delete" and e.message is result)
