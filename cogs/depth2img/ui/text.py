"""Every member-facing string: what a member reads, built from plain data, in the reader's language
(``lang``: a Discord locale; the words are in :mod:`cogs.i18n`'s catalogues). One pure function maps
every error to wording; nothing here shows ``str(exc)`` of an unexpected exception, a traceback or a
secret. Discord markup (mentions, timestamps, code blocks) is plain text here: nothing imports
discord.py.
"""

from __future__ import annotations

import math
import re

from cogs.depth2img.core.policy import GuildSettings, OwnerLimits
from cogs.depth2img.errors import (
    AlreadyRunning,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CoolingDown,
    Depth2ImgError,
    InsufficientCreditsError,
    InternalError,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobLost,
    JobTimedOut,
    MalformedResponseError,
    NotAllowed,
    OutputUnavailable,
    QueueFull,
    QuotaExceeded,
    RateLimitError,
    ServerError,
    ServiceMisconfigured,
    ShuttingDown,
    SourceImageUnreachable,
    StorageFull,
)
from cogs.depth2img.models import ProgressEvent, Stage
from cogs.depth2img.store import Job, JobState
from cogs.i18n import Plural, catalogue, text

_MENTION_RE = re.compile(r"@(everyone|here)|<@[!&]?\d+>|<#\d+>")


def neutralise(text: str) -> str:
    """Make @everyone, @here and <@id>/<@&id> inert even if shown as text (a zero-width space)."""
    return _MENTION_RE.sub(lambda m: m.group(0).replace("@", "@\u200b").replace("<#", "<#\u200b"), text)


def seconds(lang: str, value: float) -> str:
    """A wait as people say it: "12 s", "3 min"."""
    if value < 90:
        return text(lang, "time.seconds", n=math.ceil(value))
    return text(lang, "time.minutes", n=math.ceil(value / 60))


def when(unix_time: float) -> str:
    """A moment as a Discord timestamp, shown to each reader in their own language ("in 5 minutes")."""
    return f"<t:{math.ceil(unix_time)}:R>"


# What each error says, by class, the first match winning (subclasses before their bases).
_PLAIN: tuple[tuple[type[Depth2ImgError], str], ...] = (
    (AlreadyRunning, "error.already_running"),
    (ShuttingDown, "error.shutting_down"),
    (JobInterrupted, "error.interrupted"),
    (AuthenticationError, "error.account_refused"),
    (InsufficientCreditsError, "error.no_credit"),
    (ServiceMisconfigured, "error.misconfigured"),
    (JobLost, "error.lost"),
    (StorageFull, "error.storage_full"),
    (SourceImageUnreachable, "error.source_unreachable"),
    (BadRequestError, "error.bad_request"),
)
_LATER: tuple[tuple[type[Depth2ImgError], str], ...] = (
    (JobFailed, "error.failed"),
    (APITimeoutError, "error.no_answer"),
    (APIConnectionError, "error.unreachable"),
    (ServerError, "error.service_problem"),
    (MalformedResponseError, "error.malformed"),
)


def describe(exc: Depth2ImgError, lang: str) -> str:
    """One clear sentence or two: what happened, and what to do."""
    if isinstance(exc, InvalidInput):
        return text(lang, "refused.invalid", reason=text(lang, exc.key, **exc.params))
    if isinstance(exc, NotAllowed):
        return text(lang, "refused.not_allowed", reason=text(lang, exc.key, **exc.params))
    if isinstance(exc, CoolingDown):
        return text(lang, "error.cooling_down", wait=seconds(lang, exc.retry_after_s))
    if isinstance(exc, QuotaExceeded):
        if exc.bot_wide:
            return text(lang, "error.quota_bot", when=when(exc.resets_at))
        key = "error.quota_member" if exc.per_member else "error.quota_server"
        return text(lang, key, pictures=Plural("count.pictures", exc.quota), when=when(exc.resets_at))
    if isinstance(exc, JobCancelled):
        if exc.after_submit and not exc.paid:
            return text(lang, "error.cancelled_stopped")
        return text(lang, "error.cancelled_maybe_spent" if exc.after_submit else "error.cancelled_before")
    if isinstance(exc, QueueFull):
        return text(lang, "error.queue_full", wait=seconds(lang, exc.retry_after_s))
    if isinstance(exc, RateLimitError):
        return text(lang, "error.rate_limited", wait=seconds(lang, exc.retry_after_s))
    if isinstance(exc, JobTimedOut):
        key = "error.timeout_service" if exc.at_api else "error.timeout_bot"
        return text(lang, key, wait=seconds(lang, exc.after_s))
    for kind, key in (*_PLAIN, *_LATER):
        if isinstance(exc, kind):
            return text(lang, key)
    if isinstance(exc, OutputUnavailable):
        return text(lang, "error.output_unusable" if exc.unusable else "error.output_unavailable")
    if isinstance(exc, APIError):
        return text(lang, "error.service_unusable")
    if isinstance(exc, InternalError):
        return text(lang, "error.internal")
    return text(lang, "error.unknown")


