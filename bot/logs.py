"""Logging set-up: one format for every line, and secrets scrubbed from whatever gets logged."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

# A `key=` query parameter is how the provider takes the API key; scrub it even when the key
# itself is unknown to us (e.g. a URL echoed back inside an upstream error body).
_KEY_PARAM = re.compile(r"(?i)([?&](?:key|token)=)[^&\s'\"]+")
REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return `text` with every secret and every `key=`/`token=` query value replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _KEY_PARAM.sub(rf"\1{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message so no secret can reach a handler."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now so its text goes through the scrubber too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        record.msg = redact(message, self._secrets)
        record.args = None
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every log line to stderr, scrubbed of `secrets`, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py's HTTP debug lines include request bodies; keep them out unless asked for.
    logging.getLogger("discord.http").setLevel(max(logging.INFO, root.level))
