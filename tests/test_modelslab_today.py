"""ModelsLab as it serves today (``shared/docs/backends.md`` §1): the retired ``v5/depth2img`` and the
switch to ``v5/controlnet`` with depth, base64 outputs, the documented fetch route, the wallet balance.
The backend runs against the fake API over 127.0.0.1; the end-to-end half through the real bot."""

from __future__ import annotations

import logging
import signal

import pytest

from cogs.depth2img.backends.modelslab_routes import fit_size
from cogs.depth2img.errors import InsufficientCreditsError, JobFailed, OutputUnavailable
from cogs.depth2img.models import GenerationParams
from tests.conftest import bot_env, free_port, is_settled, spawn_bot, stop_bot
from tests.fakes.fake_api import FakeModelsLab, make_png
from tests.test_client import SOURCE, modelslab

PARAMS = GenerationParams(
    prompt="a cozy cabin",
    negative_prompt="blurry",
    strength=0.7,
    steps=31,
    guidance=7.5,
    seed=42,
    samples=2,
    width=1000,
    height=750,
)


def routes(fake_api: FakeModelsLab) -> list[str]:
    return [s.path.rsplit("/", 1)[-1] for s in fake_api.submissions]


@pytest.mark.parametrize("dead", ["failed", "404", "405"])
async def test_auto_moves_a_request_the_dead_endpoint_refused_to_controlnet_once(fake_api, dead, caplog):
    fake_api.depth2img_dead = dead
    learnt: list[str] = []

    async def remember(route: str) -> None:
        learnt.append(route)

    async with modelslab(
        base_url=fake_api.base_url, api_key=fake_api.api_key, remember=remember, model_id="fluxdev"
    ) as backend:
        with caplog.at_level(logging.WARNING):
            first = await backend.submit(PARAMS, SOURCE)
            second = await backend.submit(PARAMS, SOURCE)
    assert first.done and second.done
    # one refused depth2img (nothing started there), then the same request and every later one on controlnet
    assert routes(fake_api) == ["depth2img", "controlnet", "controlnet"]
    assert learnt == ["controlnet"]
    assert sum("v5/controlnet" in r.getMessage() for r in caplog.records) == 1
    body = fake_api.submissions[1].body
    assert body["init_image"] == SOURCE and body["prompt"] == "a cozy cabin"
    assert body["model_id"] == "fluxdev"
    assert (body["controlnet_model"], body["controlnet_type"], body["auto_hint"]) == ("depth", "depth", "yes")
    assert body["negative_prompt"] == "blurry" and body["strength"] == 0.7 and body["guidance_scale"] == 7.5
    assert body["seed"] == 42 and body["num_inference_steps"] == "31" and body["samples"] == "2"
    assert (body["width"], body["height"]) == ("1000", "744")  # the source's, in multiples of 8
    assert body["safety_checker"] == "yes"


async def test_a_remembered_route_is_used_from_the_first_request(fake_api):
    fake_api.depth2img_dead = "failed"
    async with modelslab(
        base_url=fake_api.base_url, api_key=fake_api.api_key, known_route="controlnet"
    ) as backend:
        await backend.submit(PARAMS, SOURCE)
    assert routes(fake_api) == ["controlnet"]


@pytest.mark.parametrize("endpoint", ["depth2img", "controlnet"])
async def test_a_forced_route_is_kept(fake_api, endpoint):
    fake_api.depth2img_dead = "failed"
    async with modelslab(
        base_url=fake_api.base_url, api_key=fake_api.api_key, endpoint=endpoint, known_route="controlnet"
    ) as backend:
        if endpoint == "depth2img":
            with pytest.raises(JobFailed):
                await backend.submit(PARAMS, SOURCE)
        else:
            await backend.submit(PARAMS, SOURCE)
    assert routes(fake_api) == [endpoint]


async def test_a_failed_answer_with_an_id_is_not_taken_for_a_dead_endpoint(fake_api):
    fake_api.scenario = "queued_then_failed"
    async with modelslab(base_url=fake_api.base_url, api_key=fake_api.api_key) as backend:
        answer = await backend.submit(PARAMS, SOURCE)
    assert not answer.done and answer.remote_id
    assert routes(fake_api) == ["depth2img"]


def test_sizes_for_controlnet_keep_the_shape_within_1024_in_multiples_of_8():
    assert fit_size(1000, 750) == (1000, 744)
    assert fit_size(2048, 1024) == (1024, 512)
    assert fit_size(30, 30) == (64, 64)
    assert fit_size(1023, 1023) == (1016, 1016)


async def test_base64_outputs_are_decoded_padding_or_not(fake_api):
    fake_api.base64_outputs = True
    fake_api.output_png = next(
        png for side in range(300, 320) if len(png := make_png(side, 200, noise=True)) % 3
    )  # its base64 needs padding: the fake sends it without
    async with modelslab(base_url=fake_api.base_url, api_key=fake_api.api_key) as backend:
        answer = await backend.submit(PARAMS, SOURCE)
        assert answer.output_urls[0].endswith(".base64")
        data = b"".join(await backend.download(answer.output_urls[0]))
    assert data == fake_api.output_png


