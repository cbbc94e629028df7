"""The owner's check: ``python bot.py --check`` (and ``make check``) checks the settings, logs in to
Discord once, and checks the chosen image service without generating anything; one line per check,
exit 0 only when all pass. Run as the real process against the fakes."""

from __future__ import annotations

import asyncio
import sys

from tests.conftest import BOT_SCRIPT, bot_env, process_env
from tests.fakes.fake_a1111 import FakeA1111
from tests.fakes.fake_comfyui import FakeComfyUI


async def run_check(env: dict[str, str], cwd) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BOT_SCRIPT,
        "--check",
        cwd=cwd,
        env=process_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def lines(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        if line.startswith(("PASS  ", "FAIL  ")):
            name, _, detail = line[6:].partition(": ")
            found[name] = line[:4] + " " + detail
    return found


async def test_all_pass_with_modelslab(fake_discord, fake_api, tmp_path):
    code, out, err = await run_check(bot_env(fake_discord, fake_api, tmp_path / "data"), tmp_path)
    seen = lines(out)
    assert code == 0, out + err
    assert set(seen) == {"settings", "Discord", "ModelsLab API key", "ModelsLab balance"}
    assert all(v.startswith("PASS") for v in seen.values())
    assert "43.60 USD" in seen["ModelsLab balance"]
    assert fake_api.submissions == []  # nothing generated, nothing paid
    assert fake_discord.identified.is_set() is False  # no gateway session: a login over HTTP only


async def test_a_rejected_key_and_token_fail_with_the_fix_and_no_secret(fake_discord, fake_api, tmp_path):
    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        SD_API_KEY="wrong-key-0000000000",
        DISCORD_TOKEN="Mz.bad.token",
    )
    code, out, err = await run_check(env, tmp_path)
    seen = lines(out)
    assert code == 1
    assert seen["ModelsLab API key"].startswith("FAIL") and "SD_API_KEY" in seen["ModelsLab API key"]
    assert seen["Discord"].startswith("FAIL") and "DISCORD_TOKEN" in seen["Discord"]
    assert "wrong-key-0000000000" not in out + err and "Mz.bad.token" not in out + err


async def test_comfyui_missing_nodes_fail_by_name(fake_discord, fake_api, tmp_path):
    comfyui = FakeComfyUI(custom_nodes=False)
    await comfyui.start()
    try:
        env = bot_env(
            fake_discord, fake_api, tmp_path / "data", IMAGE_BACKEND="comfyui", COMFYUI_URL=comfyui.url
        )
        code, out, _ = await run_check(env, tmp_path)
    finally:
        await comfyui.stop()
    seen = lines(out)
    assert code == 1
    assert seen["ComfyUI"].startswith("PASS")
    assert seen["ComfyUI nodes"].startswith("FAIL") and "DepthAnythingV2Preprocessor" in seen["ComfyUI nodes"]
    assert comfyui.prompts == []


async def test_a1111_without_the_model_fails_and_with_it_passes(fake_discord, fake_api, tmp_path):
    a1111 = FakeA1111(models=["control_v11p_sd15_canny [d14c016b]"])
    await a1111.start()
    try:
        env = bot_env(fake_discord, fake_api, tmp_path / "data", IMAGE_BACKEND="a1111", A1111_URL=a1111.url)
        code, out, _ = await run_check(env, tmp_path)
        assert code == 1 and lines(out)["ControlNet model"].startswith("FAIL")
        assert "control_v11p_sd15_canny" in lines(out)["ControlNet model"]
        a1111.models.append("control_v11f1p_sd15_depth [cfd03158]")
        code, out, _ = await run_check(env, tmp_path)
    finally:
        await a1111.stop()
    assert code == 0, out
    assert a1111.requests == []


async def test_a_service_that_is_not_there_fails_clearly(fake_discord, fake_api, tmp_path):
    from tests.conftest import free_port

    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        IMAGE_BACKEND="comfyui",
        COMFYUI_URL=f"http://127.0.0.1:{free_port()}",
    )
    code, out, _ = await run_check(env, tmp_path)
    assert code == 1
    assert "start ComfyUI, or fix the URL" in lines(out)["ComfyUI"]
