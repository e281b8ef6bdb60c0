"""The SQLite store: migrations, job lifecycle, interruption, history, settings and usage."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot import store
from bot.store import (
    GuildSettings,
    InvalidSetting,
    JobRecord,
    JobStore,
    MigrationFailed,
    SchemaTooNew,
    UsageStats,
    UserSettings,
)

T0 = 1_750_000_000.0  # an arbitrary UTC epoch second


def job(job_id: str, **changes: Any) -> JobRecord:
    record = JobRecord(
        id=job_id,
        user_id=1,
        guild_id=100,
        channel_id=200,
        kind="imagine",
        prompt=f"prompt {job_id}",
        aspect_ratio="16:9",
        image_size="2K",
        count=2,
        references=1,
        status="queued",
        created_at=T0,
        started_at=None,
        finished_at=None,
        error_kind=None,
        images=0,
        estimated_cost_usd=0.08,
        result_channel_id=None,
        result_message_id=None,
        notify_message_id=None,
    )
    return replace(record, **changes)


def done(job_id: str, finished_at: float, **changes: Any) -> JobRecord:
    """A job as it is once delivered."""
    fields: dict[str, Any] = {
        "status": "done",
        "started_at": finished_at - 1,
        "finished_at": finished_at,
        "images": 2,
        "result_channel_id": 200,
        "result_message_id": 9000 + int(finished_at - T0),
    }
    return job(job_id, **(fields | changes))


def raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query the file directly, bypassing the store."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def tables(path: Path) -> set[str]:
    return {name for (name,) in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bot.sqlite3"


@pytest.fixture
async def db(path: Path) -> AsyncIterator[JobStore]:
    async with await JobStore.open(path) as opened:
        yield opened


# Schema and migrations -------------------------------------------------------------------------


async def test_open_creates_the_directory_and_the_latest_schema(path: Path) -> None:
    opened = await JobStore.open(path)
    try:
        # foreign_keys and busy_timeout belong to the connection, not the file.
        [(mode,)] = await opened._db.execute_fetchall("PRAGMA journal_mode")
        [(foreign_keys,)] = await opened._db.execute_fetchall("PRAGMA foreign_keys")
        [(busy_ms,)] = await opened._db.execute_fetchall("PRAGMA busy_timeout")
    finally:
        await opened.close()

    assert (mode, foreign_keys) == ("wal", 1)
    assert busy_ms >= 1000
    assert raw(path, "PRAGMA user_version") == [(len(store.MIGRATIONS),)]
    assert {"jobs", "guild_settings", "user_settings"} <= tables(path)


async def test_reopening_keeps_the_data_and_the_version(path: Path) -> None:
    async with await JobStore.open(path) as first:
        await first.add_job(job("a"))
        await first.update_guild_settings(5, banned_words=("x",))

    async with await JobStore.open(path) as second:
        assert await second.get_job("a") == job("a")
        assert (await second.guild_settings(5)).banned_words == ("x",)
    assert raw(path, "PRAGMA user_version") == [(len(store.MIGRATIONS),)]


async def test_a_database_from_a_newer_bot_is_refused_untouched(path: Path) -> None:
    path.parent.mkdir(parents=True)
    future = len(store.MIGRATIONS) + 1
    raw(path, f"PRAGMA user_version = {future}")

    with pytest.raises(SchemaTooNew) as caught:
        await JobStore.open(path)

    assert (caught.value.found, caught.value.known) == (future, len(store.MIGRATIONS))
    assert f"schema version {future}" in str(caught.value)
    assert "newer version of the bot" in str(caught.value)
    assert raw(path, "PRAGMA user_version") == [(future,)]
    assert raw(path, "PRAGMA journal_mode") == [("delete",)]  # not even switched to WAL
    assert tables(path) == set()


async def test_a_failing_migration_applies_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await JobStore.open(path) as first:
        await first.add_job(job("a"))
    shipped = store.MIGRATIONS
    monkeypatch.setattr(
        store,
        "MIGRATIONS",
        (*shipped, ("CREATE TABLE extra (x)",), ("CREATE TABLE more (y)", "NOT SQL")),
    )

    with pytest.raises(MigrationFailed) as caught:
        await JobStore.open(path)

    assert caught.value.version == len(shipped) + 2
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert raw(path, "PRAGMA user_version") == [(len(shipped),)]
    assert not {"extra", "more"} & tables(path)  # the step that worked was rolled back too

    monkeypatch.setattr(store, "MIGRATIONS", shipped)
    async with await JobStore.open(path) as again:
        assert await again.get_job("a") == job("a")


async def test_a_migration_from_an_older_version_applies_only_the_new_steps(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await JobStore.open(path) as first:
        await first.add_job(job("a"))
    new_step = ("CREATE TABLE extra (x)", "INSERT INTO extra VALUES (1)")
    monkeypatch.setattr(store, "MIGRATIONS", (*store.MIGRATIONS, new_step))

    async with await JobStore.open(path) as second:
        assert await second.get_job("a") == job("a")
    async with await JobStore.open(path):
        pass  # already current: the INSERT must not run again

    assert raw(path, "PRAGMA user_version") == [(len(store.MIGRATIONS),)]
    assert raw(path, "SELECT x FROM extra") == [(1,)]


async def test_the_queries_that_grow_with_history_use_an_index(db: JobStore) -> None:
    queries = [
        (store._HISTORY, (1, 10), "jobs_by_user"),
        (store._USAGE_EVERYWHERE[0], (T0,), "jobs_by_status"),
        (store._USAGE_EVERYWHERE[1], (T0, 5), "jobs_by_status"),
        (store._USAGE_IN_GUILD[0], (100, T0), "jobs_by_guild"),
        (store._USAGE_IN_GUILD[1], (100, T0, 5), "jobs_by_guild"),
        (store._SELECT_UNFINISHED, (), "jobs_by_status"),
    ]
    for sql, params, index in queries:
        plan = await db._db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        steps = [str(row[3]) for row in plan]
        assert any(s.startswith("SEARCH jobs") and index in s for s in steps), (sql, steps)
        assert not any(s.startswith("SCAN jobs") for s in steps), (sql, steps)


# Jobs ------------------------------------------------------------------------------------------


async def test_a_job_goes_from_queued_to_running_to_done(db: JobStore) -> None:
    await db.add_job(job("a"))
    assert await db.get_job("a") == job("a")

    await db.mark_running("a", at=T0 + 1)
    await db.set_notify_message("a", 777)
    assert await db.get_job("a") == job(
        "a", status="running", started_at=T0 + 1, notify_message_id=777
    )

    await db.finish_job(
        "a",
        "done",
        at=T0 + 9,
        images=1,
        estimated_cost_usd=0.04,
        result_channel_id=201,
        result_message_id=301,
    )
    finished = await db.get_job("a")
    assert finished == job(
        "a",
        status="done",
        started_at=T0 + 1,
        finished_at=T0 + 9,
        images=1,
        estimated_cost_usd=0.04,
        result_channel_id=201,
        result_message_id=301,
        notify_message_id=777,
    )

    # A finished job keeps its first outcome.
    await db.finish_job("a", "failed", at=T0 + 20, error_kind="late")
    await db.mark_running("a", at=T0 + 21)
    assert await db.get_job("a") == finished


async def test_a_failure_keeps_the_cost_estimate_unless_told_otherwise(db: JobStore) -> None:
    await db.add_job(job("a"))
    await db.add_job(job("b"))

    await db.finish_job("a", "failed", at=T0 + 5, error_kind="ContentBlocked")
    await db.finish_job("b", "failed", at=T0 + 5, error_kind="ServerError", estimated_cost_usd=0)

    a, b = await db.get_job("a"), await db.get_job("b")
    assert a is not None and b is not None
    assert (a.status, a.error_kind, a.estimated_cost_usd, a.images) == (
        "failed",
        "ContentBlocked",
        0.08,
        0,
    )
    assert (b.error_kind, b.estimated_cost_usd) == ("ServerError", 0)


async def test_a_job_cancelled_while_queued_is_not_revived_by_a_late_start(db: JobStore) -> None:
    await db.add_job(job("a"))
    await db.finish_job("a", "cancelled", at=T0 + 1)
    await db.mark_running("a", at=T0 + 2)

    record = await db.get_job("a")
    assert record is not None
    assert (record.status, record.started_at, record.finished_at) == ("cancelled", None, T0 + 1)


async def test_finishing_with_an_unfinished_status_is_a_bug(db: JobStore) -> None:
    await db.add_job(job("a"))
    with pytest.raises(ValueError, match="running"):
        await db.finish_job("a", "running", at=T0)
    assert await db.get_job("a") == job("a")


async def test_a_duplicate_job_id_is_refused_and_the_store_stays_usable(db: JobStore) -> None:
    await db.add_job(job("a"))
    with pytest.raises(sqlite3.IntegrityError):
        await db.add_job(job("a", prompt="other"))
    await db.add_job(job("b"))
    assert await db.get_job("a") == job("a")
    assert await db.get_job("b") == job("b")


async def test_interrupt_unfinished_marks_and_returns_exactly_the_queued_and_running(
    db: JobStore,
) -> None:
    await db.add_job(job("queued", created_at=T0 + 2))
    await db.add_job(job("running", created_at=T0 + 1, notify_message_id=55))
    await db.mark_running("running", at=T0 + 3)
    finished = [
        done("done", T0 + 4),
        job("failed", status="failed", finished_at=T0 + 4, error_kind="x"),
        job("cancelled", status="cancelled", finished_at=T0 + 4),
        job("interrupted-before", status="interrupted", finished_at=T0 + 4),
    ]
    for record in finished:
        await db.add_job(record)

    interrupted = await db.interrupt_unfinished(at=T0 + 10)

    assert interrupted == [
        job(
            "running",
            created_at=T0 + 1,
            notify_message_id=55,
            status="interrupted",
            started_at=T0 + 3,
            finished_at=T0 + 10,
        ),
        job("queued", created_at=T0 + 2, status="interrupted", finished_at=T0 + 10),
    ]
    for record in interrupted:
        assert await db.get_job(record.id) == record
    for record in finished:
        assert await db.get_job(record.id) == record
    assert await db.interrupt_unfinished(at=T0 + 20) == []


async def test_interrupted_jobs_survive_a_restart(path: Path) -> None:
    async with await JobStore.open(path) as before:
        await before.add_job(job("a"))
    async with await JobStore.open(path) as after:
        (record,) = await after.interrupt_unfinished(at=T0 + 10)
        assert (record.id, record.status) == ("a", "interrupted")


async def test_history_is_the_users_delivered_jobs_newest_first(db: JobStore) -> None:
    for n in range(12):
        await db.add_job(done(f"mine-{n}", T0 + 10 * n, created_at=T0 + 10 * n - 5))
    await db.add_job(done("no-message", T0 + 500, result_message_id=None))
    await db.add_job(job("failed", status="failed", finished_at=T0 + 500))
    await db.add_job(job("running", status="running", started_at=T0 + 500))
    await db.add_job(done("theirs", T0 + 500, user_id=2))

    newest = await db.history(1)
    assert [r.id for r in newest] == [f"mine-{n}" for n in range(11, 1, -1)]
    assert [r.id for r in await db.history(1, limit=3)] == ["mine-11", "mine-10", "mine-9"]
    assert await db.history(1, limit=0) == []
    assert [r.id for r in await db.history(2)] == ["theirs"]
    assert await db.history(3) == []


# Settings --------------------------------------------------------------------------------------


async def test_guild_settings_default_until_changed_and_persist(path: Path) -> None:
    async with await JobStore.open(path) as first:
        assert await first.guild_settings(5) == GuildSettings()
        changed = await first.update_guild_settings(
            5, allowed_channel_ids=[11, 12], daily_budget_usd=3, banned_words=("nsfw", "gore")
        )
        assert changed == GuildSettings(
            allowed_channel_ids=(11, 12), daily_budget_usd=3.0, banned_words=("nsfw", "gore")
        )
        assert isinstance(changed.daily_budget_usd, float)
        again = await first.update_guild_settings(
            5, user_rate_limit="3/minute", daily_budget_usd=None
        )
        assert again == replace(changed, user_rate_limit="3/minute", daily_budget_usd=None)
        assert await first.guild_settings(6) == GuildSettings()

    async with await JobStore.open(path) as second:
        assert await second.guild_settings(5) == again


async def test_user_settings_round_trip(db: JobStore) -> None:
    assert await db.user_settings(1) == UserSettings()
    assert await db.update_user_settings(1, default_size="2K") == UserSettings(default_size="2K")
    changed = await db.update_user_settings(1, default_aspect_ratio="9:16")
    assert changed == UserSettings(default_aspect_ratio="9:16", default_size="2K")
    assert await db.user_settings(1) == changed
    assert await db.user_settings(2) == UserSettings()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"banned_words": ("x",), "colour": "red"}, "colour"),
        ({"user_daily_quota": "10"}, "user_daily_quota"),
        ({"max_pending_per_user": True}, "max_pending_per_user"),
        ({"allowed_channel_ids": ["11"]}, "allowed_channel_ids"),
        ({"banned_words": "nsfw"}, "banned_words"),
        ({"daily_budget_usd": "1.5"}, "daily_budget_usd"),
    ],
)
async def test_a_bad_guild_setting_is_refused_and_nothing_changes(
    db: JobStore, changes: dict[str, object], name: str
) -> None:
    before = await db.update_guild_settings(5, user_rate_limit="1/minute")
    with pytest.raises(InvalidSetting) as caught:
        await db.update_guild_settings(5, **changes)
    assert caught.value.name == name
    assert isinstance(caught.value, ValueError)
    assert await db.guild_settings(5) == before


async def test_an_unknown_user_setting_is_refused(db: JobStore) -> None:
    with pytest.raises(InvalidSetting, match="not a setting"):
        await db.update_user_settings(1, daily_budget_usd=1.0)
    assert await db.user_settings(1) == UserSettings()


# Usage -----------------------------------------------------------------------------------------


async def test_usage_since_counts_delivered_images_per_guild_and_user(db: JobStore) -> None:
    midnight = T0
    records = [
        done("old", midnight - 1, user_id=1, images=4),  # before the period
        done("g1-u1", midnight, user_id=1, images=2, estimated_cost_usd=0.1),
        done("g1-u2", midnight + 5, user_id=2, images=3, estimated_cost_usd=0.15),
        done("g1-u2b", midnight + 6, user_id=2, images=1, estimated_cost_usd=0.05),
        done("g2-u3", midnight + 7, user_id=3, guild_id=200, images=4, estimated_cost_usd=0.2),
        done("dm-u4", midnight + 8, user_id=4, guild_id=None, images=1, estimated_cost_usd=0.05),
        job("failed", user_id=5, status="failed", finished_at=midnight + 9, images=0),
        job("queued", user_id=6),
    ]
    for record in records:
        await db.add_job(record)

    everywhere = await db.usage_since(midnight)
    assert everywhere.images == 11
    assert everywhere.jobs == 5
    assert everywhere.estimated_spend_usd == pytest.approx(0.55)
    assert everywhere.top_users == ((2, 4), (3, 4), (1, 2), (4, 1))

    in_guild = await db.usage_since(midnight, guild_id=100)
    assert (in_guild.images, in_guild.jobs) == (6, 3)
    assert in_guild.estimated_spend_usd == pytest.approx(0.3)
    assert in_guild.top_users == ((2, 4), (1, 2))

    assert await db.usage_since(midnight, guild_id=999) == UsageStats(0, 0.0, 0, ())
    assert await db.usage_since(midnight + 100) == UsageStats(0, 0.0, 0, ())


async def test_usage_names_at_most_five_top_users(db: JobStore) -> None:
    for user in range(1, 8):
        await db.add_job(done(f"u{user}", T0 + user, user_id=user, images=user))

    usage = await db.usage_since(T0)

    assert usage.top_users == ((7, 7), (6, 6), (5, 5), (4, 4), (3, 3))
    assert usage.images == sum(range(1, 8))


# The connection --------------------------------------------------------------------------------


async def test_concurrent_calls_do_not_interleave_their_transactions(db: JobStore) -> None:
    calls: list[Coroutine[Any, Any, object]] = [
        db.add_job(job(f"j{n}", created_at=T0 + n)) for n in range(40)
    ]
    calls += [db.update_guild_settings(5, user_daily_quota=n) for n in range(10)]
    calls += [db.interrupt_unfinished(at=T0 + 100) for _ in range(3)]

    results = await asyncio.gather(*calls)

    interrupted = [r.id for result in results if isinstance(result, list) for r in result]
    everything = await db.interrupt_unfinished(at=T0 + 200)
    assert len(interrupted) + len(everything) == 40
    assert len(set(interrupted) | {r.id for r in everything}) == 40
    assert (await db.guild_settings(5)).user_daily_quota == 9


async def test_a_call_cancelled_mid_transaction_is_rolled_back(db: JobStore) -> None:
    task = asyncio.create_task(db.update_guild_settings(7, banned_words=["x"]))
    await asyncio.sleep(0)  # the task now waits on its BEGIN
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await db.add_job(job("b"))  # the connection is usable again
    assert await db.get_job("b") == job("b")
    assert [tuple(row) for row in await db._fetch("SELECT COUNT(*) FROM guild_settings")] == [(0,)]


async def test_ping_answers_until_closed(path: Path) -> None:
    opened = await JobStore.open(path)
    assert await opened.ping() is True
    await opened.close()
    assert await opened.ping() is False
    await opened.close()  # closing twice is harmless


async def test_a_version_1_database_gains_reservation_ids_and_keeps_its_jobs(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as old:
        for statement in store.MIGRATIONS[0]:
            old.execute(statement)
        old.execute(
            "INSERT INTO jobs (id, user_id, kind, prompt, count, status, created_at)"
            " VALUES ('old', 1, 'imagine', 'a fox', 1, 'done', 0)"
        )
        old.execute("PRAGMA user_version = 1")
    async with await JobStore.open(path) as migrated:
        record = await migrated.get_job("old")
        assert record is not None and record.prompt == "a fox"
        assert record.reservation_id is None
        await migrated.add_job(job("new", reservation_id="r-1"))
        assert (await migrated.get_job("new")) == job("new", reservation_id="r-1")
    assert raw(path, "PRAGMA user_version") == [(len(store.MIGRATIONS),)]
