"""Per-server rules set with /depth2img-settings, and the check that applies them. Discord-free: the
UI hands in plain ids and flags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from cogs.depth2img.errors import InvalidInput, NotAllowed
from cogs.depth2img.models import GenerationParams
from cogs.i18n import Plural


@dataclass(frozen=True, slots=True)
class OwnerLimits:
    """The limits the bot's owner set for every server (environment settings; 0: none)."""

    guild_daily_quota: int = 0  # SD_GUILD_DAILY_QUOTA: requests per server per day
    member_daily_quota: int = 0  # SD_MEMBER_DAILY_QUOTA: pictures per member per day
    bot_daily_quota: int = 0  # SD_BOT_DAILY_QUOTA: pictures per day across every server


MAX_LISTED = 25  # channels or roles one server may list


@dataclass(frozen=True, slots=True)
class GuildSettings:
    channels: tuple[int, ...] = ()  # where the bot may be used; empty: everywhere
    roles: tuple[int, ...] = ()  # who may use it; empty: everyone
    member_daily_quota: int = 0  # pictures one member may make per UTC day; 0: no limit
    cooldown_s: float | None = None  # seconds between two requests of a member; None: the bot's default
    max_samples: int = 4
    max_steps: int = 50
    nsfw_in_age_restricted: bool = False  # whether age-restricted channels may turn the safety checker off
    card: str = "compact"  # the result card: compact (details behind a button) or full

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GuildSettings:
        raw: dict[str, Any] = json.loads(text)
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["channels"] = tuple(int(c) for c in known.get("channels", ()))
        known["roles"] = tuple(int(r) for r in known.get("roles", ()))
        return cls(**known)

    def with_listed(self, kind: str, item: int, allowed: bool) -> GuildSettings:
        current = list(self.channels if kind == "channels" else self.roles)
        if allowed and item not in current:
            if len(current) >= MAX_LISTED:
                raise InvalidInput(
                    "settings.too_many_channels" if kind == "channels" else "settings.too_many_roles",
                    n=MAX_LISTED,
                )
            current.append(item)
        elif not allowed and item in current:
            current.remove(item)
        if kind == "channels":
            return replace(self, channels=tuple(current))
        return replace(self, roles=tuple(current))


def check_request(
    settings: GuildSettings,
    params: GenerationParams,
    *,
    channel_id: int | None,
    role_ids: tuple[int, ...],
    is_manager: bool,
    age_restricted: bool,
) -> GenerationParams:
    """Apply the server's rules to one request. Raises :class:`NotAllowed` or :class:`InvalidInput`
    with a member-facing reason; returns the options with the content policy applied."""
    if settings.channels and channel_id not in settings.channels and not is_manager:
        where = ", ".join(f"<#{c}>" for c in settings.channels[:5])
        raise NotAllowed("refused.channels_only", channels=where)
    if settings.roles and not is_manager and not set(role_ids) & set(settings.roles):
        raise NotAllowed("refused.roles_only")
    if params.samples > settings.max_samples:
        raise InvalidInput("refused.max_samples", pictures=Plural("count.pictures", settings.max_samples))
    if params.steps is not None and params.steps > settings.max_steps:
        raise InvalidInput("refused.max_steps", steps=Plural("count.steps", settings.max_steps))
    safety = not (age_restricted and settings.nsfw_in_age_restricted)
    return params if params.safety_checker == safety else replace(params, safety_checker=safety)
