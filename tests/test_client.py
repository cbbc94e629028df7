"""The ModelsLab backend against the fake API: every scenario of the contract's table (§9)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from cogs.depth2img.backends.guard import Guard
from cogs.depth2img.backends.http import open_session
from cogs.depth2img.backends.modelslab import ModelsLabBackend
from cogs.depth2img.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    JobFailed,
    OutputUnavailable,
    RateLimitError,
    ServerError,
    SourceImageUnreachable,
)
from cogs.depth2img.models import GenerationParams
from tests.fakes.fake_api import FakeModelsLab, make_png

PARAMS = GenerationParams(
    prompt="a cozy cabin", negative_prompt="blurry", strength=0.7, steps=31, guidance=7.5, seed=42
)
SOURCE = "https://cdn.example/attachments/1/2/photo.png"


class Sleeps:
    """Injected sleep: records the waits instead of waiting (the client's own seam, not a mock)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@asynccontextmanager
async def modelslab(*, base_url: str, resolver=None, **kw) -> AsyncIterator[ModelsLabBackend]:
    """The backend as the extension builds it: its own session, every connection guarded."""
    guard = Guard([base_url])
    backend = ModelsLabBackend(
        open_session(guard, connections=10, user_agent="test", resolver=resolver),
        guard=guard,
        base_url=base_url,
        **kw,
    )
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def client(fake_api: FakeModelsLab, sleeps: Sleeps) -> AsyncIterator[ModelsLabBackend]:
    async with modelslab(
        base_url=fake_api.base_url,
        api_key=fake_api.api_key,
        request_timeout_s=2,
        max_retries=2,
        rate_limit_max_wait_s=10,
        sleep=sleeps,
    ) as backend:
        yield backend


async def test_request_body_carries_key_image_prompt_and_typed_options(client, fake_api):
    await client.submit(PARAMS, SOURCE)
    (sub,) = fake_api.submissions
    assert sub.path == "/api/v5/depth2img"
    body = sub.body
    assert body["key"] == fake_api.api_key
    assert body["init_image"] == SOURCE
    assert body["prompt"] == "a cozy cabin"
    assert body["negative_prompt"] == "blurry"
    assert body["strength"] == 0.7
    assert body["num_inference_steps"] == 31
    assert body["guidance_scale"] == 7.5
    assert body["seed"] == 42
    assert body["samples"] == 1
    assert all(not isinstance(v, str) for k, v in body.items() if k in {"strength", "seed", "samples"})


async def test_1_success_with_string_output(client, fake_api):
    fake_api.scenario = "success"
    r = await client.submit(PARAMS, SOURCE)
    assert r.done
    assert len(r.output_urls) == 1
    assert r.output_urls[0].startswith(f"http://127.0.0.1:{fake_api.port}/files/")
    assert r.generation_time_s == pytest.approx(1.32)
    assert r.remote_id is not None


async def test_2_success_with_list_proxy_links_and_meta(client, fake_api):
    fake_api.scenario = "success_list"
    r = await client.submit(PARAMS, SOURCE)
    assert r.done
    assert len(r.output_urls) == 1
    assert r.seed == 1793745243
    assert r.generation_time_s == pytest.approx(2.9)


async def test_3_queued_then_success_polls_the_fetch_result_url(client, fake_api):
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 2
    first = await client.submit(PARAMS, SOURCE)
    assert not first.done
    assert first.remote_id == "13481504"
    assert first.poll_url and first.poll_url.endswith("/api/v3/fetch/13481504")
    assert first.eta_s == pytest.approx(0.05)
    done = [(await client.poll(first.remote_id, first.poll_url)).done for _ in range(3)]
    assert done == [False, False, True]
    assert all(f.body == {"key": fake_api.api_key} for f in fake_api.fetches)
    assert {f.path for f in fake_api.fetches} == {"/api/v3/fetch/13481504"}


async def test_4_queued_then_failed_raises_job_failed_with_the_reason(client, fake_api):
    fake_api.scenario = "queued_then_failed"
    first = await client.submit(PARAMS, SOURCE)
    with pytest.raises(JobFailed) as info:
        await client.poll(first.remote_id, first.poll_url)
    assert "Invalid input dimensions" in info.value.detail
    assert len(fake_api.fetches) == 1  # not retried: failed is final


async def test_5_queued_forever_keeps_answering_processing(client, fake_api):
    fake_api.scenario = "queued_forever"
    first = await client.submit(PARAMS, SOURCE)
    for _ in range(5):
        assert not (await client.poll(first.remote_id, first.poll_url)).done


async def test_6_processing_without_id_is_parsed_without_an_id(client, fake_api):
    fake_api.scenario = "processing_without_id"
    r = await client.submit(PARAMS, SOURCE)
    assert not r.done
    assert r.remote_id is None
    assert fake_api.fetches == []


@pytest.mark.parametrize("scenario", ["invalid_key_200", "invalid_key_401"])
async def test_7_8_invalid_key_both_styles(client, fake_api, scenario):
    fake_api.scenario = scenario
    with pytest.raises(AuthenticationError):
        await client.submit(PARAMS, SOURCE)
    assert len(fake_api.submissions) == 1


async def test_wrong_key_is_rejected_and_never_echoed(fake_api, sleeps):
    async with modelslab(base_url=fake_api.base_url, api_key="wrong-key-abcdef", sleep=sleeps) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.submit(PARAMS, SOURCE)
    assert "wrong-key-abcdef" not in str(info.value)


@pytest.mark.parametrize("scenario", ["no_credits_402", "no_credits_200"])
async def test_9_out_of_credits(client, fake_api, scenario):
    fake_api.scenario = scenario
    with pytest.raises(InsufficientCreditsError):
        await client.submit(PARAMS, SOURCE)
    assert len(fake_api.submissions) == 1


async def test_10_rate_limit_reports_retry_after_and_does_not_wait_30s(client, fake_api, sleeps):
    fake_api.scenario = "rate_limited"
    with pytest.raises(RateLimitError) as info:
        await client.submit(PARAMS, SOURCE)
    assert info.value.retry_after_s == 30
    assert len(fake_api.submissions) == 1  # 30 s is above the 10 s the client waits out itself
    assert sleeps.calls == []


async def test_10_short_rate_limit_is_waited_out_and_retried(fake_api, sleeps):
    fake_api.scenario = "rate_limited"
    async with modelslab(
        base_url=fake_api.base_url,
        api_key=fake_api.api_key,
        max_retries=2,
        rate_limit_max_wait_s=60,
        sleep=sleeps,
    ) as c:
        with pytest.raises(RateLimitError):
            await c.submit(PARAMS, SOURCE)
    assert len(fake_api.submissions) == 3
    assert sleeps.calls == [30, 30]  # honours retry_after


async def test_11_validation_error_object_message(client, fake_api):
    fake_api.scenario = "validation_object"
    with pytest.raises(BadRequestError) as info:
        await client.submit(PARAMS, SOURCE)
    assert info.value.message == "The init image field is required."


async def test_12_legacy_messege_field(client, fake_api):
    fake_api.scenario = "legacy_messege"
    with pytest.raises(BadRequestError) as info:
        await client.submit(PARAMS, SOURCE)
    assert info.value.message == "prompt is required"


async def test_13_unfetchable_init_image(client, fake_api):
    fake_api.scenario = "unfetchable_image"
    with pytest.raises(SourceImageUnreachable):
        await client.submit(PARAMS, SOURCE)


async def test_14_server_error_then_success_is_retried_once(client, fake_api, sleeps):
    fake_api.scenario = "server_error_then_success"
    r = await client.submit(PARAMS, SOURCE)
    assert r.done
    assert len(fake_api.submissions) == 2
    assert len(sleeps.calls) == 1


async def test_14_persistent_server_error_gives_up_after_max_retries(client, fake_api):
    fake_api.scenario = "server_error_always"
    with pytest.raises(ServerError):
        await client.submit(PARAMS, SOURCE)
    assert len(fake_api.submissions) == 3  # 1 + max_retries


async def test_15_non_json_gateway_error_is_not_resubmitted(client, fake_api):
    fake_api.scenario = "bad_gateway_html"
    with pytest.raises(ServerError) as info:
        await client.submit(PARAMS, SOURCE)
    assert info.value.status == 502
    assert len(fake_api.submissions) == 1  # a 502 may have reached the backend: no second charge


async def test_16_string_id(client, fake_api):
    fake_api.scenario = "success_string_id"
    r = await client.submit(PARAMS, SOURCE)
    assert r.remote_id == "abc123-def456"


async def test_17_output_404_on_download(client, fake_api):
    fake_api.scenario = "output_404"
    r = await client.submit(PARAMS, SOURCE)
    with pytest.raises(OutputUnavailable):
        await client.download_pieces(r.output_urls[0])


async def test_18_multiple_samples(client, fake_api):
    fake_api.scenario = "multiple_samples"
    r = await client.submit(GenerationParams(prompt="x", samples=3), SOURCE)
    assert len(r.output_urls) == 3
    assert [u.rsplit("-", 1)[1] for u in r.output_urls] == ["0.png", "1.png", "2.png"]
    for url in r.output_urls:
        assert b"".join(await client.download_pieces(url)) == fake_api.output_png


async def test_19_base64_to_url(client, fake_api):
    png = make_png(64, 64)
    url = await client.upload_image(png)
    (upload,) = fake_api.uploads
    assert upload.path == "/api/v6/base64_to_url"
    assert upload.body["base64_string"].startswith("data:image/png;base64,")
    assert base64.b64decode(upload.body["base64_string"].split(",", 1)[1]) == png
    assert b"".join(await client.download_pieces(url)) == png


async def test_20_base64_to_url_too_large(client, fake_api):
    with pytest.raises(BadRequestError) as info:
        await client.upload_image(b"\x89PNG" + b"\0" * (5 * 1024 * 1024 + 10))
    assert "5MB" in info.value.message


async def test_21_base64_crop_fallback_when_v6_is_missing(client, fake_api):
    fake_api.legacy_uploads_only = True
    png = make_png(32, 32)
    url = await client.upload_image(png)
    assert [u.path for u in fake_api.uploads] == ["/api/v3/base64_crop"]
    assert b"".join(await client.download_pieces(url)) == png


async def test_22_slow_response_times_out_and_is_not_resubmitted(fake_api, sleeps):
    fake_api.scenario = "slow"
    fake_api.slow_s = 5
    async with modelslab(
        base_url=fake_api.base_url, api_key=fake_api.api_key, request_timeout_s=1, sleep=sleeps
    ) as c:
        with pytest.raises(APITimeoutError):
            await c.submit(PARAMS, SOURCE)
    assert len(fake_api.submissions) == 1  # the job may exist already: never submit twice


async def test_unreachable_api_is_retried_then_reported(sleeps):
    async with modelslab(
        base_url="http://127.0.0.1:9/api", api_key="k" * 10, max_retries=2, sleep=sleeps
    ) as c:
        with pytest.raises(APIConnectionError):
            await c.submit(PARAMS, SOURCE)
    assert len(sleeps.calls) == 2  # connection refused: the job never reached the API, safe to retry


async def test_fetch_result_on_a_foreign_host_is_not_sent_the_key(client, fake_api):
    fake_api.scenario = "queued"
    first = await client.submit(PARAMS, SOURCE)
    await client.poll(first.remote_id, "http://evil.invalid/steal")
    assert fake_api.fetches[0].path == "/api/v6/images/fetch/13481504"


async def test_download_size_cap(fake_api, sleeps):
    url = fake_api.add_file("big.png", b"x" * 200_000)
    async with modelslab(
        base_url=fake_api.base_url,
        api_key=fake_api.api_key,
        max_download_bytes=100_000,
        sleep=sleeps,
    ) as c:
        with pytest.raises(OutputUnavailable):
            await c.download_pieces(url)
