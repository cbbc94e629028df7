"""Every member-facing string: what a member reads, built from plain data. One pure function maps every
error to wording; nothing here shows ``str(exc)`` of an unexpected exception, a traceback or a secret.
Discord markup (mentions, timestamps, code blocks) is plain text here: nothing imports discord.py.
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
)
from cogs.depth2img.models import ProgressEvent, Stage
from cogs.depth2img.store import Job
from cogs.depth2img.words import plural

_MENTION_RE = re.compile(r"@(everyone|here)|<@[!&]?\d+>|<#\d+>")


def neutralise(text: str) -> str:
    """Make @everyone, @here and <@id>/<@&id> inert even if shown as text (a zero-width space)."""
    return _MENTION_RE.sub(lambda m: m.group(0).replace("@", "@\u200b").replace("<#", "<#\u200b"), text)


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
    if isinstance(exc, QuotaExceeded) and exc.bot_wide:
        return (
            "📅 The bot has made all the pictures its owner allows for one day, across every server. "
            f"It makes pictures again <t:{int(exc.resets_at)}:R>."
        )
    if isinstance(exc, QuotaExceeded) and exc.per_member:
        return f"📅 You have made your {exc.quota} pictures for today here. Your quota resets <t:{int(exc.resets_at)}:R>."
    if isinstance(exc, QuotaExceeded):
        return f"📅 This server has used its {exc.quota} pictures for today. The quota resets <t:{int(exc.resets_at)}:R>."
    if isinstance(exc, ShuttingDown):
        return "🔄 The bot is restarting. Try again in a minute."
    if isinstance(exc, JobCancelled):
        if exc.after_submit and not exc.paid:
            return "🛑 Cancelled. The image server has stopped working on it."
        if exc.after_submit:
            return "🛑 Cancelled. The image service had already started, so its credits may have been spent."
        return "🛑 Cancelled before anything was sent to the image service."
    if isinstance(exc, JobInterrupted):
        return (
            "🔄 The bot restarted while sending your request to the image service. To be sure you are not "
            "charged twice it was not sent again. Please run the command again."
        )
    if isinstance(exc, QueueFull):
        return f"🚦 The bot is busy right now. Try again in about {_seconds(exc.retry_after_s)}."
    if isinstance(exc, AuthenticationError):
        return "🔑 The image service refused the bot's account. Ask the bot's owner to check it."
    if isinstance(exc, InsufficientCreditsError):
        return "💳 The bot's account at the image service has run out of credit. Ask the bot's owner to top it up, then try again."
    if isinstance(exc, RateLimitError):
        return (
            "🚦 The image service is busy with this account's other requests. "
            f"Try again in about {_seconds(exc.retry_after_s)}."
        )
    if isinstance(exc, ServiceMisconfigured):
        return (
            "🛠️ The bot's image server is not set up to make this picture right now. Ask the bot's "
            "owner: the bot's log says what to fix."
        )
    if isinstance(exc, JobLost):
        return "⚠️ The image server lost your picture while making it (it may have restarted). Try again."
    if isinstance(exc, SourceImageUnreachable):
        return "🖼️ The image service could not fetch your picture. Upload it again and retry."
    if isinstance(exc, BadRequestError):
        return "❌ The image service refused this request. Check your options, or try another picture."
    if isinstance(exc, JobTimedOut) and not exc.at_api:
        return (
            f"⌛ The bot was too busy to start your picture within {_seconds(exc.after_s)}; nothing was "
            "sent to the image service. Try again in a few minutes."
        )
    if isinstance(exc, JobTimedOut):
        return (
            f"⌛ The image service did not finish within {_seconds(exc.after_s)}. "
            "It may be overloaded; try again in a few minutes."
        )
    if isinstance(exc, JobFailed):
        return "⚠️ The image service could not make this picture. Try again, perhaps with other options."
    if isinstance(exc, APITimeoutError):
        return "⌛ The image service did not answer in time. Try again in a minute."
    if isinstance(exc, APIConnectionError):
        return "📡 The bot could not reach the image service. Try again in a minute."
    if isinstance(exc, ServerError):
        return "⚠️ The image service had an internal problem. Try again in a minute."
    if isinstance(exc, MalformedResponseError):
        return "⚠️ The image service sent an answer the bot does not understand. Try again later."
    if isinstance(exc, OutputUnavailable) and exc.unusable:
        return (
            "📥 The image service sent back a picture the bot cannot use (damaged, or far too large). "
            "Try again, perhaps with other options."
        )
    if isinstance(exc, OutputUnavailable):
        return "📥 The picture was made but could not be downloaded from the image service. Try again."
    if isinstance(exc, APIError):
        return "⚠️ The image service could not be used just now. Try again in a minute."
    if isinstance(exc, InternalError):
        return (
            "⚠️ The bot ran into a problem of its own with this request. Try again in a minute; if it "
            "keeps happening, give the bot's owner the code below."
        )
    return "⚠️ Something went wrong with this request. Try again in a minute."


def settings_summary(
    rules: GuildSettings, default_cooldown_s: float, owner: OwnerLimits, *, viewer: bool = False
) -> str:
    """What the server's members get, in plain words (Discord markup for channels and roles): the
    server's own settings and the limits the bot's owner set for every server. ``viewer``: the
    reader may look but not change them."""
    channels = ", ".join(f"<#{c}>" for c in rules.channels) or "every channel"
    roles = ", ".join(f"<@&{r}>" for r in rules.roles) or "everyone"
    quota = f"{rules.member_daily_quota} per member per day" if rules.member_daily_quota else "no daily limit"
    cooldown = rules.cooldown_s if rules.cooldown_s is not None else default_cooldown_s
    content = (
        "off in age-restricted channels, on everywhere else"
        if rules.nsfw_in_age_restricted
        else "always on (unsafe images come back blank)"
    )
    return "\n".join(
        [
            "**/depth2img settings for this server**",
            f"• Channels: {channels}",
            f"• Who may use it: {roles} (people with Manage Server always may)",
            f"• Pictures: {quota}; {cooldown:g} s between two requests of a member",
            f"• At most {plural(rules.max_samples, 'picture')} per request and {plural(rules.max_steps, 'step')}",
            f"• Safety checker: {content}",
            f"• Result card: {rules.card} ({'details behind the ℹ️ button' if rules.card == 'compact' else 'everything on the card'})",
            *owner_summary(owner),
            *(
                ["You can view these settings; members with the Manage Server permission can change them."]
                if viewer
                else []
            ),
        ]
    )


def owner_summary(owner: OwnerLimits) -> list[str]:
    """The limits the bot's owner set, which apply whatever the server chose."""
    lines = ["**Set by the bot's owner, for every server**"]
    if owner.guild_daily_quota:
        lines.append(f"• This server: at most {plural(owner.guild_daily_quota, 'request')} a day")
    if owner.member_daily_quota:
        lines.append(
            f"• Each member: at most {plural(owner.member_daily_quota, 'picture')} a day (the lower of this and "
            "this server's own limit applies)"
        )
    if owner.bot_daily_quota:
        lines.append(
            f"• The bot as a whole: at most {plural(owner.bot_daily_quota, 'picture')} a day, across every server"
        )
    if len(lines) == 1:
        lines.append("• No daily limits")
    return lines


