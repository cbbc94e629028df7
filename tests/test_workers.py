"""The image worker processes (``IMAGE_WORKERS``): one that dies (the OOM killer on a small machine
picks the largest process, often a worker decoding a large picture) must not take the bot's picture
work down with it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

from PIL import Image

from cogs.i18n import text
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
    for pid in workers:  # (both: each worker that dies is found by the next picture given to it)
        os.kill(pid, signal.SIGKILL)
    _, first = await slash(
        fake_discord,
        {"prompt": "a lighthouse"},
        image=jpeg(),
        filename="photo.jpg",
        content_type="image/jpeg",
    )
    assert len(first.results) == 1, first.content
    fake_api.output_png = output = jpeg()
    _, second = await slash(fake_discord, {"prompt": "a cabin"}, user_id=5151)
    assert [f.data for f in second.results] == [output], second.content
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 2}
    assert log_text(caplog).count("an image worker stopped") == 2
    assert_clean(fake_discord, fake_api, caplog)


def slow_jpeg(scans: int = 40_000) -> bytes:
    """A picture made to be slow: a progressive JPEG (2048x2048, grey) whose smallest scan is repeated
    ``scans`` times. The decoder goes through the whole picture for each scan: 40 000 take ~10 s of
    one core here, in 670 KB (libjpeg-turbo only warns about such a progression)."""
    buf = io.BytesIO()
    Image.new("L", (2048, 2048), 128).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    segments, at = [], 2
    while data[at + 1] != 0xD9:  # (the segments, each a marker and its length; a scan with its data)
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
        segments.append(data[at:end])
        at = end
    small = min((s for s in segments[1:] if s[1] == 0xDA), key=len)
    body = b"".join(s * (scans + 1) if s is small else s for s in segments)
    return data[:2] + body + b"\xff\xd9"


def test_the_slow_picture_is_a_real_jpeg_that_decodes():
    """The helper's picture is what it says: a JPEG Pillow opens and (given time) decodes whole."""
    picture = Image.open(io.BytesIO(slow_jpeg(scans=50)))
    assert (picture.format, picture.size) == ("JPEG", (2048, 2048))
    picture.load()
    assert picture.getextrema() == (128, 128)


async def test_a_picture_made_to_be_slow_is_refused_and_its_worker_stopped(
    start_bot, fake_discord, fake_api, caplog
):
    """Two members attach a picture crafted to take minutes to decode (a progressive JPEG of tens of
    thousands of scans: under every size and pixel limit). Each held an image worker for as long as it
    took; with two workers, nobody's JPEG was checked meanwhile, and every paid output that needed a
    worker waited. Now a worker gets IMAGE_WORK_TIMEOUT_S per picture: past it the worker is killed
    and started again, the member is told, no API call is made, and a third member's JPEG, which waited
    behind them for longer than the bound, is made by the new workers."""
    bot = await start_bot(IMAGE_WORKERS="2", IMAGE_WORK_TIMEOUT_S="2")
    first_workers = image_workers()
    assert len(first_workers) == 2, first_workers
    slow = slow_jpeg()
    jpeg_options = {"filename": "photo.jpg", "content_type": "image/jpeg"}
    crafted = [
        asyncio.create_task(slash(fake_discord, {"prompt": "a maze"}, image=slow, user_id=u, **jpeg_options))
        for u in (6161, 6262)
    ]
    sources = Path(service_of(bot).pictures.sources_dir)
    await fake_discord.wait_for(lambda: len(list(sources.glob("*.upload"))) == 2)  # (in the workers)
    _, ordinary = await slash(
        fake_discord, {"prompt": "a harbour"}, image=jpeg(), user_id=6363, **jpeg_options
    )
    assert len(ordinary.results) == 1, ordinary.content
    for _, final in await asyncio.gather(*crafted):
        assert "takes far too long to read" in final.content, final.content
        assert final.results == []
    assert len(fake_api.submissions) == 1  # (the ordinary picture's only)
    assert not set(first_workers) & set(image_workers())  # (stopped, and others started)
    assert not any(sources.glob("*.upload"))
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1, "failed": 2}
    assert "IMAGE_WORK_TIMEOUT_S=2 s" in log_text(caplog)
    assert_clean(fake_discord, fake_api, caplog)


