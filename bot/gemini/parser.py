"""Pure translation between generateContent JSON and the client's models and errors; no I/O."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from http import HTTPStatus
from typing import Any, TypeAlias, TypeGuard, TypeVar

import pybase64

from bot.gemini.errors import (
    REDACTED,
    APIError,
    AuthenticationFailed,
    BadRequest,
    ContentBlocked,
    MalformedResponse,
    ModelNotFound,
    NoImageReturned,
    ProviderUnavailable,
    RateLimited,
    scrub,
)
from bot.gemini.models import ImageRequest, Usage

# finishReasons meaning a filter stopped the candidate, as opposed to the model not drawing.
BLOCK_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
_MAX_ERROR_MESSAGE = 500

# An image named in a text part: a markdown image anywhere, a base64 data URL anywhere, or a bare
# http(s) link alone on its line. A link inside prose stays caption text: refusals cite policy URLs.
_TEXT_IMAGE = re.compile(
    r"!\[[^\]]*\]\(\s*<?(?P<markdown>[^\s)>]+)>?[^)]*\)"
    r"|(?P<data>data:image/[\w.+-]+;base64,[A-Za-z0-9+/]+=*)"
    r"|^[ \t]*(?P<link>https?://\S+)[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)
_HTML_TAG = re.compile(r"<[^>]*>")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InlineSource:
    """An image carried in the response: base64 text, or bytes already decoded while streaming."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class URLSource:
    """An image the response points to; it still has to be downloaded."""

    url: str


ImageSource: TypeAlias = InlineSource | URLSource


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """A generateContent answer that holds at least one image, not yet decoded or downloaded."""

    images: tuple[ImageSource, ...]
    caption: str
    finish_reason: str | None
    usage: Usage
    model_version: str | None


def build_payload(request: ImageRequest) -> dict[str, Any]:
    """Return the generateContent body for a request (already validated)."""
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    parts += (
        {"inline_data": {"mime_type": i.mime_type, "data": pybase64.b64encode_as_string(i.data)}}
        for i in request.images
    )
    config: dict[str, Any] = {
        "responseModalities": ["TEXT", "IMAGE"] if request.with_caption else ["IMAGE"]
    }
    options = {"aspectRatio": request.aspect_ratio, "imageSize": request.image_size}
    if image_config := {name: value for name, value in options.items() if value is not None}:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def parse_body(body: bytes) -> ParsedResponse:
    """Parse the raw body of a 2xx answer; see `parse_response` and `InlineDataSplitter`."""
    splitter = InlineDataSplitter(len(body))
    splitter.feed(body)
    return splitter.finish()


# The key of every inline image (camelCase and snake_case alike), up to its value's opening quote.
_DATA_KEY = re.compile(rb'"data"\s*:\s*"')
_OVERLAP = 64  # a key split across two chunks is found again from this far back
_PLACEHOLDER = "\x00inline:"  # NUL is not base64, so no real image's data can look like this


