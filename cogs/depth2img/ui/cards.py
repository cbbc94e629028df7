"""The result card, in its two forms: compact (the picture, the prompt and the time; the rest behind
ℹ️ Details, answered privately) and full (everything on the card), and the Details answer itself.
Discord markup only, in the reader's language (``lang``); nothing here sends anything."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from cogs.depth2img.models import GeneratedImage, GenerationParams, GenerationResult
from cogs.depth2img.store import Job
from cogs.i18n import text

from .text import neutralise

# Discord takes an attachment's description (its alt text, read out by screen readers) of up to 1,024
# characters; its API description counts them in UTF-16 units (an emoji is two).
ALT_MAX = 1024


def alt_text(job: Job, lang: str, *, index: int = 0, total: int = 1, blank: bool = False) -> str:
    """A result picture's alt text: what it is and the prompt it was made for (``index`` of ``total``;
    ``blank``: what a safety checker sent instead)."""
    if blank:
        return _fit(text(lang, "alt.blank", prompt=job.params.prompt))
    if total > 1:
        return _fit(text(lang, "alt.result_of", n=index + 1, total=total, prompt=job.params.prompt))
    return _fit(text(lang, "alt.result", prompt=job.params.prompt))


def result_alts(job: Job, images: Sequence[GeneratedImage], lang: str) -> list[str]:
    """The alt text of each picture of a result."""
    return [alt_text(job, lang, index=n, total=len(images), blank=img.blank) for n, img in enumerate(images)]


def comparison_alt(job: Job, lang: str) -> str:
    return _fit(text(lang, "alt.before_after", prompt=job.params.prompt))


def depth_map_alt(lang: str) -> str:
    return text(lang, "alt.depth_map")


def _fit(value: str, limit: int = ALT_MAX) -> str:
    units = value.encode("utf-16-le", "surrogatepass")
    if len(units) <= 2 * limit:
        return value
    # (cut at a unit boundary; half an emoji left at the cut is dropped)
    return units[: 2 * (limit - 1)].decode("utf-16-le", "ignore") + "…"


def duration(lang: str, value: float) -> str:
    """A measured time, to a tenth: "4.2 s", "2.5 min"."""
    if value < 100:
        return text(lang, "time.seconds", n=round(value, 1))
    return text(lang, "time.minutes", n=round(value / 60, 1))


def _timing(
    lang: str, total: float | None, generating: float | None, queued: float | None, waited: float | None
) -> list[str]:
    parts = []
    if total is not None:
        parts.append(text(lang, "card.total", time=duration(lang, total)))
    if generating is not None:
        parts.append(text(lang, "card.generating", time=duration(lang, generating)))
    if queued is not None and queued >= 0.05:
        parts.append(text(lang, "card.queued", time=duration(lang, queued)))
    if waited is not None and waited >= 0.05:
        parts.append(text(lang, "card.waited", time=duration(lang, waited)))
    return parts


def _options(lang: str, params: GenerationParams) -> list[str]:
    """strength, steps and guidance as chosen (numbers as the language writes them)."""
    chosen = (
        ("card.strength", params.strength),
        ("card.steps", params.steps),
        ("card.guidance", params.guidance),
    )
    return [text(lang, key, value=value) for key, value in chosen if value is not None]


def result_text(
    params: GenerationParams, result: GenerationResult, lang: str, *, user_mention: str, limit: int = 2000
) -> str:
    """The message that comes with the images. Fits Discord's 2000-character limit."""
    timing = _timing(lang, result.total_s, result.generation_time_s, result.api_queue_s, result.local_wait_s)
    details = [text(lang, "card.seed", seed=str(result.seed))] if result.seed is not None else []
    details += _options(lang, params)
    if len(result.images) > 1:
        details.append(text(lang, "count.pictures", n=len(result.images)))
    first = result.images[0]
    details.append(f"{first.width}×{first.height}")

    head = text(lang, "card.head", member=user_mention)
    tail_lines = [" · ".join(details), " · ".join(timing)]
    if blanks := sum(image.blank for image in result.images):
        tail_lines.append(blank_note(blanks, len(result.images), lang))
    negative = ""
    if params.negative_prompt:
        negative = "\n" + text(lang, "card.negative", prompt=_escape(params.negative_prompt))
    label = len(text(lang, "card.prompt", prompt=""))  # the line's own words, wherever the prompt goes
    body_budget = limit - len(head) - label - sum(len(t) + 1 for t in tail_lines) - 20
    prompt = _escape(params.prompt)
    if len(prompt) + len(negative) > body_budget:
        negative = negative[: max(0, min(len(negative), body_budget // 3))]
        if negative and len(negative) < len(params.negative_prompt or "") + 14:
            negative = negative.rstrip() + "…"
        room = body_budget - len(negative)
        if len(prompt) > room:
            prompt = prompt[: max(0, room - 1)].rstrip() + "…"
    said = f"{head}\n{text(lang, 'card.prompt', prompt=prompt)}{negative}\n" + "\n".join(tail_lines)
    return said[:limit]


def blank_note(blanks: int, total: int, lang: str) -> str:
    """Why a picture came back blank, and what the server can do about it."""
    advice = text(lang, "blank.advice")
    if total == 1:
        return text(lang, "blank.only", advice=advice)
    if blanks == total:
        return text(lang, "blank.all", advice=advice)
    return text(lang, "blank.some", n=blanks, total=total, advice=advice)


_MD_RE = re.compile(r"([\\*_`~|>#\[\]()-])")


def _escape(value: str) -> str:
    """Escape Markdown and neutralise mentions so a prompt shows literally and pings no one."""
    return neutralise(_MD_RE.sub(r"\\\1", value))


def command_line(params: GenerationParams, seed: int | None = None) -> str:
    """The options as one line that is easy to copy on a phone (a code block, no Markdown inside).
    Command syntax, the same in every language (option names are not translated)."""
    p = params
    parts = [f"prompt:{p.prompt}"]
    if p.negative_prompt:
        parts.append(f"negative_prompt:{p.negative_prompt}")
    for name, value in (("strength", p.strength), ("steps", p.steps), ("guidance", p.guidance)):
        if value is not None:
            parts.append(f"{name}:{value:g}" if isinstance(value, float) else f"{name}:{value}")
    if (seed if seed is not None else p.seed) is not None:
        parts.append(f"seed:{seed if seed is not None else p.seed}")
    if p.samples != 1:
        parts.append(f"samples:{p.samples}")
    line = neutralise(" ".join(parts).replace("`", "'"))
    if len(line) > 600:
        line = line[:599] + "…"
    return f"```\n/depth2img {line}\n```"


def params_block(job: Job, lang: str, seed: int | None = None) -> str:
    """The job's id and its copyable command line."""
    return text(lang, "card.copy", id=job.id) + "\n" + command_line(job.params, seed)


def compact_card(job: Job, result: GenerationResult, lang: str) -> str:
    """The card by default: who, the prompt, one line with the time (the rest is behind ℹ️ Details)."""
    prompt = _escape(job.params.prompt)
    if len(prompt) > 300:
        prompt = prompt[:299].rstrip() + "…"
    lines = [f"🎨 <@{job.user_id}> · {prompt}", f"⏱️ {duration(lang, result.total_s)}"]
    if blanks := sum(image.blank for image in result.images):
        lines.append(blank_note(blanks, len(result.images), lang))
    return "\n".join(lines)


def details_text(job: Job, lang: str) -> str:
    """ℹ️ Details, privately: the seed, the options, the size, the timings, the job, and how to make it
    again (the source picture is that of this job: /depth2img-show brings it back with its buttons)."""
    info: dict[str, Any] = json.loads(job.result_info) if job.result_info else {}
    p = job.params
    seed = info.get("seed", job.api_seed if job.api_seed is not None else p.seed)
    facts = [
        text(lang, "card.seed", seed=str(seed)) if seed is not None else text(lang, "card.seed_by_service")
    ]
    facts += _options(lang, p)
    if info.get("width"):
        facts.append(f"{info['width']}×{info['height']}")
    if info.get("pictures", 1) > 1:
        facts.append(text(lang, "count.pictures", n=int(info["pictures"])))
    timing = _timing(
        lang, info.get("total_s"), info.get("generation_s"), info.get("api_queue_s"), info.get("local_wait_s")
    )
    lines = [text(lang, "details.title", id=job.id), " · ".join(facts)]
    if timing:
        lines.append(" · ".join(timing))
    if job.parent_id:
        lines.append(text(lang, "details.from_parent", parent=job.parent_id, id=job.id))
    else:
        lines.append(text(lang, "details.from_yours", id=job.id))
    lines.append(command_line(p, seed=seed))
    return "\n".join(lines)[:2000]


def result_message(job: Job, result: GenerationResult, lang: str) -> str:
    """The whole message that comes with a job's images."""
    said = result_text(job.params, result, lang, user_mention=f"<@{job.user_id}>")
    extra = params_block(job, lang, seed=result.seed)
    if job.parent_id:
        extra = text(lang, "card.from", id=job.parent_id) + " · " + extra
    return f"{said}\n{extra}" if len(said) + len(extra) + 1 <= 2000 else said


def shown_text(job: Job, lang: str, *, deleted: bool = False, blank: bool = False) -> str:
    """A kept result brought back by /depth2img-show (``blank``: a safety checker's flat picture)."""
    key = "card.shown_deleted" if deleted else "card.shown"
    said = text(lang, key, id=job.id, member=f"<@{job.user_id}>")
    if blank:
        said += "\n" + text(lang, "blank.shown")
    return said + "\n" + params_block(job, lang)


def late_text(job: Job, lang: str, *, blank: bool = False) -> str:
    """A kept result posted once Discord took requests again: whose it is, and why it comes late (and,
    to its member, why it is blank)."""
    said = text(lang, "card.late", id=job.id, member=f"<@{job.user_id}>")
    if blank:
        said += "\n" + blank_note(1, 1, lang)
    return said + "\n" + params_block(job, lang)


def withheld_text(job: Job, lang: str) -> str:
    """A result asked for in an age-restricted channel that no longer is one: kept, not shown there."""
    return text(lang, "card.withheld", id=job.id, member=f"<@{job.user_id}>")
