"""The bot's persistent store: job records, guild and user settings and usage, on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import types
import typing
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args

import aiosqlite

log = logging.getLogger(__name__)

DB_FILENAME = "bot.sqlite3"  # the store's file inside DATA_DIR
BUSY_TIMEOUT_SECONDS = 5.0  # how long a write waits for another process's lock before failing

JobStatus = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
FINISHED: frozenset[JobStatus] = frozenset({"done", "failed", "cancelled", "interrupted"})

# Each step moves the schema up one version; `PRAGMA user_version` is the number of steps
# applied. Append new steps, never edit a released one: databases in the field already ran it.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL,
            guild_id INTEGER,
            channel_id INTEGER,
            kind TEXT NOT NULL,
            prompt TEXT NOT NULL,
            aspect_ratio TEXT,
            image_size TEXT,
            count INTEGER NOT NULL,
            reference_count INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL CHECK (
                status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')
            ),
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error_kind TEXT,
            images INTEGER NOT NULL DEFAULT 0,
            estimated_cost_usd REAL NOT NULL DEFAULT 0,
            result_channel_id INTEGER,
            result_message_id INTEGER,
            notify_message_id INTEGER
        )""",
        # history(): one user's finished jobs, newest first.
        "CREATE INDEX jobs_by_user ON jobs (user_id, status, finished_at)",
        # usage_since() over every guild, and interrupt_unfinished()'s status scan.
        "CREATE INDEX jobs_by_status ON jobs (status, finished_at)",
        # usage_since() in one guild.
        "CREATE INDEX jobs_by_guild ON jobs (guild_id, status, finished_at)",
        """CREATE TABLE guild_settings (
            guild_id INTEGER PRIMARY KEY,
            allowed_channel_ids TEXT NOT NULL DEFAULT '[]',
            user_rate_limit TEXT,
            max_pending_per_user INTEGER,
            user_daily_quota INTEGER,
            daily_budget_usd REAL,
            default_aspect_ratio TEXT,
            default_size TEXT,
            banned_words TEXT NOT NULL DEFAULT '[]'
        )""",
        """CREATE TABLE user_settings (
            user_id INTEGER PRIMARY KEY,
            default_aspect_ratio TEXT,
            default_size TEXT
        )""",
    ),
    # 2: the quota reservation behind each job, so a job lost to a crash can be refunded once.
    ("ALTER TABLE jobs ADD COLUMN reservation_id TEXT",),
)


class StoreError(Exception):
    """The store cannot be opened or refused a change."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of the bot than this one."""

    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(
            f"{path} is at schema version {found} but this bot only knows up to {known}: "
            "run a newer version of the bot, or restore a backup made by this one"
        )
        self.path = path
        self.found = found
        self.known = known


class MigrationFailed(StoreError):
    """A migration step failed; nothing was applied and the schema version is unchanged."""

    def __init__(self, path: Path, version: int) -> None:
        super().__init__(f"migrating {path} to schema version {version} failed")
        self.path = path
        self.version = version


class InvalidSetting(StoreError, ValueError):
    """A settings change names an unknown setting or gives one a value of the wrong type."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One image job as requested and, once finished, as delivered. Times are UTC epoch seconds."""

    id: str
    user_id: int
    guild_id: int | None
    channel_id: int | None
    kind: str
    prompt: str
    aspect_ratio: str | None
    image_size: str | None
    count: int
    references: int
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    error_kind: str | None
    images: int  # delivered images, which may be fewer than `count`
    estimated_cost_usd: float
    result_channel_id: int | None  # with `result_message_id`, a jump link to the result
    result_message_id: int | None
    notify_message_id: int | None  # the message to reply to if the job is interrupted
    reservation_id: str | None = None  # the quota reservation the job holds


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """A guild's overrides of the bot's defaults; `None` or empty means "use the default"."""

    allowed_channel_ids: tuple[int, ...] = ()  # empty = everywhere
    user_rate_limit: str | None = None
    max_pending_per_user: int | None = None
    user_daily_quota: int | None = None
    daily_budget_usd: float | None = None
    default_aspect_ratio: str | None = None
    default_size: str | None = None
    banned_words: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserSettings:
    """A user's own defaults for their requests."""

    default_aspect_ratio: str | None = None
    default_size: str | None = None


@dataclass(frozen=True, slots=True)
class UsageStats:
    """What finished jobs delivered over a period; `top_users` is (user_id, images), most first."""

    images: int
    estimated_spend_usd: float
    jobs: int
    top_users: tuple[tuple[int, int], ...]


