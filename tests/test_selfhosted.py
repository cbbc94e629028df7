"""The community's own GPU: ComfyUI and AUTOMATIC1111 / Forge, each against its fake over 127.0.0.1,
end to end through the real bot and the fake Discord: the picture delivered, progress shown, the
member's options in the service's request, cancel, a restart mid-job, and the owner's clear lines."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogs.depth2img.backends.base import MAX_OUTPUT_URLS
from cogs.depth2img.backends.comfyui import ComfyUIBackend
from cogs.depth2img.backends.comfyui_answers import refusal_line
from cogs.depth2img.backends.comfyui_workflow import DEFAULT_WORKFLOW, WorkflowError, load
from cogs.depth2img.errors import Depth2ImgError
from tests.conftest import (
    bot_env,
    busy,
    details_of,
    free_port,
    is_settled,
    service_of,
    slash,
    spawn_bot,
    stop_bot,
)
from tests.fakes.fake_a1111 import FakeA1111
from tests.fakes.fake_api import make_png
from tests.fakes.fake_comfyui import FakeComfyUI
from tests.test_models import json_values

OPTIONS = {
    "prompt": "a castle at dusk",
    "negative_prompt": "fog",
    "strength": 0.45,
    "steps": 12,
    "guidance": 6.5,
    "seed": 1234,
}


@pytest.fixture
async def comfyui() -> AsyncIterator[FakeComfyUI]:
    fake = FakeComfyUI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def a1111() -> AsyncIterator[FakeA1111]:
    fake = FakeA1111()
    await fake.start()
    yield fake
    await fake.stop()


def comfy_env(comfyui: FakeComfyUI, **extra: str) -> dict[str, str]:
    return {"IMAGE_BACKEND": "comfyui", "COMFYUI_URL": comfyui.url, **extra}


def a1111_env(a1111: FakeA1111, **extra: str) -> dict[str, str]:
    return {"IMAGE_BACKEND": "a1111", "A1111_URL": a1111.url, **extra}


async def depth_map_of(fake_discord, final) -> bytes:
    """Press the result's 🗺️ Depth map button; the map comes privately."""
    button = next(
        c["custom_id"]
        for row in final.components
        for c in row["components"]
        if c["custom_id"].startswith("d2i:depth:")
    )
    record = await fake_discord.click(final, button)
    await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=10)
    shown = fake_discord.visible_messages(record)[-1]
    assert shown.ephemeral and shown.results, shown.content
    assert (
        shown.results[0].description == "The depth map of the member's picture, as the image service read it."
    )
    return shown.results[0].data


def node(graph: dict, kind: str) -> dict:
    return next(n["inputs"] for n in graph.values() if n["class_type"] == kind)


# --- ComfyUI -----------------------------------------------------------------------------------------


