"""Loopback fake of Discord — REST, gateway websocket and CDN — for end-to-end tests of the bot.

It speaks the wire format discord.py 2.7 expects and enforces the platform rules a bot can break:
the 3-second acknowledgement, one callback per interaction, 15-minute webhook tokens, upload size,
and the message, embed, component, modal and command limits, answering like Discord does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import io
import json
import math
import mimetypes
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntFlag
from typing import Any, NamedTuple
from urllib.parse import quote

from aiohttp import BodyPartReader, WSMsgType, web
from PIL import Image

Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MIB = 1024 * 1024
UPLOAD_LIMITS = {0: 10 * MIB, 1: 10 * MIB, 2: 50 * MIB, 3: 100 * MIB}
DM_UPLOAD_LIMIT = 10 * MIB
BOOSTS_FOR_TIER = {0: 0, 1: 2, 2: 7, 3: 14}
TOKEN_LIFETIME = 15 * 60.0
CHUNK_BYTES = 256 * 1024
SNIFF_BYTES = 64 * 1024  # enough of an image for Pillow to read its dimensions
HEAD_BYTES = 64
FILE_PART = re.compile(r"files\[(\d+)\]")
USER_MENTION = re.compile(r"<@!?(\d+)>")
COMMAND_NAME = re.compile(r"[-_\w]{1,32}")


class Intent(IntFlag):
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15


PRIVILEGED_INTENTS = Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT


class Perm(IntFlag):
    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 51) - 1
_CHAT = Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | Perm.SEND_MESSAGES_IN_THREADS | Perm.EMBED_LINKS
_CHAT |= (
    Perm.ATTACH_FILES | Perm.ADD_REACTIONS | Perm.USE_EXTERNAL_EMOJIS | Perm.READ_MESSAGE_HISTORY
)
DEFAULT_BOT_PERMISSIONS = int(_CHAT)
DEFAULT_MEMBER_PERMISSIONS = int(
    _CHAT | Perm.CREATE_INSTANT_INVITE | Perm.CHANGE_NICKNAME | Perm.USE_APPLICATION_COMMANDS
)


class Flag(IntFlag):
    """Message flags."""

    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


CHANNEL_FLAGS = Flag.SUPPRESS_EMBEDS | Flag.SUPPRESS_NOTIFICATIONS | Flag.IS_COMPONENTS_V2
INTERACTION_FLAGS = CHANNEL_FLAGS | Flag.EPHEMERAL
EDITABLE_FLAGS = Flag.SUPPRESS_EMBEDS | Flag.IS_COMPONENTS_V2

# Interaction types, interaction callback types and application command option types.
APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE = range(1, 9)
MENTIONABLE, NUMBER, ATTACHMENT = 9, 10, 11


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord routes a guild's events to."""
    return (guild_id >> 22) % shard_count


def _iso(snowflake: int) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="microseconds")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _clean_filename(name: str) -> str:
    return re.sub(r"\s", "_", name)


def _image_size(head: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(head)) as image:
            return image.size
    except Exception:  # anything Pillow cannot identify from the first bytes has no dimensions
        return None


def _stored_file(
    filename: str,
    content_type: str | None,
    data: bytes | bytearray | None,
    *,
    size: int,
    sha256: str,
    head: bytes,
) -> StoredFile:
    filename = _clean_filename(filename)
    content_type = content_type or mimetypes.guess_type(filename)[0]
    dims = _image_size(head) if content_type and content_type.startswith("image/") else None
    width, height = dims or (None, None)
    return StoredFile(filename, size, sha256, head[:HEAD_BYTES], data, content_type, width, height)


@dataclass(frozen=True)
class StoredFile:
    """An attachment's bytes (only size, head and sha256 when the fake has keep_files=False)."""

    filename: str
    size: int
    sha256: str
    head: bytes
    data: bytes | bytearray | None
    content_type: str | None
    width: int | None
    height: int | None


@dataclass(eq=False)
class StoredMessage:
    """A message as Discord holds it; `payload` is what the API returns for it right now."""

    payload: Json
    files: list[StoredFile]
    interaction: InteractionRecord | None = None
    deleted: bool = False
    history: list[Json] = field(default_factory=list)

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def content(self) -> str:
        return str(self.payload["content"])

    @property
    def flags(self) -> int:
        return int(self.payload["flags"])

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & Flag.EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & Flag.LOADING)

    @property
    def reference_id(self) -> int | None:
        ref = self.payload.get("message_reference")
        return int(ref["message_id"]) if ref else None


@dataclass(frozen=True, eq=False)
class Event:
    """Something that happened, in order: `FakeDiscord.events` and `InteractionRecord.events`.

    kind: "callback", "followup", "edit", "delete" or "fetch" (a request on an interaction token,
    with its status, accepted or not); "message_create", "message_update" or "message_delete"
    (the message store changed); "commands" (the bot synced commands); "ready" (a gateway session
    got its guilds or resumed).
    """

    kind: str
    at: float
    status: int = 200
    interaction: InteractionRecord | None = None
    message: StoredMessage | None = None
    request: Any = None
    response: Any = None