TOP_USERS = 5  # how many users UsageStats.top_users names at most

# Columns in JobRecord field order, so that a selected row is the record's positional arguments.
# `references` is an SQL keyword, hence the column's other name.
_JOB_COLUMNS = ", ".join(
    "reference_count" if f.name == "references" else f.name for f in fields(JobRecord)
)
_JOB_SELECT = f"SELECT {_JOB_COLUMNS} FROM jobs"  # noqa: S608 -- built from field names
_JOB_SLOTS = ", ".join("?" * len(fields(JobRecord)))
_INSERT_JOB = f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_JOB_SLOTS})"  # noqa: S608
_MARK_RUNNING = (
    "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'"
)
_FINISH_JOB = """UPDATE jobs SET status = ?, finished_at = ?, images = ?, error_kind = ?,
    estimated_cost_usd = COALESCE(?, estimated_cost_usd),
    result_channel_id = ?, result_message_id = ?
    WHERE id = ? AND status IN ('queued', 'running')"""
_SELECT_JOB = f"{_JOB_SELECT} WHERE id = ?"
_SELECT_UNFINISHED = f"{_JOB_SELECT} WHERE status IN ('queued', 'running') ORDER BY created_at, id"
_INTERRUPT_UNFINISHED = (
    "UPDATE jobs SET status = 'interrupted', finished_at = ? WHERE status IN ('queued', 'running')"
)
_HISTORY = f"""{_JOB_SELECT}
    WHERE user_id = ? AND status = 'done' AND result_message_id IS NOT NULL
    ORDER BY finished_at DESC, created_at DESC LIMIT ?"""


def _usage_queries(where: str) -> tuple[str, str]:
    # `where` is one of the two constant conditions below.
    sums = "COALESCE(SUM(images), 0), COALESCE(SUM(estimated_cost_usd), 0.0), COUNT(*)"
    totals = f"SELECT {sums} FROM jobs WHERE {where}"  # noqa: S608
    top = f"SELECT user_id, SUM(images) AS total FROM jobs WHERE {where} GROUP BY user_id"  # noqa: S608
    return totals, f"{top} HAVING total > 0 ORDER BY total DESC, user_id LIMIT ?"


_USAGE_EVERYWHERE = _usage_queries("status = 'done' AND finished_at >= ?")
_USAGE_IN_GUILD = _usage_queries("guild_id = ? AND status = 'done' AND finished_at >= ?")

_Settings = TypeVar("_Settings", GuildSettings, UserSettings)


class _SettingsTable(Generic[_Settings]):
    """One settings dataclass stored as one row of `table`, keyed by `key`; tuples as JSON."""

    def __init__(self, cls: type[_Settings], table: str, key: str) -> None:
        self.cls: type[_Settings] = cls
        self.hints = typing.get_type_hints(cls)
        self.names = tuple(f.name for f in fields(cls))
        columns = ", ".join(self.names)
        slots = ", ".join("?" * (len(self.names) + 1))
        # Table, key and column names are constants and field names, never caller text.
        self.select = f"SELECT {columns} FROM {table} WHERE {key} = ?"  # noqa: S608
        self.upsert = f"INSERT OR REPLACE INTO {table} ({key}, {columns}) VALUES ({slots})"  # noqa: S608
        self.keys = f"SELECT {key} FROM {table}"  # noqa: S608

    def validate(self, changes: Mapping[str, object]) -> dict[str, Any]:
        """The changes normalised (lists to tuples, ints to floats), or `InvalidSetting`."""
        normal: dict[str, Any] = {}
        for name, given in changes.items():
            if name not in self.hints:
                raise InvalidSetting(name, f"not a setting (known: {', '.join(self.names)})")
            hint = self.hints[name]
            value = tuple(given) if isinstance(given, list) else given
            if not _conforms(value, hint):
                raise InvalidSetting(name, f"must be {hint}, not {type(given).__name__}")
            if isinstance(value, int) and float in get_args(hint):
                value = float(value)
            normal[name] = value
        return normal

    def decode(self, row: sqlite3.Row | None) -> _Settings:
        if row is None:
            return self.cls()
        values: dict[str, Any] = {
            name: tuple(json.loads(raw)) if typing.get_origin(self.hints[name]) is tuple else raw
            for name, raw in zip(self.names, row, strict=True)
        }
        return self.cls(**values)

    def encode(self, key: int, settings: _Settings) -> list[object]:
        row: list[object] = [key]
        for name in self.names:
            value = getattr(settings, name)
            row.append(json.dumps(value) if isinstance(value, tuple) else value)
        return row