# --- progress ---------------------------------------------------------------------------------------


def progress_text(event: ProgressEvent, received_at: float, now: float) -> str | None:
    """The member's progress line for ``event`` (heard at unix time ``received_at``; it is ``now``)."""
    eta = received_at + event.eta_s if event.eta_s is not None else None
    if event.stage is Stage.WAITING_FOR_SLOT:
        if not event.position:
            return None
        when = f" — expected <t:{math.ceil(eta)}:R>" if eta is not None else ""
        return f"⏳ Waiting for a free slot (position {event.position}){when}."
    if event.stage is Stage.GENERATING and event.done is not None:
        when = f" — expected <t:{math.ceil(eta)}:R>" if eta is not None and eta > now else ""
        return f"⏳ Generating… {round(min(1.0, max(0.0, event.done)) * 100)}%{when}"
    if event.stage is Stage.SERVICE_SLOW:
        return (
            "⏳ The image service has your picture but is slow to answer right now; the bot keeps asking. "
            "Nothing to do: it will appear here."
        )
    if eta is not None and eta > now:
        return f"⏳ Queued at the image service — expected <t:{math.ceil(eta)}:R>."
    return "⏳ Queued at the image service…"


# The progress line's last words, when the interaction's 15 minutes are nearly over: the result will
# come as a message of its own.
LONG_WAIT_NOTICE = (
    "⏳ Still working on it. This is taking long: the picture will be posted in this channel as a "
    "new message that mentions you."
)

