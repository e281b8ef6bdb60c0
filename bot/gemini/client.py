"""The aiohttp transport for generateContent: auth, timeouts, retries, off-loop decoding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
import pybase64
from yarl import URL

from bot.download import DownloadError, download
from bot.gemini.errors import (
    APIError,
    ConnectionFailed,
    DownloadFailed,
    GeminiError,
    MalformedResponse,
    ProviderUnavailable,
    RateLimited,
    RequestTimedOut,
    scrub,
)
from bot.gemini.models import (
    OUTPUT_MIME_TYPES,
    GeneratedImage,
    GenerationResult,
    ImageRequest,
    validate_request,
)
from bot.gemini.parser import (
    ImageSource,
    InlineDataSplitter,
    InlineSource,
    ParsedResponse,
    build_payload,
    parse_error,
)
from bot.image_types import sniff_mime

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

_RETRYABLE = (RateLimited, ProviderUnavailable, RequestTimedOut, ConnectionFailed)
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 30.0
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None)

_A = TypeVar("_A")
_R = TypeVar("_R")


class GeminiClient:
    """Generates images with one model through a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str,
        model: str,
        timeout: float = 120,
        key_in: Literal["query", "header"] = "query",
        max_retries: int = 3,
        max_retry_wait: float = 60,
        max_download_bytes: int = 40 * 2**20,
        max_response_bytes: int = 80 * 2**20,
        decode_concurrency: int = 2,
        held_answers: int = 4,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[int, float, GeminiError], None] | None = None,
    ) -> None:
        self._session = session
        self._api_key = api_key
        self._model = model
        self._url = URL(f"{base_url.rstrip('/')}/v1beta/models/{model}:generateContent")
        self._params = {"key": api_key} if key_in == "query" else {}
        self._headers = {"Content-Type": "application/json"}
        if key_in == "header":
            self._headers["x-goog-api-key"] = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._max_retry_wait = max_retry_wait
        self._max_download_bytes = max_download_bytes
        self._max_response_bytes = max_response_bytes
        # JSON parsing and base64 hold the GIL; more threads at once would only starve the loop.
        self._cpu_slots = asyncio.Semaphore(decode_concurrency)
        # Answers whose images are in memory at once: a slot is taken when a body starts to
        # arrive and kept until the caller is done with the images (see `generating`). Other
        # answers wait unread, so memory doesn't grow with the number of calls in flight.
        self._answer_slots = asyncio.Semaphore(held_answers)
        self._sleep = sleep
        self._on_retry = on_retry

    @classmethod
    def from_settings(
        cls, session: aiohttp.ClientSession, settings: Settings, **overrides: Any
    ) -> GeminiClient:
        """Build a client from the bot's settings; keyword arguments override them."""
        options: dict[str, Any] = {
            "api_key": settings.gemini_api_key.get_secret_value(),
            "base_url": settings.gemini_base_url,
            "model": settings.gemini_model,
            "timeout": settings.gemini_timeout_seconds,
            "key_in": settings.gemini_key_in,
            "max_retries": settings.gemini_max_retries,
            "max_retry_wait": settings.gemini_max_retry_wait_seconds,
        }
        return cls(session, **(options | overrides))

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """Generate an image, retrying transient failures within the retry budget."""
        async with self.generating(request) as result:
            return result

    @contextlib.asynccontextmanager
    async def generating(self, request: ImageRequest) -> AsyncIterator[GenerationResult]:
        """`generate`, holding one of the client's answer slots until the block ends.

        Work on the images (fitting them for upload) belongs inside the block, so that at
        most `held_answers` answers' images are in memory however many calls are in flight.
        """
        with contextlib.ExitStack() as holding:
            yield await self._generate(request, holding)

    async def _generate(
        self, request: ImageRequest, holding: contextlib.ExitStack
    ) -> GenerationResult:
        validate_request(request)
        payload = await self._off_loop(_encode, request) if request.images else _encode(request)
        attempt, waited = 1, 0.0
        while True:
            try:
                parsed = await self._attempt(payload, holding)
            except _RETRYABLE as error:
                delay = self._retry_delay(attempt, error)
                if attempt > self._max_retries or waited + delay > self._max_retry_wait:
                    log.info("Gemini attempt %d failed (%s); giving up", attempt, error)
                    raise
                log.info("Gemini attempt %d failed (%s); retrying in %.1f s", attempt, error, delay)
                if self._on_retry is not None:
                    self._on_retry(attempt, delay, error)
                await self._sleep(delay)
                attempt, waited = attempt + 1, waited + delay
            else:
                return await self._resolve(parsed)

    async def _attempt(self, payload: bytes, holding: contextlib.ExitStack) -> ParsedResponse:
        started = time.monotonic()
        failure: GeminiError
        try:
            async with asyncio.timeout(self._timeout) as deadline, self._post(payload) as response:
                log.debug(
                    "Gemini %s: HTTP %d after %.0f ms",
                    self._model,
                    response.status,
                    (time.monotonic() - started) * 1000,
                )
                if not 200 <= response.status < 300:
                    body = await response.content.read()
                    raise parse_error(response.status, response.headers, body, secret=self._api_key)
                # A 4K answer is ~20 MB of JSON: decode its images as the chunks arrive rather
                # than holding the body, then its base64 text, then the image, all at once.
                splitter = InlineDataSplitter(self._max_response_bytes)
                # Waiting for a slot is this bot's own backlog, not the API's time: the
                # deadline stands still meanwhile, so a busy bot never retries (and pays for)
                # an answer that has already arrived.
                loop = asyncio.get_running_loop()
                remaining = (deadline.when() or loop.time()) - loop.time()
                deadline.reschedule(None)
                await self._answer_slots.acquire()
                deadline.reschedule(loop.time() + remaining)
                try:
                    # Decoding happens on the loop, chunk by chunk; a few bodies at a time keep
                    # each loop turn short, so a wave of answers can't delay everything else.
                    async with self._cpu_slots:
                        async for chunk in response.content.iter_any():
                            splitter.feed(chunk)
                    parsed = splitter.finish()
                except BaseException:
                    self._answer_slots.release()
                    raise
                holding.callback(self._answer_slots.release)
            return parsed
        except TimeoutError:
            failure = RequestTimedOut(f"no complete answer within {self._timeout:g} s")
        except aiohttp.ClientError as exc:
            failure = ConnectionFailed(self._describe(exc))
        # Raised outside the handler so the aiohttp error, whose text has the URL and key, is not
        # chained as __context__.
        raise failure

    def _post(self, payload: bytes) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        # The deadline is `_attempt`'s own, hence no aiohttp timeout (its default is 5 minutes).
        # No redirects: following one would hand the key to wherever the Location points.
        return self._session.post(
            self._url,
            params=self._params,
            headers=self._headers,
            data=payload,
            timeout=_NO_TIMEOUT,
            allow_redirects=False,
        )

    async def _resolve(self, parsed: ParsedResponse) -> GenerationResult:
        images: list[GeneratedImage] = []
        failures: list[GeminiError] = []
        for source in parsed.images:
            try:
                images.append(await self._load(source))
            except (MalformedResponse, DownloadFailed) as error:
                failures.append(error)
        if not images:
            raise failures[0]
        for failure in failures:
            log.warning("Gemini returned an unusable image next to a good one: %s", failure)
        return GenerationResult(
            images=tuple(images),
            caption=parsed.caption,
            finish_reason=parsed.finish_reason,
            usage=parsed.usage,
            model_version=parsed.model_version,
        )

    async def _load(self, source: ImageSource) -> GeneratedImage:
        if isinstance(source, InlineSource):
            data = source.data
            if isinstance(data, str):  # text the streaming decoder left alone, or a data: URL
                data = await self._off_loop(_decode, data)
            error: type[GeminiError] = MalformedResponse
        else:
            data = await self._download(source.url)
            error = DownloadFailed
        mime_type = sniff_mime(data)
        if mime_type is None or mime_type not in OUTPUT_MIME_TYPES:
            raise error("the returned image is not a PNG, JPEG, WebP or GIF file")
        return GeneratedImage(data, mime_type)

    async def _download(self, url: str) -> bytes:
        try:
            return await download(
                self._session, url, max_bytes=self._max_download_bytes, time_limit=self._timeout
            )
        except DownloadError as exc:
            raise DownloadFailed(f"{scrub(url, self._api_key)[:200]}: {exc}") from None

    def _retry_delay(self, attempt: int, error: GeminiError) -> float:
        # Full jitter keeps clients that failed together from retrying together; a server hint
        # is a floor, not a suggestion.
        backoff = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))  # noqa: S311
        hint = error.retry_after if isinstance(error, APIError) else None
        return max(backoff, hint or 0.0)

    def _describe(self, exc: BaseException) -> str:
        return scrub(f"{type(exc).__name__}: {exc}", self._api_key)

    async def _off_loop(self, func: Callable[[_A], _R], arg: _A) -> _R:
        async with self._cpu_slots:
            return await asyncio.to_thread(func, arg)


def _encode(request: ImageRequest) -> bytes:
    return json.dumps(build_payload(request)).encode()


def _decode(data: str) -> bytes:
    try:
        return pybase64.b64decode(data, validate=True)
    except ValueError:
        raise MalformedResponse("the returned image is not valid base64") from None
