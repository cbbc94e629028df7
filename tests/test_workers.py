"""The image worker processes (``IMAGE_WORKERS``): one that dies (the OOM killer on a small machine
picks the largest process, often a worker decoding a large picture) must not take the bot's picture
work down with it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import pytest
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


def many_scans(scans: int, side: int = 2048) -> bytes:
    """A picture made to be slow: a progressive JPEG (grey, ``side`` pixels square) whose smallest
    scan is repeated ``scans`` times. The decoder goes through the whole picture for each scan: at
    2048x2048, 40 000 take ~10 s of one core here, in 670 KB (libjpeg-turbo only warns about such a
    progression)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="JPEG", progressive=True)
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


def slowest_allowed() -> bytes:
    """The slowest such picture that passes every check: 40 MP, just under the scan limit (~1.5 s of
    an image worker here, decoding and normalising it)."""
    from cogs.depth2img.images import MAX_JPEG_SCANS

    return many_scans(MAX_JPEG_SCANS - 10, side=6320)


JPEG = {"filename": "photo.jpg", "content_type": "image/jpeg"}


def test_the_crafted_picture_is_a_real_jpeg_that_decodes():
    """The helper's picture is what it says: a JPEG Pillow opens and (given time) decodes whole."""
    picture = Image.open(io.BytesIO(many_scans(50)))
    assert (picture.format, picture.size) == ("JPEG", (2048, 2048))
    picture.load()
    assert picture.getextrema() == (128, 128)


def test_the_scan_limit_refuses_only_what_no_encoder_writes():
    """Ordinary progressive JPEGs (Pillow's, colour and grey, with an EXIF thumbnail's scan) pass; the
    limit itself passes; one scan more is refused, for a member's picture and for an output alike."""
    from cogs.depth2img.errors import InvalidInput, OutputUnavailable
    from cogs.depth2img.images import MAX_JPEG_SCANS, finish_output, prepare_source

    for mode in ("RGB", "L"):
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x010F] = "a camera"
        Image.new(mode, (512, 512), 90).save(buf, format="JPEG", progressive=True, exif=exif)
        assert prepare_source(buf.getvalue(), max_pixels=10**6).width == 512
    own = many_scans(0, side=64).count(b"\xff\xda")  # (a grey progressive JPEG's: 6)
    at_limit = many_scans(MAX_JPEG_SCANS - own, side=64)
    assert at_limit.count(b"\xff\xda") == MAX_JPEG_SCANS
    assert prepare_source(at_limit, max_pixels=10**6).width == 64
    over = many_scans(MAX_JPEG_SCANS - own + 1, side=64)
    with pytest.raises(InvalidInput) as refused:
        prepare_source(over, max_pixels=10**6)
    assert refused.value.key == "input.too_slow"
    with pytest.raises(OutputUnavailable) as unusable:
        finish_output(over, limit_bytes=10**7, max_pixels=10**6, stem="out")
    assert unusable.value.unusable


async def test_a_picture_of_tens_of_thousands_of_scans_is_refused_before_it_is_decoded(
    start_bot, fake_discord, fake_api, caplog
):
    """Two members attach a picture crafted to take minutes to decode (a progressive JPEG of 40 000
    scans, 670 KB: under every size and pixel limit). Each held an image worker for as long as it took;
    with two workers, nobody's JPEG was checked meanwhile, and every paid output that needed a worker
    waited. Now more than MAX_JPEG_SCANS scans are refused by their count: the members are told, no
    API call is made, no worker is held or stopped, and a third member's JPEG is made at once."""
    bot = await start_bot(IMAGE_WORKERS="2")
    workers = image_workers()
    crafted = [
        asyncio.create_task(
            slash(fake_discord, {"prompt": "a maze"}, image=many_scans(40_000), user_id=u, **JPEG)
        )
        for u in (6161, 6262)
    ]
    _, ordinary = await slash(fake_discord, {"prompt": "a harbour"}, image=jpeg(), user_id=6363, **JPEG)
    assert len(ordinary.results) == 1, ordinary.content
    for _, final in await asyncio.gather(*crafted):
        assert final.content.endswith(text("en-US", "input.too_slow")), final.content
    assert len(fake_api.submissions) == 1  # (the ordinary picture's only)
    assert image_workers() == workers
    assert not any(service_of(bot).pictures.sources_dir.glob("*.upload"))
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1, "failed": 2}
    assert_clean(fake_discord, fake_api, caplog)