@dataclass(eq=False)
class InteractionRecord:
    """One interaction the fake dispatched and everything the bot did with its token."""

    id: int
    token: str
    payload: Json
    dispatched_at: float
    upload_limit: int
    _issued_at: float = field(repr=False)  # reading of the fake's shiftable clock
    acked_at: float | None = None
    response_type: int | None = None
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    modal: Json | None = None
    events: list[Event] = field(default_factory=list)
    _responding: bool = field(default=False, repr=False)

    @property
    def ack_latency(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.dispatched_at

    @property
    def user(self) -> Json:
        user: Json = (
            self.payload["member"]["user"] if "member" in self.payload else self.payload["user"]
        )
        return user

    @property
    def messages(self) -> list[StoredMessage]:
        return ([self.original] if self.original else []) + self.followups


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    premium_tier: int
    owner_id: int
    joined_at: str
    roles: list[Json] = field(default_factory=list)
    channels: list[Json] = field(default_factory=list)
    members: dict[int, Json] = field(default_factory=dict)

    @property
    def channel_id(self) -> int:
        return int(self.channels[0]["id"])

    @property
    def upload_limit(self) -> int:
        return UPLOAD_LIMITS[self.premium_tier]


@dataclass(eq=False)
class GatewaySession:
    """An identified gateway session (a bot process or shard); outlives reconnects until invalid."""

    id: str
    shard: tuple[int, int]
    intents: int
    ws: web.WebSocketResponse | None
    seq: int = 0
    dispatched: list[tuple[str, Json]] = field(default_factory=list)
    _backlog: list[tuple[int, str]] = field(default_factory=list, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def receives(self, guild_id: int | None) -> bool:
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else shard_of(guild_id, count))

    async def dispatch(self, event: str, data: Json) -> float | None:
        """Send an event; return when it went out (time.monotonic()), or None if held back."""
        async with self._lock:  # sequence numbers go out in order
            self.seq += 1
            self.dispatched.append((event, data))
            frame = json.dumps({"op": 0, "t": event, "s": self.seq, "d": data})
            if self.ws is not None and not self.ws.closed:
                with contextlib.suppress(ConnectionResetError):
                    await self.ws.send_str(frame)
                    return time.monotonic()
            self._backlog.append((self.seq, frame))  # replayed on RESUME
            return None

    async def resume(self, ws: web.WebSocketResponse, seq: int) -> None:
        async with self._lock:
            self.ws = ws
            for s, frame in self._backlog:
                if s > seq:
                    await ws.send_str(frame)
            self._backlog.clear()
        await self.dispatch("RESUMED", {"_trace": ["fake"]})


@dataclass(eq=False)
class _TokenCall:
    """A request on an interaction token, filled in by its handler and recorded as an Event."""

    rec: InteractionRecord
    op: str
    body: Any = None
    message: StoredMessage | None = None


_TOKEN_CALL = web.RequestKey("token_call", _TokenCall)


class LoggedRequest(NamedTuple):
    method: str
    path: str  # without the /api/v10 prefix and the query
    at: float
    status: int


class DiscordError(Exception):
    """An error answer in Discord's JSON shape."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: Json | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Json | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.headers = dict(headers or {})
        self.body: Json = {"code": code, "message": message, **(extra or {})}
        if errors is not None:
            self.body["errors"] = errors


Problem = tuple[tuple[str | int, ...], str, str]


def _unknown(what: str, code: int) -> DiscordError:
    return DiscordError(404, code, f"Unknown {what}")


def _invalid_form(problems: Sequence[Problem]) -> DiscordError:
    errors: Json = {}
    for path, code, message in problems:
        node = errors
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})
    return DiscordError(400, 50035, "Invalid Form Body", errors=errors)


def _too_long(problems: list[Problem], path: tuple[str | int, ...], value: Any, limit: int) -> None:
    if value is not None and len(value) > limit:
        problems.append((path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))


def _dig(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _walk_components(
    components: Sequence[Json], path: tuple[str | int, ...] = ("components",)
) -> Iterator[tuple[tuple[str | int, ...], Json]]:
    for i, component in enumerate(components):
        here = (*path, i)
        yield here, component
        yield from _walk_components(component.get("components") or [], (*here, "components"))
        for key in ("component", "accessory"):  # labels and sections hold a single child
            if isinstance(component.get(key), dict):
                yield (*here, key), component[key]


EMBED_TEXT_LIMITS = (
    (("title",), 256),
    (("description",), 4096),
    (("footer", "text"), 2048),
    (("author", "name"), 256),
)


def _message_problems(data: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    _too_long(problems, ("content",), data.get("content"), 2000)
    embeds = data.get("embeds") or []
    _too_long(problems, ("embeds",), embeds, 10)
    total = 0
    for i, embed in enumerate(embeds):
        texts: list[tuple[tuple[str | int, ...], Any, int]] = [
            (path, _dig(embed, path), limit) for path, limit in EMBED_TEXT_LIMITS
        ]
        fields = embed.get("fields") or []
        _too_long(problems, ("embeds", i, "fields"), fields, 25)
        for j, f in enumerate(fields):
            texts += [(("fields", j, "name"), f.get("name"), 256)]
            texts += [(("fields", j, "value"), f.get("value"), 1024)]
        for path, text, limit in texts:
            _too_long(problems, ("embeds", i, *path), text, limit)
            total += len(text or "")
    if total > 6000:
        problems.append(
            (("embeds",), "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
        )
    components = data.get("components") or []
    if not int(data.get("flags") or 0) & Flag.IS_COMPONENTS_V2:
        _too_long(problems, ("components",), components, 5)
        for i, row in enumerate(components):
            _too_long(problems, ("components", i, "components"), row.get("components") or [], 5)
    for path, component in _walk_components(components):
        _too_long(problems, (*path, "custom_id"), component.get("custom_id"), 100)
        _too_long(problems, (*path, "label"), component.get("label"), 80)
    _too_long(problems, ("attachments",), data.get("attachments"), 10)
    return problems


def _modal_problems(data: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    _too_long(problems, ("title",), data.get("title"), 45)
    _too_long(problems, ("custom_id",), data.get("custom_id"), 100)
    components = data.get("components") or []
    _too_long(problems, ("components",), components, 5)
    if not components:
        problems.append((("components",), "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length."))
    for path, component in _walk_components(components):
        for key, limit in (
            ("custom_id", 100),
            ("label", 45),
            ("placeholder", 100),
            ("value", 4000),
        ):
            _too_long(problems, (*path, key), component.get(key), limit)
    return problems


def _chat_input_problems(problems: list[Problem], path: tuple[str | int, ...], item: Json) -> None:
    """Name and description rules shared by slash commands, subcommands and options."""
    name = item.get("name", "")
    if not (COMMAND_NAME.fullmatch(name) and name == name.lower()):
        problems.append(((*path, "name"), "APPLICATION_COMMAND_INVALID_NAME", "Invalid name"))
    if not 1 <= len(item.get("description") or "") <= 100:
        message = "Must be between 1 and 100 in length."
        problems.append(((*path, "description"), "BASE_TYPE_BAD_LENGTH", message))
    options = item.get("options") or []
    _too_long(problems, (*path, "options"), options, 25)
    _too_long(problems, (*path, "choices"), item.get("choices"), 25)
    for j, option in enumerate(options):
        _chat_input_problems(problems, (*path, "options", j), option)


def _command_problems(commands: Sequence[Json]) -> list[Problem]:
    problems: list[Problem] = []
    counts = Counter(command.get("type", 1) for command in commands)
    for command_type, limit in ((1, 100), (2, 5), (3, 5)):
        if counts[command_type] > limit:
            message = f"Must be {limit} or fewer in length."
            problems.append(((), "BASE_TYPE_MAX_LENGTH", message))
    for i, command in enumerate(commands):
        if command.get("type", 1) == 1:
            _chat_input_problems(problems, (i,), command)
        elif not 1 <= len(command.get("name", "")) <= 32:
            problems.append(((i, "name"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32."))
    return problems


def _is_empty(message: Mapping[str, Any]) -> bool:
    keys = ("content", "embeds", "attachments", "components", "sticker_ids", "poll")
    return not any(message.get(key) for key in keys)


def _find_component(components: Sequence[Json], custom_id: str) -> Json | None:
    return next(
        (c for _, c in _walk_components(components) if c.get("custom_id") == custom_id), None
    )


def _reply(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": with a charset suffix discord.py reads the body as text.
    body = json.dumps(data).encode()
    return web.Response(status=status, body=body, content_type="application/json")


class FakeDiscord:
    """Discord on 127.0.0.1: REST under /api/v10, the gateway at /gateway and a CDN for files."""

    def __init__(
        self,
        *,
        token: str = "fake-token",
        premium_tier: int = 0,
        keep_files: bool = True,
        intents_allowed: int | None = None,
        ack_deadline: float = 3.0,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        heartbeat_interval: float = 41.25,
    ) -> None:
        self.token = token
        self.keep_files = keep_files
        self.intents_allowed = intents_allowed
        self.ack_deadline = ack_deadline
        self.bot_permissions = bot_permissions
        self.heartbeat_interval = heartbeat_interval
        self.recommended_shards = 1
        self.port = 0
        self.users: dict[int, Json] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, Json] = {}
        self.commands: dict[int | None, list[Json]] = {}  # None: global, else the guild id
        self.messages: dict[int, StoredMessage] = {}
        self.interactions: list[InteractionRecord] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.events: list[Event] = []
        self.request_log: list[LoggedRequest] = []
        self.unknown_requests: list[LoggedRequest] = []
        self._by_token: dict[str, InteractionRecord] = {}
        self._files: dict[int, StoredFile] = {}
        self._dm_channels: dict[int, Json] = {}
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self._rate_limits: list[tuple[str, float]] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._clock_shift = 0.0
        self._last_ms = 0
        self._increment = 0

        self.application_id = self._snowflake()
        self.bot_user: Json = self._user_payload(self.application_id, "FakeBot") | {"bot": True}
        self.users[self.application_id] = self.bot_user
        guild = self._create_guild("Fake Guild", premium_tier)
        self.guild_id = guild.id
        self.channel_id = guild.channel_id

    # -- lifecycle and addresses

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        for method, path, handler in self._routes():
            app.router.add_route(method, API_PREFIX + path, handler)
        app.router.add_get("/gateway", self._gateway)
        for prefix in ("", "/media"):
            app.router.add_get(prefix + "/attachments/{channel_id}/{file_id}/{filename}", self._cdn)
        app.router.add_route("*", "/{unknown:.*}", self._unknown_route)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"Discord is going away")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for _, future in self._waiters:
            future.cancel()

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("start the fake first: its URLs carry the port")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def cdn_url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    @property
    def upload_limit(self) -> int:
        return self.guilds[self.guild_id].upload_limit

    # -- the world: users, guilds, files

    def make_user(
        self,
        name: str,
        *,
        permissions: int = DEFAULT_MEMBER_PERMISSIONS,
        guild_id: int | None = None,
    ) -> Json:
        """A user who is a member of the guild (the default one) with exactly these permissions."""
        user = self._user_payload(self._snowflake(), name)
        self.users[int(user["id"])] = user
        guild = self.guilds[guild_id or self.guild_id]
        self._add_member(guild, user, [self._role_for(guild, permissions)])
        return user

    async def make_guild(
        self,
        name: str = "Another Guild",
        *,
        premium_tier: int = 0,
        shard: tuple[int, int] | None = None,
    ) -> FakeGuild:
        """A guild the bot joins (GUILD_CREATE to connected sessions); `shard` picks its id."""
        guild = self._create_guild(name, premium_tier, shard)
        await self._dispatch("GUILD_CREATE", self._guild_payload(guild, full=True), guild.id)
        return guild

    def dm_channel(self, user: Json) -> Json:
        """The user's DM channel with the bot."""
        user_id = int(user["id"])
        if user_id not in self._dm_channels:
            channel_id = self._snowflake()
            channel = {
                "id": str(channel_id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [user],
            }
            self._dm_channels[user_id] = self.channels[channel_id] = channel
        return self._dm_channels[user_id]

    def add_cdn_file(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        channel_id: int | None = None,
    ) -> Json:
        """Put a file on the CDN (always kept, whatever keep_files says) and return its payload."""
        digest = hashlib.sha256(data).hexdigest()
        head = data[:SNIFF_BYTES]
        stored = _stored_file(
            filename, content_type, data, size=len(data), sha256=digest, head=head
        )
        return self._publish(channel_id or self.channel_id, stored)

    def file(self, attachment: Mapping[str, Any]) -> StoredFile:
        """What the fake holds for an attachment payload."""
        return self._files[int(attachment["id"])]

    def expire_tokens(self) -> None:
        """Let 15 minutes pass for every interaction token issued so far."""
        self._clock_shift += TOKEN_LIFETIME

    def rate_limit_next(self, route_pattern: str, retry_after: float = 1.0) -> None:
        """Answer the next request matching e.g. "POST /channels/*/messages" with a 429."""
        self._rate_limits.append((route_pattern, retry_after))

    # -- waiting

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """The first event, already recorded or still to come, that matches."""
        for event in self.events:
            if predicate(event):
                return event
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(entry[1], timeout)
        finally:
            self._waiters.remove(entry)

    async def wait_ready(self, timeout: float = 10.0, *, sessions: int = 1) -> None:
        """Wait until `sessions` gateway sessions are connected with their guilds sent."""

        def connected(event: Event) -> bool:
            live = sum(s.ws is not None for s in self.sessions.values())
            return event.kind == "ready" and live >= sessions

        await self.wait_for(connected, timeout)

    # -- what users do

    async def slash(
        self,
        user: Json,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        attachments: Mapping[str, Json] | None = None,
        guild: bool = True,
        subcommand: str | None = None,
        channel_id: int | None = None,
    ) -> InteractionRecord:
        """Run a synced slash command; option values are typed from its schema like Discord does.

        `subcommand` is "sub" or "group sub". Without `channel_id` it runs in the default channel,
        or with guild=False in the user's DM with the bot. User, role and channel options take
        the payload dict; attachment options the dict from add_cdn_file (via `attachments`).
        """
        channel = self._interaction_channel(user, guild, channel_id)
        command = self._find_command(user, channel, name, 1)
        specs: list[Json] = command.get("options") or []
        chain: list[Json] = []
        for part in (subcommand or "").split():
            spec = next(
                (
                    o
                    for o in specs
                    if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)
                ),
                None,
            )
            if spec is None:
                raise ValueError(f"/{name} has no subcommand {part!r}")
            chain.append(spec)
            specs = spec.get("options") or []
        resolved: Json = {}
        values = {**(options or {}), **(attachments or {})}
        built = self._command_options(specs, values, resolved, channel)
        for spec in reversed(chain):
            built = [{"name": spec["name"], "type": spec["type"], "options": built}]
        data = self._command_data(command, built, resolved)
        return await self._interact(user, APPLICATION_COMMAND, data, channel)

    async def message_command(
        self, user: Json, name: str, target_message: Json | StoredMessage
    ) -> InteractionRecord:
        """Right-click a message → Apps → `name`."""
        target = self._stored(target_message)
        channel = self.channels[int(target.payload["channel_id"])]
        command = self._find_command(user, channel, name, 3)
        resolved = {"messages": {target.payload["id"]: target.payload}}
        data = self._command_data(command, None, resolved) | {"target_id": target.payload["id"]}
        return await self._interact(user, APPLICATION_COMMAND, data, channel)

    async def click(
        self, user: Json, message: Json | StoredMessage, custom_id: str
    ) -> InteractionRecord:
        """Press the button `custom_id` on the message as it is stored now."""
        stored = self._stored(message)
        button = _find_component(stored.payload["components"], custom_id)
        if button is None or button["type"] != 2:
            raise LookupError(f"message {stored.id} has no button {custom_id!r}")
        if button.get("disabled"):
            raise ValueError(f"button {custom_id!r} is disabled")
        data = {"custom_id": custom_id, "component_type": 2}
        channel = self.channels[int(stored.payload["channel_id"])]
        return await self._interact(user, MESSAGE_COMPONENT, data, channel, stored.payload)

    async def submit_modal(
        self,
        user: Json,
        custom_id: str,
        values: Mapping[str, str],
        *,
        message: Json | StoredMessage | None = None,
    ) -> InteractionRecord:
        """Submit the modal the bot last opened for this user, laid out as the bot sent it."""
        opener = next(
            (
                r
                for r in reversed(self.interactions)
                if r.modal and r.modal["custom_id"] == custom_id and r.user["id"] == user["id"]
            ),
            None,
        )
        if opener is None or opener.modal is None:
            raise LookupError(f"the bot never opened a modal {custom_id!r} for {user['username']}")
        pending = dict(values)
        components = self._fill_modal(opener.modal["components"], pending)
        if pending:
            raise ValueError(f"modal {custom_id!r} has no text inputs {sorted(pending)}")
        data = {"custom_id": custom_id, "components": components}
        source = message if message is not None else opener.payload.get("message")
        shown = self._stored(source).payload if source is not None else None
        channel = self.channels[int(opener.payload["channel_id"])]
        return await self._interact(user, MODAL_SUBMIT, data, channel, shown)

    async def post_message(
        self,
        user: Json,
        content: str,
        *,
        attachments: Sequence[Json] = (),
        reply_to: Json | StoredMessage | None = None,
        mentions: Sequence[Json] = (),
        channel_id: int | None = None,
    ) -> Json:
        """A user's message (MESSAGE_CREATE); `attachments` are payloads from add_cdn_file."""
        channel = self.channels[channel_id or self.channel_id]
        message = await self._create_message(
            channel,
            user,
            {"content": content},
            list(attachments),
            flags=0,
            reply_to=self._stored(reply_to) if reply_to else None,
            mentions=mentions,
        )
        return message.payload

    async def disconnect_gateway(self, code: int = 4000, *, resumable: bool = True) -> None:
        """Close every gateway connection with `code`; RESUME then works or gets INVALID_SESSION."""
        for session in list(self.sessions.values()):
            ws, session.ws = session.ws, None
            if not resumable:
                del self.sessions[session.id]
            if ws is not None:
                await ws.close(code=code)

    # -- internals: identities, guilds, permissions

    def _snowflake(self, shard: tuple[int, int] | None = None) -> int:
        ms = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, self._last_ms)
        while shard is not None and ms % shard[1] != shard[0]:
            ms += 1
        self._increment = self._increment + 1 if ms == self._last_ms else 0
        if self._increment > 0xFFF:
            ms, self._increment = ms + (shard[1] if shard else 1), 0
        self._last_ms = ms
        return ms << 22 | 1 << 17 | 1 << 12 | self._increment

    def _now(self) -> float:
        return time.monotonic() + self._clock_shift

    @staticmethod
    def _user_payload(user_id: int, name: str) -> Json:
        return {
            "id": str(user_id),
            "username": name,
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
        }

    def _create_guild(
        self, name: str, premium_tier: int, shard: tuple[int, int] | None = None
    ) -> FakeGuild:
        guild_id = self._snowflake(shard)
        guild = FakeGuild(guild_id, name, premium_tier, self._snowflake(), _now_iso())
        guild.roles.append(self._role_payload(guild_id, "@everyone", 0, 0))
        bot_role = self._role_payload(self._snowflake(), "FakeBot", self.bot_permissions, 1)
        bot_role |= {"managed": True, "tags": {"bot_id": str(self.application_id)}}
        guild.roles.append(bot_role)
        channel_id = self._snowflake()
        channel = {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }
        guild.channels.append(channel)
        self.channels[channel_id] = channel
        self.guilds[guild_id] = guild
        self._add_member(guild, self.bot_user, [bot_role["id"]])
        return guild

    @staticmethod
    def _role_payload(role_id: int, name: str, permissions: int, position: int) -> Json:
        return {
            "id": str(role_id),
            "name": name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": str(permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def _role_for(self, guild: FakeGuild, permissions: int) -> str:
        # @everyone grants nothing; each distinct permission set is one role, as in a locked-down
        # server, so members can hold fewer permissions than Discord's defaults.
        name = "member" if permissions == DEFAULT_MEMBER_PERMISSIONS else f"perms-{permissions:x}"
        role = next((r for r in guild.roles if r["name"] == name), None)
        if role is None:
            role = self._role_payload(self._snowflake(), name, permissions, len(guild.roles))
            guild.roles.append(role)
        return str(role["id"])

    @staticmethod
    def _add_member(guild: FakeGuild, user: Json, roles: list[str]) -> None:
        guild.members[int(user["id"])] = {
            "user": user,
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": roles,
            "joined_at": _now_iso(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }

    def _permissions(self, guild: FakeGuild, user_id: int) -> int:
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        held = {str(guild.id), *guild.members[user_id]["roles"]}
        perms = 0
        for role in guild.roles:
            if role["id"] in held:
                perms |= int(role["permissions"])
        return ALL_PERMISSIONS if perms & Perm.ADMINISTRATOR else perms

    def _guild_of(self, channel: Json) -> FakeGuild | None:
        return self.guilds[int(channel["guild_id"])] if "guild_id" in channel else None

    def _guild_payload(self, guild: FakeGuild, *, full: bool) -> Json:
        payload: Json = {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "features": [],
            "roles": guild.roles,
            "emojis": [],
            "stickers": [],
            "system_channel_id": str(guild.channel_id),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": BOOSTS_FOR_TIER[guild.premium_tier],
            "preferred_locale": "en-US",
            "max_members": 500000,
            "max_video_channel_users": 25,
            "premium_progress_bar_enabled": False,
            "application_id": None,
        }
        if full:
            payload |= {
                "joined_at": guild.joined_at,
                "large": False,
                "unavailable": False,
                "lazy": True,
                "member_count": len(guild.members),
                "members": list(guild.members.values()),
                "channels": guild.channels,
                "threads": [],
                "presences": [],
                "voice_states": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        return payload

    def _stored(self, message: Json | StoredMessage) -> StoredMessage:
        if isinstance(message, StoredMessage):
            return message
        stored = self.messages.get(int(message["id"]))
        if stored is None or stored.deleted:
            raise LookupError(f"no message {message['id']} in the fake")
        return stored

    # -- internals: interactions dispatched to the bot

    def _interaction_channel(self, user: Json, guild: bool, channel_id: int | None) -> Json:
        if channel_id is not None:
            return self.channels[channel_id]
        return self.channels[self.channel_id] if guild else self.dm_channel(user)

    def _find_command(self, user: Json, channel: Json, name: str, command_type: int) -> Json:
        guild = self._guild_of(channel)
        scopes = (guild.id, None) if guild else (None,)
        command = next(
            (
                c
                for scope in scopes
                for c in self.commands.get(scope, [])
                if c["name"] == name and c["type"] == command_type
            ),
            None,
        )
        if command is None:
            raise LookupError(f"the bot has not synced a type-{command_type} command {name!r} here")
        contexts = command.get("contexts")
        if guild is None and (
            command["dm_permission"] is False or (contexts and 1 not in contexts)
        ):
            raise PermissionError(f"{name!r} is not usable in DMs")
        required = command["default_member_permissions"]
        have = self._permissions(guild, int(user["id"])) if guild else ALL_PERMISSIONS
        if required is not None and int(required) & have != int(required):
            raise PermissionError(f"{user['username']} may not see {name!r}")
        return command

    def _command_data(self, command: Json, options: list[Json] | None, resolved: Json) -> Json:
        data: Json = {"id": command["id"], "name": command["name"], "type": command["type"]}
        if options:
            data["options"] = options
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return data

    def _command_options(
        self, specs: list[Json], values: Mapping[str, Any], resolved: Json, channel: Json
    ) -> list[Json]:
        by_name = {spec["name"]: spec for spec in specs}
        if unknown := set(values) - set(by_name):
            raise ValueError(f"no options {sorted(unknown)}; the command has {sorted(by_name)}")
        if missing := [s["name"] for s in specs if s.get("required") and s["name"] not in values]:
            raise ValueError(f"required options missing: {missing}")
        return [
            {
                "name": name,
                "type": by_name[name]["type"],
                "value": self._option_value(by_name[name], value, resolved, channel),
            }
            for name, value in values.items()
        ]

    def _option_value(self, spec: Json, value: Any, resolved: Json, channel: Json) -> Any:
        kind = spec["type"]
        guild = self._guild_of(channel)
        if kind in (STRING, INTEGER, NUMBER, BOOLEAN):
            value = {STRING: str, INTEGER: int, NUMBER: float, BOOLEAN: bool}[kind](value)
            measure = len(value) if kind == STRING else value
            low = spec.get("min_length" if kind == STRING else "min_value")
            high = spec.get("max_length" if kind == STRING else "max_value")
            choices = [c["value"] for c in spec.get("choices") or []]
            if (
                (choices and value not in choices)
                or (low is not None and measure < low)
                or (high is not None and measure > high)
            ):
                raise ValueError(f"Discord would not accept {value!r} for {spec['name']!r}")
            return value
        item_id = str(value["id"])
        if kind == ATTACHMENT:
            resolved.setdefault("attachments", {})[item_id] = value
        elif kind in (USER, MENTIONABLE) and "username" in value:
            resolved.setdefault("users", {})[item_id] = value
            if guild is not None and int(item_id) in guild.members:
                member = {k: v for k, v in guild.members[int(item_id)].items() if k != "user"}
                member["permissions"] = str(self._permissions(guild, int(item_id)))
                resolved.setdefault("members", {})[item_id] = member
        elif kind in (ROLE, MENTIONABLE):
            resolved.setdefault("roles", {})[item_id] = value
        elif kind == CHANNEL:
            resolved.setdefault("channels", {})[item_id] = value | {"permissions": "0"}
        return item_id

    def _fill_modal(self, components: list[Json], values: dict[str, str]) -> list[Json]:
        filled: list[Json] = []
        for component in components:
            if component["type"] == 1:
                filled.append(
                    {"type": 1, "components": self._fill_modal(component["components"], values)}
                )
            elif component["type"] == 18:
                inner = self._fill_modal([component["component"]], values)
                filled.append({"type": 18, "component": inner[0]})
            elif component["type"] == 4:
                custom_id = component["custom_id"]
                value = values.pop(custom_id, component.get("value") or "")
                low = max(component.get("min_length") or 0, int(component.get("required", True)))
                if not low <= len(value) <= (component.get("max_length") or 4000):
                    raise ValueError(f"Discord would not submit {value!r} for {custom_id!r}")
                filled.append({"type": 4, "custom_id": custom_id, "value": value})
        return filled

    async def _interact(
        self, user: Json, kind: int, data: Json, channel: Json, message: Json | None = None
    ) -> InteractionRecord:
        guild = self._guild_of(channel)
        user_id = int(user["id"])
        if guild is not None and user_id not in guild.members:
            raise ValueError(f"{user['username']} is not a member of guild {guild.id}")
        guild_id = guild.id if guild else None
        if not any(s.receives(guild_id) for s in self.sessions.values()):
            raise RuntimeError("no gateway session receives this interaction; await wait_ready()")
        interaction_id = self._snowflake()
        secret = f"interaction:{interaction_id}:{secrets.token_urlsafe(96)}"
        token = base64.urlsafe_b64encode(secret.encode()).decode().rstrip("=")
        limit = guild.upload_limit if guild else DM_UPLOAD_LIMIT
        payload: Json = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": limit,
            "channel_id": channel["id"],
        }
        if guild is not None:
            perms = self._permissions(guild, user_id)
            app_perms = self._permissions(guild, self.application_id)
            payload |= {
                "guild_id": str(guild.id),
                "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
                "guild_locale": "en-US",
                "member": guild.members[user_id] | {"permissions": str(perms)},
                "channel": channel | {"permissions": str(perms)},
                "app_permissions": str(app_perms),
                "authorizing_integration_owners": {"0": str(guild.id)},
                "context": 0,
            }
        else:
            payload |= {
                "user": user,
                "channel": channel,
                "app_permissions": str(self.bot_permissions),
                "authorizing_integration_owners": {"0": "0"},
                "context": 1,
            }
        if message is not None:
            payload["message"] = message
        record = InteractionRecord(
            interaction_id, token, payload, time.monotonic(), limit, _issued_at=self._now()
        )
        self.interactions.append(record)
        self._by_token[token] = record
        # Latency counts from when the frame went out, as Discord's 3 seconds do, not from
        # when this fake got round to building it.
        sent = await self._dispatch("INTERACTION_CREATE", payload, guild_id)
        if sent is not None:
            record.dispatched_at = sent
        return record

    # -- internals: gateway

    async def _dispatch(
        self,
        event: str,
        data: Json,
        guild_id: int | None,
        *,
        intent: int = 0,
        redacted: Json | None = None,
    ) -> float | None:
        """Send an event to every session that receives it; return when the first went out."""
        first: float | None = None
        for session in list(self.sessions.values()):
            if session.receives(guild_id) and (not intent or session.intents & intent):
                blind = redacted is not None and not session.intents & Intent.MESSAGE_CONTENT
                sent = await session.dispatch(event, redacted if blind and redacted else data)
                first = sent if first is None else first
        return first

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        session: GatewaySession | None = None
        interval = {"heartbeat_interval": int(self.heartbeat_interval * 1000), "_trace": ["fake"]}
        try:
            await ws.send_str(json.dumps({"op": 10, "d": interval, "s": None, "t": None}))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op, d = frame.get("op"), frame.get("d")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    session = await self._identify(ws, d)
                elif op == 6:
                    session = await self._resume(ws, d)
                elif op == 8 and session is not None:
                    await self._send_member_chunk(session, d)
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:  # the bot hung up, not the fake
                session.ws = None
                if ws.close_code in (1000, 1001):  # a clean close ends the session
                    self.sessions.pop(session.id, None)
        return ws

    async def _identify(self, ws: web.WebSocketResponse, d: Json) -> GatewaySession | None:
        intents = int(d.get("intents", 0))
        shard_id, shard_count = d.get("shard") or (0, 1)
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if (
            self.intents_allowed is not None
            and intents & PRIVILEGED_INTENTS & ~self.intents_allowed
        ):
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        if not 0 <= shard_id < shard_count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return None
        session = GatewaySession(secrets.token_hex(16), (shard_id, shard_count), intents, ws)
        guilds = [g for g in self.guilds.values() if session.receives(g.id)]
        ready: Json = {
            "v": 10,
            "user": self.bot_user | {"verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fake"],
        }
        if "shard" in d:
            ready["shard"] = [shard_id, shard_count]
        await session.dispatch("READY", ready)
        for guild in guilds:
            await session.dispatch("GUILD_CREATE", self._guild_payload(guild, full=True))
        self.sessions[session.id] = session  # only now: nothing may overtake READY
        self._record(Event("ready", time.monotonic()))
        return session

    async def _resume(self, ws: web.WebSocketResponse, d: Json) -> GatewaySession | None:
        session = self.sessions.get(d.get("session_id", ""))
        if session is None or d.get("token") != self.token:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return None
        await session.resume(ws, int(d.get("seq") or 0))
        self._record(Event("ready", time.monotonic()))
        return session

    async def _send_member_chunk(self, session: GatewaySession, d: Json) -> None:
        guild = self.guilds.get(int(d["guild_id"]))
        if guild is None:
            return
        wanted = {int(u) for u in d.get("user_ids") or []}
        query = (d.get("query") or "").lower()
        members = [
            m
            for uid, m in guild.members.items()
            if (not wanted or uid in wanted) and m["user"]["username"].lower().startswith(query)
        ]
        chunk: Json = {
            "guild_id": str(guild.id),
            "members": members[: d.get("limit") or None],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(u) for u in wanted - set(guild.members)],
        }
        if "nonce" in d:
            chunk["nonce"] = d["nonce"]
        await session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def _application_flags(self) -> int:
        # GATEWAY_PRESENCE_LIMITED, GATEWAY_GUILD_MEMBERS_LIMITED, GATEWAY_MESSAGE_CONTENT_LIMITED:
        # the portal switches of an unverified app, on for each privileged intent allowed.
        allowed = PRIVILEGED_INTENTS if self.intents_allowed is None else self.intents_allowed
        switches = {
            Intent.GUILD_PRESENCES: 1 << 13,
            Intent.GUILD_MEMBERS: 1 << 15,
            Intent.MESSAGE_CONTENT: 1 << 19,
        }
        return sum(flag for intent, flag in switches.items() if allowed & intent)

    # -- internals: events and the message store

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if event.interaction is not None:
            event.interaction.events.append(event)
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                if predicate(event):
                    future.set_result(event)
            except Exception as exc:  # a broken predicate fails its waiter, not the fake
                future.set_exception(exc)

    def _publish(self, channel_id: int, stored: StoredFile, description: str | None = None) -> Json:
        file_id = self._snowflake()
        self._files[file_id] = stored
        now = int(time.time())
        signature = f"?ex={now + 86400:x}&is={now:x}&hm={secrets.token_hex(32)}&"
        path = f"attachments/{channel_id}/{file_id}/{quote(stored.filename)}{signature}"
        attachment: Json = {
            "id": str(file_id),
            "filename": stored.filename,
            "size": stored.size,
            "url": self.cdn_url(path),
            "proxy_url": self.cdn_url("media/" + path),
        }
        if stored.content_type:
            attachment["content_type"] = stored.content_type
        if stored.width is not None:
            attachment |= {"width": stored.width, "height": stored.height}
        if description is not None:
            attachment["description"] = description
        return attachment

    def _attach(
        self,
        channel_id: int,
        entries: list[Json] | None,
        uploads: Mapping[int, StoredFile],
        existing: list[Json],
    ) -> list[Json]:
        """The attachments a message ends up with: `entries` lists kept ones and files[n] by n."""
        if entries is None:
            return [*existing, *(self._publish(channel_id, f) for _, f in sorted(uploads.items()))]
        kept = {a["id"]: a for a in existing}
        result = []
        for i, entry in enumerate(entries):
            key = str(entry.get("id"))
            if key.isdigit() and int(key) in uploads:
                stored = uploads[int(key)]
                name = _clean_filename(entry.get("filename") or stored.filename)
                stored = dataclasses.replace(stored, filename=name)
                result.append(self._publish(channel_id, stored, entry.get("description")))
            elif key in kept:
                result.append(kept[key])
            else:
                raise _invalid_form([(("attachments", i, "id"), "UNKNOWN", "Unknown attachment")])
        if len(result) > 10:
            problem = ("attachments",), "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
            raise _invalid_form([problem])
        return result

    @staticmethod
    def _embeds(embeds: list[Json] | None, attachments: list[Json]) -> list[Json]:
        by_name = {a["filename"]: a for a in attachments}
        result = []
        for sent in embeds or []:
            embed = {"type": "rich", **sent}
            for key in ("image", "thumbnail"):
                url = _dig(embed, (key, "url")) or ""
                if url.startswith("attachment://") and (
                    a := by_name.get(url.removeprefix("attachment://"))
                ):
                    embed[key] = {
                        k: a[k] for k in ("url", "proxy_url", "width", "height") if k in a
                    }
            result.append(embed)
        return result

    def _mentioned(self, content: str | None, extra: Sequence[Json] = ()) -> list[Json]:
        ids = [int(m) for m in USER_MENTION.findall(content or "")]
        ids += [int(user["id"]) for user in extra]
        return [self.users[i] for i in dict.fromkeys(ids) if i in self.users]

    async def _create_message(
        self,
        channel: Json,
        author: Json,
        data: Mapping[str, Any],
        attachments: list[Json],
        *,
        flags: int,
        type_: int = 0,
        rec: InteractionRecord | None = None,
        reply_to: StoredMessage | None = None,
        mentions: Sequence[Json] = (),
        extra: Json | None = None,
    ) -> StoredMessage:
        if problems := _message_problems(data):
            raise _invalid_form(problems)
        if not flags & Flag.LOADING and _is_empty({**data, "attachments": attachments}):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        message_id = self._snowflake()
        allowed = data.get("allowed_mentions")
        if reply_to and (allowed is None or allowed.get("replied_user")):
            mentions = [*mentions, reply_to.payload["author"]]
        payload: Json = {
            "id": str(message_id),
            "channel_id": channel["id"],
            "author": author,
            "content": data.get("content") or "",
            "timestamp": _iso(message_id),
            "edited_timestamp": None,
            "tts": bool(data.get("tts")),
            "mention_everyone": False,
            "mentions": self._mentioned(data.get("content"), mentions),
            "mention_roles": [],
            "attachments": attachments,
            "embeds": self._embeds(data.get("embeds"), attachments),
            "components": data.get("components") or [],
            "flags": int(flags),
            "type": type_,
            "pinned": False,
            **(extra or {}),
        }
        if "guild_id" in channel:
            payload["guild_id"] = channel["guild_id"]
        if "nonce" in data:
            payload["nonce"] = data["nonce"]
        if reply_to is not None:
            ref = {
                "type": 0,
                "channel_id": reply_to.payload["channel_id"],
                "message_id": str(reply_to.id),
            }
            if "guild_id" in reply_to.payload:
                ref["guild_id"] = reply_to.payload["guild_id"]
            referenced = {k: v for k, v in reply_to.payload.items() if k != "referenced_message"}
            payload |= {"type": 19, "message_reference": ref, "referenced_message": referenced}
        message = StoredMessage(payload, self._files_of(payload), interaction=rec)
        self.messages[message_id] = message
        self._record(Event("message_create", time.monotonic(), interaction=rec, message=message))
        await self._dispatch_message("MESSAGE_CREATE", message)
        return message

    async def _edit_message(
        self,
        message: StoredMessage,
        data: Mapping[str, Any],
        uploads: Mapping[int, StoredFile],
        rec: InteractionRecord | None = None,
    ) -> StoredMessage:
        if problems := _message_problems(data):
            raise _invalid_form(problems)
        old = message.payload
        new = dict(old)
        if "attachments" in data or uploads:
            channel_id = int(old["channel_id"])
            new["attachments"] = self._attach(
                channel_id, data.get("attachments"), uploads, old["attachments"]
            )
        if "content" in data:
            new["content"] = data["content"] or ""
            new["mentions"] = self._mentioned(new["content"])
        if "components" in data:
            new["components"] = data["components"] or []
        if "embeds" in data:
            new["embeds"] = self._embeds(data["embeds"], new["attachments"])
        flags = old["flags"] & ~Flag.LOADING
        if "flags" in data:
            flags = flags & ~EDITABLE_FLAGS | int(data["flags"] or 0) & EDITABLE_FLAGS
        new["flags"] = int(flags)
        new["edited_timestamp"] = _now_iso()
        if _is_empty(new):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        message.history.append(old)
        message.payload, message.files = new, self._files_of(new)
        self._record(Event("message_update", time.monotonic(), interaction=rec, message=message))
        await self._dispatch_message("MESSAGE_UPDATE", message)
        return message

    async def _delete_message(self, message: StoredMessage, rec: InteractionRecord | None) -> None:
        message.deleted = True
        self._record(Event("message_delete", time.monotonic(), interaction=rec, message=message))
        if not message.ephemeral:
            payload = message.payload
            data: Json = {k: payload[k] for k in ("id", "channel_id", "guild_id") if k in payload}
            guild_id = int(payload["guild_id"]) if "guild_id" in payload else None
            await self._dispatch(
                "MESSAGE_DELETE", data, guild_id, intent=self._message_intent(payload)
            )

    def _files_of(self, payload: Json) -> list[StoredFile]:
        return [self._files[int(a["id"])] for a in payload["attachments"]]

    @staticmethod
    def _message_intent(payload: Json) -> int:
        return Intent.GUILD_MESSAGES if "guild_id" in payload else Intent.DIRECT_MESSAGES

    async def _dispatch_message(self, event: str, message: StoredMessage) -> None:
        if message.ephemeral:  # only the invoking user's client sees those
            return
        data = dict(message.payload)
        guild_id = int(data["guild_id"]) if "guild_id" in data else None
        author_id = int(data["author"]["id"])
        if guild_id is not None and author_id in self.guilds[guild_id].members:
            member = self.guilds[guild_id].members[author_id]
            data["member"] = {k: v for k, v in member.items() if k != "user"}
        # Without the message-content intent Discord blanks what the bot neither wrote nor was
        # addressed with (a DM or a mention).
        addressed = (
            guild_id is None
            or author_id == self.application_id
            or any(int(u["id"]) == self.application_id for u in data["mentions"])
        )
        blank = {"content": "", "embeds": [], "attachments": [], "components": []}
        redacted = None if addressed else data | blank
        intent = self._message_intent(data)
        await self._dispatch(event, data, guild_id, intent=intent, redacted=redacted)

    # -- internals: HTTP

    def _routes(self) -> list[tuple[str, str, Callable[[web.Request], Any]]]:
        webhook_message = "/webhooks/{app_id}/{token}/messages/{message_id}"
        channel_message = "/channels/{channel_id}/messages/{message_id}"
        return [
            ("GET", "/users/@me", self._get_me),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/users/{user_id}", self._get_user),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/@me", self._get_application),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway),
            ("GET", "/applications/{app_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/commands", self._put_commands),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app_id}/{token}", self._execute_webhook),
            ("GET", webhook_message, self._get_webhook_message),
            ("PATCH", webhook_message, self._edit_webhook_message),
            ("DELETE", webhook_message, self._delete_webhook_message),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("GET", "/channels/{channel_id}/messages", self._list_messages),
            ("POST", "/channels/{channel_id}/messages", self._create_channel_message),
            ("GET", channel_message, self._get_channel_message),
            ("PATCH", channel_message, self._edit_channel_message),
            ("DELETE", channel_message, self._delete_channel_message),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("GET", "/guilds/{guild_id}", self._get_guild),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member),
        ]

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Handlers return JSON-able data (None: 204) or raise DiscordError; this answers, logs."""
        path = request.path.removeprefix(API_PREFIX)
        result: Any = None
        try:
            self._check_rate_limit(request.method, path)
            # Interaction callbacks and webhooks are authorised by the token in their path.
            needs_auth = request.path.startswith(API_PREFIX) and not path.startswith(
                ("/interactions/", "/webhooks/")
            )
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise DiscordError(401, 0, "401: Unauthorized")
            result = await handler(request)
            if isinstance(result, web.StreamResponse):
                response = result
            else:
                response = web.Response(status=204) if result is None else _reply(result)
        except DiscordError as exc:
            result = exc.body
            response = _reply(exc.body, exc.status)
            response.headers.update(exc.headers)
        entry = LoggedRequest(request.method, path, time.monotonic(), response.status)
        self.request_log.append(entry)
        if "unknown" in request.match_info:
            self.unknown_requests.append(entry)
        if (call := request.get(_TOKEN_CALL)) is not None:
            event = Event(
                call.op, entry.at, response.status, call.rec, call.message, call.body, result
            )
            self._record(event)
        return response

    def _check_rate_limit(self, method: str, path: str) -> None:
        for i, (pattern, retry_after) in enumerate(self._rate_limits):
            if fnmatch.fnmatchcase(f"{method} {path}", pattern):
                del self._rate_limits[i]
                headers = {
                    "Via": "1.1 google",  # without it discord.py takes a 429 for a Cloudflare ban
                    "Retry-After": str(math.ceil(retry_after)),
                    "X-RateLimit-Scope": "user",
                }
                extra = {"retry_after": retry_after, "global": False}
                raise DiscordError(
                    429, 0, "You are being rate limited.", headers=headers, extra=extra
                )

    async def _unknown_route(self, request: web.Request) -> Any:
        raise DiscordError(404, 0, "404: Not Found")

    async def _read_body(
        self, request: web.Request, limit: int
    ) -> tuple[Any, dict[int, StoredFile]]:
        """JSON, or multipart payload_json + files[n] streamed part by part within `limit` bytes."""
        try:
            if not request.content_type.startswith("multipart/"):
                return (await request.json() if request.can_read_body else {}), {}
            payload: Json = {}
            uploads: dict[int, StoredFile] = {}
            total, too_large = 0, False
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif match := FILE_PART.fullmatch(part.name or ""):
                    stored = await self._receive_file(part, limit - total)
                    too_large |= stored is None
                    total += stored.size if stored else limit
                    if stored is not None:
                        uploads[int(match[1])] = stored
        except ValueError:
            raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None
        if too_large:
            raise DiscordError(413, 40005, "Request entity too large")
        return payload, uploads

    async def _receive_file(self, part: BodyPartReader, budget: int) -> StoredFile | None:
        digest = hashlib.sha256()
        kept = bytearray()  # grown in place: joining chunks would briefly hold the file twice
        head = b""
        size = 0
        while chunk := await part.read_chunk(CHUNK_BYTES):
            size += len(chunk)
            if size > budget:  # keep reading to the end of the body, keep nothing
                kept.clear()
                continue
            digest.update(chunk)
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            if self.keep_files:
                kept += chunk
        if size > budget:
            return None
        data = kept if self.keep_files else None
        filename = part.filename or "unknown"
        return _stored_file(filename, None, data, size=size, sha256=digest.hexdigest(), head=head)

    def _channel(self, request: web.Request) -> Json:
        channel = self.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise _unknown("Channel", 10003)
        return channel

    def _channel_message(self, request: web.Request) -> StoredMessage:
        channel = self._channel(request)
        message = self.messages.get(int(request.match_info["message_id"]))
        if (
            message is None
            or message.deleted
            or message.ephemeral
            or message.payload["channel_id"] != channel["id"]
        ):
            raise _unknown("Message", 10008)
        return message

    def _require_bot_permissions(self, channel: Json, needed: int) -> None:
        guild = self._guild_of(channel)
        if guild is not None and self._permissions(guild, self.application_id) & needed != needed:
            raise DiscordError(403, 50013, "Missing Permissions")

    def _upload_limit(self, channel: Json) -> int:
        guild = self._guild_of(channel)
        return guild.upload_limit if guild else DM_UPLOAD_LIMIT

    def _interaction_extra(self, rec: InteractionRecord) -> tuple[int, Json]:
        """Message type and interaction fields of a message created through an interaction."""
        payload = rec.payload
        metadata: Json = {
            "id": str(rec.id),
            "type": payload["type"],
            "user": rec.user,
            "authorizing_integration_owners": payload["authorizing_integration_owners"],
        }
        if rec.original is not None:
            metadata["original_response_message_id"] = str(rec.original.id)
        if "message" in payload:
            metadata["interacted_message_id"] = payload["message"]["id"]
        extra: Json = {
            "webhook_id": str(self.application_id),
            "application_id": str(self.application_id),
            "interaction_metadata": metadata,
        }
        if payload["type"] != APPLICATION_COMMAND:
            return 0, extra
        name = payload["data"]["name"]
        extra["interaction"] = {"id": str(rec.id), "type": 2, "name": name, "user": rec.user}
        return (20 if payload["data"]["type"] == 1 else 23), extra

    async def _interaction_message(
        self, rec: InteractionRecord, data: Json, uploads: Mapping[int, StoredFile], flags: int
    ) -> StoredMessage:
        channel = self.channels[int(rec.payload["channel_id"])]
        attachments = self._attach(int(channel["id"]), data.get("attachments"), uploads, [])
        type_, extra = self._interaction_extra(rec)
        return await self._create_message(
            channel,
            self.bot_user,
            data,
            attachments,
            flags=flags,
            type_=type_,
            rec=rec,
            extra=extra,
        )

    # REST handlers: each returns JSON-able data, None for 204, or raises DiscordError.

    async def _get_me(self, request: web.Request) -> Any:
        return self.bot_user | {"verified": True, "mfa_enabled": False, "email": None}

    async def _get_user(self, request: web.Request) -> Any:
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise _unknown("User", 10013)
        return user

    async def _create_dm(self, request: web.Request) -> Any:
        body, _ = await self._read_body(request, 0)
        user = self.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise _unknown("User", 10013)
        return self.dm_channel(user)

    async def _get_application(self, request: web.Request) -> Any:
        return {
            "id": str(self.application_id),
            "name": "FakeBot",
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot": self.bot_user,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self._user_payload(self.guilds[self.guild_id].owner_id, "owner"),
            "team": None,
            "flags": self._application_flags(),
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds),
        }

    async def _get_gateway(self, request: web.Request) -> Any:
        if not request.path.endswith("/bot"):
            return {"url": self.gateway_url}
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return {
            "url": self.gateway_url,
            "shards": self.recommended_shards,
            "session_start_limit": limit,
        }

    def _command_scope(self, request: web.Request) -> int | None:
        if request.match_info["app_id"] != str(self.application_id):
            raise DiscordError(403, 50001, "Missing Access")
        if "guild_id" not in request.match_info:
            return None
        guild_id = int(request.match_info["guild_id"])
        if guild_id not in self.guilds:
            raise _unknown("Guild", 10004)
        return guild_id

    async def _get_commands(self, request: web.Request) -> Any:
        return self.commands.get(self._command_scope(request), [])

    async def _put_commands(self, request: web.Request) -> Any:
        scope = self._command_scope(request)
        body, _ = await self._read_body(request, 0)
        if problems := _command_problems(body):
            raise _invalid_form(problems)
        echoed = []
        for command in body:
            kind = command.get("type", 1)
            key = (scope, command["name"], kind)
            if key not in self._command_ids:
                self._command_ids[key] = self._snowflake()
            defaults = {
                "description": "",
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
            }
            echoed.append(
                defaults
                | command
                | {
                    "id": str(self._command_ids[key]),
                    "application_id": str(self.application_id),
                    "type": kind,
                    "version": str(self._snowflake()),
                }
                | ({"guild_id": str(scope)} if scope else {})
            )
        self.commands[scope] = echoed
        self._record(Event("commands", time.monotonic(), request=body, response=echoed))
        return echoed

    async def _callback(self, request: web.Request) -> Any:
        # Discord's clock stops when the answer arrives, not when this fake has processed it.
        arrived = time.monotonic()
        rec = self._by_token.get(request.match_info["token"])
        if rec is None or request.match_info["interaction_id"] != str(rec.id):
            raise _unknown("interaction", 10062)
        call = request[_TOKEN_CALL] = _TokenCall(rec, "callback")
        if rec.response_type is not None or rec._responding:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self._now() - rec._issued_at > self.ack_deadline:
            raise _unknown("interaction", 10062)
        rec._responding = True
        try:
            call.body, uploads = await self._read_body(request, rec.upload_limit)
            kind = call.body.get("type")
            message = await self._respond(rec, kind, call.body.get("data") or {}, uploads)
        finally:
            rec._responding = False
        rec.response_type, rec.acked_at = kind, arrived
        call.message = message
        if request.query.get("with_response") not in ("1", "true", "True"):
            return None
        interaction: Json = {"id": str(rec.id), "type": rec.payload["type"]}
        result: Json = {"interaction": interaction}
        if message is not None:
            interaction |= {
                "response_message_id": str(message.id),
                "response_message_loading": message.loading,
                "response_message_ephemeral": message.ephemeral,
            }
            result["resource"] = {"type": kind, "message": message.payload}
        return result

    async def _respond(
        self, rec: InteractionRecord, kind: Any, data: Json, uploads: Mapping[int, StoredFile]
    ) -> StoredMessage | None:
        """Apply a callback; the message it created or edited, if any."""
        itype = rec.payload["type"]
        valid = {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL}
        if "message" in rec.payload:  # components, and modals opened from a message
            valid |= {DEFERRED_UPDATE, UPDATE_MESSAGE}
        if itype == MODAL_SUBMIT:
            valid.discard(MODAL)
        if itype == AUTOCOMPLETE:
            valid = {AUTOCOMPLETE_RESULT}
        if kind not in valid:
            message = f"Value must be one of {sorted(valid)}."
            raise _invalid_form([(("type",), "BASE_TYPE_CHOICES", message)])
        flags = int(data.get("flags") or 0)
        if kind == CHANNEL_MESSAGE:
            rec.original = await self._interaction_message(
                rec, data, uploads, flags & INTERACTION_FLAGS
            )
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            loading = Flag.LOADING | flags & Flag.EPHEMERAL
            rec.original = await self._interaction_message(rec, {}, {}, loading)
        elif kind in (DEFERRED_UPDATE, UPDATE_MESSAGE):
            rec.original = self.messages.get(int(rec.payload["message"]["id"]))
            if rec.original is None or rec.original.deleted:
                raise _unknown("Message", 10008)
            if kind == UPDATE_MESSAGE:
                await self._edit_message(rec.original, data, uploads, rec)
        elif kind == MODAL:
            if problems := _modal_problems(data):
                raise _invalid_form(problems)
            rec.modal = data
        return rec.original if kind != DEFERRED_UPDATE else None

    def _token_call(self, request: web.Request, op: str, *, with_message: bool) -> _TokenCall:
        rec = self._by_token.get(request.match_info["token"])
        if rec is None or request.match_info["app_id"] != str(self.application_id):
            raise _unknown("Webhook", 10015)
        call = request[_TOKEN_CALL] = _TokenCall(rec, op)
        if self._now() - rec._issued_at > TOKEN_LIFETIME:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        if rec.response_type is None:  # the webhook exists once the interaction is acknowledged
            raise _unknown("Webhook", 10015)
        if with_message:
            message_id = request.match_info["message_id"]
            if message_id == "@original":
                call.message = rec.original
            else:
                call.message = next((m for m in rec.messages if str(m.id) == message_id), None)
            if call.message is None or call.message.deleted:
                raise _unknown("Message", 10008)
        return call

    async def _execute_webhook(self, request: web.Request) -> Any:
        call = self._token_call(request, "followup", with_message=False)
        rec = call.rec
        call.body, uploads = await self._read_body(request, rec.upload_limit)
        if rec.original is not None and rec.original.loading:
            # The first follow-up after a defer fills the "thinking…" message, ephemeral or not.
            call.message = await self._edit_message(rec.original, call.body, uploads, rec)
        else:
            flags = int(call.body.get("flags") or 0) & INTERACTION_FLAGS
            call.message = await self._interaction_message(rec, call.body, uploads, flags)
            rec.followups.append(call.message)
        return call.message.payload if request.query.get("wait") in ("1", "true", "True") else None

    async def _get_webhook_message(self, request: web.Request) -> Any:
        message = self._token_call(request, "fetch", with_message=True).message
        return message and message.payload

    async def _edit_webhook_message(self, request: web.Request) -> Any:
        call = self._token_call(request, "edit", with_message=True)
        assert call.message is not None
        call.body, uploads = await self._read_body(request, call.rec.upload_limit)
        return (await self._edit_message(call.message, call.body, uploads, call.rec)).payload

    async def _delete_webhook_message(self, request: web.Request) -> Any:
        call = self._token_call(request, "delete", with_message=True)
        assert call.message is not None
        await self._delete_message(call.message, call.rec)

    async def _get_channel(self, request: web.Request) -> Any:
        return self._channel(request)

    async def _list_messages(self, request: web.Request) -> Any:
        channel = self._channel(request)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 1 << 63))
        after = int(request.query.get("after", 0))
        found = [
            m.payload
            for m in reversed(self.messages.values())
            if m.payload["channel_id"] == channel["id"]
            and not (m.deleted or m.ephemeral)
            and after < m.id < before
        ]
        return found[:limit]

    async def _create_channel_message(self, request: web.Request) -> Any:
        channel = self._channel(request)
        body, uploads = await self._read_body(request, self._upload_limit(channel))
        needed = Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | (Perm.ATTACH_FILES if uploads else 0)
        self._require_bot_permissions(channel, needed)
        reply_to = None
        if (ref := body.get("message_reference")) and ref.get("message_id"):
            target = self.messages.get(int(ref["message_id"]))
            if target is not None and not (target.deleted or target.ephemeral):
                reply_to = target
            elif ref.get("fail_if_not_exists", True):
                problem = (
                    ("message_reference",),
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                )
                raise _invalid_form([problem])
        attachments = self._attach(int(channel["id"]), body.get("attachments"), uploads, [])
        flags = int(body.get("flags") or 0) & CHANNEL_FLAGS
        message = await self._create_message(
            channel, self.bot_user, body, attachments, flags=flags, reply_to=reply_to
        )
        return message.payload

    async def _get_channel_message(self, request: web.Request) -> Any:
        return self._channel_message(request).payload

    async def _edit_channel_message(self, request: web.Request) -> Any:
        message = self._channel_message(request)
        channel = self._channel(request)
        body, uploads = await self._read_body(request, self._upload_limit(channel))
        if message.payload["author"]["id"] != self.bot_user["id"]:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        return (await self._edit_message(message, body, uploads)).payload

    async def _delete_channel_message(self, request: web.Request) -> Any:
        message = self._channel_message(request)
        if message.payload["author"]["id"] != self.bot_user["id"]:
            self._require_bot_permissions(self._channel(request), Perm.MANAGE_MESSAGES)
        await self._delete_message(message, None)

    async def _typing(self, request: web.Request) -> Any:
        self._channel(request)

    def _guild(self, request: web.Request) -> FakeGuild:
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise _unknown("Guild", 10004)
        return guild

    async def _get_guild(self, request: web.Request) -> Any:
        return self._guild_payload(self._guild(request), full=False)

    async def _get_member(self, request: web.Request) -> Any:
        member = self._guild(request).members.get(int(request.match_info["user_id"]))
        if member is None:
            raise _unknown("Member", 10007)
        return member

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        stored = self._files.get(int(request.match_info["file_id"]))
        if stored is None or stored.data is None:
            return web.Response(status=404, text="Not Found")
        content_type = stored.content_type or "application/octet-stream"
        return web.Response(body=stored.data, content_type=content_type.split(";")[0])
