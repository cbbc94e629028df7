"""The image worker processes (``IMAGE_WORKERS``): one that dies (the OOM killer on a small machine
picks the largest process, often a worker decoding a large picture) must not take the bot's picture
work down with it."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

from PIL import Image

from tests.conftest import busy, service_of, slash
from tests.fakes.fake_api import make_png
from tests.ledger_queries import count_by_state
from tests.test_e2e import assert_clean, log_text


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def image_workers() -> list[int]:
    """The bot's image worker processes: the children of this process's multiprocessing fork server."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    servers = set()
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if _parent(pid) == os.getpid() and b"forkserver" in cmdline:
            servers.add(pid)
    return [pid for pid in pids if _parent(pid) in servers]


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(make_png(noise=True))).save(buf, format="JPEG")
    return buf.getvalue()


async def test_an_image_worker_killed_does_not_stop_the_picture_work(
    start_bot, fake_discord, fake_api, caplog
):
    """A worker is killed (SIGKILL, as the OOM killer does). Python's process pool then refuses all
    work for good ("broken"): every member's JPEG (normalised by a worker) got "a problem of its own",
    and every paid output checked by a worker (a JPEG, a blank picture, one over Discord's limit) failed
    its job, polled again and again until its deadline, until the bot was restarted. Now the workers
    are started again, and the work is given to them once more: both pictures below are made."""
    bot = await start_bot(IMAGE_WORKERS="2")
    workers = image_workers()
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    _, first = await slash(
        fake_discord,
        {"prompt": "a lighthouse"},
        image=jpeg(),
        filename="photo.jpg",
        content_type="image/jpeg",
    )
    assert len(first.results) == 1, first.content
    os.kill(image_workers()[0], signal.SIGKILL)
    fake_api.output_png = output = jpeg()
    _, second = await slash(fake_discord, {"prompt": "a cabin"}, user_id=5151)
    assert [f.data for f in second.results] == [output], second.content
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 2}
    assert log_text(caplog).count("an image worker stopped") == 2
    assert_clean(fake_discord, fake_api, caplog)
