"""What ModelsLab / stablediffusionapi.com answers, as plain data: the tolerant parser of its JSON and
the one function that maps an HTTP answer to our error tree. Pure: no aiohttp, no Discord.

The API is inconsistent (``shared/docs/api-contract.md`` §2, ``backends.md`` §1): ``output`` is a string
or a list or ``""``, ids are ints or strings (or ``""``), the error text lives in ``message``,
``messege``, a field-to-list object, ``error`` or ``tip``, and errors arrive with HTTP 200 as well as
4xx/5xx. Everything is normalised here; :func:`parse_response` raises nothing but
:class:`MalformedResponseError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cogs.depth2img.backends.base import MAX_OUTPUT_URLS, storable_seed
from cogs.depth2img.cleaning import clean_text, is_clean
from cogs.depth2img.errors import (
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    JobFailed,
    MalformedResponseError,
    RateLimitError,
    ServerError,
    SourceImageUnreachable,
)


class Status(StrEnum):
    SUCCESS = "success"
    PROCESSING = "processing"
    ERROR = "error"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class APIResponse:
    """One parsed API answer, whatever endpoint it came from."""

    status: Status
    job_id: str | None = None
    output_urls: tuple[str, ...] = ()
    eta_s: float | None = None
    fetch_url: str | None = None
    generation_time_s: float | None = None
    seed: int | None = None
    message: str | None = None
    retry_after_s: float | None = None


# --- parsing ------------------------------------------------------------------------------------

_MAX_MESSAGE = 300


def _as_str(value: object) -> str | None:
    if isinstance(value, str):
        text = clean_text(value).strip()
        return text or None
    return None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:  # (an int of 309 digits or more, as JSON allows, is too large for a float)
            number = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    if not math.isfinite(number):
        return None
    return number


def _as_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if -(10**128) < value < 10**128 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        if text and len(text) <= 128 and text.isprintable() and is_clean(text):
            return text
    return None


def _urls(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    urls: list[str] = []
    for item in value:
        if len(urls) == MAX_OUTPUT_URLS:
            break
        if isinstance(item, str):
            text = item.strip()
            if (
                text.lower().startswith(("http://", "https://"))
                and len(text) <= 2048
                and text.isprintable()
                and is_clean(text)
            ):
                urls.append(text)
    return tuple(urls)


def extract_message(body: dict[str, Any]) -> str | None:
    """The API's error text, from whichever field carries it (contract §2.3)."""
    raw = body.get("message")
    text: str | None = None
    if isinstance(raw, dict):
        parts: list[str] = []
        for field_name, problems in raw.items():
            if isinstance(problems, list):
                parts.extend(p.strip() for p in problems if isinstance(p, str) and p.strip())
            elif isinstance(problems, str) and problems.strip():
                parts.append(problems.strip())
            elif isinstance(field_name, str):
                parts.append(f"{field_name} is invalid")
        text = clean_text(" ".join(parts)) or None
    elif isinstance(raw, list):
        text = clean_text(" ".join(p.strip() for p in raw if isinstance(p, str) and p.strip())) or None
    else:
        text = _as_str(raw)
    for fallback in ("messege", "error", "tip", "tip_1"):
        if text:
            break
        text = _as_str(body.get(fallback))
    if text is None:
        return None
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE]


def _seed(body: dict[str, Any]) -> int | None:
    meta = body.get("meta")
    candidates = [meta.get("seed")] if isinstance(meta, dict) else []
    candidates.append(body.get("seed"))
    for candidate in candidates:
        if (seed := storable_seed(candidate)) is not None:
            return seed
        if isinstance(candidate, str) and candidate.strip().isdigit() and len(candidate.strip()) < 19:
            return int(candidate.strip())
    return None


def parse_response(body: object, *, http_status: int | None = None) -> APIResponse:
    """Turn one decoded JSON body into an :class:`APIResponse`.

    Raises :class:`MalformedResponseError` for anything that is not a recognisable answer. It never
    raises anything else, whatever the input (a property-based test checks this).
    """
    if not isinstance(body, dict):
        raise MalformedResponseError("response body is not a JSON object", status=http_status)
    raw_status = body.get("status")
    status_text = raw_status.strip().lower() if isinstance(raw_status, str) else None
    message = extract_message(body)
    retry_after = _as_float(body.get("retry_after"))
    if retry_after is not None:
        retry_after = min(max(retry_after, 0.0), 3600.0)
    job_id = _as_id(body.get("id"))
    if job_id is None:
        job_id = _as_id(body.get("request_id"))

    if status_text in {"error", "failed", "failure"}:
        return APIResponse(
            status=Status.FAILED if status_text != "error" else Status.ERROR,
            job_id=job_id,
            message=message,
            retry_after_s=retry_after,
        )
    if status_text in {"processing", "queued", "pending", "starting"}:
        eta = _as_float(body.get("eta"))
        if eta is not None:
            eta = min(max(eta, 0.0), 3600.0)
        fetch_url = _as_str(body.get("fetch_result"))
        if fetch_url is not None and not fetch_url.lower().startswith(("http://", "https://")):
            fetch_url = None
        return APIResponse(
            status=Status.PROCESSING,
            job_id=job_id,
            eta_s=eta,
            fetch_url=fetch_url,
            message=message,
            retry_after_s=retry_after,
        )
    if status_text == "success":
        urls = _urls(body.get("output"))
        if not urls:
            urls = _urls(body.get("proxy_links"))
        if not urls:
            urls = _urls(body.get("link"))
        if not urls:
            raise MalformedResponseError("success without any output URL", status=http_status)
        gen_time = _as_float(body.get("generationTime"))
        if gen_time is not None and not 0 <= gen_time < 86400:
            gen_time = None
        return APIResponse(
            status=Status.SUCCESS,
            job_id=job_id,
            output_urls=urls,
            generation_time_s=gen_time,
            seed=_seed(body),
            message=message,
        )
    raise MalformedResponseError("unknown response status", status=http_status)


