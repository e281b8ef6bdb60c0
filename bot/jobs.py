"""Image jobs: admission (pending cap, rate limit), fair scheduling of API calls, output fitting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from bot import images
from bot.gemini import GeminiClient, GenerationResult, ImageRequest, InputImage
from bot.rate_limit import UserRateLimiter
from bot.scheduler import Job, PendingLimitReached, Scheduler

log = logging.getLogger(__name__)

# Room left in an upload for the multipart envelope and the message JSON.
_UPLOAD_OVERHEAD_BYTES = 64 * 1024

ReferenceLoader = Callable[[], Awaitable[tuple[InputImage, ...]]]


class Refused(Exception):
    """A request turned away before it cost anything."""


class UserRateLimited(Refused):
    """The user used up their rate limit; `retry_after` seconds until enough frees up."""

    def __init__(self, retry_after: float, limit: str) -> None:
        super().__init__(f"rate limited for {retry_after:.0f}s ({limit})")
        self.retry_after = retry_after
        self.limit = limit


class TooManyAtOnce(Refused):
    """One request asks for more images than the user's rate limit ever allows at once."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"at most {capacity} images at once")
        self.capacity = capacity


class TooManyPending(Refused):
    """The user already has `limit` jobs queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs already pending")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Rendered:
    """One API call's images, already fitted for upload, and the model's caption."""

    images: tuple[images.FittedImage, ...]
    caption: str


@dataclass(slots=True)
class JobOutcome:
    """What a finished job produced: fitted images, their captions, and the requests that failed."""

    images: list[images.FittedImage] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


class ImageJobs:
    """Admits jobs under the user's limits, runs them fairly, and fits their images for upload."""

    def __init__(
        self,
        client: GeminiClient,
        limiter: UserRateLimiter,
        scheduler: Scheduler[Rendered],
        cpu_slots: asyncio.Semaphore,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._scheduler = scheduler
        self._cpu_slots = cpu_slots

    @property
    def scheduler(self) -> Scheduler[Rendered]:
        return self._scheduler

    async def admit(
        self,
        owner: int,
        request: ImageRequest,
        count: int = 1,
        references: ReferenceLoader | None = None,
        *,
        upload_budget: int,
    ) -> Job[Rendered]:
        """Queue `count` generations of `request` for `owner`, or raise `Refused`.

        References load concurrently with the queue wait; a request that starts before they
        are ready waits for them, and if they fail every request fails without an API call.
        Each request fits its images for upload (all of the job's together fit `upload_budget`)
        before it gives up its concurrency slot, so full-size images never pile up in memory.
        """
        if self._scheduler.pending(owner) >= self._scheduler.max_pending_per_user:
            raise TooManyPending(self._scheduler.max_pending_per_user)
        if count > self._limiter.capacity:
            raise TooManyAtOnce(self._limiter.capacity)
        retry_after = await self._limiter.acquire(owner, count)
        if retry_after is not None:
            raise UserRateLimited(retry_after, self._limiter.describe())
        loaded = asyncio.ensure_future(references()) if references is not None else None

        share = max(1, (upload_budget - _UPLOAD_OVERHEAD_BYTES) // count)

        async def generate() -> Rendered:
            final = request
            if loaded is not None:
                final = replace(request, images=request.images + await asyncio.shield(loaded))
            result = await self._client.generate(final)
            return Rendered(await self._fit(result, share), result.caption)

        try:
            job = self._scheduler.submit(owner, [generate] * count)
        except PendingLimitReached as exc:
            if loaded is not None:
                loaded.cancel()
            raise TooManyPending(exc.limit) from None
        if loaded is not None:
            # A job cancelled while queued never awaits its references: don't leak the error.
            loaded.add_done_callback(_consume_exception)
        return job

    async def finish(self, job: Job[Rendered]) -> JobOutcome:
        """Wait for `job` and gather what its requests made."""
        outcome = JobOutcome()
        for result in await job.results():
            if isinstance(result, Rendered):
                outcome.images.extend(result.images)
                if result.caption:
                    outcome.captions.append(result.caption)
            else:
                outcome.errors.append(result)
        return outcome

    async def _fit(self, result: GenerationResult, budget: int) -> tuple[images.FittedImage, ...]:
        each = max(1, budget // len(result.images))
        fitted = []
        for image in result.images:
            async with self._cpu_slots:
                fitted.append(await asyncio.to_thread(images.fit_to_budget, image.data, each))
        return tuple(fitted)


def _consume_exception(task: asyncio.Future[tuple[InputImage, ...]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("reference loading failed: %s", task.exception())
