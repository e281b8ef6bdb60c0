"""Image jobs: admitted under the user's limits, run fairly, fitted for upload, and recorded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from bot import images
from bot.admission import Admission, Policy, Ticket
from bot.gemini import GeminiClient, GenerationResult, ImageRequest, InputImage
from bot.metrics import Metrics
from bot.quota import Reservation
from bot.scheduler import Job, JobCancelled, Scheduler
from bot.store import JobRecord, JobStatus, JobStore

log = logging.getLogger(__name__)

# Room left in an upload for the multipart envelope and the message JSON.
_UPLOAD_OVERHEAD_BYTES = 64 * 1024

ReferenceLoader = Callable[[], Awaitable[tuple[InputImage, ...]]]
Kind = Literal["imagine", "edit", "reroll", "upscale"]


@dataclass(frozen=True, slots=True)
class Order:
    """What a user asked for; the Discord surface writes it into the result message too."""

    kind: Kind
    prompt: str
    aspect_ratio: str | None = None
    image_size: str | None = None
    count: int = 1
    reference_urls: tuple[str, ...] = field(default=())

    def request(self) -> ImageRequest:
        return ImageRequest(self.prompt, (), self.aspect_ratio, self.image_size)


@dataclass(frozen=True, slots=True)
class Place:
    """Who asked and where."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    parent_id: int | None = None  # the channel a thread belongs to


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
    """Admits jobs, runs them fairly, fits their images for upload, and keeps their records."""

    def __init__(
        self,
        client: GeminiClient,
        scheduler: Scheduler[Rendered],
        cpu_slots: asyncio.Semaphore,
        *,
        admission: Admission,
        store: JobStore,
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._scheduler = scheduler
        self._cpu_slots = cpu_slots
        self._admission = admission
        self._store = store
        self._metrics = metrics
        self._tickets: dict[str, Ticket] = {}  # by job id, for `finish`
        self._unsettled: set[Ticket] = set()  # admitted, not yet given back
        self._all_settled = asyncio.Event()
        self._all_settled.set()
        # Each job's row is written in the background, as admission runs inside the 3-second
        # window before Discord is answered; the job's later writes wait for it.
        self._recorded: dict[str, asyncio.Task[None]] = {}

    @property
    def scheduler(self) -> Scheduler[Rendered]:
        return self._scheduler

    async def admit(self, order: Order, place: Place, policy: Policy) -> Ticket:
        """Take the allowances `order` needs, or raise `Refused` having taken nothing.

        Nothing is queued yet: the caller acknowledges the user first, then calls `submit`, or
        `withdraw` if the acknowledgement failed, so an unanswered request costs nothing.
        """
        try:
            ticket = await self._admission.admit(
                place.user_id, place.guild_id, order.count, order.image_size, policy
            )
        except Exception:
            self._metrics.jobs.labels(outcome="refused", kind=order.kind).inc()
            raise
        self._unsettled.add(ticket)
        self._all_settled.clear()
        return ticket

    async def withdraw(self, ticket: Ticket) -> None:
        """Give back everything `admit` took, for an order that will not be submitted."""
        await self._settle(ticket, 0)

    def submit(
        self,
        ticket: Ticket,
        order: Order,
        place: Place,
        *,
        upload_budget: int,
        references: ReferenceLoader | None = None,
    ) -> Job[Rendered]:
        """Queue an admitted `order`; `finish` then waits for it.

        References load concurrently with the queue wait; a request that starts before they
        are ready waits for them, and if they fail every request fails without an API call.
        Each request fits its images for upload (all of the job's together fit `upload_budget`)
        before it gives up its concurrency slot and the client's answer slot, so full-size
        images never pile up in memory.
        """
        loaded = asyncio.ensure_future(references()) if references is not None else None
        share = max(1, (upload_budget - _UPLOAD_OVERHEAD_BYTES) // order.count)
        request = order.request()
        running: list[bool] = []

        async def generate() -> Rendered:
            if not running:  # the first request to start marks the job running
                running.append(True)
                await asyncio.shield(self._recorded[job.id])
                await self._store.mark_running(job.id, time.time())
            final = request
            if loaded is not None:
                final = replace(request, images=request.images + await asyncio.shield(loaded))
            began = time.monotonic()
            # The full-size images stay in the client's answer slot until they are fitted.
            async with self._client.generating(final) as result:
                self._metrics.api_latency_seconds.observe(time.monotonic() - began)
                return Rendered(await self._fit(result, share), result.caption)

        job = self._scheduler.submit(place.user_id, [generate] * order.count)
        self._tickets[job.id] = ticket
        if loaded is not None:
            # A job cancelled while queued never awaits its references: don't leak the error.
            loaded.add_done_callback(_consume_exception)
        self._recorded[job.id] = asyncio.create_task(
            self._store.add_job(_record(job.id, order, place, ticket))
        )
        return job

    async def finish(self, job: Job[Rendered], order: Order) -> JobOutcome:
        """Wait for `job`, gather what its requests made, and give back what it didn't use."""
        outcome = JobOutcome()
        ticket = self._tickets.pop(job.id)
        try:
            for result in await job.results():
                if isinstance(result, Rendered):
                    outcome.images.extend(result.images)
                    if result.caption:
                        outcome.captions.append(result.caption)
                else:
                    outcome.errors.append(result)
        except JobCancelled:
            # Cancelled by its requester; one cut short by a stop stays unfinished, to be
            # marked interrupted (and its requester told) at the next start.
            if not self._scheduler.closed:
                await self.record(job.id, order, "cancelled")
            raise
        finally:
            await self._settle(ticket, min(len(outcome.images), ticket.reservation.images))
        return outcome

    async def _settle(self, ticket: Ticket, delivered: int) -> None:
        try:
            await self._admission.settle(ticket, delivered)
        finally:
            self._unsettled.discard(ticket)
            if not self._unsettled:
                self._all_settled.set()

    async def wait_settled(self, grace: float) -> None:
        """At shutdown, once the scheduler has stopped the jobs: let each give back its
        allowances while the counters they live in are still open."""
        try:
            async with asyncio.timeout(grace):
                await self._all_settled.wait()
        except TimeoutError:
            log.warning("%d job(s) did not settle before shutdown", len(self._unsettled))

    async def record(
        self,
        job_id: str,
        order: Order,
        status: JobStatus,
        *,
        outcome: JobOutcome | None = None,
        result: tuple[int, int] | None = None,
    ) -> None:
        """Write how a job ended (and where its result is) to the store and the metrics."""
        await self._recorded.pop(job_id)
        delivered = len(outcome.images) if outcome is not None and status == "done" else 0
        cost = self._admission.estimate(order.image_size, delivered)
        error = outcome.errors[0] if outcome is not None and outcome.errors else None
        await self._store.finish_job(
            job_id,
            status,
            at=time.time(),
            images=delivered,
            error_kind=type(error).__name__ if error is not None else None,
            estimated_cost_usd=cost,
            result_channel_id=result[0] if result else None,
            result_message_id=result[1] if result else None,
        )
        self._metrics.jobs.labels(outcome=status, kind=order.kind).inc()
        self._metrics.images.inc(delivered)
        self._metrics.estimated_spend_usd.inc(cost)

    async def recover_interrupted(self) -> list[JobRecord]:
        """At start-up: mark the jobs the last process left unfinished, and refund their quota.

        The refund reuses each job's own reservation id, so quota a job already gave back
        before the crash is not given twice.
        """
        interrupted = await self._store.interrupt_unfinished(time.time())
        for record in interrupted:
            if record.reservation_id is not None:
                await self._admission.refund(_reservation_of(record))
            self._metrics.jobs.labels(outcome="interrupted", kind=record.kind).inc()
        return interrupted

    async def _fit(self, result: GenerationResult, budget: int) -> tuple[images.FittedImage, ...]:
        each = max(1, budget // len(result.images))
        fitted = []
        for image in result.images:
            async with self._cpu_slots:
                fitted.append(await asyncio.to_thread(images.fit_to_budget, image.data, each))
        return tuple(fitted)


def _record(job_id: str, order: Order, place: Place, ticket: Ticket) -> JobRecord:
    return JobRecord(
        id=job_id,
        user_id=place.user_id,
        guild_id=place.guild_id,
        channel_id=place.channel_id,
        kind=order.kind,
        prompt=order.prompt,
        aspect_ratio=order.aspect_ratio,
        image_size=order.image_size,
        count=order.count,
        references=len(order.reference_urls),
        status="queued",
        created_at=time.time(),
        started_at=None,
        finished_at=None,
        error_kind=None,
        images=0,
        estimated_cost_usd=ticket.reservation.cost_usd,
        result_channel_id=None,
        result_message_id=None,
        notify_message_id=None,
        reservation_id=ticket.reservation.id,
    )


def _reservation_of(record: JobRecord) -> Reservation:
    assert record.reservation_id is not None
    day = datetime.fromtimestamp(record.created_at, UTC).date().isoformat()
    return Reservation(
        record.reservation_id,
        record.user_id,
        record.guild_id,
        record.count,
        record.estimated_cost_usd,
        day,
    )


def _consume_exception(task: asyncio.Future[tuple[InputImage, ...]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("reference loading failed: %s", task.exception())
