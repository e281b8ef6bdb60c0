"""The one table that turns core errors into the short sentence a Discord user reads."""

from __future__ import annotations

import time

from bot import gemini, images
from bot.admission import QuotaExhausted, TooManyAtOnce, TooManyPending, UserRateLimited
from bot.references import UnusableReference

TEXT_LIMIT = 1500  # leaves room around the model's text in a 2000-character message


def clip(text: str, limit: int) -> str:
    """Shorten `text` to at most `limit` characters, marking the cut."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _in(seconds: float) -> str:
    return f"<t:{int(time.time() + max(1.0, seconds)) + 1}:R>"


def describe(error: BaseException | None) -> str:
    """Return the user-facing sentence for `error`; never a traceback, never a secret."""
    match error:
        case UserRateLimited(retry_after=wait, limit=limit):
            return f"⏳ Slow down — you can make {limit}. Try again {_in(wait)}."
        case QuotaExhausted(scope="user", limit=limit, resets_at=resets):
            return f"📅 You've used today's {limit:g} images. More <t:{int(resets.timestamp())}:R>."
        case QuotaExhausted(resets_at=resets):
            return (
                "📅 This server has used today's image budget. "
                f"More <t:{int(resets.timestamp())}:R>."
            )
        case TooManyAtOnce(capacity=capacity):
            return f"⚠️ You can ask for at most {capacity} image(s) at once."
        case TooManyPending(limit=limit):
            plural = "s" if limit != 1 else ""
            return f"⏳ You already have {limit} job{plural} in progress. Wait for one to finish."
        case gemini.ContentBlocked(reason=reason, message=message):
            detail = f": {clip(message, 300)}" if message else ""
            return f"🚫 The model refused this request for safety reasons ({reason}){detail}"
        case gemini.NoImageReturned(text=text, reason=reason):
            if text:
                return f"💬 The model answered without an image:\n>>> {clip(text, TEXT_LIMIT)}"
            why = f" ({reason})" if reason else ""
            return f"🤷 The model returned no image{why}. Try rephrasing."
        case gemini.RateLimited():
            return "⏳ The image service is busy right now. Try again in a minute."
        case gemini.ProviderUnavailable() | gemini.ConnectionFailed():
            return "🛠️ The image service is unavailable right now. Try again in a few minutes."
        case gemini.RequestTimedOut():
            return "⌛ The image service took too long to answer. Try again."
        case gemini.InvalidRequest() | gemini.BadRequest():
            return f"⚠️ The image service rejected this request: {clip(str(error), 300)}"
        case images.ImageError() | UnusableReference() | InvalidInput():
            return f"⚠️ {error}"
        case gemini.AuthenticationFailed() | gemini.ModelNotFound():
            return "🛠️ The bot is misconfigured; its operator has been told."
        case _:
            return "💥 Something went wrong on our side; the operator has been told. Try again."


class InvalidInput(Exception):
    """Input the Discord surface refuses before any work; the message is for the user."""
