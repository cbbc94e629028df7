"""A full disk where the bot keeps its data (``BOT_DATA_DIR``), as owners who run the bot for years
meet it: small file systems (tmpfs, mounted for the test; it needs root, as CI has) stand in for the
picture folders, filled to the last byte."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from cogs.depth2img.errors import is_disk_full
from cogs.i18n import text
from tests.conftest import busy, service_of, slash
from tests.fakes.fake_api import make_png
from tests.ledger_queries import count_by_state
from tests.test_e2e import assert_clean, log_text


@pytest.fixture
def small_disks(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """``data/sources`` and ``data/results`` as file systems of 1 MB each."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    folders = {name: tmp_path / "data" / name for name in ("sources", "results")}
    mounted = []
    try:
        for folder in folders.values():
            folder.mkdir(parents=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)], check=True
            )
            mounted.append(folder)
        yield folders
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_data_disk(tmp_path: Path) -> Iterator[Path]:
    """``data`` itself (the pictures and the SQLite ledger) as a file system of 4 MB."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to its last byte; returns the file that does it."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            for _ in range(64):
                out.write(b"\0" * 64 * 1024)
                out.flush()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
    return filler


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(make_png(noise=True))).save(buf, format="JPEG")
    return buf.getvalue()


async def test_a_full_disk_refuses_a_picture_clearly_at_no_cost_until_there_is_room(
    small_disks, start_bot, fake_discord, fake_api, caplog
):
    """The member's picture cannot be kept: the member is told, privately, that the bot's storage is
    full and nothing was spent; the owner's log says what to do; nothing half-written stays to fill the
    disk further. The next members, while the disk is still full, are told at once (privately, as any
    refusal: no public "thinking…" first, nothing downloaded). Once there is room again, the same
    request works. Before, the member read "a problem of its own" with a code, and the log said only
    OSError; and every member was answered "thinking…" in the channel first, then refused."""
    bot = await start_bot()
    filler = fill(small_disks["sources"])
    _, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert final.ephemeral and not final.results
    assert final.content == text("en-US", "error.storage_full")
    assert fake_api.submissions == []
    assert "the data folder's disk is full: a member's picture could not be kept; free space" in log_text(
        caplog
    )
    assert sorted(f.name for f in small_disks["sources"].iterdir()) == ["filler"]
    record, still_full = await slash(fake_discord, {"prompt": "a lighthouse"}, user_id=5252)
    assert record.ack_type == 4 and still_full.ephemeral  # (answered with the refusal itself)
    assert still_full.content == text("en-US", "error.storage_full")
    assert await count_by_state(service_of(bot).ledger) == {"failed": 1}  # (the first's only)
    filler.unlink()
    _, again = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert len(again.results) == 1 and len(fake_api.submissions) == 1
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_picture_whose_normalised_copy_does_not_fit_leaves_nothing_behind(
    small_disks, start_bot, fake_discord, fake_api, caplog
):
    """A member's JPEG fits on the disk, but the PNG it is normalised into (five times larger) does not:
    the member is told the storage is full, nothing is spent, and the JPEG as it came (``.upload``) is
    removed too. Before, it was left behind, filling the disk further, until the hourly clean-up."""
    await start_bot()
    room = 400 * 1024
    (small_disks["sources"] / "filler").write_bytes(
        b"\0" * (shutil.disk_usage(small_disks["sources"]).free - room)
    )
    buf = io.BytesIO()  # (noise, 516 pixels a side: normalised to 512, as a PNG of ~3 bytes a pixel)
    Image.frombytes("RGB", (516, 516), os.urandom(3 * 516 * 516)).save(buf, format="JPEG", quality=75)
    picture = buf.getvalue()
    assert len(picture) < room < 3 * 512 * 512
    _, final = await slash(
        fake_discord,
        {"prompt": "a lighthouse"},
        image=picture,
        filename="photo.jpg",
        content_type="image/jpeg",
    )
    assert final.content == text("en-US", "error.storage_full")
    assert fake_api.submissions == []
    assert sorted(f.name for f in small_disks["sources"].iterdir()) == ["filler"]
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_paid_picture_reaches_its_member_through_a_full_disk(
    small_disks, start_bot, fake_discord, fake_api, caplog
):
    """The results' disk is full when a paid output arrives that is checked from a file (a JPEG here;
    so is a safety checker's blank picture, or one over Discord's limit). It is checked from memory
    instead and delivered at once, whole; the owner's log says the disk is full and that the result was
    not kept (its buttons and /depth2img-show will not have it). Before, the job "failed unexpectedly"
    and was left to be polled again and again, each time failing, until its deadline (30 minutes by
    default): the member waited, then lost the picture the owner had paid for."""
    bot = await start_bot()
    fake_api.output_png = output = jpeg()
    fill(small_disks["results"])
    _, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert [f.data for f in final.results] == [output]
    assert len(fake_api.submissions) == 1
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    said = log_text(caplog)
    assert "the data folder's disk is full: an output is checked without a worker's file" in said
    assert "the data folder's disk is full: a result was not kept" in said
    assert "job failed unexpectedly" not in said
    assert sorted(f.name for f in small_disks["results"].iterdir()) == ["filler"]
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_ledger_on_a_full_disk_tells_the_member_and_then_refuses_up_front(
    small_data_disk, start_bot, fake_discord, fake_api, caplog
):
    """The SQLite ledger (in ``BOT_DATA_DIR``) cannot record a job: the disk is full. The member is
    told the storage is full, privately, and nothing is spent; the next member, while it is still full,
    is refused before any "thinking…"; once there is room, a request works. Before, the members after
    the first were each answered "thinking…" in the channel, then refused."""
    bot = await start_bot()
    ledger = sqlite3.connect(small_data_disk / "jobs.sqlite3")
    ledger.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # (as after a quiet spell: a record must grow it)
    ledger.close()
    filler = fill(small_data_disk)
    _, first = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert first.ephemeral and first.content == text("en-US", "error.storage_full")
    assert "the job could not be recorded" in log_text(caplog)
    record, second = await slash(fake_discord, {"prompt": "a lighthouse"}, user_id=5252)
    assert record.ack_type == 4 and second.content == text("en-US", "error.storage_full")
    assert fake_api.submissions == []
    filler.unlink()
    _, third = await slash(fake_discord, {"prompt": "a lighthouse"}, user_id=5353)
    assert len(third.results) == 1 and len(fake_api.submissions) == 1
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    assert_clean(fake_discord, fake_api, caplog)


def test_a_full_disk_is_told_from_any_other_trouble(tmp_path):
    """The disk's own word for it, from a file, from SQLite (a database at its page limit answers as a
    full disk does) and from PostgreSQL (disk_full, 53100); not any other error."""
    import errno

    import asyncpg

    db = sqlite3.connect(tmp_path / "full.sqlite3")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (?)", (b"\0" * 100_000,))
    db.close()
    assert is_disk_full(full.value)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(asyncpg.exceptions.DiskFullError("could not extend file"))
    for other in (
        OSError(errno.EACCES, "Permission denied"),
        sqlite3.OperationalError("database is locked"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        ValueError("full"),
    ):
        assert not is_disk_full(other), other


async def test_the_free_space_of_the_data_disk_is_a_metric(
    small_data_disk, start_bot, fake_discord, fake_api
):
    """``depth2img_data_disk_free_bytes``, read when scraped, so that an owner's alert comes before the
    disk is full (then members' pictures are refused, above)."""
    import shutil

    from tests.conftest import metrics_text

    bot = await start_bot()

    def free() -> float:
        (line,) = [
            x for x in metrics_text(bot).splitlines() if x.startswith("depth2img_data_disk_free_bytes ")
        ]
        return float(line.split()[1])

    before = free()
    assert 0 < before <= 4 * 1024 * 1024
    assert abs(before - shutil.disk_usage(small_data_disk).free) <= 256 * 1024
    filler = fill(small_data_disk)
    assert free() < 64 * 1024
    filler.unlink()
