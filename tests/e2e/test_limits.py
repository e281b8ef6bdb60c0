"""Limits a user notices: rate limit, pending cap, the global cap, fair turns, queue and Cancel."""

from __future__ import annotations

import re

from tests.e2e.conftest import BotWorld, Gate, button_id, prompt_of
from tests.fakes.discord import InteractionRecord


async def _refusal(world: BotWorld, record: InteractionRecord) -> str:
    await world.discord.wait_for(lambda e: e.interaction is record and e.kind == "callback")
    assert record.original is not None and record.original.ephemeral
    return record.original.content


async def test_rate_limit_refuses_privately_with_a_retry_time_and_no_api_call(
    world: BotWorld,
) -> None:
    await world.start(USER_RATE_LIMIT="2/minute")
    alice, bob = world.user("alice"), world.user("bob")
    for n in range(2):
        await world.result_of(await world.discord.slash(alice, "imagine", {"prompt": f"cat {n}"}))

    refused = await world.discord.slash(alice, "imagine", {"prompt": "cat 3"})
    text = await _refusal(world, refused)
    assert "2 per minute" in text
    assert re.search(r"<t:\d+:R>", text), text  # when to try again
    too_many = await world.discord.slash(alice, "imagine", {"prompt": "four", "count": 3})
    assert "at most 2" in await _refusal(world, too_many)
    assert len(world.gemini.requests) == 2

    # The limit is per user.
    await world.result_of(await world.discord.slash(bob, "imagine", {"prompt": "dog"}))
    assert len(world.gemini.requests) == 3


async def test_pending_cap_refuses_privately(world: BotWorld) -> None:
    await world.start(MAX_PENDING_PER_USER="1")
    alice = world.user("alice")
    gate = Gate()
    world.gemini.enqueue(gate)
    first = await world.discord.slash(alice, "imagine", {"prompt": "slow"})
    await gate.arrivals(1)

    second = await world.discord.slash(alice, "imagine", {"prompt": "another"})
    assert "already have 1 job" in await _refusal(world, second)

    gate.release()
    await world.result_of(first)
    assert len(world.gemini.requests) == 1


async def test_global_cap_and_fair_turns(world: BotWorld) -> None:
    await world.start(MAX_CONCURRENT_JOBS="2", MAX_PENDING_PER_USER="3")
    alice, bob = world.user("alice"), world.user("bob")
    gate = Gate()
    world.gemini.enqueue(*[gate] * 6)

    # Alice fills both slots, then queues two more jobs; Bob comes last with one.
    records = [
        await world.discord.slash(alice, "imagine", {"prompt": "a1", "count": 2}),
        await world.discord.slash(alice, "imagine", {"prompt": "a2"}),
        await world.discord.slash(alice, "imagine", {"prompt": "a3"}),
    ]
    await gate.arrivals(2)
    bob_record = await world.discord.slash(bob, "imagine", {"prompt": "b1"})
    records.append(bob_record)
    # Bob's job waits in line, and its status says where.
    text = await world.final_text(bob_record, lambda t: "position" in t)
    assert "Queued" in text
    assert gate.in_flight == 2

    gate.release()
    for record in records:
        await world.result_of(record)
    assert gate.peak == 2
    assert len(gate.prompts) == 5
    # Bob's single job started before Alice's last one.
    assert gate.prompts.index("b1") < gate.prompts.index("a3")


async def test_queue_position_and_cancel_while_queued(world: BotWorld) -> None:
    await world.start(MAX_CONCURRENT_JOBS="1")
    alice, bob = world.user("alice"), world.user("bob")
    gate = Gate()
    world.gemini.enqueue(gate)
    running = await world.discord.slash(bob, "imagine", {"prompt": "first"})
    await gate.arrivals(1)

    queued = await world.discord.slash(alice, "imagine", {"prompt": "never drawn"})
    text = await world.final_text(queued, lambda t: "position 1" in t)
    assert "Queued" in text
    status = queued.original
    assert status is not None
    # Clicked the instant it shows: the button is matched by its id, not a stored view.
    # Someone else can't cancel it.
    other = await world.discord.click(bob, status, button_id(status, "Cancel"))
    assert "Only the person who asked" in await _refusal(world, other)
    await world.discord.click(alice, status, button_id(status, "Cancel"))
    await world.discord.wait_for(
        lambda e: (
            e.message is status and e.kind == "message_update" and "Cancelled" in status.content
        )
    )
    assert not status.payload["components"]

    gate.release()
    await world.result_of(running)
    # Let a later job run, so a cancelled one that leaked would have reached the fake by now.
    await world.result_of(await world.discord.slash(bob, "imagine", {"prompt": "after"}))
    assert [prompt_of(r) for r in world.gemini.requests] == ["first", "after"]


async def test_stopping_with_a_job_in_flight_exits_cleanly(world: BotWorld) -> None:
    await world.start()
    gate = Gate()
    world.gemini.enqueue(gate)
    await world.discord.slash(world.user("alice"), "imagine", {"prompt": "held"})
    await gate.arrivals(1)
    # The fixture checks the exit code and that no traceback was printed.
    assert await world.stop() == 0
    assert "Traceback" not in world.output()