async def test_an_output_of_tens_of_thousands_of_scans_ends_its_job_alone(
    start_bot, fake_discord, fake_api, caplog
):
    """The image service sends back such a picture: it was checked for minutes (its job's deadline
    passed meanwhile); now its job ends at once saying the picture cannot be used, and the next job is
    made."""
    bot = await start_bot(IMAGE_WORKERS="2")
    fake_api.output_png = many_scans(40_000)
    _, final = await slash(fake_discord, {"prompt": "a maze"})
    assert text("en-US", "error.output_unusable") in final.content, final.content
    assert final.results == []
    fake_api.output_png = output = jpeg()
    _, second = await slash(fake_discord, {"prompt": "a cabin"}, user_id=5151)
    assert [f.data for f in second.results] == [output], second.content
    await fake_discord.wait_until_idle(busy(bot))
    assert not any(service_of(bot).pictures.results_dir.glob("*.download"))
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_picture_past_the_time_bound_is_refused_and_its_worker_killed(
    start_bot, fake_discord, fake_api, caplog
):
    """A picture that passes every check but takes longer than IMAGE_WORK_TIMEOUT_S (set low here; any
    slow path of a decoder, as the scans were) is refused saying so, at no cost; its worker is killed
    and started again. Before, a worker had no bound: it was the member's to hold."""
    bot = await start_bot(IMAGE_WORKERS="1", IMAGE_WORK_TIMEOUT_S="0.3")
    (worker,) = image_workers()
    _, final = await slash(fake_discord, {"prompt": "a maze"}, image=slowest_allowed(), **JPEG)
    assert final.content.endswith(text("en-US", "input.too_slow")), final.content
    assert fake_api.submissions == []
    assert worker not in image_workers()
    assert not any(service_of(bot).pictures.sources_dir.glob("*.upload"))
    assert "IMAGE_WORK_TIMEOUT_S=0.3 s" in log_text(caplog)
    assert_clean(fake_discord, fake_api, caplog)


async def test_work_past_the_bound_stops_only_its_own_worker(tmp_path):
    """Two pieces of work that never end hold both workers; a third, waiting behind them for longer
    than the bound, still gets its full time: each of the two is stopped at the bound (its worker
    killed, another started) and the third is done by a new worker."""
    from cogs.depth2img.core.pictures import Pictures  # (as the extension has it now)
    from cogs.depth2img.core.workers import WorkTooSlow

    pictures = Pictures(tmp_path, image_workers=2, picture_threads=1, work_timeout_s=1.0)
    await pictures.start()
    try:
        first = set(image_workers())
        stuck = [pictures.cpu(time.sleep, 600) for _ in range(2)]
        outcomes = await asyncio.gather(*stuck, pictures.cpu(os.getpid), return_exceptions=True)
        assert [type(o) for o in outcomes[:2]] == [WorkTooSlow, WorkTooSlow]
        assert isinstance(outcomes[2], int) and outcomes[2] not in first
        for _ in range(100):
            if not first & set(image_workers()):
                break
            await asyncio.sleep(0.05)
        assert not first & set(image_workers())
    finally:
        pictures.close()


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
    refused = asyncio.create_task(slash(fake_discord, {"prompt": "a maze"}, image=slowest_allowed(), **JPEG))
    await kill_its_worker_twice(fake_discord, service_of(bot).pictures.sources_dir, "*.upload")
    _, final = await refused
    assert final.content.endswith(text("en-US", "input.too_heavy"))
    assert fake_api.submissions == []
    _, ordinary = await slash(fake_discord, {"prompt": "a harbour"}, image=jpeg(), user_id=6363, **JPEG)
    assert len(ordinary.results) == 1, ordinary.content
    assert "an image worker stopped again over the same picture; the picture is refused" in log_text(caplog)
    assert_clean(fake_discord, fake_api, caplog)


async def test_an_output_that_kills_its_worker_twice_ends_its_job(start_bot, fake_discord, fake_api, caplog):
    """The same with a paid output: its job "failed unexpectedly" and was polled again, each time
    killing a worker, until its deadline (30 minutes by default). Now it ends at once, saying the image
    service sent a picture the bot cannot use."""
    bot = await start_bot(IMAGE_WORKERS="1")
    fake_api.output_png = slowest_allowed()
    made = asyncio.create_task(slash(fake_discord, {"prompt": "a maze"}))
    await kill_its_worker_twice(fake_discord, service_of(bot).pictures.results_dir, "*.download")
    _, final = await made
    assert text("en-US", "error.output_unusable") in final.content
    assert final.results == []
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"failed": 1}
    assert "job failed unexpectedly" not in log_text(caplog)
    assert_clean(fake_discord, fake_api, caplog)
