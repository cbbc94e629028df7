"""Hostile input and a hostile API, end to end through the fake Discord.

Every bad attachment or prompt gets a clear private message and costs no API call; every API fault
ends in one clear message; under 50 concurrent requests with faults mixed in, every request ends in
exactly one final state and the ledger holds only finished jobs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from tests.conftest import busy, is_settled, service_of, slash
from tests.fakes.fake_api import bomb_png, make_png
from tests.ledger_queries import count_by_state
from tests.test_e2e import assert_clean, log_text


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG that claims width×height 1-bit pixels (a decompression bomb)."""
    raw = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * 64, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (128, 128), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def multipage_tiff() -> bytes:
    return animated("TIFF")


def jpeg() -> bytes:
    return encode(Image.new("RGB", (400, 300), (200, 100, 50)), "JPEG")


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100" height="100"/></svg>'
)

BAD_ATTACHMENTS = [
    ("text-as-png", b"just some text, honestly", "photo.png", "image/png", "not a picture"),
    (
        "html-as-jpeg",
        b"<!doctype html><html><body>hi</body></html>",
        "cat.jpg",
        "image/jpeg",
        "not a picture",
    ),
    (
        "pdf-as-webp",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj",
        "x.webp",
        "image/webp",
        "not a picture",
    ),
    ("svg-as-png", SVG, "logo.png", "image/png", "not a picture"),
    ("exe-no-type", b"MZ\x90\x00" + b"\0" * 200, "setup.png", None, "not a picture"),
    ("zero-bytes", b"", "empty.png", "image/png", "empty"),
    ("truncated-png", make_png(256, 256)[:500], "cut.png", "image/png", "damaged"),
    ("truncated-jpeg", jpeg()[: len(jpeg()) // 2], "cut.jpg", "image/jpeg", "damaged"),
    ("corrupt-png", corrupt(make_png(256, 256)), "bad.png", "image/png", "damaged"),
    ("decompression-bomb", png_bomb(30000, 30000), "bomb.png", "image/png", "too large"),
    ("huge-dimensions", png_bomb(20000, 100), "wide.png", "image/png", "too large"),
    ("animated-gif", animated("GIF"), "anim.gif", "image/gif", "not a PNG, JPEG or WebP"),
    ("animated-png", animated("PNG"), "anim.png", "image/png", "Animated"),
    ("animated-webp", animated("WEBP"), "anim.webp", "image/webp", "Animated"),
    ("multipage-tiff", multipage_tiff(), "scan.tiff", "image/tiff", "not a PNG, JPEG or WebP"),
    ("tiny-image", encode(Image.new("RGB", (16, 16)), "PNG"), "tiny.png", "image/png", "at least 64"),
]


@pytest.mark.parametrize(
    ("data", "filename", "ctype", "fragment"),
    [c[1:] for c in BAD_ATTACHMENTS],
    ids=[c[0] for c in BAD_ATTACHMENTS],
)
async def test_bad_attachment_is_refused_privately_at_no_cost(
    bot, fake_discord, fake_api, data, filename, ctype, fragment
):
    record, final = await slash(
        fake_discord, {"prompt": "x"}, image=data, filename=filename, content_type=ctype
    )
    assert final.ephemeral, final.content
    assert fragment in final.content
    assert [m.ephemeral for m in fake_discord.visible_messages(record)] == [True]
    assert fake_api.submissions == []
    assert fake_api.uploads == []
    assert_clean(fake_discord, fake_api)


async def test_attachment_over_the_size_limit_is_refused_before_download(start_bot, fake_discord, fake_api):
    await start_bot(MAX_INPUT_BYTES="100000")
    record, final = await slash(fake_discord, {"prompt": "x"}, image=make_png(800, 800, noise=True))
    assert record.ack_type == 4  # refused before the acknowledgement: nothing was downloaded
    assert final.ephemeral
    assert "limit is 0.1 MB" in final.content
    assert fake_api.submissions == []


def cdn_path(fake_discord, attachment) -> str:
    return attachment["url"].split("?")[0].removeprefix(fake_discord.base_url)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_a_picture_longer_than_discord_said_is_not_read_past_the_limit(
    start_bot, fake_discord, fake_api, caplog, encoding
):
    """Discord says the attachment is small, then its CDN sends without end (plain, or gzip-encoded:
    a few KB on the wire per MB read). The bot stops reading at MAX_INPUT_BYTES, not when the time
    runs out, and holds no more than that in memory; the member hears it is too large."""
    await start_bot(MAX_INPUT_BYTES="1000000", INPUT_READ_TIMEOUT_S="5")
    attachment = fake_discord.add_attachment(make_png(64, 64), "small.png")
    fake_discord.cdn_endless[cdn_path(fake_discord, attachment)] = encoding
    record, final = await slash(fake_discord, {"image": attachment, "prompt": "castle"})
    assert final.ephemeral
    assert "larger than the bot accepts" in final.content
    assert [m.ephemeral for m in fake_discord.visible_messages(record)] == [True]
    if encoding == "identity":  # the cap, and what the sockets' buffers held when the bot hung up
        assert fake_discord.cdn_sent[cdn_path(fake_discord, attachment)] < 48_000_000
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_picture_gone_from_discord_is_explained(bot, fake_discord, fake_api, caplog):
    attachment = fake_discord.add_attachment(make_png(), "gone.png")
    del fake_discord.cdn[cdn_path(fake_discord, attachment)]  # Discord's CDN answers 404
    record, final = await slash(fake_discord, {"image": attachment, "prompt": "castle"})
    assert final.ephemeral
    assert "could not be downloaded from Discord any more" in final.content
    assert [m.ephemeral for m in fake_discord.visible_messages(record)] == [True]
    assert fake_api.submissions == []
    assert "the picture could not be taken in" not in log_text(caplog)  # (an error the owner must look at)
    assert_clean(fake_discord, fake_api, caplog)


def exif_rotated_jpeg() -> bytes:
    img = Image.new("RGB", (400, 200), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    exif[0x010F] = "SecretCam"
    return encode(img, "JPEG", exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    return encode(Image.new("I;16", (300, 200), 40000), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (300, 200), (0, 80, 160, 0)), "JPEG")


ODD_BUT_GOOD = [
    ("exif-rotated", exif_rotated_jpeg(), "image/jpeg", (200, 400)),
    ("16-bit", sixteen_bit_png(), "image/png", (296, 200)),
    ("cmyk", cmyk_jpeg(), "image/jpeg", (296, 200)),
    ("rgba-png", encode(Image.new("RGBA", (320, 240), (0, 0, 0, 0)), "PNG"), "image/png", (320, 240)),
    (
        "oversized-2000px",
        encode(Image.new("RGB", (2000, 1500), (9, 9, 9)), "JPEG"),
        "image/jpeg",
        (1024, 768),
    ),
]


@pytest.mark.parametrize(
    ("data", "ctype", "size"), [c[1:] for c in ODD_BUT_GOOD], ids=[c[0] for c in ODD_BUT_GOOD]
)
async def test_odd_but_valid_pictures_are_normalised_and_uploaded(
    bot, fake_discord, fake_api, data, ctype, size
):
    _, final = await slash(fake_discord, {"prompt": "x"}, image=data, filename="in.img", content_type=ctype)
    assert final.files, final.content
    (upload,) = fake_api.uploads
    raw = base64.b64decode(upload.body["base64_string"].split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as img:
        assert img.mode == "RGB"
        assert img.size == size
        assert not img.getexif()  # metadata stripped
        assert b"SecretCam" not in raw
    assert fake_api.submissions[0].body["init_image"] == fake_api.file_url(upload_name(fake_api))
    assert_clean(fake_discord, fake_api)


def upload_name(fake_api) -> str:
    return next(name for name in fake_api._files if name.startswith("up"))


async def test_missing_content_type_with_a_real_png_is_fine(bot, fake_discord, fake_api):
    _, final = await slash(fake_discord, {"prompt": "x"}, content_type=None, filename="noext")
    assert final.files


BAD_PROMPTS = [
    ("empty", {"prompt": ""}, "empty"),
    ("whitespace", {"prompt": "   \t  "}, "empty"),
    ("newlines", {"prompt": "\n\n\n"}, "empty"),
    ("control-only", {"prompt": "\x00\x07\x1b"}, "empty"),
    ("zero-width-only", {"prompt": "\u200b\u200d\ufeff"}, "empty"),
    ("too-long", {"prompt": "a" * 1001}, "limit is 1,000"),
    ("too-long-after-cleaning", {"prompt": "word " * 300}, "limit is 1,000"),
    ("negative-too-long", {"prompt": "ok", "negative_prompt": "n" * 1001}, "negative prompt"),
    ("strength-out-of-range", {"prompt": "ok", "strength": 3.0}, "Strength"),
    ("samples-out-of-range", {"prompt": "ok", "samples": 9}, "Samples"),
]


@pytest.mark.parametrize(
    ("options", "fragment"), [c[1:] for c in BAD_PROMPTS], ids=[c[0] for c in BAD_PROMPTS]
)
async def test_bad_prompt_or_option_is_refused_privately(bot, fake_discord, fake_api, options, fragment):
    # sent as a hostile client would: past the limits the Discord client enforces
    record, final = await slash(fake_discord, options, check_options=False)
    assert record.ack_type == 4
    assert final.ephemeral
    assert fragment in final.content
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api)


async def test_control_characters_are_removed_from_the_prompt_sent(bot, fake_discord, fake_api):
    _, final = await slash(fake_discord, {"prompt": "a\x00 castle\x1b[31m on\u202e a hill"})
    assert final.files
    assert fake_api.submissions[0].body["prompt"] == "a castle[31m on a hill"


async def test_a_lone_surrogate_in_a_prompt_does_not_stop_the_bot(bot, fake_discord, fake_api):
    """A lone surrogate ("\\ud800") is valid JSON (RFC 8259 §8.2), and a JavaScript client that cuts
    a string inside an emoji sends one. orjson, which discord.py reads the gateway with, refuses it,
    and discord.py took that as fatal: the bot closed, and the member was left on "thinking…"
    (cogs/botcore/gateway_json.py). Its prompt now loses the surrogate, as any control character."""
    _, final = await slash(
        fake_discord, {"prompt": "a castle \ud800 on a hill", "negative_prompt": "fog \udc00"}
    )
    assert final.files
    body = fake_api.submissions[0].body
    assert (body["prompt"], body["negative_prompt"]) == ("a castle on a hill", "fog")
    assert not bot.is_closed()
    assert_clean(fake_discord, fake_api)
    # and a picture id holding one gets a plain answer, not a stopped bot
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": "abc\ud83d"})
    await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=10)
    answer = fake_discord.visible_messages(record)[-1]
    assert answer.ephemeral and "No delivered picture" in answer.content
    assert not bot.is_closed()


# --- a hostile API ----------------------------------------------------------------------------------

FAULTS = [
    ("reset", {}, "could not reach the image service"),
    ("stall", {"SD_REQUEST_TIMEOUT_S": "1"}, "did not answer in time"),
    # (a paid output is asked for again until the job's deadline: here 2 s)
    ("output_reset", {"SD_MAX_RETRIES": "1", "SD_JOB_TIMEOUT_S": "2"}, "could not be downloaded"),
    ("output_not_image", {}, "a picture the bot cannot use"),
    ("queued_forever", {"SD_JOB_TIMEOUT_S": "1"}, "did not finish within"),
]


@pytest.mark.parametrize(("scenario", "env", "fragment"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_api_fault_ends_in_one_clear_message(
    start_bot, fake_discord, fake_api, scenario, env, fragment
):
    fake_api.slow_s = 3
    await start_bot(**env)
    fake_api.scenario = scenario
    record, final = await slash(fake_discord, {"prompt": "castle"})
    assert fragment in final.content
    assert len(fake_discord.visible_messages(record)) == 1
    assert len(fake_api.submissions) == 1  # an ambiguous failure is never resubmitted
    assert_clean(fake_discord, fake_api)


async def test_fifty_concurrent_requests_with_faults_all_end_once(start_bot, fake_discord, fake_api):
    bot = await start_bot(SD_MAX_CONCURRENT="8", SD_MAX_QUEUED="60", SD_MAX_RETRIES="1")
    fake_api.scenario = "mixed"
    fake_api.latency_s = 0.05
    fake_api.polls_before_done = 2
    records = await asyncio.gather(
        *(
            fake_discord.invoke_slash(
                "depth2img", {"image": fake_discord.add_attachment(make_png(), f"{n}.png"), "prompt": f"p{n}"}
            )
            for n in range(50)
        )
    )
    await fake_discord.wait_for(lambda: all(is_settled(fake_discord, r) for r in records), timeout=60)
    await fake_discord.wait_until_idle()
    delivered = failed = 0
    for r in records:
        assert r.acked_at is not None
        assert r.acked_at - r.sent_at < 3.0
        visible = fake_discord.visible_messages(r)
        assert len(visible) == 1  # exactly one final state per request
        if visible[0].files:
            delivered += 1
        else:
            assert "code `" in visible[0].content
            failed += 1
    assert delivered + failed == 50
    assert delivered >= 20 and failed >= 10  # the mix really mixed
    counts = await count_by_state(service_of(bot).ledger)
    assert set(counts) <= {"delivered", "failed"}
    assert counts.get("delivered", 0) == delivered
    assert counts.get("failed", 0) == failed
    assert len(fake_api.submissions) == 50
    assert_clean(fake_discord, fake_api)


# --- outputs are checked like inputs (issue 12, item 14) ---------------------------------------------


async def test_an_output_over_the_pixel_limit_is_refused_not_delivered(bot, fake_discord, fake_api):
    """The API sends a 400-megapixel PNG of a few kilobytes: whole, valid and small, it used to be
    delivered untouched. Refused by its header (nothing decoded), and the member told."""
    fake_api.output_png = bomb_png()
    _, final = await slash(fake_discord, {"prompt": "castle"})
    assert final.files == []
    assert "a picture the bot cannot use" in final.content
    assert_clean(fake_discord, fake_api)


async def test_before_after_of_an_unusable_kept_result_ends_with_a_message(bot, fake_discord, fake_api):
    """A result kept by an older bot that did not check outputs (here: a 400-megapixel PNG) or damaged
    on disk: the before | after button answers with a clear message, never "thinking..." for ever."""
    from pathlib import Path

    from tests.test_iterate import job_id_of, settle

    _, final = await slash(fake_discord, {"prompt": "castle"})
    job_id = job_id_of(final)
    await fake_discord.wait_until_idle(busy(bot))
    job = await service_of(bot).get(job_id)
    for kept in (bomb_png(), b"\x89PNG\r\n\x1a\n damaged"):
        Path(job.result_path).write_bytes(kept)
        shown = await settle(fake_discord, await fake_discord.click(final, f"d2i:compare:{job_id}"))
        assert shown.files == []
        assert "a picture the bot cannot use" in shown.content
    assert_clean(fake_discord, fake_api)