async def test_an_output_made_to_be_slow_fails_its_job_alone(start_bot, fake_discord, fake_api, caplog):
    """The image service sends back such a picture: it is not checked for minutes (its job's deadline
    passed meanwhile); the job ends saying the picture cannot be used, and the next job is made."""
    bot = await start_bot(IMAGE_WORKERS="2", IMAGE_WORK_TIMEOUT_S="2")
    fake_api.output_png = slow_jpeg()
    _, final = await slash(fake_discord, {"prompt": "a maze"})
    assert "cannot use" in final.content, final.content
    assert final.results == []
    fake_api.output_png = output = jpeg()
    _, second = await slash(fake_discord, {"prompt": "a cabin"}, user_id=5151)
    assert [f.data for f in second.results] == [output], second.content
    await fake_discord.wait_until_idle(busy(bot))
    assert not any(Path(service_of(bot).pictures.results_dir).glob("*.download"))
    assert_clean(fake_discord, fake_api, caplog)


async def kill_its_worker_twice(fake_discord, folder: Path, pattern: str) -> None:
    """Wait until a picture matching ``pattern`` is in ``folder`` (handed to the only image worker),
    then kill that worker, and the one started again in its place, as the OOM killer would."""
    await fake_discord.wait_for(lambda: any(folder.glob(pattern)))
    (first,) = image_workers()
    os.kill(first, signal.SIGKILL)
    await fake_discord.wait_for(lambda: image_workers() not in ([], [first]))
    (second,) = image_workers()
    os.kill(second, signal.SIGKILL)


async def test_a_picture_that_kills_its_worker_twice_is_refused_alone(
    start_bot, fake_discord, fake_api, caplog
):
    """A member's picture kills its worker (out of memory), and the worker started again for it too.
    The member used to read "a problem of its own" with a code; now the picture is refused, saying
    why and what to do, at no cost, and the next member's JPEG is made by a worker started again."""
    bot = await start_bot(IMAGE_WORKERS="1")
    jpeg_options = {"filename": "photo.jpg", "content_type": "image/jpeg"}
    refused = asyncio.create_task(
        slash(fake_discord, {"prompt": "a maze"}, image=slow_jpeg(), **jpeg_options)
    )
    await kill_its_worker_twice(fake_discord, service_of(bot).pictures.sources_dir, "*.upload")
    _, final = await refused
    assert final.content.endswith(text("en-US", "input.too_heavy"))
    assert fake_api.submissions == []
    _, ordinary = await slash(
        fake_discord, {"prompt": "a harbour"}, image=jpeg(), user_id=6363, **jpeg_options
    )
    assert len(ordinary.results) == 1, ordinary.content
    assert "an image worker stopped again over the same picture; the picture is refused" in log_text(caplog)
    assert_clean(fake_discord, fake_api, caplog)


async def test_an_output_that_kills_its_worker_twice_ends_its_job(start_bot, fake_discord, fake_api, caplog):
    """The same with a paid output: its job "failed unexpectedly" and was polled again, each time
    killing a worker, until its deadline (30 minutes by default). Now it ends at once, saying the image
    service sent a picture the bot cannot use."""
    bot = await start_bot(IMAGE_WORKERS="1")
    fake_api.output_png = slow_jpeg()
    made = asyncio.create_task(slash(fake_discord, {"prompt": "a maze"}))
    await kill_its_worker_twice(fake_discord, service_of(bot).pictures.results_dir, "*.download")
    _, final = await made
    assert text("en-US", "error.output_unusable") in final.content
    assert final.results == []
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"failed": 1}
    assert "job failed unexpectedly" not in log_text(caplog)
    assert_clean(fake_discord, fake_api, caplog)