class InlineDataSplitter:
    """Decodes a generateContent body as it arrives, without ever holding it whole.

    Each `"data": "<base64>"` string is cut out and decoded on the spot; the rest (a few KB) is
    kept as a skeleton that `finish` parses. So a 20 MB answer never exists as one bytes object,
    nor its base64 as one str: per request the peak is the decoded image, briefly twice at the
    final join. A string that is not plain base64 (JSON escapes such as \\/, whitespace) is put
    back verbatim and left to the ordinary path.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._received = 0
        self._skeleton = bytearray()
        self._scan = 0  # where the next search for a key starts
        self._pieces: list[bytes] | None = None  # decoded so far, while inside a data string
        self._carry = b""  # fewer than 4 base64 characters left over from the last chunk
        self._images: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the body."""
        self._received += len(chunk)
        if self._received > self._max_bytes:
            raise MalformedResponse(f"the response is larger than {self._max_bytes} bytes")
        while chunk:
            chunk = self._outside(chunk) if self._pieces is None else self._inside(chunk)

    def finish(self) -> ParsedResponse:
        """Parse what was fed; see `parse_response`."""
        if self._pieces is not None:
            raise MalformedResponse("the response body is not valid JSON")
        try:
            document = json.loads(self._skeleton)
        except ValueError:
            raise MalformedResponse("the response body is not valid JSON") from None
        if not isinstance(document, dict):
            raise MalformedResponse(f"the response body is a JSON {type(document).__name__}")
        parsed = parse_response(document)
        images = tuple(
            InlineSource(self._restore(source.data)) if isinstance(source, InlineSource) else source
            for source in parsed.images
        )
        return replace(parsed, images=images)

    def _restore(self, data: str | bytes) -> str | bytes:
        if isinstance(data, str) and data.startswith(_PLACEHOLDER):
            index = data.removeprefix(_PLACEHOLDER)
            if index.isdigit() and int(index) < len(self._images):
                return self._images[int(index)]
        return data

    def _outside(self, chunk: bytes) -> bytes:
        self._skeleton += chunk
        while match := _DATA_KEY.search(self._skeleton, self._scan):
            self._scan = match.end()
            if not _escaped(self._skeleton, match.start()):
                rest = bytes(self._skeleton[match.end() :])
                del self._skeleton[match.end() :]  # the skeleton ends with the opening quote
                self._pieces, self._carry = [], b""
                return rest
        self._scan = max(self._scan, len(self._skeleton) - _OVERLAP)
        return b""

    def _inside(self, chunk: bytes) -> bytes:
        assert self._pieces is not None
        end = chunk.find(b'"')
        text = self._carry + (chunk if end < 0 else chunk[:end])
        usable = len(text) if end >= 0 else len(text) - len(text) % 4
        try:
            if usable:
                self._pieces.append(pybase64.b64decode(memoryview(text)[:usable], validate=True))
        except ValueError:
            return self._give_up(text, chunk, end)
        self._carry = text[usable:]
        if end < 0:
            return b""
        self._skeleton += f"\\u0000inline:{len(self._images)}".encode()
        self._images.append(b"".join(self._pieces))
        self._pieces = None
        self._scan = len(self._skeleton) + 1  # past the closing quote, which comes next
        return chunk[end:]

    def _give_up(self, text: bytes, chunk: bytes, end: int) -> bytes:
        """Not plain base64: put the string back as it came and let json.loads read it."""
        assert self._pieces is not None
        # What decoded so far was strict base64 in whole quanta, so re-encoding restores it.
        self._skeleton += pybase64.b64encode(b"".join(self._pieces))
        self._pieces = None
        self._scan = len(self._skeleton)
        return text + (b"" if end < 0 else chunk[end:])


def _escaped(buffer: bytearray, quote: int) -> bool:
    """Whether the quote at `quote` is preceded by an odd number of backslashes."""
    count = 0
    while quote - count - 1 >= 0 and buffer[quote - count - 1] == 0x5C:
        count += 1
    return count % 2 == 1


