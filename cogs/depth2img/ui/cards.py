"""The result card, in its two forms: compact (the picture, the prompt and the time; the rest behind
ℹ️ Details, answered privately) and full (everything on the card), and the Details answer itself.
Discord markup only; nothing here sends anything."""

from __future__ import annotations

import json
import re
from typing import Any

from cogs.depth2img.models import GenerationParams, GenerationResult
from cogs.depth2img.store import Job
from cogs.depth2img.words import plural

from .text import neutralise


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
        timing.append(f"{_fmt_s(result.api_queue_s)} queued at the image service")
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
    if blanks := sum(image.blank for image in result.images):
        tail_lines.append(blank_note(blanks, len(result.images)))
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


def blank_note(blanks: int, total: int) -> str:
    """Why a picture came back blank, and what the server can do about it."""
    which = (
        "Your picture"
        if total == 1
        else ("All your pictures" if blanks == total else f"{plural(blanks, 'picture')} of {total}")
    )
    return (
        f"⬛ {which} came back blank: the image service's safety checker judged {'it' if blanks == 1 else 'them'} "
        "unsafe and replaced them. A server's moderators can allow such pictures in age-restricted channels "
        "(`/depth2img-settings content`); try another prompt otherwise."
    ).replace("replaced them", "replaced it" if blanks == 1 else "replaced them")


_MD_RE = re.compile(r"([\\*_`~|>#\[\]()-])")


def _escape(text: str) -> str:
    """Escape Markdown and neutralise mentions so a prompt shows literally and pings no one."""
    return neutralise(_MD_RE.sub(r"\\\1", text))


def params_block(job: Job, seed: int | None = None) -> str:
    """The options as one line that is easy to copy on a phone (a code block, no Markdown inside)."""
    p = job.params
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
    return f"job `{job.id}` · copy:\n```\n/depth2img {line}\n```"


def compact_card(job: Job, result: GenerationResult) -> str:
    """The card by default: who, the prompt, one line with the time (the rest is behind ℹ️ Details)."""
    prompt = _escape(job.params.prompt)
    if len(prompt) > 300:
        prompt = prompt[:299].rstrip() + "…"
    lines = [f"🎨 <@{job.user_id}> · {prompt}", f"⏱️ {_fmt_s(result.total_s)}"]
    if blanks := sum(image.blank for image in result.images):
        lines.append(blank_note(blanks, len(result.images)))
    return "\n".join(lines)


def details_text(job: Job) -> str:
    """ℹ️ Details, privately: the seed, the options, the size, the timings, the job, and how to make it
    again (the source picture is that of this job: /depth2img-show brings it back with its buttons)."""
    info: dict[str, Any] = json.loads(job.result_info) if job.result_info else {}
    p = job.params
    seed = info.get("seed", job.api_seed if job.api_seed is not None else p.seed)
    facts = [f"seed `{seed}`" if seed is not None else "seed chosen by the service"]
    for name, value in (("strength", p.strength), ("steps", p.steps), ("guidance", p.guidance)):
        if value is not None:
            facts.append(f"{name} {value:g}")
    if info.get("width"):
        facts.append(f"{info['width']}×{info['height']}")
    if info.get("pictures", 1) > 1:
        facts.append(plural(int(info["pictures"]), "picture"))
    timing = []
    if info.get("total_s") is not None:
        timing.append(f"⏱️ **{_fmt_s(info['total_s'])}** total")
    if info.get("generation_s") is not None:
        timing.append(f"{_fmt_s(info['generation_s'])} generating")
    if (queued := info.get("api_queue_s")) is not None and queued >= 0.05:
        timing.append(f"{_fmt_s(queued)} queued at the image service")
    if (waited := info.get("local_wait_s")) is not None and waited >= 0.05:
        timing.append(f"{_fmt_s(waited)} waiting for a free slot")
    lines = [f"ℹ️ **Details of picture `{job.id}`**", " · ".join(facts)]
    if timing:
        lines.append(" · ".join(timing))
    source = f"the source picture of `{job.parent_id}`" if job.parent_id else "the picture you sent"
    lines.append(
        f"Made from {source}. To make it again, bring it back with `/depth2img-show picture:{job.id}`, or attach the same picture to:"
    )
    lines.append(params_block(job, seed=seed).split("\n", 1)[1])
    return "\n".join(lines)[:2000]


def result_message(job: Job, result: GenerationResult) -> str:
    """The whole message that comes with a job's images."""
    text = result_text(job.params, result, user_mention=f"<@{job.user_id}>")
    extra = params_block(job, seed=result.seed)
    if job.parent_id:
        extra = f"↪️ from `{job.parent_id}` · " + extra
    return f"{text}\n{extra}" if len(text) + len(extra) + 1 <= 2000 else text


def shown_text(job: Job, *, deleted: bool = False) -> str:
    note = " (deleted from the channel: shown only to you)" if deleted else ""
    return f"🖼️ Job `{job.id}` by <@{job.user_id}>{note}\n" + params_block(job)
