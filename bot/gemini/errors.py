"""The Gemini client's error hierarchy: each class carries data, never a secret or a URL query."""

from __future__ import annotations

import re
from typing import Literal

# A URL's query may carry `key=`; error text keeps the address but never the query.
_URL_QUERY = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")


REDACTED = "[redacted]"


def scrub(text: str, secret: str = "") -> str:
    """Return text with URL queries removed and every occurrence of `secret` masked."""
    text = _URL_QUERY.sub(r"\1", text)
    return text.replace(secret, REDACTED) if secret else text


class GeminiError(Exception):
    """Base class of every failure the Gemini client reports."""


class InvalidRequest(GeminiError):
    """The request breaks the API's documented limits; caught before any HTTP call."""


class APIError(GeminiError):
    """The API answered with an HTTP error status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}{f' {code}' if code else ''}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequest(APIError):
    """400 or another unexpected status: the request itself is wrong; retrying will not help."""


class AuthenticationFailed(APIError):
    """401/403 or an invalid key: the operator must fix the API key or its permissions."""


class ModelNotFound(APIError):
    """404: the configured model id does not exist (model ids change often)."""


class RateLimited(APIError):
    """429: quota or rate limit; `retry_after` holds the server's wait hint in seconds."""


class ProviderUnavailable(APIError):
    """408 or 5xx: a transient failure on the provider's side."""


class RequestTimedOut(GeminiError):
    """No complete answer arrived within the per-request timeout."""


class ConnectionFailed(GeminiError):
    """The connection could not be made or broke before the answer was complete."""


class ContentBlocked(GeminiError):
    """The prompt or the generated candidate was blocked by a safety filter."""

    def __init__(
        self, reason: str, message: str | None = None, *, stage: Literal["prompt", "candidate"]
    ) -> None:
        super().__init__(f"{stage} blocked: {reason}{f' ({message})' if message else ''}")
        self.reason = reason
        self.message = message
        self.stage = stage


class NoImageReturned(GeminiError):
    """The model finished without an image; `text` is what it said instead (may be empty)."""

    def __init__(self, reason: str | None, text: str = "") -> None:
        super().__init__(f"no image returned (finishReason={reason})")
        self.reason = reason
        self.text = text


class MalformedResponse(GeminiError):
    """A 2xx answer that does not have the shape of a generateContent response."""


class DownloadFailed(GeminiError):
    """An image the API returned as a URL could not be fetched or is not an image."""