def parse_response(body: Mapping[str, Any]) -> ParsedResponse:
    """Find the image(s), caption and metadata in a generateContent answer.

    Raises ContentBlocked, NoImageReturned or MalformedResponse when it holds no image. Values of
    the wrong type are treated as absent, so a proxy's odd extra fields cannot break a good image.
    """
    candidates = _get(body, "candidates", list) or []
    candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else None
    fields = candidate or {}
    finish_reason = _get(fields, "finishReason", str)
    parts = _get(_get(fields, "content", dict) or {}, "parts", list) or []

    images: list[ImageSource] = []
    text_images: list[ImageSource] = []
    thought_images: list[ImageSource] = []
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        source = _part_image(part)
        if _get(part, "thought", bool):
            if source:
                thought_images.append(source)
            continue
        if source:
            images.append(source)
        if text := _extract_text_images(_get(part, "text", str) or "", text_images):
            texts.append(text)
    caption = "\n".join(texts)
    # Parts win over links in text; a thought image is a draft, used only when nothing else came.
    chosen = images or text_images or thought_images[-1:]

    if not chosen:
        feedback = _get(body, "promptFeedback", dict) or {}
        if block_reason := _get(feedback, "blockReason", str):
            message = _get(feedback, "blockReasonMessage", str)
            raise ContentBlocked(block_reason, message, stage="prompt")
        if finish_reason in BLOCK_FINISH_REASONS:
            message = _get(fields, "finishMessage", str)
            raise ContentBlocked(finish_reason, message, stage="candidate")
        if candidate is None:
            raise MalformedResponse("the response has neither a candidate nor a prompt block")
        raise NoImageReturned(finish_reason, caption)

    usage = _get(body, "usageMetadata", dict) or {}
    return ParsedResponse(
        images=tuple(chosen),
        caption=caption,
        finish_reason=finish_reason,
        usage=Usage(
            prompt_tokens=_get(usage, "promptTokenCount", int),
            output_tokens=_get(usage, "candidatesTokenCount", int),
            total_tokens=_get(usage, "totalTokenCount", int),
        ),
        model_version=_get(body, "modelVersion", str),
    )


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, *, secret: str = ""
) -> APIError:
    """Turn an HTTP error answer (Google, OpenAI-style or not JSON at all) into an APIError.

    `secret` is masked wherever the server's text is kept, in case it echoes the request.
    """
    text = body.decode(errors="replace")
    if secret:  # masked before anything is read, so no field can carry an echo of it
        text = text.replace(secret, REDACTED)
    error = _error_object(text)
    inner = _error_object(error.get("message")) if error is not None else None
    if inner is not None and "message" in inner:
        # OpenAI-compatible proxies pass Google's whole error JSON on as their message text.
        error = inner
    message: object
    if error is None:
        message = " ".join(_HTML_TAG.sub(" ", text).split())
        code, details = None, []
    else:
        message = error.get("message")
        # Google puts the symbolic code in `status`; OpenAI style in `code`, else in `type`.
        code = next(
            (c for c in (error.get("status"), error.get("code"), error.get("type")) if _is_text(c)),
            None,
        )
        details = [d for d in error.get("details") or () if isinstance(d, dict)]
    if not _is_text(message):
        message = _status_phrase(status)
    message = scrub(message.strip())[:_MAX_ERROR_MESSAGE]

    hints = (_retry_info_delay(details), _retry_after_header(headers))
    retry_after = max((hint for hint in hints if hint is not None), default=None)

    error_class: type[APIError]
    if status in (401, 403) or any(d.get("reason") == "API_KEY_INVALID" for d in details):
        # Google answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
        error_class = AuthenticationFailed
    elif status == 404:
        error_class = ModelNotFound
    elif status == 429:
        error_class = RateLimited
    elif status == 408 or status >= 500:
        error_class = ProviderUnavailable
    else:
        error_class = BadRequest
    return error_class(status, message, code=code, retry_after=retry_after)


def _error_object(raw: object) -> dict[str, Any] | None:
    """Return the error object of a JSON document (its `error` member, else the document itself)
    or None if `raw` is not a JSON object."""
    if not isinstance(raw, str):
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if isinstance(document, list) and document:  # some Google front ends wrap it in a list
        document = document[0]
    error = document.get("error", document) if isinstance(document, dict) else None
    if isinstance(error, str):
        return {"message": error}
    return error if isinstance(error, dict) else None


def _part_image(part: Mapping[str, Any]) -> ImageSource | None:
    inline = _get(part, "inlineData", dict) or {}
    if data := _get(inline, "data", str):
        return InlineSource(data)
    file = _get(part, "fileData", dict) or {}
    if uri := _get(file, "fileUri", str):
        return _url_source(uri.strip())
    return None


def _extract_text_images(text: str, found: list[ImageSource]) -> str:
    """Append the images named in `text` to `found`; return the text without them."""

    def take(match: re.Match[str]) -> str:
        found.append(_url_source(match["markdown"] or match["data"] or match["link"]))
        return ""

    return _TEXT_IMAGE.sub(take, text).strip()


def _url_source(url: str) -> ImageSource:
    head, comma, data = url.partition(",")
    head = head.lower()
    if comma and head.startswith("data:") and head.endswith(";base64"):
        return InlineSource(data)
    return URLSource(url)


def _retry_info_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and _is_text(delay):
            # google.protobuf.Duration in JSON: decimal seconds with an "s" suffix, e.g. "57.2s".
            return _seconds(delay.removesuffix("s"))
    return None


def _retry_after_header(headers: Mapping[str, str]) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    if (seconds := _seconds(value)) is not None:
        return seconds
    try:  # the other form RFC 9110 allows: an HTTP date
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def _get(obj: Mapping[str, Any], camel: str, kind: type[T]) -> T | None:
    """Read a field by its camelCase or snake_case name; a wrongly typed value counts as absent."""
    value = obj.get(camel)
    if value is None:
        value = obj.get(_snake(camel))
    return value if isinstance(value, kind) else None


@cache
def _snake(camel: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), camel)