async def test_comfyui_makes_the_picture_with_the_members_options_and_shows_progress(
    start_bot, fake_discord, fake_api, comfyui
):
    comfyui.step_s = 0.1
    await start_bot(**comfy_env(comfyui), PROGRESS_INTERVAL_S="0.2")
    record, final = await slash(fake_discord, OPTIONS, image=make_png(640, 480))
    assert final.results and not final.ephemeral
    assert final.results[0].data in comfyui.outputs.values()
    assert any(
        (line.startswith("⏳ Generating… ") and line.endswith("%")) or "% —" in line
        for line in fake_discord.visible_messages(record)[0].history
    )
    graph = comfyui.prompts[0]["prompt"]
    assert node(graph, "CLIPTextEncode")["text"] == "a castle at dusk"
    assert [n["inputs"]["text"] for n in graph.values() if n["class_type"] == "CLIPTextEncode"] == [
        "a castle at dusk",
        "fog",
    ]
    sampler = node(graph, "KSampler")
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["denoise"]) == (1234, 12, 6.5, 0.45)
    assert node(graph, "LoadImage")["image"] in comfyui.inputs  # the picture was uploaded first
    assert node(graph, "CheckpointLoaderSimple")["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    assert "seed `1234`" in (await details_of(fake_discord, final)).content  # the seed it was made with
    assert fake_api.submissions == []  # no paid API touched
    assert len(final.results) == 1  # the depth map is not taken for a result...
    depth = await depth_map_of(fake_discord, final)  # ...but shown on request
    assert depth in comfyui.outputs.values() and depth != final.results[0].data


async def test_a_depth_map_that_cannot_be_kept_leaves_the_result_kept(
    start_bot, fake_discord, fake_api, comfyui, tmp_path
):
    """The depth map cannot be written where the result was (here a folder stands where its file goes;
    a disk that fills between the two does the same). The result stays kept: /depth2img-show brings it
    back, and the 🗺️ button says the map is no longer stored. Before, the job forgot its kept result
    as well: "no longer stored" for a picture that was on disk (and the day's sweep removed it)."""
    comfyui.step_s = 0.3
    bot = await start_bot(**comfy_env(comfyui))
    user = 737373737373737373
    record = await fake_discord.invoke_slash(
        "depth2img",
        {**OPTIONS, "image": fake_discord.add_attachment(make_png(640, 480), "p.png", "image/png")},
        user_id=user,
    )
    ledger = service_of(bot).ledger
    await fake_discord.wait_for(lambda: record.ack_type is not None, timeout=10)
    jobs: list = []
    while not jobs:
        jobs = await ledger.for_user(user)
        await asyncio.sleep(0.01)
    (tmp_path / "data" / "results" / f"{jobs[0].id}-depth.png.tmp").mkdir(parents=True)
    await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=20)
    final = fake_discord.visible_messages(record)[-1]
    assert len(final.results) == 1, final.content
    await fake_discord.wait_until_idle(busy(bot))
    shown = await fake_discord.invoke_slash("depth2img-show", {"picture": jobs[0].id})
    await fake_discord.wait_for(lambda: is_settled(fake_discord, shown), timeout=10)
    assert [f.data for f in fake_discord.visible_messages(shown)[-1].files] == [final.results[0].data]
    button = f"d2i:depth:{jobs[0].id}"
    pressed = await fake_discord.click(final, button)
    await fake_discord.wait_for(lambda: is_settled(fake_discord, pressed), timeout=10)
    said = fake_discord.visible_messages(pressed)[-1]
    assert said.ephemeral and not said.results and "no longer stored" in said.content


async def test_comfyui_cancel_interrupts_the_running_prompt(start_bot, fake_discord, comfyui):
    comfyui.step_s = 0.5
    await start_bot(**comfy_env(comfyui))
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "slow", "steps": 40},
    )
    await fake_discord.wait_for(lambda: comfyui.running is not None, timeout=10)
    progress = fake_discord.visible_messages(record)[0]
    await fake_discord.wait_for(lambda: progress.components, timeout=10)
    cancel = progress.components[0]["components"][0]["custom_id"]
    await fake_discord.click(progress, cancel, user_id=record.user_id)
    await fake_discord.wait_for(lambda: progress.content.startswith("🛑 Cancelled"), timeout=10)
    await fake_discord.wait_for(lambda: comfyui.interrupts == 1, timeout=5)
    assert "credits" not in progress.content  # the owner's own GPU: nothing was paid for


async def test_comfyui_refusing_the_workflow_tells_the_owner_and_the_member(
    start_bot, fake_discord, comfyui, caplog
):
    comfyui.checkpoints = ["some-other-model.safetensors"]
    await start_bot(**comfy_env(comfyui))
    with caplog.at_level(logging.ERROR):
        _, final = await slash(fake_discord, {"prompt": "x"})
    assert "image server is not set up" in final.content and "owner" in final.content
    line = next(r.getMessage() for r in caplog.records if "ComfyUI refused" in r.getMessage())
    assert "value_not_in_list" in line or "Value not in list" in line
    assert "ckpt_name" in line


