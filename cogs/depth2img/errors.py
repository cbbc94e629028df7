"""One typed tree for everything that can go wrong with a /depth2img request.

Nothing here imports discord.py or aiohttp. The wording a member sees is decided in one place,
:func:`cogs.depth2img.ui.text.describe`, never from ``str(exc)``.
"""

from __future__ import annotations

import errno

from cogs.i18n import SOURCE, text


class Depth2ImgError(Exception):
    """Base of every error this package raises on purpose."""


# --- the request is refused before any API call -------------------------------------------------


class RequestRejected(Depth2ImgError):
    """The bot refuses the request; no API call was made."""

    job_id: str | None = None  # the job it would have been, once it had an id (for the log)


class _Worded(RequestRejected):
    """A refusal worded from the catalogue (:mod:`cogs.i18n`): ``key`` and ``params`` are rendered in
    the reader's language by the ``ui``; ``reason`` is the English wording (for logs and tests)."""

    def __init__(self, key: str, /, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = params

    @property
    def reason(self) -> str:
        return text(SOURCE, self.key, **self.params)

    def __str__(self) -> str:
        return self.reason


class InvalidInput(_Worded):
    """The member's input is unusable (the reason is ours, safe to show)."""


class AlreadyRunning(RequestRejected):
    """The member already has as many jobs in flight as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"member already has {limit} in flight")
        self.limit = limit


class CoolingDown(RequestRejected):
    """The member asked again before their cooldown ended."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"cooldown, retry after {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s


class QuotaExceeded(RequestRejected):
    """A daily quota is used: the server's, the member's (``per_member``) or the bot's own across every
    server (``bot_wide``, ``SD_BOT_DAILY_QUOTA``)."""

    def __init__(
        self, quota: int, resets_at: float, *, per_member: bool = False, bot_wide: bool = False
    ) -> None:
        super().__init__(f"daily quota of {quota} used")
        self.quota = quota
        self.resets_at = resets_at
        self.per_member = per_member
        self.bot_wide = bot_wide


class NotAllowed(_Worded):
    """The server's settings do not allow this request here or for this member."""


class ShuttingDown(RequestRejected):
    """The bot is stopping and takes no new work."""


class QueueFull(RequestRejected):
    """The bot's waiting queue is full."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"queue full, retry after {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


# --- the API, the network and the job ---------------------------------------------------------


class APIError(Depth2ImgError):
    """The image API could not be used."""


class APIConnectionError(APIError):
    """The API could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The API did not answer within the request timeout."""


class MalformedResponseError(APIError):
    """The API answered something we cannot understand."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class APIStatusError(APIError):
    """The API said no. ``message`` is the API's own text (already stripped of secrets)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AuthenticationError(APIStatusError):
    """The API key was rejected (401/403, or an 'invalid key' message)."""


class InsufficientCreditsError(APIStatusError):
    """The account is out of credits or its plan has expired (402)."""


class BadRequestError(APIStatusError):
    """The API refused the request's content (400/422, validation errors)."""


class ServiceMisconfigured(APIStatusError):
    """The owner's own image service cannot run the bot's request as set up (a workflow it refuses, a
    node or model it lacks, ControlNet not applied): for the owner to fix; the log says what."""


class SourceImageUnreachable(BadRequestError):
    """The API could not fetch the source image from its URL."""


class RateLimitError(APIStatusError):
    """The account's queue is full at the API (429)."""

    def __init__(self, message: str, *, status: int | None = 429, retry_after_s: float = 30.0) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class ServerError(APIStatusError):
    """The API had an internal problem (5xx)."""


class JobError(Depth2ImgError):
    """A job was accepted by the API but did not produce images."""

    def __init__(self, detail: str, *, job_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.job_id = job_id


class JobFailed(JobError):
    """The API reported the job as failed (``status: failed`` or ``error`` while polling)."""


class JobLost(JobError):
    """The image service no longer knows the job (it was restarted, or keeps jobs in memory only)."""


class JobTimedOut(JobError):
    """The job did not finish before its own deadline (``SD_JOB_TIMEOUT_S`` from its creation).
    ``at_api``: whether the image service had it (else it never left the bot's queue: nothing spent)."""

    def __init__(self, after_s: float, *, job_id: str | None = None, at_api: bool = True) -> None:
        super().__init__(f"no result after {after_s:.0f}s", job_id=job_id)
        self.after_s = after_s
        self.at_api = at_api


class JobCancelled(JobError):
    """The member cancelled the job."""

    def __init__(self, *, after_submit: bool, paid: bool = True) -> None:
        super().__init__("cancelled by the member")
        self.after_submit = after_submit
        self.paid = paid  # the service charges for what it started (not the owner's own GPU)


class JobInterrupted(JobError):
    """The bot stopped while the (paid) submission was on its way; it is never sent twice."""


class OutputUnavailable(Depth2ImgError):
    """The finished image could not be downloaded, or (``unusable``) what came was no picture the bot
    can use: not an image, damaged, or over the size or pixel limits."""

    def __init__(self, detail: str, *, unusable: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.unusable = unusable


class InternalError(Depth2ImgError):
    """Something the bot did not foresee (a bug, a full disk, the ledger out of reach) ended the job.
    ``kind`` is the exception's class name, for the log; its text is never shown or logged."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class StorageFull(RequestRejected):
    """The disk that holds the bot's data (``BOT_DATA_DIR``: the pictures, the SQLite ledger) is full,
    or the owner's quota on it is spent: the member's picture could not be kept (or, once the disk
    was found full, would not fit yet), so nothing was sent to the image service."""


# What the owner is told to do about a full disk (in the log, in English: the owner's language)
DISK_FULL_ADVICE = (
    "free space on the disk that holds BOT_DATA_DIR (KEEP_PICTURES_DAYS bounds what the bot keeps)"
)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the owner's quota on it) is full: a file's ``ENOSPC`` or
    ``EDQUOT``; SQLite's ``SQLITE_FULL``; PostgreSQL's ``disk_full`` (53100)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    sqlite_code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # (its primary result code)
    return sqlite_code == 13 or getattr(exc, "sqlstate", None) == "53100"


class DeliveryFailed(Depth2ImgError):
    """Discord refused the message that carried the result."""


class DeliveryInterrupted(Depth2ImgError):
    """Discord took no request that carried the result (it failed on its side, or never answered): a
    trouble that passes, so the result may be delivered again later."""


# What the image service may do for a while and then stop doing: while it has a job, polling (and
# downloading its outputs) goes on through these until the job's deadline.
def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, APIConnectionError | ServerError | RateLimitError):
        return True
    # an unreadable answer (not JSON, cut short, too large, of no known shape), but not a missing route
    return isinstance(exc, MalformedResponseError) and exc.status != 404


def said(exc: BaseException) -> str | None:
    """What the image service itself said, when ``exc`` carries it: for the owner's log only (the
    backend has already redacted the key from it, in any disguise); members read our words."""
    for name in ("message", "detail"):
        value = getattr(exc, name, None)
        if isinstance(value, str) and value:
            return value[:300]
    return None
