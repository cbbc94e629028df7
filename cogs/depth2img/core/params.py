"""The member's options: cleaned, checked, and derived for the buttons of a result. Pure functions."""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import replace

from cogs.depth2img.errors import InvalidInput
from cogs.depth2img.models import Action, GenerationParams

PROMPT_MAX = 1000
STEPS_RANGE = (1, 50)
GUIDANCE_RANGE = (1.0, 20.0)
SEED_MAX = 2**32 - 1
SAMPLES_RANGE = (1, 4)
DEFAULT_STRENGTH = 0.55  # what the API uses when none is given (contract §1.4)
STRENGTH_STEP = 0.15


def clean_text(text: str) -> str:
    """Drop control and format characters (newlines and tabs become spaces) and squeeze spaces."""
    if text.isprintable():  # no control, format, private-use, unassigned or separator but " "
        return " ".join(text.split())
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\r\t":
            kept.append(" ")
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())


def build_params(
    *,
    prompt: str,
    negative_prompt: str | None = None,
    strength: float | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    samples: int | None = None,
    safety_checker: bool = True,
) -> GenerationParams:
    """Validate the member's options. Pure and synchronous; raises :class:`InvalidInput`."""
    if len(prompt) > PROMPT_MAX * 2:
        raise InvalidInput("input.prompt_too_long", length=len(prompt), limit=PROMPT_MAX)
    cleaned = clean_text(prompt)
    if not cleaned:
        raise InvalidInput("input.prompt_empty")
    if len(cleaned) > PROMPT_MAX:
        raise InvalidInput("input.prompt_too_long", length=len(cleaned), limit=PROMPT_MAX)
    negative = clean_text(negative_prompt) if negative_prompt else None
    if negative is not None and len(negative) > PROMPT_MAX:
        raise InvalidInput("input.negative_too_long", length=len(negative), limit=PROMPT_MAX)
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise InvalidInput("input.strength_range", low=0, high=1)
    if steps is not None and not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise InvalidInput("input.steps_range", low=STEPS_RANGE[0], high=STEPS_RANGE[1])
    if guidance is not None and not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
        raise InvalidInput("input.guidance_range", low=GUIDANCE_RANGE[0], high=GUIDANCE_RANGE[1])
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise InvalidInput("input.seed_range", low=0, high=SEED_MAX)
    if samples is not None and not SAMPLES_RANGE[0] <= samples <= SAMPLES_RANGE[1]:
        raise InvalidInput("input.samples_range", low=SAMPLES_RANGE[0], high=SAMPLES_RANGE[1])
    return GenerationParams(
        prompt=cleaned,
        negative_prompt=negative or None,
        strength=strength,
        steps=steps,
        guidance=guidance,
        seed=seed,
        samples=samples or 1,
        safety_checker=safety_checker,
    )


def derive(
    parent: GenerationParams,
    action: Action,
    *,
    prompt: str | None = None,
    negative_prompt: str | None = None,
) -> GenerationParams:
    """The options of a job made from ``parent`` by a button (or the edit form)."""
    p = parent
    if action in (Action.SEED, Action.REUSE):
        return replace(p, seed=secrets.randbelow(SEED_MAX + 1))
    if action in (Action.CLOSER, Action.MORE):
        current = p.strength if p.strength is not None else DEFAULT_STRENGTH
        step = -STRENGTH_STEP if action is Action.CLOSER else STRENGTH_STEP
        return replace(p, strength=round(min(1.0, max(0.05, current + step)), 2))
    if action is Action.EDIT:
        return build_params(
            prompt=prompt if prompt is not None else p.prompt,
            negative_prompt=negative_prompt,
            strength=p.strength,
            steps=p.steps,
            guidance=p.guidance,
            seed=p.seed,
            samples=p.samples,
            safety_checker=p.safety_checker,
        )
    raise ValueError(f"{action} makes no new job")
