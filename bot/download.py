"""Capped, timed HTTP downloads: model outputs given as URLs, and users' reference images."""

from __future__ import annotations

import aiohttp

_CHUNK = 256 * 1024


class DownloadError(Exception):
    """A download failed; the message says why in a few words, without the URL."""


class TooLarge(DownloadError):
    """The body is larger than allowed."""


class NotServed(DownloadError):
    """The server answered, but not with the file (a non-200 status)."""


async def download(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, time_limit: float
) -> bytes:
    """Fetch `url` (http or https only), refusing bodies over `max_bytes` while they stream."""
    if url.partition(":")[0].lower() not in {"http", "https"}:
        raise DownloadError("only http(s) URLs are fetched")
    too_large = TooLarge(f"larger than {max_bytes} bytes")
    failure: DownloadError
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=time_limit)) as response:
            if response.status != 200:
                raise NotServed(f"HTTP {response.status}")
            if (response.content_length or 0) > max_bytes:
                raise too_large
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise too_large
            return bytes(body)
    except TimeoutError:
        failure = DownloadError(f"no complete answer within {time_limit:g} s")
    except aiohttp.ClientError as exc:
        failure = DownloadError(type(exc).__name__)
    # Raised outside the handler so aiohttp's error, whose text has the full URL, isn't chained.
    raise failure
