"""A kept result posted in its channel once Discord takes requests again (core/late.py chooses which
and when): the job's message had said it would be. The kept picture (the first), its buttons, and a
line that says why it comes late, mentioning only its member."""

from __future__ import annotations

import asyncio
import logging

import discord

from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import DeliveryInterrupted, InvalidInput
from cogs.depth2img.store import Job

from . import cards
from .channels import may_show_there
from .components import result_view, upload
from .langs import of_job
from .posting import earlier_post, posted

log = logging.getLogger(__name__)

LATE_POST_TIMEOUT_S = 120.0  # one try, rate limits and discord.py's own retries included


async def post_kept(client: discord.Client, service: Depth2ImgService, job: Job) -> None:
    """Post ``job``'s kept result in its channel (unless an earlier try got it there), and tell the
    service what came of it. Never raises: a try Discord took nothing for is made again later."""
    lang = of_job(client, job, None)  # (the channel sees it: the server's language)
    if not may_show_there(client, job):
        log.warning(
            "a kept result asked for in an age-restricted channel is not posted late: the channel no "
            "longer is one (its member can still bring it back with /depth2img-show in one that is)",
            extra={"job": job.id, "channel_id": job.channel_id},
        )
        await service.late_posted(job, posted=False)
        return
    try:
        async with asyncio.timeout(LATE_POST_TIMEOUT_S):
            if await earlier_post(client, job, latest=True) is None:
                now = await service.get(job.id)
                if now is None or not now.undelivered:  # (shown with /depth2img-show meanwhile)
                    return
                data, blank = await service.read_kept(job)
                name = (job.result_path or "").rsplit("/", 1)[-1] or f"{job.id}.png"
                await posted(
                    client,
                    job,
                    lambda: (
                        cards.late_text(job, lang, blank=blank),
                        [upload(data, name, cards.alt_text(job, lang, blank=blank))],
                        result_view(job.id, lang),
                    ),
                )
    except (DeliveryInterrupted, TimeoutError, discord.RateLimited) as exc:  # (tried again later)
        log.info("Discord takes no kept result yet", extra={"job": job.id, "error": type(exc).__name__})
        return
    except (discord.HTTPException, InvalidInput, OSError) as exc:  # (refused, or the picture is gone)
        log.warning(
            "a kept result could not be posted late", extra={"job": job.id, "error": type(exc).__name__}
        )
        await service.late_posted(job, posted=False)
        return
    except Exception as exc:
        log.error("posting a kept result failed", extra={"job": job.id, "error": type(exc).__name__})
        await service.late_posted(job, posted=False)
        return
    await service.late_posted(job, posted=True)