_SETTINGS_CACHE_SIZE = 10_000
_GUILD_SETTINGS = _SettingsTable(GuildSettings, "guild_settings", "guild_id")
_USER_SETTINGS = _SettingsTable(UserSettings, "user_settings", "user_id")


class JobStore:
    """Job records and settings in one SQLite file, through one aiosqlite connection.

    Every call is one short transaction; a lock keeps one coroutine's transaction from
    interleaving with another's statements on the shared connection.
    """

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._db = db
        # Reads go through a connection of their own: under WAL they see the last commit and
        # never queue behind a write transaction (admission reads settings in a hurry).
        self._reader = reader
        self._lock = asyncio.Lock()
        # Settings are read before every job is admitted and change rarely: one process owns its
        # database, so a cache that every update writes through is always current. Most users
        # and servers have no row at all; knowing which do spares a read for the rest.
        self._cache: dict[tuple[str, int], object] = {}
        self._stored: set[tuple[str, int]] = set()

    @classmethod
    async def open(cls, path: Path) -> JobStore:
        """Open (creating if need be) the database at `path` and bring its schema up to date."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # `timeout` is SQLite's busy timeout. Transactions are begun explicitly (no implicit
        # ones), so that each call's statements commit together.
        db = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            await db.execute("PRAGMA foreign_keys = ON")
            # Refuse a newer schema before changing anything, even the journal mode.
            _check_version(path, await _schema_version(db))
            (mode,) = await _fetch_one(db, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                log.warning("%s: WAL journal mode unavailable, using %s", path, mode)
            await db.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL
            await _migrate(db, path)
            reader = await aiosqlite.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
            )
        except BaseException:
            await db.close()
            raise
        await reader.execute("PRAGMA query_only = ON")
        store = cls(db, reader)
        for table in (_GUILD_SETTINGS, _USER_SETTINGS):
            store._stored.update((table.select, key) for (key,) in await store._fetch(table.keys))
        return store

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()
            await self._reader.close()

    async def __aenter__(self) -> JobStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            await self._fetch("SELECT 1")
        except (sqlite3.Error, ValueError):  # aiosqlite raises ValueError once closed
            return False
        return True

    async def add_job(self, record: JobRecord) -> None:
        await self._statement(_INSERT_JOB, [getattr(record, f.name) for f in fields(JobRecord)])

    async def mark_running(self, job_id: str, at: float) -> None:
        """Record that a queued job started; a job already finished (say, cancelled) stays so."""
        await self._statement(_MARK_RUNNING, (at, job_id))

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        at: float,
        images: int = 0,
        error_kind: str | None = None,
        estimated_cost_usd: float | None = None,
        result_channel_id: int | None = None,
        result_message_id: int | None = None,
    ) -> None:
        """Record how a queued or running job ended; `estimated_cost_usd=None` keeps the estimate.

        A job that has already finished keeps its first outcome.
        """
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a finished status")
        params = (
            status,
            at,
            images,
            error_kind,
            estimated_cost_usd,
            result_channel_id,
            result_message_id,
            job_id,
        )
        if not await self._statement(_FINISH_JOB, params):
            log.warning("job %s is unknown or already finished; kept as it was", job_id)

    async def set_notify_message(self, job_id: str, message_id: int) -> None:
        await self._statement(
            "UPDATE jobs SET notify_message_id = ? WHERE id = ?", (message_id, job_id)
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._fetch(_SELECT_JOB, (job_id,))
        return JobRecord(*rows[0]) if rows else None

    async def interrupt_unfinished(self, at: float) -> list[JobRecord]:
        """Mark every queued or running job interrupted at `at` and return them, oldest first.

        Meant for start-up: those jobs died with the previous process, and their requesters
        should be told.
        """
        async with self._transaction() as db:
            rows = await db.execute_fetchall(_SELECT_UNFINISHED)
            await db.execute(_INTERRUPT_UNFINISHED, (at,))
        return [replace(JobRecord(*row), status="interrupted", finished_at=at) for row in rows]

    async def history(self, user_id: int, limit: int = 10) -> list[JobRecord]:
        """The user's delivered jobs (done, with a result message), newest first."""
        rows = await self._fetch(_HISTORY, (user_id, max(0, limit)))
        return [JobRecord(*row) for row in rows]

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        return await self._settings(_GUILD_SETTINGS, guild_id)

    async def update_guild_settings(self, guild_id: int, **changes: object) -> GuildSettings:
        """Change some of a guild's settings and return them all; tuples may come as lists."""
        return await self._update_settings(_GUILD_SETTINGS, guild_id, changes)

    async def user_settings(self, user_id: int) -> UserSettings:
        return await self._settings(_USER_SETTINGS, user_id)

    async def update_user_settings(self, user_id: int, **changes: object) -> UserSettings:
        """Change some of a user's settings and return them all."""
        return await self._update_settings(_USER_SETTINGS, user_id, changes)

    async def usage_since(self, since: float, guild_id: int | None = None) -> UsageStats:
        """What done jobs finished at or after `since` delivered, in one guild or in all."""
        params: tuple[object, ...]
        if guild_id is None:
            (totals_sql, top_sql), params = _USAGE_EVERYWHERE, (since,)
        else:
            (totals_sql, top_sql), params = _USAGE_IN_GUILD, (guild_id, since)
        (totals,) = await self._fetch(totals_sql, params)
        top = await self._fetch(top_sql, (*params, TOP_USERS))
        return UsageStats(
            images=int(totals[0]),
            estimated_spend_usd=float(totals[1]),
            jobs=int(totals[2]),
            top_users=tuple((int(user), int(images)) for user, images in top),
        )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock, _transaction(self._db) as db:
            yield db

    async def _statement(self, sql: str, params: Iterable[object]) -> int:
        """Run one write statement, which autocommits as a transaction of its own (one trip to
        the database thread instead of three); return how many rows it changed."""
        async with self._lock, self._db.execute(sql, params) as cursor:
            return cursor.rowcount

    async def _fetch(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        return list(await self._reader.execute_fetchall(sql, params))

    async def _settings(self, table: _SettingsTable[_Settings], key: int) -> _Settings:
        if (table.select, key) not in self._stored:
            return table.cls()
        cached = self._cache.get((table.select, key))
        if isinstance(cached, table.cls):
            return cached
        rows = await self._fetch(table.select, (key,))
        settings = table.decode(rows[0] if rows else None)
        if len(self._cache) >= _SETTINGS_CACHE_SIZE:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[table.select, key] = settings
        return settings

    async def _update_settings(
        self, table: _SettingsTable[_Settings], key: int, changes: Mapping[str, object]
    ) -> _Settings:
        normal = table.validate(changes)
        async with self._transaction() as db:
            rows = list(await db.execute_fetchall(table.select, (key,)))
            current = table.decode(rows[0] if rows else None)
            updated = replace(current, **normal)
            if updated != current:
                await db.execute(table.upsert, table.encode(key, updated))
        self._stored.add((table.select, key))
        self._cache[table.select, key] = updated
        return updated


@contextlib.asynccontextmanager
async def _transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """One write transaction: committed if the body returns, rolled back if it raises.

    IMMEDIATE takes SQLite's write lock at the start, so a busy database fails (after the busy
    timeout) before any work rather than at commit.
    """
    try:
        await db.execute("BEGIN IMMEDIATE")
        yield db
        await db.execute("COMMIT")
    except BaseException:
        # The connection's worker runs statements in order, so this follows whatever was
        # queued, even if we were cancelled awaiting it; it fails only if no transaction
        # is open (BEGIN or COMMIT itself failed), which leaves nothing to undo.
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")
        raise


async def _fetch_one(db: aiosqlite.Connection, sql: str) -> sqlite3.Row:
    (row,) = await db.execute_fetchall(sql)
    return row


async def _schema_version(db: aiosqlite.Connection) -> int:
    (version,) = await _fetch_one(db, "PRAGMA user_version")
    return int(version)


def _check_version(path: Path, version: int) -> None:
    if version > len(MIGRATIONS):
        raise SchemaTooNew(path, version, len(MIGRATIONS))


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Apply every pending step in one transaction: all of them, or none and the same version."""
    async with _transaction(db):
        # Read under the write lock, so two processes opening at once migrate only once.
        current = await _schema_version(db)
        _check_version(path, current)
        for version in range(current + 1, len(MIGRATIONS) + 1):
            try:
                for statement in MIGRATIONS[version - 1]:
                    await db.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationFailed(path, version) from exc
        # PRAGMA takes no parameters; the value is an int.
        await db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    if current < len(MIGRATIONS):
        log.info("%s: schema migrated from version %d to %d", path, current, len(MIGRATIONS))


def _conforms(value: object, hint: object) -> bool:
    """Whether `value` has the type `hint` names (None, int, float, str, unions, tuple[T, ...])."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        return any(_conforms(value, arg) for arg in get_args(hint))
    if origin is tuple:
        item = get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(v, item) for v in value)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):  # a bool is an int to Python, never a setting's number
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(hint, type) and isinstance(value, hint)
