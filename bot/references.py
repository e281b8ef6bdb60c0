"""Reference images: capped, timed downloads, then validation and normalisation off the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from bot import images
from bot.download import DownloadError, NotServed, TooLarge, download
from bot.gemini import MAX_INLINE_BYTES, InputImage

_TIME_LIMIT = 30.0
_PROMPT_ROOM = 64 * 1024


def _prepare(data: bytes, max_bytes: int) -> InputImage:
    prepared = images.prepare_input(data)
    if len(prepared.data) <= max_bytes:
        return InputImage(prepared.data, prepared.mime_type)
    fitted = images.fit_to_budget(prepared.data, max_bytes)
    return InputImage(fitted.data, fitted.mime_type)


class UnusableReference(Exception):
    """A reference image cannot be used; the message says why in one short sentence."""


class ReferenceLoader:
    """Turns image URLs into images the model accepts, or raises `UnusableReference`."""

    def __init__(self, http: aiohttp.ClientSession, cpu_slots: asyncio.Semaphore) -> None:
        self._http = http
        self._cpu_slots = cpu_slots

    async def load(self, urls: Sequence[str]) -> tuple[InputImage, ...]:
        blobs = await asyncio.gather(*(self._download(url) for url in urls))
        # Base64 inflates by 4/3, and the request must stay under the inline limit all told.
        share = MAX_INLINE_BYTES * 3 // 4 // max(1, len(blobs)) - _PROMPT_ROOM
        prepared = []
        for number, blob in enumerate(blobs, 1):
            async with self._cpu_slots:
                try:
                    image = await asyncio.to_thread(_prepare, blob, share)
                except images.ImageError as exc:
                    label = f"Image {number}" if len(urls) > 1 else "The image"
                    raise UnusableReference(f"{label}: {exc}") from None
            prepared.append(image)
        return tuple(prepared)

    async def _download(self, url: str) -> bytes:
        limit = images.MAX_INPUT_BYTES
        try:
            return await download(self._http, url, max_bytes=limit, time_limit=_TIME_LIMIT)
        except TooLarge:
            reason = f"An image is larger than {limit // 2**20} MiB."
        except NotServed:
            reason = "An image is no longer available; upload it again."
        except DownloadError:
            reason = "An image could not be downloaded; try again."
        raise UnusableReference(reason)
