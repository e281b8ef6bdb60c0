"""Jobs survive a hard kill, quotas and budgets hold under bursts, refunds on failure."""

from __future__ import annotations

import asyncio
import signal

from tests.e2e.conftest import BotWorld, Gate, prompt_of
from tests.fakes.discord import InteractionRecord
from tests.fakes.gemini import prompt_blocked

pytest_plugins = ["tests.redis_server"]


async def _first_answer(world: BotWorld, record: InteractionRecord) -> str:
    """What the user sees first: a refusal (ephemeral), or the deferred job's status."""
    await world.discord.wait_for(lambda e: e.interaction is record and e.kind == "callback")
    assert record.original is not None
    return record.original.content


async def test_a_job_killed_mid_flight_is_marked_and_its_requester_told(world: BotWorld) -> None:
    await world.start()
    alice = world.user("alice")
    gate = Gate()
    world.gemini.enqueue(gate)
    await world.discord.slash(alice, "imagine", {"prompt": "a lighthouse in a storm"})
    await gate.arrivals(1)

    assert world.process is not None
    world.process.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(world.process.wait(), 10) == -signal.SIGKILL
    world.log.close()
    gate.release()

    await world.start()
    told = await world.discord.wait_for(
        lambda e: (
            e.kind == "message_create"
            and e.message is not None
            and "restarted before your request" in e.message.content
        ),
        timeout=20,
    )
    assert told.message is not None
    assert f"<@{alice['id']}>" in told.message.content
    assert "lighthouse" in told.message.content


async def test_six_simultaneous_requests_against_a_quota_of_three_make_three_calls(
    world: BotWorld,
) -> None:
    await world.start(USER_DAILY_QUOTA="3", MAX_PENDING_PER_USER="10")
    alice = world.user("alice")
    gate = Gate()
    for _ in range(6):
        world.gemini.enqueue(gate)
    records = await asyncio.gather(
        *(world.discord.slash(alice, "imagine", {"prompt": f"cat {n}"}) for n in range(6))
    )
    answers = await asyncio.gather(*(_first_answer(world, r) for r in records))
    refused = [a for a in answers if "today's 3 images" in a]
    assert len(refused) == 3
    await gate.arrivals(3)
    gate.release()
    for record, answer in zip(records, answers, strict=True):
        if answer not in refused:
            await world.result_of(record)
    assert len(world.gemini.requests) == 3


async def test_a_refused_image_is_refunded_to_the_quota(world: BotWorld) -> None:
    await world.start(USER_DAILY_QUOTA="1")
    alice = world.user("alice")
    world.gemini.enqueue(prompt_blocked("SAFETY"))
    blocked = await world.discord.slash(alice, "imagine", {"prompt": "something blocked"})
    await world.final_text(blocked, lambda t: "refused" in t)

    record = await world.discord.slash(alice, "imagine", {"prompt": "something fine"})
    await world.result_of(record)
    third = await world.discord.slash(alice, "imagine", {"prompt": "one too many"})
    assert "today's 1 images" in await _first_answer(world, third)
    assert [prompt_of(r) for r in world.gemini.requests] == ["something blocked", "something fine"]


async def test_a_burst_never_overspends_a_nearly_spent_server_budget(world: BotWorld) -> None:
    # One 1K image is estimated at 1120 tokens x $60 / 1M = $0.0672: the budget covers two.
    await world.start(GUILD_DAILY_BUDGET_USD="0.14")
    gate = Gate()
    for _ in range(8):
        world.gemini.enqueue(gate)
    users = [world.user(f"user{n}") for n in range(8)]
    records = await asyncio.gather(
        *(world.discord.slash(u, "imagine", {"prompt": f"dog {n}"}) for n, u in enumerate(users))
    )
    answers = await asyncio.gather(*(_first_answer(world, r) for r in records))
    assert sum("server has used today's image budget" in a for a in answers) == 6
    await gate.arrivals(2)
    gate.release()
    await asyncio.gather(
        *(world.result_of(r) for r, a in zip(records, answers, strict=True) if "budget" not in a)
    )
    assert len(world.gemini.requests) == 2


async def test_a_job_lost_to_a_crash_gives_its_shared_quota_back(
    world: BotWorld, redis_url: str
) -> None:
    settings = {"REDIS_URL": redis_url, "USER_DAILY_QUOTA": "1"}
    await world.start(**settings)
    alice = world.user("alice")
    gate = Gate()
    world.gemini.enqueue(gate)
    await world.discord.slash(alice, "imagine", {"prompt": "lost in the crash"})
    await gate.arrivals(1)
    assert world.process is not None
    world.process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(world.process.wait(), 10)
    world.log.close()
    gate.release()

    await world.start(**settings)
    again = await world.discord.slash(alice, "imagine", {"prompt": "second try"})
    await world.result_of(again)  # refused as over quota, had the crash kept its image


async def test_stopping_mid_job_with_shared_counters_exits_cleanly(
    world: BotWorld, redis_url: str
) -> None:
    await world.start(REDIS_URL=redis_url)
    gate = Gate()
    world.gemini.enqueue(gate)
    await world.discord.slash(world.user("alice"), "imagine", {"prompt": "held"})
    await gate.arrivals(1)
    # The fixture stops the bot with SIGTERM and checks exit code 0 and a traceback-free log.
