"""Fair job scheduler: requests start round-robin across owners under a global concurrency cap."""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobCancelled(Exception):
    """The job was cancelled before any of its requests started."""


class JobState(enum.Enum):
    QUEUED = enum.auto()
    RUNNING = enum.auto()
    DONE = enum.auto()  # every request finished and at least one succeeded
    FAILED = enum.auto()  # every request failed
    CANCELLED = enum.auto()


@dataclass(eq=False)
class _Request(Generic[T]):
    job: Job[T]
    index: int
    call: Callable[[], Awaitable[T]]


class Job(Generic[T]):
    """One owner's command: 1..n independent requests, each run as soon as fairness allows."""

    def __init__(
        self,
        scheduler: Scheduler[T],
        owner: int,
        job_id: str,
        size: int,
    ) -> None:
        self.owner = owner
        self.id = job_id
        self.state = JobState.QUEUED
        self.created_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._scheduler = scheduler
        # The requests refer to their job, never the other way round: a finished job and its
        # results (megabytes of images) are freed as soon as its owner lets go, not at the next
        # full garbage collection, even when a request's closure holds the job.
        self._size = size
        self._outcomes: dict[int, T | BaseException] = {}
        self._position: int | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()

    def position(self) -> int | None:
        """While queued, the 1-based place of this job's first request in the start order."""
        return self._position

    def cancel(self) -> bool:
        """Withdraw the job if none of its requests has started; say whether it was withdrawn."""
        return self._scheduler._withdraw(self)

    async def results(self) -> list[T | BaseException]:
        """Each request's return value or the exception it raised, in request order."""
        await self._finished.wait()
        if self.state is JobState.CANCELLED:
            raise JobCancelled(self.id)
        return [self._outcomes[index] for index in range(self._size)]

    # A status loop wants "changed, or time to refresh anyway", not an exception to catch.
    async def wait_changed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once `state` or `position()` changes, or after `timeout` seconds.

        A change made since the previous call returns at once, so none is missed.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return
        self._changed.clear()

    def _move(self, position: int) -> None:
        if position != self._position:
            self._position = position
            self._changed.set()

    def _start(self) -> None:
        if self.state is JobState.QUEUED:
            self.state, self._position, self.started_at = JobState.RUNNING, None, time.monotonic()
            self._changed.set()

    def _settle(self, index: int, outcome: T | BaseException) -> bool:
        """Record one request's outcome; finish and return True once it was the last."""
        self._outcomes[index] = outcome
        if len(self._outcomes) < self._size:
            return False
        succeeded = any(not isinstance(o, BaseException) for o in self._outcomes.values())
        self._end(JobState.DONE if succeeded else JobState.FAILED)
        return True

    def _end(self, state: JobState) -> None:
        self.state, self._position, self.finished_at = state, None, time.monotonic()
        self._finished.set()
        self._changed.set()


class Scheduler(Generic[T]):
    """Runs at most `max_concurrent` requests at once, taking the next one round-robin by owner."""

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        # Owners with waiting requests, each with its FIFO; the dict's order is the rotation.
        self._queues: dict[int, deque[_Request[T]]] = {}
        self._unfinished: dict[str, Job[T]] = {}
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._tasks: set[asyncio.Task[T]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether `close` was called: jobs cancelled from now on were cut short by a stop."""
        return self._closed

    @property
    def queue_depth(self) -> int:
        """Requests waiting to start."""
        return sum(len(queue) for queue in self._queues.values())

    @property
    def in_flight(self) -> int:
        """Requests running."""
        return len(self._tasks)

    def find(self, job_id: str) -> Job[T] | None:
        """The unfinished job with this id, if any."""
        return self._unfinished.get(job_id)

    def submit(self, owner: int, requests: Sequence[Callable[[], Awaitable[T]]]) -> Job[T]:
        """Queue one job of `requests` (admission, with its per-user caps, happens before)."""
        if self._closed:
            raise RuntimeError("scheduler is closed")
        if not requests:
            raise ValueError("a job needs at least one request")
        job_id = secrets.token_hex(4)
        while job_id in self._unfinished:
            job_id = secrets.token_hex(4)
        job = Job(self, owner, job_id, len(requests))
        self._unfinished[job.id] = job
        queue = self._queues.setdefault(owner, deque())
        queue.extend(_Request(job, index, call) for index, call in enumerate(requests))
        log.debug("job %s: owner %d submitted %d requests", job.id, owner, len(requests))
        self._advance()
        job._changed.clear()  # the caller sees the job as submitted; later moves are the changes
        return job

    async def close(self, *, cancel_running: bool) -> None:
        """Refuse new jobs and cancel queued ones; then cancel or let finish those that started."""
        self._closed = True
        for job in list(self._unfinished.values()):
            job.cancel()
        if cancel_running:
            # Started jobs' waiting requests would otherwise take the slots the cancellations free.
            dropped = [request for queue in self._queues.values() for request in queue]
            self._queues.clear()
            for request in dropped:
                self._settle(request, asyncio.CancelledError())
            for task in self._tasks:
                task.cancel()
        # Without cancel_running, started jobs keep dispatching their remaining requests.
        while self._tasks:
            await asyncio.wait(self._tasks)

    def _advance(self) -> None:
        """Start what the cap allows, then tell queued jobs whose place in line moved."""
        while self._queues and len(self._tasks) < self.max_concurrent:
            owner = next(iter(self._queues))
            queue = self._queues.pop(owner)
            request = queue.popleft()
            if queue:
                self._queues[owner] = queue  # to the back of the rotation
            self._start(request)
        # The start order to come: each round takes the next request of every owner in rotation.
        rounds = itertools.zip_longest(*self._queues.values())
        upcoming = (request for round_ in rounds for request in round_ if request is not None)
        first: dict[Job[T], int] = {}
        for position, request in enumerate(upcoming, start=1):
            first.setdefault(request.job, position)
        for job in self._unfinished.values():
            if job.state is JobState.QUEUED:
                job._move(first[job])

    def _start(self, request: _Request[T]) -> None:
        request.job._start()
        task = asyncio.create_task(
            _call(request.call), name=f"job-{request.job.id}-{request.index}"
        )
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, request))

    def _finished(self, request: _Request[T], task: asyncio.Task[T]) -> None:
        self._tasks.discard(task)
        outcome: T | BaseException
        if task.cancelled():
            outcome = asyncio.CancelledError()
        elif (exc := task.exception()) is not None:
            # The job's owner reports the failure; here it is only a trace.
            log.debug("job %s: request %d failed: %r", request.job.id, request.index, exc)
            outcome = exc
        else:
            outcome = task.result()
        self._settle(request, outcome)
        self._advance()

    def _settle(self, request: _Request[T], outcome: T | BaseException) -> None:
        job = request.job
        if job._settle(request.index, outcome):
            del self._unfinished[job.id]
            log.debug("job %s: %s", job.id, job.state.name)

    def _withdraw(self, job: Job[T]) -> bool:
        if job.state is not JobState.QUEUED:
            return False
        others = deque(request for request in self._queues[job.owner] if request.job is not job)
        if others:
            self._queues[job.owner] = others
        else:
            del self._queues[job.owner]
        del self._unfinished[job.id]
        job._end(JobState.CANCELLED)
        self._advance()
        return True


async def _call(call: Callable[[], Awaitable[T]]) -> T:
    # A coroutine wrapper, so a callable that raises before returning its awaitable fails the task.
    return await call()
