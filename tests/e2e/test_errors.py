"""What a user reads when something fails, and checks made before any API call."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable

from tests.e2e.conftest import API_KEY, BotWorld, Gate, png_size, prompt_of
from tests.fakes.discord import Event, InteractionRecord
from tests.fakes.gemini import (
    DROP_CONNECTION,
    FakeReply,
    Responder,
    finish_refusal,
    google_error,
    image_response,
    prompt_blocked,
    realistic_4k_png,
    text_only,
)

# One row per row of the table in cogs/errors.py that a Gemini answer can reach.
FAILURES: list[tuple[str, Responder, Callable[[str], bool]]] = [
    ("prompt blocked", prompt_blocked("SAFETY", "Unsafe prompt."), lambda t: "(SAFETY)" in t),
    ("refusal", finish_refusal("IMAGE_SAFETY"), lambda t: "safety reasons (IMAGE_SAFETY)" in t),
    (
        "text only",
        text_only("I can only draw cats, sorry."),
        lambda t: "without an image" in t and "I can only draw cats, sorry." in t,
    ),
    ("no image", finish_refusal("MAX_TOKENS"), lambda t: "no image (MAX_TOKENS)" in t),
    ("429", google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded."), lambda t: "busy" in t),
    ("503", google_error(503, "UNAVAILABLE", "Overloaded."), lambda t: "unavailable" in t),
    ("connection reset", DROP_CONNECTION, lambda t: "unavailable" in t),
    ("timeout", FakeReply(delay=10), lambda t: "took too long" in t),
    (
        "400 echoing the key",
        google_error(400, "INVALID_ARGUMENT", f"Bad field near key={API_KEY} ({API_KEY})."),
        lambda t: "rejected this request" in t,
    ),
    ("403", google_error(403, "PERMISSION_DENIED", "Denied."), lambda t: "misconfigured" in t),
    ("not JSON", FakeReply(body=b"<html>oops</html>"), lambda t: "went wrong" in t),
]


async def test_each_failure_reads_as_its_sentence_and_the_bot_keeps_serving(
    world: BotWorld,
) -> None:
    await world.start(GEMINI_TIMEOUT_SECONDS="1")
    alice = world.user("alice")
    for name, responder, expected in FAILURES:
        world.gemini.enqueue(responder)
        record = await world.discord.slash(alice, "imagine", {"prompt": f"case {name}"})
        text = await world.final_text(record, expected)
        assert API_KEY not in text, name
        assert record.original is not None and not record.original.files, name
    assert len(world.gemini.requests) == len(FAILURES)

    record = await world.discord.slash(alice, "imagine", {"prompt": "all good now"})
    assert (await world.result_of(record)).files


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims huge dimensions."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


async def test_unusable_attachments_are_refused_without_an_api_call(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    cdn = world.discord.add_cdn_file

    async def edit(attachment: dict[str, object]) -> InteractionRecord:
        return await world.discord.slash(
            alice, "edit", {"instruction": "brighter"}, attachments={"image": attachment}
        )

    # Text bytes that claim to be a PNG.
    fake = await edit(cdn(b"just some text, not a picture\n" * 20, "x.png", "image/png"))
    assert "isn't a readable image" in await world.final_text(fake, lambda t: "⚠️" in t)

    # A declared size above the input limit: refused at once, privately.
    big = cdn(b"\x89PNG\r\n\x1a\n", "huge.png", "image/png") | {"size": 30 * 2**20}
    oversized = await edit(big)
    await world.discord.wait_for(lambda e: e.interaction is oversized and e.kind == "callback")
    assert oversized.original is not None and oversized.original.ephemeral
    assert "too large" in oversized.original.content

    # A decompression bomb: a few hundred bytes claiming 3.6 gigapixels.
    bomb = await edit(cdn(_bomb_png(60_000, 60_000), "bomb.png", "image/png"))
    assert "too large" in await world.final_text(bomb, lambda t: "⚠️" in t)

    assert world.gemini.requests == []


async def test_a_4k_result_is_fitted_under_the_upload_limit(world: BotWorld) -> None:
    await world.start()
    picture = realistic_4k_png()
    assert len(picture) > world.discord.upload_limit
    world.gemini.enqueue(image_response(picture))

    record = await world.discord.slash(
        world.user("alice"), "imagine", {"prompt": "a detailed city", "size": "4K"}
    )
    message = await world.result_of(record, timeout=60)

    (upload,) = message.files
    assert upload.size <= world.discord.upload_limit
    width, height = png_size(upload.data)
    assert width == height >= 1024


async def test_a_job_outliving_its_token_is_posted_to_the_channel(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    gate = Gate()
    world.gemini.enqueue(gate)
    await world.discord.slash(alice, "imagine", {"prompt": "a slow one"})
    await gate.arrivals(1)

    world.discord.expire_tokens()
    gate.release()

    def late_result(event: Event) -> bool:
        message = event.message
        return (
            event.kind == "message_create"
            and message is not None
            and bool(message.files)
            and any(user["id"] == alice["id"] for user in message.payload["mentions"])
        )

    event = await world.discord.wait_for(late_result, 20)
    assert event.message is not None and not event.message.ephemeral
    assert f"<@{alice['id']}>" in event.message.content


async def test_request_discord_dropped_before_the_acknowledgement_costs_nothing(
    world: BotWorld,
) -> None:
    await world.start(MAX_PENDING_PER_USER="1", USER_DAILY_QUOTA="1")
    alice = world.user("alice")
    world.discord.ack_deadline = -1.0  # every answer arrives after Discord gave up
    lost = await world.discord.slash(alice, "imagine", {"prompt": "lost in transit"})
    world.dropped.append(lost)
    refused = await world.discord.wait_for(lambda e: e.interaction is lost and e.kind == "callback")
    assert refused.status == 404
    await asyncio.sleep(0.5)  # the bot gives the allowances back once the refusal reaches it

    world.discord.ack_deadline = 3.0
    # Neither the pending slot nor the day's only image was spent on the lost request.
    await world.result_of(await world.discord.slash(alice, "imagine", {"prompt": "again"}))
    assert [prompt_of(r) for r in world.gemini.requests] == ["again"]
    output = world.output()
    assert "expired before it was acknowledged" in output
    assert "Traceback" not in output
