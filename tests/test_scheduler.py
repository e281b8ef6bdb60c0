"""The fair scheduler: concurrency cap, round-robin start order, positions, cancel, close."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable

import pytest

from bot.scheduler import Job, JobCancelled, JobState, Scheduler

Call = Callable[[], Awaitable[str]]


class FakeApi:
    """Fake API calls named like `a1.0`: they log their start and return their name.

    A call named in `hold` waits until the test releases it; any other returns at once.
    """

    def __init__(self) -> None:
        self.started: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._held: dict[str, asyncio.Event] = {}

    def hold(self, *names: str) -> None:
        for name in names:
            self._held[name] = asyncio.Event()

    def release(self, *names: str) -> None:
        for name in names or tuple(self._held):
            self._held[name].set()

    def call(self, name: str, error: Exception | None = None) -> Call:
        async def run() -> str:
            self.started.append(name)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if name in self._held:
                    await self._held[name].wait()
            finally:
                self.in_flight -= 1
            if error is not None:
                raise error
            return name

        return run

    def calls(self, job: str, count: int) -> list[Call]:
        return [self.call(f"{job}.{index}") for index in range(count)]


async def idle() -> None:
    """Let every ready task and callback run; nothing here waits on a clock."""
    for _ in range(20):
        await asyncio.sleep(0)


async def finish(*jobs: Job[str]) -> None:
    await asyncio.gather(*(job.results() for job in jobs))


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


async def test_the_concurrency_cap_is_never_exceeded(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=3)
    names = [f"{user}{job}" for user in "ab" for job in range(3)]
    api.hold(*(f"{name}.{index}" for name in names for index in range(2)))
    jobs = [scheduler.submit(ord(name[0]), api.calls(name, 2)) for name in names]
    await idle()
    assert (api.in_flight, scheduler.in_flight, scheduler.queue_depth) == (3, 3, 9)

    api.release()
    await finish(*jobs)
    assert api.max_in_flight == 3
    assert len(api.started) == 12
    assert (scheduler.in_flight, scheduler.queue_depth) == (0, 0)


async def test_a_jobs_requests_run_in_parallel_when_slots_are_free(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=4)
    api.hold(*(f"a1.{index}" for index in range(4)))
    job = scheduler.submit(1, api.calls("a1", 4))
    await idle()
    assert api.in_flight == 4

    api.release()
    assert await job.results() == ["a1.0", "a1.1", "a1.2", "a1.3"]
    assert job.state is JobState.DONE


async def test_a_burst_from_one_user_does_not_starve_the_others(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=1)
    jobs = [scheduler.submit(1, api.calls(f"a{job}", 4)) for job in range(4)]
    jobs += [
        scheduler.submit(user, api.calls(f"{name}0", 1)) for user, name in [(2, "b"), (3, "c")]
    ]
    jobs.append(scheduler.submit(4, api.calls("d0", 1)))
    await finish(*jobs)

    # One request of the burst was already running, then one round over the four owners.
    assert {"b0.0", "c0.0", "d0.0"} <= set(api.started[:5])
    burst = [name for name in api.started if name.startswith("a")]
    assert burst == [f"a{job}.{index}" for job in range(4) for index in range(4)]


async def test_positions_match_the_order_requests_actually_start(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=2)
    submissions = [
        (1, "a1", 3),
        (2, "b1", 2),
        (1, "a2", 1),
        (3, "c1", 1),
        (1, "a3", 2),
        (3, "c2", 1),
    ]
    jobs = {name: scheduler.submit(owner, api.calls(name, n)) for owner, name, n in submissions}
    already_started = scheduler.in_flight
    positions = {name: job.position() for name, job in jobs.items()}
    await finish(*jobs.values())

    queued = {name: position for name, position in positions.items() if position is not None}
    assert len(queued) == 5
    for name, position in queued.items():
        assert api.started[already_started + position - 1] == f"{name}.0", name


async def test_wait_changed_wakes_only_when_state_or_position_moves(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=1)
    api.hold("a1.0")
    scheduler.submit(1, api.calls("a1", 1))
    ahead = scheduler.submit(1, api.calls("a2", 1))
    watched = scheduler.submit(2, api.calls("b1", 1))
    assert (ahead.position(), watched.position()) == (1, 2)
    await asyncio.wait_for(watched.wait_changed(timeout=0), 1)  # nothing moved: times out quietly

    waiter = asyncio.create_task(watched.wait_changed())
    scheduler.submit(3, api.calls("c1", 1))  # joins the rotation behind b: nothing moves for b
    await idle()
    assert not waiter.done()

    ahead.cancel()
    await asyncio.wait_for(waiter, 1)
    assert watched.position() == 1

    waiter = asyncio.create_task(watched.wait_changed())
    await idle()
    assert not waiter.done()
    api.release()
    await asyncio.wait_for(waiter, 1)
    assert watched.state is not JobState.QUEUED
    assert watched.position() is None


async def test_cancelling_a_queued_job_removes_its_requests_at_once(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=1)
    api.hold("a1.0")
    running = scheduler.submit(1, api.calls("a1", 1))
    queued = scheduler.submit(1, api.calls("a2", 2))
    other = scheduler.submit(2, api.calls("b1", 1))

    assert queued.cancel() is True
    assert queued.state is JobState.CANCELLED
    assert queued.position() is None
    assert (scheduler.queue_depth, other.position()) == (1, 1)
    assert queued.cancel() is False
    with pytest.raises(JobCancelled):
        await queued.results()

    replacement = scheduler.submit(1, api.calls("a3", 1))
    api.release()
    await finish(running, other, replacement)
    assert not any(name.startswith("a2") for name in api.started)


async def test_a_job_cannot_be_cancelled_once_a_request_started(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=1)
    api.hold("a1.0")
    job = scheduler.submit(1, api.calls("a1", 2))
    assert scheduler.queue_depth == 1  # its second request is still waiting

    assert job.cancel() is False
    assert job.state is JobState.RUNNING
    api.release()
    assert await job.results() == ["a1.0", "a1.1"]


async def test_a_failing_request_does_not_lose_its_siblings(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Awaitable[str]:
        raise RuntimeError("raised before returning an awaitable")

    scheduler: Scheduler[str] = Scheduler(max_concurrent=4)
    boom = ValueError("blocked")
    mixed = scheduler.submit(1, [api.call("a1.0"), api.call("a1.1", boom), api.call("a1.2")])
    failed = scheduler.submit(1, [broken])

    assert await mixed.results() == ["a1.0", boom, "a1.2"]
    assert mixed.state is JobState.DONE
    [error] = await failed.results()
    assert isinstance(error, RuntimeError)
    assert failed.state is JobState.FAILED

    gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert not any("never retrieved" in r.getMessage() for r in caplog.records)


async def test_close_cancels_queued_jobs_and_lets_started_ones_finish(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=1)
    api.hold("a1.0", "a1.1")
    started = scheduler.submit(1, api.calls("a1", 2))
    queued = scheduler.submit(2, api.calls("b1", 1))

    closing = asyncio.create_task(scheduler.close(cancel_running=False))
    await idle()
    assert queued.state is JobState.CANCELLED
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(3, api.calls("c1", 1))

    api.release("a1.0")
    await idle()
    assert not closing.done()
    assert api.started == ["a1.0", "a1.1"]  # a started job still runs its remaining requests
    api.release("a1.1")
    await asyncio.wait_for(closing, 1)
    assert await started.results() == ["a1.0", "a1.1"]


async def test_close_can_cancel_running_requests(api: FakeApi) -> None:
    scheduler: Scheduler[str] = Scheduler(max_concurrent=1)
    api.hold("a1.0", "a1.1")
    job = scheduler.submit(1, api.calls("a1", 2))
    await idle()

    await asyncio.wait_for(scheduler.close(cancel_running=True), 1)
    outcomes = await job.results()
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert job.state is JobState.FAILED
    assert (scheduler.in_flight, scheduler.queue_depth, api.started) == (0, 0, ["a1.0"])


class Result:
    """A request's result that can be watched for being freed (as images' bytes would be)."""


def submit_calling_back(scheduler: Scheduler[Result]) -> Job[Result]:
    """Submit a request whose closure holds its own job, as the bot's requests do."""
    job: Job[Result] | None = None

    async def call() -> Result:
        assert job is not None and job.id
        return Result()

    job = scheduler.submit(1, [call])
    return job


async def test_a_finished_jobs_results_are_freed_without_the_cycle_collector() -> None:
    scheduler: Scheduler[Result] = Scheduler(1)
    job = submit_calling_back(scheduler)
    [result] = await job.results()
    freed = weakref.ref(result)
    await asyncio.sleep(0)  # the scheduler lets go of the finished task

    gc.disable()
    try:
        del job, result
        assert freed() is None, "a reference cycle keeps the results until a full collection"
    finally:
        gc.enable()