_AUTH_RE = re.compile(
    r"(invalid|wrong|missing|required|expired|revoked).{0,20}\bkey\b|\bapi key\b|unauthori[sz]ed"
)
_CREDITS_RE = re.compile(
    r"credit|balance|insufficient|subscription (has )?expired|plan (has )?expired|payment"
)
_RATE_RE = re.compile(r"rate limit|too many requests|queued requests|queue limit")
_FETCH_IMAGE_RE = re.compile(r"(unable|failed|could not|cannot).{0,20}(fetch|download|load|read).{0,30}image")
_RETRY_RE = re.compile(r"try again|temporar|unavailable|overload|maintenance")


def retry_after_header(value: str | None) -> float | None:
    """A ``Retry-After`` header's seconds (a number; an HTTP date is read as no hint), within an hour."""
    seconds = _as_float(value)
    return None if seconds is None else min(max(seconds, 0.0), 3600.0)


def error_from_response(
    http_status: int, body: object, *, text_is_json: bool, retry_after: str | None = None
) -> APIResponse:
    """Classify one HTTP answer. Returns the parsed success/processing answer, or raises.

    ``body`` is the decoded JSON when ``text_is_json``; otherwise it is ignored. ``retry_after``: the
    answer's ``Retry-After`` header, used when the body gives no ``retry_after``.
    """
    header_wait = retry_after_header(retry_after)
    if not text_is_json:
        if http_status == 429:
            raise RateLimitError("rate limited", status=http_status, retry_after_s=header_wait or 30.0)
        if http_status in (401, 403):
            raise AuthenticationError("unauthorised", status=http_status)
        if http_status == 402:
            raise InsufficientCreditsError("payment required", status=http_status)
        if http_status >= 500:
            raise ServerError(f"HTTP {http_status} without a JSON body", status=http_status)
        raise MalformedResponseError("response is not JSON", status=http_status)

    try:
        parsed = parse_response(body, http_status=http_status)
    except MalformedResponseError:
        if http_status >= 500:
            raise ServerError(f"HTTP {http_status}", status=http_status) from None
        if http_status == 429:
            raise RateLimitError(
                "rate limited", status=http_status, retry_after_s=header_wait or 30.0
            ) from None
        raise

    message = parsed.message or ""
    lowered = message.lower()
    if http_status == 429 or (parsed.status in (Status.ERROR, Status.FAILED) and _RATE_RE.search(lowered)):
        wait = next(w for w in (parsed.retry_after_s, header_wait, 30.0) if w is not None)
        raise RateLimitError(message or "rate limited", status=http_status, retry_after_s=wait)
    if parsed.status in (Status.SUCCESS, Status.PROCESSING):
        if http_status >= 400:
            raise MalformedResponseError(f"{parsed.status} with HTTP {http_status}", status=http_status)
        return parsed

    # error / failed
    if http_status in (401, 403) and (http_status == 401 or _AUTH_RE.search(lowered)):
        raise AuthenticationError(message or "API key rejected", status=http_status)
    if _AUTH_RE.search(lowered):
        raise AuthenticationError(message, status=http_status)
    if http_status == 402 or _CREDITS_RE.search(lowered):
        raise InsufficientCreditsError(message or "out of credits", status=http_status)
    if http_status >= 500:
        raise ServerError(message or f"HTTP {http_status}", status=http_status)
    if _FETCH_IMAGE_RE.search(lowered):
        raise SourceImageUnreachable(message, status=http_status)
    if parsed.status is Status.ERROR and _RETRY_RE.search(lowered) and "processing failed" not in lowered:
        raise ServerError(message, status=http_status)
    if parsed.status is Status.FAILED:
        raise JobFailed(message or "the API reported the job as failed", job_id=parsed.job_id)
    raise BadRequestError(message or "the API refused the request", status=http_status)
