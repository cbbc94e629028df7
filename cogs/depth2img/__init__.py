"""The /depth2img extension. Its public face, all that the bot that loads it uses:

* ``setup(bot)`` / ``teardown(bot)``, discord.py's extension hooks: ``setup`` builds the pieces in
  order (settings → ledger → backend → service → cogs) and registers the extension's error wording and
  its drain with the bot; ``teardown`` takes them back;
* ``settings_problems(env)`` and ``secret_values(env)``: so that the bot reports every problem with
  its settings at once, before it starts, and redacts this extension's secrets from its logs;
* ``check(env)``: the owner's check of the chosen image service (``python bot.py --check``).

Everything else is imported here lazily: ``core``, ``store`` and ``backends`` can be imported without
discord.py, and ``core`` and ``store`` without aiohttp.

Package layout: ``backends/`` (the image services; the only aiohttp users), ``core/`` (the job logic
behind one facade, ``core/service.py``), ``store/`` (the job ledger), ``ui/`` (the only package that
imports discord.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from discord.ext import commands

log = logging.getLogger(__name__)


class Host(Protocol):
    """What this extension needs from the bot that loads it (``bot.py``)."""

    env: Mapping[str, str]  # the settings the bot was started with
    data_dir: Path
    metrics_registry: Any  # a prometheus_client.CollectorRegistry the bot serves
    instance_group: str  # what this process shares with the one it replaces (its shards)

    def add_error_formatter(
        self, name: str, formatter: Callable[[BaseException, str], str | None]
    ) -> None: ...

    def remove_error_formatter(self, name: str) -> None: ...

    def add_drain(
        self, name: str, drain: Callable[[float], Awaitable[bool]], busy: Callable[[], bool]
    ) -> None: ...

    def remove_drain(self, name: str) -> None: ...

    def add_readiness(self, name: str, check: Callable[[], Awaitable[bool]]) -> None: ...

    def remove_readiness(self, name: str) -> None: ...


def settings_problems(env: Mapping[str, str]) -> list[str]:
    from .config import ConfigError, load_settings

    try:
        load_settings(env)
    except ConfigError as exc:
        return exc.problems
    return []


def secret_values(env: Mapping[str, str]) -> list[str]:
    from .config import secret_values as secrets_of

    return secrets_of(env)


async def check(env: Mapping[str, str]) -> list[tuple[str, bool, str]]:
    """The owner's check (``python bot.py --check``) of the chosen image service, generating nothing:
    one (what, passed, detail) per check."""
    from .backends.choose import build_backend
    from .backends.comfyui_workflow import WorkflowError
    from .backends.guard import Guard
    from .backends.http import open_session
    from .config import load_settings

    settings = load_settings(env)
    guard = Guard([settings.service_url])
    session = open_session(guard, connections=4, user_agent="depth2img-bot/0.1 (check)")

    async def recall(name: str) -> str | None:
        return None

    async def remember(name: str, value: str) -> None:
        return None

    try:
        backend = await build_backend(settings, session, guard, recall=recall, remember=remember)
    except WorkflowError as exc:
        await session.close()
        return [("ComfyUI workflow", False, exc.owner_message)]
    try:
        return await backend.check()
    finally:
        await backend.close()


async def setup(bot: commands.Bot) -> None:
    from .backends.attachments import DiscordAttachments
    from .backends.choose import build_backend
    from .backends.guard import Guard
    from .backends.http import open_session
    from .config import load_settings
    from .core.service import Depth2ImgService
    from .metrics import Metrics
    from .store import Ledger
    from .ui.cog import Depth2ImgCog
    from .ui.settings_cmds import SettingsCog
    from .ui.text import format_error
    from .ui.translator import CatalogueTranslator

    host = cast(Host, bot)
    settings = load_settings(host.env)
    ledger = await Ledger.open(
        settings.database_url or host.data_dir / "jobs.sqlite3",
        group=host.instance_group,
        lease_s=settings.job_lease_s,
    )
    log.info(
        "job ledger open",
        extra={"backend": ledger.backend, "owner": ledger.owner, "schema_version": ledger.schema_version},
    )
    closing: list[Callable[[], Awaitable[None]]] = [ledger.close]
    try:
        # The extension's own HTTP session: every connection guarded (no private address but the
        # configured service's exact origin), which the bot's shared session could not be.
        guard = Guard([settings.service_url])
        session = open_session(guard, connections=1024, user_agent="depth2img-bot/0.1")
        closing.append(session.close)
        attachments = DiscordAttachments(user_agent="depth2img-bot/0.1")
        closing.append(attachments.close)
        backend = await build_backend(
            settings, session, guard, recall=ledger.recall, remember=ledger.remember
        )
        service = Depth2ImgService(
            backend,
            settings,
            ledger,
            attachments=attachments,
            data_dir=host.data_dir,
            metrics=Metrics(host.metrics_registry, data_dir=host.data_dir),
        )
        await bot.tree.set_translator(CatalogueTranslator())
        await bot.add_cog(Depth2ImgCog(bot, service))  # from here on, the cog closes what it uses
    except BaseException:
        for close in reversed(closing):
            await close()
        raise
    await bot.add_cog(SettingsCog(service))
    host.add_error_formatter(__name__, format_error)
    host.add_drain(__name__, service.drain, lambda: service.busy)
    host.add_readiness("ledger", ledger.answers)  # /healthz: ready only while the ledger answers


async def teardown(bot: commands.Bot) -> None:
    host = cast(Host, bot)
    host.remove_error_formatter(__name__)
    host.remove_drain(__name__)
    host.remove_readiness("ledger")