async def test_comfyui_missing_custom_nodes_are_named_for_the_owner(start_bot, fake_discord, caplog):
    fake = FakeComfyUI(custom_nodes=False)
    await fake.start()
    try:
        with caplog.at_level(logging.ERROR):
            await start_bot(**comfy_env(fake))
            await fake_discord.wait_for(
                lambda: any("lacks nodes" in r.getMessage() for r in caplog.records), timeout=10
            )
            _, final = await slash(fake_discord, {"prompt": "x"})
    finally:
        await fake.stop()
    assert "DepthAnythingV2Preprocessor" in next(
        r.getMessage() for r in caplog.records if "lacks nodes" in r.getMessage()
    )
    assert "image server is not set up" in final.content


async def test_comfyui_history_listing_odd_outputs_still_delivers(start_bot, fake_discord, comfyui):
    """After the real outputs, the history lists a node whose outputs are a list, a file name that no
    URL can carry (a lone surrogate), and 5,000 more pictures. The first two made the job fail
    "unexpectedly" and wait for a resume; the last were all kept in the job's row."""

    def tamper(entry):
        entry["outputs"]["99990"] = ["not", "an", "object"]
        entry["outputs"]["99991"] = {"images": [{"filename": "bad\ud800.png", "type": "output"}]}
        many = [{"filename": f"extra-{i}.png", "subfolder": "", "type": "output"} for i in range(5000)]
        entry["outputs"]["99992"] = {"images": many}

    comfyui.tamper_history = tamper
    bot = await start_bot(**comfy_env(comfyui))
    _, final = await slash(fake_discord, {"prompt": "x"}, user_id=5151)
    assert final.results and final.results[0].data in comfyui.outputs.values()
    (job,) = await service_of(bot).ledger.for_user(5151)
    assert len(job.output_urls) <= 2 * MAX_OUTPUT_URLS
    assert not [u for u in job.output_urls if "bad" in u]


@pytest.mark.parametrize("seed", [2**64, -1], ids=["past-64-bits", "negative"])
async def test_comfyui_history_with_a_seed_no_ledger_holds_still_delivers(
    start_bot, fake_discord, comfyui, seed
):
    """The history's copy of the prompt holds a seed that no 64-bit column takes: the picture is
    delivered, without a seed (the ledger refused the row before: the job failed "unexpectedly")."""

    def tamper(entry):
        for node in entry["prompt"][2].values():
            if "seed" in node.get("inputs", {}):
                node["inputs"]["seed"] = seed

    comfyui.tamper_history = tamper
    await start_bot(**comfy_env(comfyui))
    _, final = await slash(fake_discord, {"prompt": "x"}, user_id=5252)
    assert final.results, final.content


