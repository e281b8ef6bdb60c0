"""A loopback fake of Gemini's generateContent endpoint, faithful to its wire format, scriptable."""

from __future__ import annotations

import asyncio
import enum
import io
import json
import os
import re
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pybase64
from aiohttp import web
from multidict import CIMultiDict
from PIL import Image, ImageChops

from bot.gemini.models import (
    ASPECT_RATIOS,
    IMAGE_SIZES,
    MAX_REFERENCE_IMAGES,
    OUTPUT_TOKENS_PER_IMAGE,
)
from bot.image_types import sniff_mime

DEFAULT_MODEL = "gemini-3.1-flash-image"
LONG_EDGE = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
DEFAULT_CAPTION = "Here is your image: a quiet scene, as you asked."
_THOUGHT = "**Planning the composition**\n\nI'm placing the subject and choosing the light."
_SIGNATURE = pybase64.b64encode_as_string(b"fake thought signature")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FakeReply:
    """One scripted answer. `body` (raw bytes) wins over `json`; `delay` is waited first."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


class _Drop(enum.Enum):
    CONNECTION = enum.auto()


DROP_CONNECTION = _Drop.CONNECTION
"""A responder that closes the connection without answering, as a reset mid-request does."""


@dataclass(frozen=True)
class FakeRequest:
    """What the fake received: the path, query, headers and the JSON body (None if not JSON)."""

    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    json: Any = None


Responder = FakeReply | _Drop | Callable[[FakeRequest], Awaitable[FakeReply | _Drop]]


@dataclass(frozen=True)
class _HostedFile:
    data: bytes
    content_type: str
    delay: float
    chunked: bool


class FakeGemini:
    """Serves /v1beta/models/{model}:generateContent on 127.0.0.1 and records every request.

    Invalid requests get the errors Google sends. Valid ones are answered by the responders given
    to `enqueue`, first in first out, then by a default image of the requested size and ratio.
    """

    def __init__(self, *, api_key: str = "test-key", models: tuple[str, ...] = (DEFAULT_MODEL,)):
        self.api_key = api_key
        self.models = models
        self.requests: list[FakeRequest] = []
        self.downloads: list[FakeRequest] = []
        self.base_url = ""
        self._script: deque[Responder] = deque()
        self._files: dict[str, _HostedFile] = {}
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeGemini:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1beta/models/{target}", self._generate)
        app.router.add_get("/files/{name}", self._serve_file)
        # No access log: it would print the key from the query string. Handlers are cancelled
        # when the client hangs up, so a long scripted delay does not hold up stop().
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def enqueue(self, *responders: Responder) -> None:
        """Answer the next valid requests with these, in order; then fall back to the default."""
        self._script.extend(responders)

    def host_file(
        self,
        data: bytes,
        content_type: str = "image/png",
        *,
        delay: float = 0.0,
        chunked: bool = False,
    ) -> str:
        """Serve `data` for URL outputs and return its URL; `chunked` omits Content-Length."""
        name = str(len(self._files))
        self._files[name] = _HostedFile(data, content_type, delay, chunked)
        return f"{self.base_url}/files/{name}"

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        try:
            document = json.loads(await request.read())
        except ValueError:
            document = None
        record = FakeRequest(
            request.path, dict(request.query), CIMultiDict(request.headers), document
        )
        self.requests.append(record)
        model, _, method = request.match_info["target"].partition(":")
        body = _camel_keys(document)
        reply: FakeReply | _Drop | None = self._reject(model, method, record, body)
        if reply is None and self._script:
            responder = self._script.popleft()
            reply = await responder(record) if callable(responder) else responder
        return await _answer(request, reply or _default_reply(model, body))

    def _reject(self, model: str, method: str, record: FakeRequest, body: Any) -> FakeReply | None:
        """Return the error Google would send for this request, or None if it is valid."""
        if method != "generateContent":
            return google_error(404, "NOT_FOUND", f"Method {method or '(none)'} not found.")
        key = record.query.get("key") or record.headers.get("X-Goog-Api-Key")
        if not key:
            return google_error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity.",
            )
        if key != self.api_key:
            return _invalid_key()
        if model not in self.models:
            return google_error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for generateContent.",
            )
        if not isinstance(body, dict):
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if problem := _request_problem(body):
            return google_error(400, "INVALID_ARGUMENT", problem)
        return None

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        record = FakeRequest(request.path, dict(request.query), CIMultiDict(request.headers))
        self.downloads.append(record)
        hosted = self._files.get(request.match_info["name"])
        if hosted is None:
            return web.Response(status=404, text="not found")
        await asyncio.sleep(hosted.delay)
        response = web.StreamResponse(headers={"Content-Type": hosted.content_type})
        if not hosted.chunked:
            response.content_length = len(hosted.data)
        await response.prepare(request)
        try:
            for offset in range(0, len(hosted.data), _CHUNK):
                await response.write(hosted.data[offset : offset + _CHUNK])
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading, as it should past its size cap
        return response


async def _answer(request: web.Request, reply: FakeReply | _Drop) -> web.StreamResponse:
    if reply is DROP_CONNECTION:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()  # never sent: the connection is gone
    assert isinstance(reply, FakeReply)
    await asyncio.sleep(reply.delay)
    headers = CIMultiDict({"Content-Type": "application/json; charset=UTF-8"})
    headers.update(reply.headers)
    body = reply.body
    if body is None:
        # A 4K answer is ~20 MB of JSON; serialise it off the loop the client may share.
        body = b"" if reply.json is None else await asyncio.to_thread(_dump, reply.json)
    return web.Response(status=reply.status, body=body, headers=headers)


def _dump(document: Any) -> bytes:
    return json.dumps(document).encode()


# Validation and the default answer -------------------------------------------------------------


def _request_problem(document: dict[str, Any]) -> str | None:
    config = document.get("generationConfig") or {}
    image_config = config.get("imageConfig") or {}
    size, ratio = image_config.get("imageSize"), image_config.get("aspectRatio")
    if size is not None and size not in IMAGE_SIZES:
        return f"Invalid value at 'generation_config.image_config.image_size' ({size!r})."
    if ratio is not None and ratio not in ASPECT_RATIOS:
        return f"Invalid value at 'generation_config.image_config.aspect_ratio' ({ratio!r})."
    if (config.get("candidateCount") or 1) > 1:
        return "Multiple candidates is not enabled for this model."
    parts = _parts(document)
    if not parts:
        return "* GenerateContentRequest.contents: contents is not specified"
    images = _input_images(parts)
    if len(images) > MAX_REFERENCE_IMAGES:
        return f"Too many input images: at most {MAX_REFERENCE_IMAGES} are supported."
    try:
        for image in images:
            Image.open(io.BytesIO(image)).verify()
    except (OSError, SyntaxError, ValueError):
        return "Unable to process input image. Please retry or report in the forum."
    return None


def _parts(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [part for content in document.get("contents") or () for part in content.get("parts", ())]


def _input_images(parts: list[dict[str, Any]]) -> list[bytes]:
    inline = [part["inlineData"] for part in parts if "inlineData" in part]
    return [pybase64.b64decode(image["data"]) for image in inline]


def _default_reply(model: str, document: dict[str, Any]) -> FakeReply:
    config = document.get("generationConfig") or {}
    image_config = config.get("imageConfig") or {}
    size = image_config.get("imageSize", "1K")
    parts = _parts(document)
    images = _input_images(parts)
    # Without an aspect ratio the model follows the first input image, else it draws a square.
    if ratio := image_config.get("aspectRatio"):
        ratio_w, ratio_h = map(int, ratio.split(":"))
    elif images:
        ratio_w, ratio_h = Image.open(io.BytesIO(images[0])).size
    else:
        ratio_w, ratio_h = 1, 1
    scale = LONG_EDGE[size] / max(ratio_w, ratio_h)
    width, height = round(ratio_w * scale), round(ratio_h * scale)
    with_caption = "TEXT" in config.get("responseModalities", ("TEXT", "IMAGE"))
    prompt = " ".join(part.get("text", "") for part in parts)
    return image_response(
        fake_png(width, height),
        caption=DEFAULT_CAPTION if with_caption else None,
        prompt_tokens=len(prompt.split()) + 258 * len(images),
        output_tokens=OUTPUT_TOKENS_PER_IMAGE[size],
        model_version=model,
    )


# Images ----------------------------------------------------------------------------------------


@cache
def fake_png(width: int, height: int) -> bytes:
    """A cheap gradient PNG of the given size (a 4096x4096 one encodes in ~0.3 s, ~0.2 MB)."""
    gradient = Image.linear_gradient("L").resize((width, height))
    flipped = gradient.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image = Image.merge("RGB", (gradient, flipped, Image.new("L", (width, height), 160)))
    return _png(image, compress_level=1)


def realistic_4k_png() -> bytes:
    """A 4096x4096 PNG that compresses like a photo (~12.5 MB): for benchmarks.

    Smooth colour fields with fine noise, built once per machine (~5 s) and cached on disk.
    """
    path = Path(tempfile.gettempdir()) / "banana-bot-fakes" / "realistic-4k-v1.png"
    if path.exists():
        return path.read_bytes()
    side = 4096
    fields = Image.merge("RGB", [Image.effect_noise((24, 24), 60) for _ in range(3)])
    base = fields.resize((side, side), Image.Resampling.BICUBIC)
    # Noise in 2x2 blocks: per-pixel noise of any visible strength pushes the PNG past 20 MB.
    grain = Image.effect_noise((side // 2, side // 2), 2)
    grain = grain.resize((side, side), Image.Resampling.NEAREST).convert("RGB")
    data = _png(ImageChops.add(base, grain, scale=1.0, offset=-128))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)  # atomic, so parallel test processes never read half a file
    return data


def _png(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


# Response builders: every shape in the protocol notes ------------------------------------------


def image_response(
    image: bytes,
    *,
    snake_case: bool = False,
    caption: str | None = DEFAULT_CAPTION,
    with_thoughts: bool = True,
    mime_label: str | None = None,
    only_thought_images: bool = False,
    finish_reason: str = "STOP",
    prompt_tokens: int = 12,
    output_tokens: int = OUTPUT_TOKENS_PER_IMAGE["1K"],
    model_version: str = DEFAULT_MODEL,
) -> FakeReply:
    """A successful answer as the model sends it: thought text and a draft image, then the final
    image with its thought signature, then the caption. `mime_label` lies about the image type;
    `only_thought_images` sends the image as the last of two thought images and no final one."""
    label = mime_label or sniff_mime(image) or "application/octet-stream"
    data = pybase64.b64encode_as_string(image)
    parts: list[dict[str, Any]] = []
    if with_thoughts or only_thought_images:
        draft = {"mimeType": "image/png", "data": pybase64.b64encode_as_string(fake_png(64, 64))}
        parts += [{"text": _THOUGHT, "thought": True}, {"inlineData": draft, "thought": True}]
    final: dict[str, Any] = {"inlineData": {"mimeType": label, "data": data}}
    if only_thought_images:
        final["thought"] = True
    elif with_thoughts:
        final["thoughtSignature"] = _SIGNATURE
    parts.append(final)
    if caption:
        parts.append({"text": caption})
    document = _answer_document(parts, finish_reason, prompt_tokens, output_tokens, model_version)
    return FakeReply(json=_snake_keys(document) if snake_case else document)


def url_response(
    url: str,
    *,
    where: Literal["fileData", "text", "markdown"] = "fileData",
    caption: str = DEFAULT_CAPTION,
) -> FakeReply:
    """An answer that points to the image instead of carrying it (the provider's URL group)."""
    parts: list[dict[str, Any]]
    if where == "fileData":
        parts = [{"fileData": {"mimeType": "image/png", "fileUri": url}}, {"text": caption}]
    elif where == "text":
        parts = [{"text": caption}, {"text": url}]
    else:
        parts = [{"text": f"{caption}\n\n![generated image]({url})"}]
    return FakeReply(json=_answer_document(parts, "STOP", 12, OUTPUT_TOKENS_PER_IMAGE["1K"]))


def prompt_blocked(reason: str, message: str | None = None) -> FakeReply:
    """HTTP 200 without candidates: the prompt itself was blocked."""
    feedback = {"blockReason": reason} | ({"blockReasonMessage": message} if message else {})
    return FakeReply(
        json={
            "promptFeedback": feedback,
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
            "modelVersion": DEFAULT_MODEL,
        }
    )


def finish_refusal(reason: str, message: str | None = None, text: str | None = None) -> FakeReply:
    """HTTP 200 with a candidate that stopped for `reason` without an image."""
    document = _answer_document([{"text": text}] if text else [], reason, 12, 0)
    candidate = document["candidates"][0]
    if not text:
        del candidate["content"]  # blocked candidates come without content
    if message:
        candidate["finishMessage"] = message
    return FakeReply(json=document)


def text_only(text: str) -> FakeReply:
    """HTTP 200, finishReason STOP, and only text: a refusal or a question back."""
    return FakeReply(json=_answer_document([{"text": text}], "STOP", 12, 20))


def google_error(
    status: int, code_status: str, message: str, retry_delay: float | None = None
) -> FakeReply:
    """Google's error body; `retry_delay` adds a RetryInfo detail such as "57.2s"."""
    error: dict[str, Any] = {"code": status, "message": message, "status": code_status}
    if retry_delay is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay}s"}
        ]
    return FakeReply(status=status, json={"error": error})