PROGRESS_PREFIXES = (
    "⏳ Generating",
    "⏳ Queued at the image service",
    "⏳ Waiting for a free slot",
    "⏳ The image service has your picture",
    "⏳ Still working on it",
)


# --- results, history ----------------------------------------------------------------------------


def failure_message(job: Job, error: Depth2ImgError) -> str:
    """The message that replaces the "thinking…" one when a job ends without images."""
    text = describe(error)
    if job.resumes:
        text = f"<@{job.user_id}> {text}"
    return f"{text}\n-# code `{job.id}`"


def history_text(jobs: list[Job]) -> str:
    if not jobs:
        return "You have no pictures yet. Try /depth2img!"
    lines = ["**Your recent pictures** (newest first; bring one back with /depth2img-show):"]
    for job in jobs:
        prompt = neutralise(job.params.prompt.replace("`", "'"))
        if len(prompt) > 60:
            prompt = prompt[:59] + "…"
        lines.append(f"`{job.id}` · {job.state} · <t:{int(job.created_at)}:R> · {prompt}")
    return "\n".join(lines)[:2000]


def forgotten_text(count: int) -> str:
    return (
        f"🧹 Done: deleted {plural(count, 'request')} of yours, with the pictures the bot kept. Messages already posted in channels stay; "
        "use their Delete button to remove them."
    )


# Fixed replies.
NO_PICTURE_ON_MESSAGE = "❌ That message has no picture attached. Pick a message with an image."
FORM_EXPIRED = "⌛ This form has expired. Use Apps → Depth to image on the message again."
JOB_GONE = "🗑️ That picture is no longer stored (it was deleted). Start again with /depth2img."
JOB_GONE_SHORT = "🗑️ That picture is no longer stored."
ONLY_REQUESTER_OR_MODERATOR_DELETES = (
    "🚫 Only the member who asked for this picture, or someone with Manage Messages, can delete it."
)
ONLY_REQUESTER_CANCELS = "🚫 Only the member who asked can cancel this."
ALREADY_FINISHED = "This picture is already finished."
NOT_FOUND_FOR_SHOW = "🔎 No delivered picture has that id. See /depth2img-history for yours."
OTHER_SERVER = "🔎 That picture was made in another server."
DELETED_FOR_OTHERS = (
    "🗑️ That picture was deleted. Only the member who asked for it can bring it back, and only for themselves."
)
AGE_RESTRICTED_ONLY = "🔞 That picture was made in an age-restricted channel: it can only be shown in one."
SETTINGS_MANAGERS_ONLY = "🚫 Only members with the Manage Server permission can change these settings."


def delivery_failed(ref: str) -> str:
    return (
        f"⚠️ Something went wrong (code `{ref}`): Discord refused the bot's message with your picture. "
        "Try again; if it keeps happening, give the bot's owner this code."
    )


def depth_map_caption(job_id: str) -> str:
    return f"🗺️ The depth map picture `{job_id}` was made from (near is light, far is dark)."


def comparison_caption(job_id: str) -> str:
    return f"🪞 Before | after for picture `{job_id}`"


def format_error(error: BaseException) -> str | None:
    """For the bot's global error handler: the words for an error of this extension, else None."""
    return describe(error) if isinstance(error, Depth2ImgError) else None