_node = st.fixed_dictionaries(
    {},
    optional={
        "class_type": st.sampled_from(["SaveImage", "KSampler"]) | json_values,
        "inputs": st.dictionaries(st.sampled_from(["seed", "filename_prefix"]), json_values) | json_values,
        "images": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "filename": st.text(max_size=8) | json_values,
                    "subfolder": st.text(max_size=4) | json_values,
                    "type": st.sampled_from(["output", "temp"]) | json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
    },
)
_graph = st.dictionaries(st.sampled_from(["10", "12", "13"]), _node | json_values, max_size=3)
_SAVED = {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
# a finished entry with one usable picture (node 12), the rest of it odd: the reading goes on past
# the first checks to the seed (node 10's inputs), the depth maps (node 13) and the other outputs
_succeeded = st.fixed_dictionaries(
    {
        "status": st.fixed_dictionaries(
            {"status_str": st.just("success")}, optional={"messages": json_values}
        ),
        "outputs": st.dictionaries(st.sampled_from(["13", "99"]), _node | json_values, max_size=2).map(
            lambda extra: {"12": _SAVED, **extra}
        ),
        "prompt": st.tuples(json_values, json_values, _graph).map(list) | json_values,
    }
)
_history_entry = st.fixed_dictionaries(
    {},
    optional={
        "status": st.fixed_dictionaries(
            {},
            optional={
                "status_str": st.sampled_from(["success", "error"]) | json_values,
                "messages": st.lists(st.tuples(st.text(max_size=20), json_values).map(list)) | json_values,
            },
        )
        | json_values,
        "outputs": _graph | json_values,
        "prompt": st.tuples(json_values, json_values, _graph).map(list) | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    entry=_succeeded | _history_entry,
    refusal=json_values | st.fixed_dictionaries({"node_errors": json_values}),
)
def test_comfyui_answers_raise_nothing_but_our_errors(entry, refusal):
    """Whatever shape a history entry or a refusal takes, reading it ends in an answer or in one of
    our errors: anything else made a job fail "unexpectedly" and wait for a resume."""
    backend = ComfyUIBackend(
        None,  # type: ignore[arg-type]  # (no request is made: only the answers are read)
        None,  # type: ignore[arg-type]
        base_url="http://127.0.0.1:1",
        workflow=load(None),
        checkpoint="c",
        controlnet="d",
    )
    try:
        backend._finished("p", entry)
    except Depth2ImgError:
        pass
    assert isinstance(refusal_line(refusal), str)


async def test_comfyui_progress_frames_of_any_shape_do_not_stop_the_progress_follower(comfyui):
    """The WebSocket's frames are read for progress for as long as the bot runs: a frame whose numbers
    no float holds (raised OverflowError), or of any other odd shape, is passed over, and later frames
    are still read. (Before: the follower stopped for good, and no member saw progress again.)"""
    from cogs.depth2img.backends.guard import Guard
    from cogs.depth2img.backends.http import open_session

    guard = Guard([comfyui.url])
    session = open_session(guard, connections=4, user_agent="test")
    backend = ComfyUIBackend(
        session, guard, base_url=comfyui.url, workflow=load(None), checkpoint="c", controlnet="d"
    )
    follower = asyncio.create_task(backend.upkeep())
    try:
        async with asyncio.timeout(10):
            while comfyui.ws_clients == 0:
                await asyncio.sleep(0.02)
        odd = [
            {"type": "progress", "data": {"value": 10**400, "max": 3, "prompt_id": "a"}},
            {"type": "progress", "data": {"value": 1e308, "max": 1e-308, "prompt_id": "b"}},
            {"type": "progress", "data": {"value": float("nan"), "max": 2, "prompt_id": "c"}},
            {"type": "progress", "data": {"value": [1], "max": {}, "prompt_id": "d"}},
            {"type": "progress", "data": ["x"]},
            [1, 2, 3],
        ]
        for frame in odd:
            await comfyui.broadcast(json.dumps(frame))
        await comfyui.broadcast('{"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": "e"}}')
        async with asyncio.timeout(10):
            while "e" not in backend.progress:
                assert not follower.done(), follower.exception()
                await asyncio.sleep(0.02)
        assert backend.progress["e"] == 0.25
        assert all(0.0 <= v <= 1.0 for v in backend.progress.values())
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await backend.close()


async def test_comfyui_run_time_error_ends_clearly(start_bot, fake_discord, comfyui, caplog):
    comfyui.fail_at_run = True
    await start_bot(**comfy_env(comfyui))
    with caplog.at_level(logging.WARNING):
        _, final = await slash(fake_discord, {"prompt": "x"})
    assert final.content.startswith("⚠️") and not final.results
    assert any("LoadImage failed" in r.getMessage() for r in caplog.records)


def test_a_workflow_file_is_checked_at_start(tmp_path):
    assert load(None).node_types >= {
        "LoadImage",
        "DepthAnythingV2Preprocessor",
        "ControlNetApplyAdvanced",
        "KSampler",
        "SaveImage",
    }
    graph = json.loads(DEFAULT_WORKFLOW.read_text())
    del graph["10"]["inputs"]["seed"]
    graph["5"]["inputs"]["text"] = "{{promt}}"
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps(graph))
    with pytest.raises(WorkflowError) as caught:
        load(bad)
    assert "{{seed}}" in str(caught.value) and "{{promt}}" in str(caught.value)
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(WorkflowError, match="API format"):
        load(tmp_path / "ui.json")


async def test_a_bad_workflow_file_stops_the_start_with_one_clear_line(
    fake_discord, fake_api, comfyui, tmp_path
):
    (tmp_path / "wf.json").write_text("{not json")
    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        **comfy_env(comfyui, COMFYUI_WORKFLOW=str(tmp_path / "wf.json")),
    )
    from tests.conftest import BOT_SCRIPT, process_env

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BOT_SCRIPT,
        cwd=tmp_path,
        env=process_env(**env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "COMFYUI_WORKFLOW" in err.decode() and "Traceback" not in err.decode()


async def test_comfyui_job_survives_a_bot_restart_and_one_comfyui_forgot_is_run_again(
    fake_discord, fake_api, comfyui, tmp_path
):
    comfyui.step_s = 0.3
    env = bot_env(
        fake_discord, fake_api, tmp_path / "data", METRICS_PORT=str(free_port()), **comfy_env(comfyui)
    )
    proc = await spawn_bot(fake_discord, env, tmp_path)
    first = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "kept", "steps": 10},
    )
    # killed once the bot has recorded the prompt id (it asks for the prompt's history only after):
    # a kill between ComfyUI's answer and that record would rightly run it again (it costs nothing)
    await fake_discord.wait_for(
        lambda: comfyui.running is not None and comfyui.running.prompt_id in comfyui.history_asked, timeout=10
    )
    await stop_bot(proc, signal.SIGKILL)
    proc = await spawn_bot(fake_discord, env, tmp_path)  # found again by its prompt id
    try:
        await fake_discord.wait_for(lambda: is_settled(fake_discord, first), timeout=30)
        assert len(comfyui.prompts) == 1
        second = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "b.png"), "prompt": "lost", "steps": 10},
        )
        await fake_discord.wait_for(
            lambda: len(comfyui.prompts) == 2 and comfyui.running is not None, timeout=10
        )
        await stop_bot(proc, signal.SIGKILL)
        comfyui.forget()  # ComfyUI restarted too: it knows nothing of the prompt
        proc = await spawn_bot(fake_discord, env, tmp_path)
        await fake_discord.wait_for(lambda: is_settled(fake_discord, second), timeout=30)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert fake_discord.final_message(first).results
    assert fake_discord.final_message(second).results
    assert len(comfyui.prompts) == 3  # the forgotten one, run once more