def settings_summary(
    rules: GuildSettings, default_cooldown_s: float, owner: OwnerLimits, lang: str, *, viewer: bool = False
) -> str:
    """What the server's members get, in plain words (Discord markup for channels and roles): the
    server's own settings and the limits the bot's owner set for every server. ``viewer``: the
    reader may look but not change them."""
    channels = ", ".join(f"<#{c}>" for c in rules.channels) or text(lang, "settings.every_channel")
    roles = ", ".join(f"<@&{r}>" for r in rules.roles) or text(lang, "settings.everyone")
    quota = (
        text(lang, "settings.quota_per_member", n=rules.member_daily_quota)
        if rules.member_daily_quota
        else text(lang, "settings.no_daily_limit")
    )
    cooldown = rules.cooldown_s if rules.cooldown_s is not None else default_cooldown_s
    return "\n".join(
        [
            text(lang, "settings.title"),
            text(lang, "settings.channels", channels=channels),
            text(lang, "settings.roles", roles=roles),
            text(lang, "settings.quota", quota=quota, cooldown=text(lang, "time.seconds", n=cooldown)),
            text(
                lang,
                "settings.per_request",
                pictures=Plural("count.pictures", rules.max_samples),
                steps=Plural("count.steps", rules.max_steps),
            ),
            text(
                lang,
                "settings.safety_age_restricted"
                if rules.nsfw_in_age_restricted
                else "settings.safety_always",
            ),
            text(lang, "settings.card_compact" if rules.card == "compact" else "settings.card_full"),
            *owner_summary(owner, lang),
            *([text(lang, "settings.viewer")] if viewer else []),
        ]
    )


def owner_summary(owner: OwnerLimits, lang: str) -> list[str]:
    """The limits the bot's owner set, which apply whatever the server chose."""
    lines = [text(lang, "owner.title")]
    if owner.guild_daily_quota:
        lines.append(
            text(lang, "owner.server_quota", requests=Plural("count.requests", owner.guild_daily_quota))
        )
    if owner.member_daily_quota:
        lines.append(
            text(lang, "owner.member_quota", pictures=Plural("count.pictures", owner.member_daily_quota))
        )
    if owner.bot_daily_quota:
        lines.append(text(lang, "owner.bot_quota", pictures=Plural("count.pictures", owner.bot_daily_quota)))
    if len(lines) == 1:
        lines.append(text(lang, "owner.none"))
    return lines


# --- progress ---------------------------------------------------------------------------------------


def progress_text(event: ProgressEvent, received_at: float, now: float, lang: str) -> str | None:
    """The member's progress line for ``event`` (heard at unix time ``received_at``; it is ``now``)."""
    eta = received_at + event.eta_s if event.eta_s is not None else None
    if event.stage is Stage.WAITING_FOR_SLOT:
        if not event.position:
            return None
        if eta is not None:
            return text(lang, "progress.waiting_slot_eta", position=event.position, when=when(eta))
        return text(lang, "progress.waiting_slot", position=event.position)
    if event.stage is Stage.GENERATING and event.done is not None:
        percent = round(min(1.0, max(0.0, event.done)) * 100)
        if eta is not None and eta > now:
            return text(lang, "progress.generating_eta", percent=percent, when=when(eta))
        return text(lang, "progress.generating", percent=percent)
    if event.stage is Stage.SERVICE_SLOW:
        return text(lang, "progress.service_slow")
    if eta is not None and eta > now:
        return text(lang, "progress.queued_eta", when=when(eta))
    return text(lang, "progress.queued")


# How every progress line begins, in every language (what comes before its first placeholder): how a
# reader of the channel (a test, the benchmark) tells a progress line from a final state.
PROGRESS_PREFIXES = tuple(
    sorted(
        {
            entry.split("{")[0]
            for table in catalogue().tables.values()
            for key, entry in table["replies"].items()
            if key.startswith("progress.") and isinstance(entry, str)
        }
    )
)


# --- results, history ----------------------------------------------------------------------------


def failure_message(job: Job, error: Depth2ImgError, lang: str) -> str:
    """The message that replaces the "thinking…" one when a job ends without images."""
    said = describe(error, lang)
    if job.resumes:
        said = f"<@{job.user_id}> {said}"
    return f"{said}\n{text(lang, 'error.code', code=job.id)}"


_STATES = {
    JobState.DELIVERED: "state.delivered",
    JobState.FAILED: "state.failed",
    JobState.CANCELLED: "state.cancelled",
}


def history_text(jobs: list[Job], lang: str) -> str:
    if not jobs:
        return text(lang, "history.empty")
    lines = [text(lang, "history.title")]
    for job in jobs:
        prompt = neutralise(job.params.prompt.replace("`", "'"))
        if len(prompt) > 60:
            prompt = prompt[:59] + "…"
        state = text(lang, "state.kept" if job.undelivered else _STATES.get(job.state, "state.working"))
        lines.append(f"`{job.id}` · {state} · {when(job.created_at)} · {prompt}")
    return "\n".join(lines)[:2000]


def forgotten_text(count: int, lang: str) -> str:
    return text(lang, "history.forgotten", n=count)


def delivery_failed(code: str, lang: str, *, kept: str | None = None) -> str:
    """Discord refused the result; ``kept``: the id of the job whose picture is kept all the same."""
    if kept is not None:
        return text(lang, "error.delivery_failed_kept", code=code, id=kept)
    return text(lang, "error.delivery_failed", code=code)


def format_error(error: BaseException, lang: str) -> str | None:
    """For the bot's global error handler: the words for an error of this extension, else None."""
    return describe(error, lang) if isinstance(error, Depth2ImgError) else None
