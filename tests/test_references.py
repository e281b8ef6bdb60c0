"""Reference loading: capped downloads, real-image checks, one request under the limit."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from PIL import Image

from bot.gemini import MAX_INLINE_BYTES
from bot.references import ReferenceLoader, UnusableReference
from tests.fakes.gemini import FakeGemini


def noisy_png(side: int) -> bytes:
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture
async def hosted() -> AsyncIterator[tuple[FakeGemini, ReferenceLoader]]:
    async with FakeGemini() as fake, aiohttp.ClientSession() as http:
        yield fake, ReferenceLoader(http, asyncio.Semaphore(1))


async def test_several_large_references_are_shrunk_to_fit_one_request(
    hosted: tuple[FakeGemini, ReferenceLoader],
) -> None:
    fake, loader = hosted
    big = noisy_png(1800)  # ~9.7 MB of incompressible pixels: two would overflow a request
    urls = [fake.host_file(big, "image/png"), fake.host_file(big, "image/png")]
    loaded = await loader.load(urls)
    assert len(loaded) == 2
    assert sum(len(i.data) for i in loaded) * 4 / 3 < MAX_INLINE_BYTES
    for image in loaded:
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert decoded.size[0] > 0


async def test_text_dressed_as_an_image_is_refused(
    hosted: tuple[FakeGemini, ReferenceLoader],
) -> None:
    fake, loader = hosted
    with pytest.raises(UnusableReference, match="The image"):
        await loader.load([fake.host_file(b"just some text, honestly", "image/png")])


async def test_a_vanished_image_says_so(hosted: tuple[FakeGemini, ReferenceLoader]) -> None:
    fake, loader = hosted
    gone = fake.base_url + "/files/does-not-exist"
    with pytest.raises(UnusableReference, match="no longer available"):
        await loader.load([gone])