# --- AUTOMATIC1111 / Forge ---------------------------------------------------------------------------


async def test_a1111_makes_the_picture_with_the_members_options_and_shows_progress(
    start_bot, fake_discord, fake_api, a1111
):
    a1111.step_s = 0.1
    await start_bot(**a1111_env(a1111), PROGRESS_INTERVAL_S="0.2")
    record, final = await slash(fake_discord, {**OPTIONS, "samples": 2}, image=make_png(640, 480))
    assert len(final.results) == 2  # the detected map is not taken for a result
    body = a1111.requests[0]
    assert base64.b64decode(body["init_images"][0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        body["prompt"],
        body["negative_prompt"],
        body["denoising_strength"],
        body["steps"],
        body["cfg_scale"],
        body["seed"],
    ) == ("a castle at dusk", "fog", 0.45, 12, 6.5, 1234)
    assert (body["width"], body["height"], body["batch_size"]) == (640, 480, 2)
    unit = body["alwayson_scripts"]["ControlNet"]["args"][0]
    assert (unit["module"], unit["model"], unit["enabled"]) == (
        "depth_midas",
        "control_v11f1p_sd15_depth [cfd03158]",
        True,
    )
    assert a1111.progress_asks > 0
    assert unit["save_detected_map"] is True
    depth = await depth_map_of(fake_discord, final)
    assert depth not in (r.data for r in final.results)
    assert any(
        line.startswith("⏳ Generating… ") for line in fake_discord.visible_messages(record)[0].history
    )
    assert fake_api.submissions == []


async def test_forge_dropping_controlnet_silently_is_caught(start_bot, fake_discord, caplog):
    fake = FakeA1111(forge_silent=True, models=["another-model"])
    await fake.start()
    try:
        with caplog.at_level(logging.ERROR):
            await start_bot(**a1111_env(fake))
            _, final = await slash(fake_discord, {"prompt": "x"})
    finally:
        await fake.stop()
    assert not final.results and "image server is not set up" in final.content
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("WITHOUT the depth ControlNet" in m for m in messages)
    assert any("A1111_CONTROLNET_MODEL is not among" in m for m in messages)  # said at start-up too


async def test_an_a1111_info_nested_too_deep_for_python_ends_like_a_missing_one(start_bot, fake_discord):
    """``info`` is a JSON string inside the answer; nested 100,000 deep, Python's parser raises
    RecursionError, not ValueError. The job ends as with an info that says nothing of ControlNet."""
    fake = FakeA1111(info_depth=100_000)
    await fake.start()
    try:
        await start_bot(**a1111_env(fake))
        _, final = await slash(fake_discord, {"prompt": "x"})
    finally:
        await fake.stop()
    assert not final.results and "image server is not set up" in final.content


async def test_a1111_cancel_interrupts(start_bot, fake_discord, a1111):
    a1111.step_s = 0.5
    await start_bot(**a1111_env(a1111))
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "slow", "steps": 40},
    )
    await fake_discord.wait_for(lambda: a1111.requests, timeout=10)
    progress = fake_discord.visible_messages(record)[0]
    await fake_discord.wait_for(lambda: progress.components, timeout=10)
    await fake_discord.click(
        progress, progress.components[0]["components"][0]["custom_id"], user_id=record.user_id
    )
    await fake_discord.wait_for(lambda: progress.content.startswith("🛑 Cancelled"), timeout=10)
    await fake_discord.wait_for(lambda: a1111.interrupts == 1, timeout=5)


