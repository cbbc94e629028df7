"""Before the acknowledgement, synchronous and cheap: whether a request may run here and now. The
member's options with the server's rules applied, direct messages, the declared size, a disk found
full, admission (per member, per server, overall), and interactions seen twice. Every refusal is
counted here, and is a :class:`RequestRejected` whose words the member reads privately; none costs an
API call.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import InvalidInput, NotAllowed, RequestRejected, StorageFull
from cogs.depth2img.metrics import Metrics
from cogs.depth2img.models import GenerationParams
from cogs.depth2img.store import Ledger

from .admission import Admission, Ticket
from .policy import GuildSettings, check_request

log = logging.getLogger(__name__)

SEEN_MAX = 10_000  # interaction ids remembered (Discord delivers an event twice within minutes, if at all)


@dataclass(frozen=True, slots=True)
class Where:
    """Where a request was made, for the server's rules. The look-ups are called only if a rule needs them."""

    guild_id: int | None
    channel_id: int | None
    roles: Callable[[], tuple[int, ...]]
    is_manager: Callable[[], bool]
    age_restricted: Callable[[], bool]


class Gate:
    def __init__(
        self,
        settings: Depth2ImgSettings,
        ledger: Ledger,
        admission: Admission,
        metrics: Metrics,
        *,
        room: Callable[[int], bool] = lambda size: True,
    ) -> None:
        """``room(size)``: whether a picture of ``size`` bytes can be kept (``Pictures.has_room``)."""
        self.settings = settings
        self.room = room
        self.ledger = ledger
        self.admission = admission
        self.metrics = metrics
        self._rules: dict[int, GuildSettings] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()

    # --- servers' rules ---

    async def load_rules(self) -> None:
        self._rules = {
            guild: GuildSettings.from_json(data)
            for guild, data in (await self.ledger.all_guild_settings()).items()
        }

    def rules(self, guild_id: int | None) -> GuildSettings:
        return self._rules.get(guild_id, GuildSettings()) if guild_id is not None else GuildSettings()

    async def save_rules(self, guild_id: int, new: GuildSettings, *, by: int) -> GuildSettings:
        """Store and apply at once."""
        await self.ledger.save_guild_settings(guild_id, new.to_json(), by)
        self._rules[guild_id] = new
        log.info("server settings changed", extra={"guild_id": guild_id, "by": by})
        return new

    # --- a request ---

    def check(
        self, make_params: Callable[[], GenerationParams], where: Where, *, declared_size: int
    ) -> GenerationParams:
        try:
            if where.guild_id is None and not self.settings.allow_dms:
                raise NotAllowed("refused.servers_only")
            rules = self.rules(where.guild_id)
            restricted = bool(rules.channels or rules.roles)  # look up only what the rules need
            checked = check_request(
                rules,
                make_params(),
                channel_id=where.channel_id,
                role_ids=where.roles() if rules.roles else (),
                is_manager=restricted and where.is_manager(),
                age_restricted=rules.nsfw_in_age_restricted and where.age_restricted(),
            )
            self._check_declared_size(declared_size)
            if not self.room(declared_size):  # (the disk was found full, and still is)
                raise StorageFull()
        except RequestRejected as exc:
            self.rejected(exc)
            raise
        return checked

    def admit(self, user_id: int, guild_id: int | None, *, pictures: int = 1) -> Ticket:
        rules = self.rules(guild_id)
        # the stricter of the server's own quota per member and the owner's (which alone applies in DMs)
        quotas = [q for q in (rules.member_daily_quota, self.settings.member_daily_quota) if q > 0]
        try:
            return self.admission.admit(
                user_id,
                guild_id,
                cooldown_s=rules.cooldown_s,
                member_daily_quota=min(quotas, default=0),
                pictures=pictures,
            )
        except RequestRejected as exc:
            self.rejected(exc)
            raise

    def first_sight(self, interaction_id: int) -> bool:
        """Whether this interaction is new to this process (Discord may deliver an event twice)."""
        if interaction_id in self._seen:
            log.warning("interaction seen twice; it runs once", extra={"interaction_id": interaction_id})
            return False
        self._seen[interaction_id] = None
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def rejected(self, exc: RequestRejected) -> None:
        log.info("job rejected", extra={"job": exc.job_id, "reason": type(exc).__name__})
        self.metrics.rejected.labels(reason=type(exc).__name__).inc()

    def _check_declared_size(self, size: int) -> None:
        limit = self.settings.max_input_bytes
        if size > limit:
            raise InvalidInput(
                "input.file_size", size=round(size / 1048576, 1), limit=round(limit / 1048576, 1)
            )
        if size <= 0:
            raise InvalidInput("input.empty_file")
