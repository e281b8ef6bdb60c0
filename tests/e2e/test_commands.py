"""The ways to ask for an image: /imagine, /edit, the "Edit image" menu, reply-to-edit."""

from __future__ import annotations

from tests.e2e.conftest import (
    BotWorld,
    image_config,
    inline_images,
    png_size,
    prompt_of,
    text_input_id,
)
from tests.fakes.discord import StoredMessage
from tests.fakes.gemini import fake_png, image_response


def _field(message: StoredMessage, name: str) -> str:
    embed = message.payload["embeds"][0]
    return next(str(f["value"]) for f in embed["fields"] if f["name"] == name)


async def test_imagine_with_options_posts_that_many_images_with_the_caption(
    world: BotWorld,
) -> None:
    await world.start()
    alice = world.user("alice")
    world.gemini.enqueue(
        *(image_response(fake_png(96, 64), caption="A fox at dusk.") for _ in "123")
    )

    record = await world.discord.slash(
        alice,
        "imagine",
        {"prompt": "a red fox", "aspect_ratio": "3:2", "size": "2K", "count": 3},
    )
    message = await world.result_of(record)

    assert len(message.files) == 3
    assert all(png_size(f.data) == (96, 64) for f in message.files)
    assert len(world.gemini.requests) == 3
    for request in world.gemini.requests:
        assert prompt_of(request) == "a red fox"
        assert image_config(request) == {"aspectRatio": "3:2", "imageSize": "2K"}
    assert _field(message, "Prompt") == "a red fox"
    options = _field(message, "Options")
    assert "3:2" in options and "2K" in options
    assert "A fox at dusk." in message.payload["embeds"][0]["description"]
    assert not message.ephemeral


async def test_imagine_sends_reference_attachments_inline(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    pictures = [fake_png(40 + n, 30) for n in range(3)]
    files = [
        world.discord.add_cdn_file(p, f"ref{n}.png", "image/png") for n, p in enumerate(pictures)
    ]

    record = await world.discord.slash(
        alice,
        "imagine",
        {"prompt": "combine these"},
        attachments={"reference": files[0], "reference2": files[1], "reference3": files[2]},
    )
    message = await world.result_of(record)

    (request,) = world.gemini.requests
    assert [png_size(i) for i in inline_images(request)] == [(40, 30), (41, 30), (42, 30)]
    assert len(message.files) == 1
    # The references are listed on the result, so the buttons can use them after a restart.
    assert files[2]["url"] in _field(message, "References")


async def test_edit_sends_the_image_and_its_references(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    image = world.discord.add_cdn_file(fake_png(80, 60), "cat.png", "image/png")
    extra = world.discord.add_cdn_file(fake_png(20, 20), "hat.png", "image/png")

    record = await world.discord.slash(
        alice,
        "edit",
        {"instruction": "give the cat this hat"},
        attachments={"image": image, "reference": extra},
    )
    message = await world.result_of(record)

    (request,) = world.gemini.requests
    assert prompt_of(request) == "give the cat this hat"
    assert [png_size(i) for i in inline_images(request)] == [(80, 60), (20, 20)]
    assert message.files and message.payload["embeds"][0]["title"].endswith("Edit")


async def test_edit_image_menu_asks_for_an_instruction_and_replies_to_the_target(
    world: BotWorld,
) -> None:
    await world.start()
    alice = world.user("alice")
    photo = world.discord.add_cdn_file(fake_png(70, 50), "photo.png", "image/png")
    target = await world.discord.post_message(alice, "my photo", attachments=[photo])

    opener = await world.discord.message_command(alice, "Edit image", target)
    await world.discord.wait_for(lambda e: e.interaction is opener and e.kind == "callback")
    assert opener.modal is not None
    submit = await world.discord.submit_modal(
        alice, opener.modal["custom_id"], {text_input_id(opener): "make it night"}
    )
    result = await world.reply_to(int(target["id"]))

    assert result.files
    assert not result.ephemeral
    assert submit.original is not None and submit.original.ephemeral  # the status is private
    (request,) = world.gemini.requests
    assert prompt_of(request) == "make it night"
    assert [png_size(i) for i in inline_images(request)] == [(70, 50)]


async def test_reply_mentioning_the_bot_edits_the_replied_image(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    photo = world.discord.add_cdn_file(fake_png(70, 50), "photo.png", "image/png")
    target = await world.discord.post_message(alice, "look", attachments=[photo])
    extra = world.discord.add_cdn_file(fake_png(30, 30), "moon.png", "image/png")

    bot = world.discord.bot_user
    ask = await world.discord.post_message(
        alice,
        f"<@{bot['id']}> add this moon",
        attachments=[extra],
        reply_to=target,
        mentions=[bot],
    )

    result = await world.reply_to(int(ask["id"]))

    assert not result.deleted and not result.ephemeral
    (request,) = world.gemini.requests
    assert prompt_of(request) == "add this moon"
    assert [png_size(i) for i in inline_images(request)] == [(70, 50), (30, 30)]