async def test_a1111_job_cut_by_a_restart_is_run_again_once(fake_discord, fake_api, a1111, tmp_path):
    a1111.step_s = 0.3
    env = bot_env(
        fake_discord, fake_api, tmp_path / "data", METRICS_PORT=str(free_port()), **a1111_env(a1111)
    )
    proc = await spawn_bot(fake_discord, env, tmp_path)
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "again", "steps": 10},
    )
    await fake_discord.wait_for(lambda: a1111.requests, timeout=10)
    await stop_bot(proc, signal.SIGKILL)
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=30)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert fake_discord.final_message(record).results
    assert len(a1111.requests) == 2


def test_self_hosted_backends_need_their_url_not_the_api_key():
    from cogs.depth2img.config import ConfigError, load_settings

    settings = load_settings({"IMAGE_BACKEND": "a1111", "A1111_URL": "http://127.0.0.1:7860"})
    assert settings.service_url == "http://127.0.0.1:7860"
    with pytest.raises(ConfigError) as caught:
        load_settings({"IMAGE_BACKEND": "comfyui"})
    assert any("COMFYUI_URL" in p for p in caught.value.problems)
    assert not any("SD_API_KEY" in p for p in caught.value.problems)


async def test_an_a1111_answer_larger_than_the_outputs_allow_is_not_held(start_bot, fake_discord, a1111):
    """img2img answers carry the pictures in base64: the answer is read only up to what the pictures
    asked for may weigh (MAX_OUTPUT_BYTES each, and the detected map), like any other output."""
    await start_bot(**a1111_env(a1111), MAX_OUTPUT_BYTES="4096")
    _, final = await slash(fake_discord, {"prompt": "x"}, image=make_png(640, 480, noise=True))
    assert not final.results and "a picture the bot cannot use" in final.content