async def test_base64_text_that_is_not_a_picture_is_refused(fake_api):
    url = fake_api.add_file("bad.base64", b"this is not base64 at all!")
    async with modelslab(base_url=fake_api.base_url, api_key=fake_api.api_key) as backend:
        with pytest.raises(OutputUnavailable) as caught:
            await backend.download(url)
    assert caught.value.unusable


async def test_without_fetch_result_the_documented_fetch_route_is_polled(fake_api):
    fake_api.scenario = "queued"
    async with modelslab(base_url=fake_api.base_url, api_key=fake_api.api_key) as backend:
        answer = await backend.submit(PARAMS, SOURCE)
        await backend.poll(answer.remote_id, None)
    assert fake_api.fetches[0].path == f"/api/v6/images/fetch/{answer.remote_id}"


async def test_the_balance_is_logged_at_start_and_a_low_one_warned_once(fake_api, caplog):
    fake_api.balance = 0.42
    async with modelslab(base_url=fake_api.base_url, api_key=fake_api.api_key, low_balance=1.0) as backend:
        with caplog.at_level(logging.INFO):
            await backend.account.check(why="start")
            await backend.account.check(why="hourly")
    lines = [r for r in caplog.records if "balance" in r.getMessage().lower()]
    assert any(getattr(r, "balance", None) == "0.42 USD" and r.levelno == logging.INFO for r in lines)
    warnings = [r for r in lines if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SD_LOW_BALANCE" in warnings[0].getMessage()
    assert fake_api.api_key not in caplog.text


async def test_a_402_asks_for_the_balance_again_and_tells_the_owner_once(fake_api, caplog):
    fake_api.scenario = "no_credits_402"
    fake_api.balance = 0.0
    async with modelslab(base_url=fake_api.base_url, api_key=fake_api.api_key, max_retries=0) as backend:
        with caplog.at_level(logging.INFO):
            for _ in range(2):
                with pytest.raises(InsufficientCreditsError):
                    await backend.submit(PARAMS, SOURCE)
    assert fake_api.balance_checks == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "out of credit" in errors[0].getMessage()


# --- end to end: the real bot, the fake Discord, the fake API ---


async def test_the_switch_is_remembered_across_a_restart(fake_discord, fake_api, tmp_path):
    """One failed depth2img, then every request on controlnet, also after a restart; the member sees
    only their picture."""
    fake_api.depth2img_dead = "failed"
    env = bot_env(fake_discord, fake_api, tmp_path / "data", METRICS_PORT=str(free_port()))
    pictures = []
    for n in range(2):
        proc = await spawn_bot(fake_discord, env, tmp_path)
        try:
            for m in range(2):
                record = await fake_discord.invoke_slash(
                    "depth2img",
                    {
                        "image": fake_discord.add_attachment(make_png(640, 480), f"p{n}{m}.png"),
                        "prompt": f"cabin {n}{m}",
                    },
                    user_id=500 + 10 * n + m,
                )
                await fake_discord.wait_for(lambda r=record: is_settled(fake_discord, r), timeout=20)
                pictures.append(fake_discord.final_message(record))
        finally:
            log = await stop_bot(proc, signal.SIGTERM)
        if n == 0:
            assert "v5/controlnet" in log
    assert all(p is not None and p.results for p in pictures)
    assert routes(fake_api) == ["depth2img"] + ["controlnet"] * 4
    assert {(s.body["width"], s.body["height"]) for s in fake_api.submissions[1:]} == {("640", "480")}


async def test_the_bot_wide_daily_quota_counts_pictures_across_servers(fake_discord, fake_api, tmp_path):
    env = bot_env(
        fake_discord, fake_api, tmp_path / "data", METRICS_PORT=str(free_port()), SD_BOT_DAILY_QUOTA="3"
    )
    fake_api.scenario = "multiple_samples"
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        first = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "two", "samples": 2},
            user_id=701,
        )
        await fake_discord.wait_for(lambda: is_settled(fake_discord, first), timeout=20)
        await stop_bot(proc, signal.SIGTERM)  # the count is the ledger's: a restart resets nothing
        proc = await spawn_bot(fake_discord, env, tmp_path)
        second = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "b.png"), "prompt": "two more", "samples": 2},
            user_id=702,
            guild_id=fake_discord.second_guild_id,
        )
        await fake_discord.wait_for(lambda: is_settled(fake_discord, second), timeout=20)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert len(fake_discord.final_message(first).results) == 2
    refusal = fake_discord.final_message(second)
    assert refusal.ephemeral and "across every server" in refusal.content
    assert len(fake_api.submissions) == 1
