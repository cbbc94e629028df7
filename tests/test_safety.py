"""What the bot keeps is private, and what members read is the bot's own words."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conftest import service_of, slash


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_folder_and_everything_in_it_are_private(bot, fake_discord, fake_api, tmp_path):
    _, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert final.results
    data = tmp_path / "data"
    assert mode(data) == 0o700
    for folder in (data / "sources", data / "results"):
        assert mode(folder) == 0o700
        files = list(folder.iterdir())
        assert files
        assert {mode(f) for f in files} == {0o600}
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal"):
        assert mode(data / name) == 0o600, name
    (job,) = await service_of(bot).history(final_user_of(fake_discord, final))
    assert job.interaction_token == ""  # nothing needs the token once the job is over


def final_user_of(fake_discord, message) -> int:
    return fake_discord.interactions[message.interaction_id].user_id
