"""What the member reads. One pure function maps every error to wording; nothing here shows
``str(exc)`` of an unexpected exception, a traceback or a secret.
"""

from __future__ import annotations

import math
import re

from .errors import (
    AlreadyRunning,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CoolingDown,
    Depth2ImgError,
    InsufficientCreditsError,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobTimedOut,
    MalformedResponseError,
    NotAllowed,
    OutputUnavailable,
    QueueFull,
    QuotaExceeded,
    RateLimitError,
    ServerError,
    ShuttingDown,
    SourceImageUnreachable,
)
from .models import GenerationParams, GenerationResult

_MENTION_RE = re.compile(r"@(everyone|here)|<@[!&]?\d+>|<#\d+>")


def neutralise(text: str) -> str:
    """Make @everyone, @here and <@id>/<@&id> inert even if shown as text (a zero-width space)."""
    return _MENTION_RE.sub(lambda m: m.group(0).replace("@", "@\u200b").replace("<#", "<#\u200b"), text)


def quote_api(message: str | None) -> str:
    if not message:
        return ""
    text = neutralise(" ".join(message.split()))[:200].replace("`", "'")
    return f" The API said: `{text}`"


def _seconds(value: float) -> str:
    return f"{math.ceil(value)} s" if value < 90 else f"{math.ceil(value / 60)} min"


def describe(exc: Depth2ImgError) -> str:
    """One clear sentence or two: what happened, and what to do."""
    if isinstance(exc, InvalidInput):
        return f"❌ {exc.reason}"
    if isinstance(exc, NotAllowed):
        return f"🚫 {exc.reason}"
    if isinstance(exc, AlreadyRunning):
        return "🕒 You already have a picture in progress. Wait for it to finish, then try again."
    if isinstance(exc, CoolingDown):
        return f"🕒 Easy there: you can ask again in {_seconds(exc.retry_after_s)}."
    if isinstance(exc, QuotaExceeded) and exc.per_member:
        return f"📅 You have made your {exc.quota} pictures for today here. Your quota resets <t:{int(exc.resets_at)}:R>."
    if isinstance(exc, QuotaExceeded):
        return f"📅 This server has used its {exc.quota} pictures for today. The quota resets <t:{int(exc.resets_at)}:R>."
    if isinstance(exc, ShuttingDown):
        return "🔄 The bot is restarting. Try again in a minute."
    if isinstance(exc, JobCancelled):
        if exc.after_submit:
            return "🛑 Cancelled. The image API had already started, so its credits may have been spent."
        return "🛑 Cancelled before anything was sent to the image API."
    if isinstance(exc, JobInterrupted):
        return (
            "🔄 The bot restarted while sending your request to the image API. To be sure you are not "
            "charged twice it was not sent again. Please run the command again."
        )
    if isinstance(exc, QueueFull):
        return f"🚦 The bot is busy right now. Try again in about {_seconds(exc.retry_after_s)}."
    if isinstance(exc, AuthenticationError):
        return "🔑 The image API rejected the bot's API key. Ask the bot's owner to check `SD_API_KEY`."
    if isinstance(exc, InsufficientCreditsError):
        return "💳 The image API account is out of credits. Ask the bot's owner to top it up, then try again."
    if isinstance(exc, RateLimitError):
        return (
            "🚦 The image API is busy with this account's other requests. "
            f"Try again in about {_seconds(exc.retry_after_s)}."
        )
    if isinstance(exc, SourceImageUnreachable):
        return "🖼️ The image API could not fetch your picture. Upload it again and retry."
    if isinstance(exc, BadRequestError):
        return "❌ The image API refused this request. Check your options and try again." + quote_api(
            exc.message
        )
    if isinstance(exc, JobTimedOut):
        return (
            f"⌛ The image API did not finish within {_seconds(exc.after_s)}. "
            "It may be overloaded; try again in a few minutes."
        )
    if isinstance(exc, JobFailed):
        return (
            "⚠️ The image API could not make this picture. Try again, perhaps with other options."
            + quote_api(exc.detail)
        )
    if isinstance(exc, APITimeoutError):
        return "⌛ The image API did not answer in time. Try again in a minute."
    if isinstance(exc, APIConnectionError):
        return "📡 The bot could not reach the image API. Try again in a minute."
    if isinstance(exc, ServerError):
        return "⚠️ The image API had an internal problem. Try again in a minute."
    if isinstance(exc, MalformedResponseError):
        return "⚠️ The image API sent an answer the bot does not understand. Try again later."
    if isinstance(exc, OutputUnavailable):
        return "📥 The picture was made but could not be downloaded from the image API. Try again."
    if isinstance(exc, APIError):
        return "⚠️ The image API could not be used just now. Try again in a minute."
    return "⚠️ Something went wrong with this request. Try again in a minute."


def _fmt_s(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value / 60:.1f} min"


def result_text(
    params: GenerationParams, result: GenerationResult, *, user_mention: str, limit: int = 2000
) -> str:
    """The message that comes with the images. Fits Discord's 2000-character limit."""
    timing = [f"⏱️ **{_fmt_s(result.total_s)}** total"]
    if result.generation_time_s is not None:
        timing.append(f"{_fmt_s(result.generation_time_s)} generating")
    if result.api_queue_s is not None and result.api_queue_s >= 0.05:
        timing.append(f"{_fmt_s(result.api_queue_s)} queued at the API")
    if result.local_wait_s >= 0.05:
        timing.append(f"{_fmt_s(result.local_wait_s)} waiting for a free slot")
    details = []
    if result.seed is not None:
        details.append(f"seed `{result.seed}`")
    if params.strength is not None:
        details.append(f"strength {params.strength:g}")
    if params.steps is not None:
        details.append(f"steps {params.steps}")
    if params.guidance is not None:
        details.append(f"guidance {params.guidance:g}")
    if len(result.images) > 1:
        details.append(f"{len(result.images)} images")
    first = result.images[0]
    details.append(f"{first.width}×{first.height}")

    head = f"🎨 Depth to image for {user_mention}"
    tail_lines = [" · ".join(details), " · ".join(timing)]
    negative = ""
    if params.negative_prompt:
        negative = "\n**Negative:** " + _escape(params.negative_prompt)
    body_budget = limit - len(head) - sum(len(t) + 1 for t in tail_lines) - 20
    prompt = _escape(params.prompt)
    if len(prompt) + len(negative) > body_budget:
        negative = negative[: max(0, min(len(negative), body_budget // 3))]
        if negative and len(negative) < len(params.negative_prompt or "") + 14:
            negative = negative.rstrip() + "…"
        room = body_budget - len(negative)
        if len(prompt) > room:
            prompt = prompt[: max(0, room - 1)].rstrip() + "…"
    text = f"{head}\n**Prompt:** {prompt}{negative}\n" + "\n".join(tail_lines)
    return text[:limit]


_MD_RE = re.compile(r"([\\*_`~|>#\[\]()-])")


def _escape(text: str) -> str:
    """Escape Markdown and neutralise mentions so a prompt shows literally and pings no one."""
    return neutralise(_MD_RE.sub(r"\\\1", text))