def openai_error(
    status: int, message: str, type: str = "invalid_request_error", code: str | None = None
) -> FakeReply:
    """The OpenAI-style error body some Gemini resellers send."""
    return FakeReply(
        status=status, json={"error": {"message": message, "type": type, "code": code}}
    )


def plain_error(status: int, text: str, content_type: str = "text/html") -> FakeReply:
    """A non-JSON error, such as a load balancer's HTML 502 page."""
    return FakeReply(status=status, body=text.encode(), headers={"Content-Type": content_type})


def _invalid_key() -> FakeReply:
    reply = google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
    reply.json["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ]
    return reply


def _answer_document(
    parts: list[dict[str, Any]],
    finish_reason: str,
    prompt_tokens: int,
    output_tokens: int,
    model_version: str = DEFAULT_MODEL,
) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": finish_reason,
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        },
        "modelVersion": model_version,
        "responseId": "fake-response",
    }


def _camel_keys(value: Any) -> Any:
    """Requests may use either spelling (protobuf JSON rules); read them in one."""
    return _rename_keys(value, lambda key: re.sub(r"_([a-z])", lambda m: m[1].upper(), key))


def _snake_keys(value: Any) -> Any:
    return _rename_keys(value, lambda key: re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), key))


def _rename_keys(value: Any, rename: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {rename(key): _rename_keys(item, rename) for key, item in value.items()}
    if isinstance(value, list):
        return [_rename_keys(item, rename) for item in value]
    return value
